"""In-order acknowledgement of one MQTT connection's QoS 1 messages.

MQTT requires PUBACKs in the order the PUBLISHes arrived, but Kafka confirms partitions out of
order. The tracker numbers the received messages in arrival order; confirmations mark numbers
done, and `release` acknowledges the longest done prefix. Marking and releasing are separate so
that a whole poll's worth of confirmations costs one release and one socket write.
One tracker per connection: after a reconnect the broker may reuse packet ids, so a late
confirmation for the old connection must never PUBACK on the new one.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable


class AckTracker:
    """Arrival-ordered messages; `send_acks(mids)` gets each released run of packet ids, in order."""

    def __init__(self, send_acks: Callable[[list[int]], object]) -> None:
        self._send_acks = send_acks
        # One thread releases at a time (the event loop, or the flushing thread at shutdown).
        self._lock = threading.Lock()
        self._mids: deque[int] = deque()
        self._head = 0  # the number of _mids[0]
        self._next = 0
        self._done: set[int] = set()
        self._closed = False
        self.acked = 0

    def add(self, mid: int) -> int:
        """Register a received message; returns its number, to `confirm` once Kafka has it."""
        # No lock: a deque append is atomic, and `release` only pops from the other end.
        self._mids.append(mid)
        number = self._next
        self._next = number + 1
        return number

    def confirm(self, numbers: Iterable[int]) -> None:
        """Mark messages done; nothing is acknowledged before `release`."""
        self._done.update(numbers)

    def release(self) -> int:
        """Acknowledge the longest prefix of done messages, in arrival order; returns how many."""
        with self._lock:
            done, mids = self._done, self._mids
            head = self._head
            if self._closed or head not in done:
                return 0
            popleft, discard = mids.popleft, done.discard
            acks: list[int] = []
            append = acks.append
            while head in done:
                discard(head)
                append(popleft())
                head += 1
            self._head = head
            self.acked += len(acks)
            self._send_acks(acks)
            return len(acks)

    def close(self) -> int:
        """The connection is gone: drop what is pending (the broker redelivers it); count it."""
        with self._lock:
            self._closed = True
            dropped = len(self._mids)
            self._mids.clear()
            self._done.clear()
            return dropped

    @property
    def in_flight(self) -> int:
        return len(self._mids)

    @property
    def closed(self) -> bool:
        return self._closed
