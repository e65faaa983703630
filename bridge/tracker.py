"""In-order acknowledgement of one MQTT connection's QoS 1 messages.

MQTT requires PUBACKs in the order the PUBLISHes arrived, but Kafka confirms partitions out of
order. The tracker keeps the received messages in arrival order and releases the longest prefix
that Kafka has confirmed. One tracker per connection: after a reconnect the broker may reuse
packet ids, so a late confirmation for the old connection must never PUBACK on the new one.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable


class Ticket:
    """One received message waiting for its Kafka confirmation."""

    __slots__ = ("done", "mid", "received_at", "tracker")

    def __init__(self, tracker: AckTracker, mid: int, received_at: float) -> None:
        self.tracker = tracker
        self.mid = mid
        self.received_at = received_at
        self.done = False

    def complete(self) -> None:
        self.tracker.complete(self)


class AckTracker:
    """Arrival-ordered tickets; `send_ack(mid)` is called in arrival order, under the lock."""

    def __init__(self, send_ack: Callable[[int], object]) -> None:
        self._send_ack = send_ack
        self._lock = threading.Lock()
        self._pending: deque[Ticket] = deque()
        self._closed = False
        self.acked = 0

    def add(self, mid: int, received_at: float) -> Ticket:
        ticket = Ticket(self, mid, received_at)
        # No lock: a deque append is atomic, and `complete` only pops from the other end.
        self._pending.append(ticket)
        return ticket

    def complete(self, ticket: Ticket) -> None:
        with self._lock:
            ticket.done = True
            if self._closed:
                return
            pending = self._pending
            # The ack is sent under the lock so that two confirming threads cannot reorder PUBACKs.
            while pending and pending[0].done:
                self._send_ack(pending.popleft().mid)
                self.acked += 1

    def close(self) -> int:
        """The connection is gone: drop what is pending (the broker redelivers it); count it."""
        with self._lock:
            self._closed = True
            dropped = len(self._pending)
            self._pending.clear()
            return dropped

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def closed(self) -> bool:
        return self._closed
