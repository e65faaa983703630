"""PUBACKs in arrival order, whatever order Kafka confirms in; nothing acked after a disconnect."""

from __future__ import annotations

import random
import threading

from bridge.tracker import AckTracker


def test_acks_follow_arrival_order_when_confirmations_are_shuffled() -> None:
    acked: list[int] = []
    tracker = AckTracker(acked.append)
    tickets = [tracker.add(mid, 0.0) for mid in range(1, 501)]
    shuffled = tickets[:]
    random.Random(7).shuffle(shuffled)
    for ticket in shuffled:
        ticket.complete()
    assert acked == list(range(1, 501))
    assert tracker.in_flight == 0


def test_a_pending_message_holds_back_later_ones() -> None:
    acked: list[int] = []
    tracker = AckTracker(acked.append)
    first, second, third = (tracker.add(mid, 0.0) for mid in (10, 11, 12))
    third.complete()
    second.complete()
    assert acked == []
    assert tracker.in_flight == 3
    first.complete()
    assert acked == [10, 11, 12]


def test_reused_packet_ids_are_tracked_per_message() -> None:
    acked: list[int] = []
    tracker = AckTracker(acked.append)
    a = tracker.add(1, 0.0)
    b = tracker.add(1, 0.0)  # the broker may reuse a packet id once it was acknowledged
    b.complete()
    assert acked == []
    a.complete()
    assert acked == [1, 1]


def test_nothing_is_acked_after_close() -> None:
    acked: list[int] = []
    tracker = AckTracker(acked.append)
    tickets = [tracker.add(mid, 0.0) for mid in (1, 2, 3)]
    tickets[0].complete()
    assert tracker.close() == 2
    tickets[1].complete()
    tickets[2].complete()
    assert acked == [1]


def test_concurrent_confirmations_keep_order() -> None:
    acked: list[int] = []
    tracker = AckTracker(acked.append)
    tickets = [tracker.add(mid, 0.0) for mid in range(20_000)]
    halves = [tickets[0::2], tickets[1::2]]
    threads = [
        threading.Thread(target=lambda part=part: [t.complete() for t in reversed(part)])
        for part in halves
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert acked == list(range(20_000))
