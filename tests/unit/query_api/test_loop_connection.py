"""LoopConnection: the driver's socket on the API's loop. Against a plain local TCP server (no
Cassandra): what the driver writes from its own threads arrives whole and in order, timers
armed and cancelled from any thread behave, and a closed connection fails its waiters."""

from __future__ import annotations

import asyncio
import threading

import pytest
from cassandra.connection import DefaultEndPoint

from query_api.loop_connection import LoopConnection


async def _server() -> tuple[asyncio.Server, int, bytearray]:
    received = bytearray()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.extend(data)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port, received


async def _connection(port: int) -> LoopConnection:
    LoopConnection.use_loop(asyncio.get_running_loop())
    # The driver opens connections from its own threads (the connect itself blocks).
    return await asyncio.to_thread(LoopConnection, DefaultEndPoint("127.0.0.1", port), protocol_version=4)


async def _until(condition: object, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_writes_from_other_threads_and_the_loop_arrive_whole_and_in_order() -> None:
    server, port, received = await _server()
    connection = await _connection(port)
    try:
        await _until(lambda: connection._transport is not None)
        frames = [bytes([n]) * 1000 for n in range(1, 21)]

        # From a driver thread, then from the loop itself. The driver's own OPTIONS frame, sent on
        # connect, may reach the server before or after the transport is seen here, so what is
        # compared is what follows it.
        def from_a_driver_thread() -> None:
            for frame in frames[:10]:
                connection.push(frame)

        await asyncio.to_thread(from_a_driver_thread)
        await _until(lambda: bytes(received).endswith(b"".join(frames[:10])))
        for later in frames[10:]:
            connection.push(later)
        await _until(lambda: bytes(received).endswith(b"".join(frames)))
        driver_frames = len(received) - 20_000
        assert bytes(received[driver_frames:]) == b"".join(frames)
        assert b"".join(frames[:1]) not in bytes(received[:driver_frames])
    finally:
        connection.close()
        server.close()


async def test_timers_fire_once_and_cancelled_ones_never_whichever_thread() -> None:
    LoopConnection.use_loop(asyncio.get_running_loop())
    fired: list[str] = []
    LoopConnection.create_timer(0.01, lambda: fired.append("loop"))
    cancelled = LoopConnection.create_timer(0.01, lambda: fired.append("cancelled"))
    cancelled.cancel()

    def from_a_thread() -> None:
        LoopConnection.create_timer(0.01, lambda: fired.append("thread"))
        LoopConnection.create_timer(0.01, lambda: fired.append("cancelled in thread")).cancel()

    thread = threading.Thread(target=from_a_thread)
    thread.start()
    thread.join()
    await asyncio.sleep(0.1)
    assert sorted(fired) == ["loop", "thread"]


async def test_a_lost_connection_is_defunct_and_closed() -> None:
    server, port, _ = await _server()
    connection = await _connection(port)
    await _until(lambda: connection._transport is not None)
    assert connection._transport is not None
    connection._transport.close()  # the socket goes away under the driver
    await _until(lambda: connection.is_closed)
    assert connection.is_defunct
    server.close()


@pytest.mark.parametrize("on_loop", [True, False])
async def test_close_from_any_thread_closes_the_socket(on_loop: bool) -> None:
    server, port, _ = await _server()
    connection = await _connection(port)
    await _until(lambda: connection._transport is not None)
    if on_loop:
        connection.close()
    else:
        await asyncio.to_thread(connection.close)
    transport = connection._transport
    assert transport is not None
    await _until(transport.is_closing)
    assert connection.is_closed
    server.close()
