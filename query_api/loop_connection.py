"""cassandra-driver connections served by the API's own asyncio loop instead of a reactor thread.

With the driver's libev reactor every read crosses threads twice: the request is queued for the
reactor thread (and its loop woken), the answer is decoded there and handed back to the asyncio
loop with `call_soon_threadsafe`, and the two threads pass the GIL back and forth each time. A
profile of the API under a fleet's distinct reads put two fifths of its CPU in that thread. Here
the socket is an asyncio transport of the loop the routes run on: a request is written straight
from the route, the answer is decoded and its waiter resolved in the same thread.

The driver still opens connections, and does its blocking waits (connect, prepare, schema and
topology refreshes) from its own worker threads; those only ever queue work for the loop
(`call_soon_threadsafe`). The loop must therefore keep running while the cluster connects and
shuts down, which is why `CassandraStore` calls the blocking driver API in threads.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, cast

from cassandra.connection import Connection, ConnectionShutdown

log = logging.getLogger(__name__)


class _Timer:
    """A driver timer (request timeouts, heartbeats) on the loop; cancellable from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, callback: Callable[[], Any]) -> None:
        self._callback = callback
        self._cancelled = False
        self._handle: asyncio.TimerHandle | None = None
        self._loop = loop
        if LoopConnection.on_loop():
            self._handle = loop.call_later(timeout, self._fire)
        else:
            loop.call_soon_threadsafe(self._arm, timeout)

    def _arm(self, timeout: float) -> None:
        if not self._cancelled:
            self._handle = self._loop.call_later(timeout, self._fire)

    def _fire(self) -> None:
        if not self._cancelled:
            self._cancelled = True
            self._callback()

    def cancel(self) -> None:
        self._cancelled = True
        handle = self._handle
        if handle is not None:
            if LoopConnection.on_loop():
                handle.cancel()
            else:
                self._loop.call_soon_threadsafe(handle.cancel)

    def finish(self, *_: object) -> None:  # a TimerManager's; never used with this class
        raise NotImplementedError


class _Protocol(asyncio.Protocol):
    def __init__(self, connection: LoopConnection) -> None:
        self._connection = connection

    def data_received(self, data: bytes) -> None:
        connection = self._connection
        connection._iobuf.write(data)
        connection.process_io_buffer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection.lost(exc)


class LoopConnection(Connection):  # type: ignore[misc]
    """A driver connection whose socket is a transport of `LoopConnection.loop`."""

    loop: asyncio.AbstractEventLoop | None = None
    _loop_thread: int | None = None

    @classmethod
    def use_loop(cls, loop: asyncio.AbstractEventLoop) -> None:
        """Serve every later connection on `loop`; called from that loop's thread."""
        cls.loop = loop
        cls._loop_thread = threading.get_ident()

    @classmethod
    def on_loop(cls) -> bool:
        return threading.get_ident() == cls._loop_thread

    @classmethod
    def initialize_reactor(cls) -> None:
        if cls.loop is None:
            raise ConnectionShutdown("no asyncio loop to serve Cassandra connections on")

    @classmethod
    def handle_fork(cls) -> None:
        cls.loop = None
        cls._loop_thread = None

    @classmethod
    def create_timer(cls, timeout: float, callback: Callable[[], Any]) -> _Timer:
        assert cls.loop is not None
        return _Timer(cls.loop, timeout, callback)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        Connection.__init__(self, *args, **kwargs)
        loop = type(self).loop
        if loop is None or loop.is_closed():
            raise ConnectionShutdown("the API's loop is not running")
        self._io_loop = loop
        self._transport: asyncio.Transport | None = None
        # Written before the transport exists, or from the driver's threads: flushed on the loop.
        self._waiting: list[bytes] = []
        self._waiting_lock = threading.Lock()
        # Blocking connect: the driver creates connections in its own threads, never the loop's.
        self._connect_socket()
        self._socket.setblocking(False)
        loop.call_soon_threadsafe(self._attach)
        self._send_options_message()

    def _attach(self) -> None:
        if self.is_closed:
            self._socket.close()
            return
        task = self._io_loop.create_task(
            self._io_loop.create_connection(lambda: _Protocol(self), sock=self._socket)
        )
        task.add_done_callback(self._attached)

    def _attached(self, task: asyncio.Task[tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]) -> None:
        if task.cancelled() or task.exception() is not None:
            self.defunct(task.exception() or ConnectionShutdown("connect cancelled"))
            return
        # uvloop's transports do not subclass asyncio.Transport; they have its methods.
        transport = cast(asyncio.Transport, task.result()[0])
        self._transport = transport
        if self.is_closed:
            transport.close()
            return
        self._flush()

    def push(self, data: bytes) -> None:
        if self._transport is not None and self.on_loop() and not self._waiting:
            self._transport.write(data)
            return
        with self._waiting_lock:
            self._waiting.append(data)
        if self.on_loop():
            self._flush()
        else:
            self._io_loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        if self._transport is None:
            return
        with self._waiting_lock:
            waiting, self._waiting = self._waiting, []
        for data in waiting:
            self._transport.write(data)

    def close(self) -> None:
        with self.lock:
            if self.is_closed:  # type: ignore[has-type]
                return
            self.is_closed = True
        log.debug("closing Cassandra connection to %s", self.endpoint)
        if self.on_loop():
            self._close_transport()
        else:
            try:
                self._io_loop.call_soon_threadsafe(self._close_transport)
            except RuntimeError:  # the loop is closed: so is everything it served
                self._socket.close()
        if not self.is_defunct:
            self.error_all_requests(ConnectionShutdown(f"Connection to {self.endpoint} was closed"))
            self.connected_event.set()

    def _close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()
        else:
            self._socket.close()

    def lost(self, exc: Exception | None) -> None:
        if not self.is_closed:
            log.debug("Cassandra connection to %s lost: %s", self.endpoint, exc)
            self.defunct(exc or ConnectionShutdown(f"Connection to {self.endpoint} closed by the server"))
