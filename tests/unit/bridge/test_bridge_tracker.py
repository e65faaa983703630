"""PUBACKs in arrival order, whatever order Kafka confirms in; nothing acked after a disconnect."""

from __future__ import annotations

import random

from bridge.tracker import AckTracker


def test_acks_follow_arrival_order_when_confirmations_are_shuffled() -> None:
    acked: list[int] = []
    tracker = AckTracker(acked.extend)
    numbers = [tracker.add(mid) for mid in range(1, 501)]
    random.Random(7).shuffle(numbers)
    for i in range(0, 500, 37):  # confirmations come a poll at a time
        tracker.confirm(numbers[i:i + 37])
        tracker.release()
    assert acked == list(range(1, 501))
    assert tracker.in_flight == 0


def test_a_pending_message_holds_back_later_ones() -> None:
    sends: list[list[int]] = []
    tracker = AckTracker(sends.append)
    first, second, third = (tracker.add(mid) for mid in (10, 11, 12))
    tracker.confirm([third, second])
    assert tracker.release() == 0
    assert sends == []
    assert tracker.in_flight == 3
    tracker.confirm([first])
    assert tracker.release() == 3
    assert sends == [[10, 11, 12]]  # one run, one write


def test_reused_packet_ids_are_tracked_per_message() -> None:
    acked: list[int] = []
    tracker = AckTracker(acked.extend)
    a = tracker.add(1)
    b = tracker.add(1)  # the broker may reuse a packet id once it was acknowledged
    tracker.confirm([b])
    tracker.release()
    assert acked == []
    tracker.confirm([a])
    tracker.release()
    assert acked == [1, 1]


def test_nothing_is_acked_after_close() -> None:
    acked: list[int] = []
    tracker = AckTracker(acked.extend)
    numbers = [tracker.add(mid) for mid in (1, 2, 3)]
    tracker.confirm(numbers[:1])
    tracker.release()
    assert tracker.close() == 2
    tracker.confirm(numbers[1:])
    assert tracker.release() == 0
    assert acked == [1]
