"""StreamClient (connect once) and ClientService (stay connected, with capped, jittered backoff)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import re
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

import pytest

from tapster import Application
from tapster.services import ClientService, StreamClient, StreamServer

T = TypeVar("T")

LOOPBACK = "tcp:0:interface=127.0.0.1"


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Fail with TimeoutError even if the event loop is stuck in a busy loop (asyncio timeouts cannot fire)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: the event loop is stuck")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    """Run an async scenario with an overall deadline, so a hang fails instead of blocking the suite."""

    async def main() -> T:
        async with asyncio.timeout(15):
            return await scenario()

    return asyncio.run(main())


def client_endpoint(port: int) -> str:
    return f"tcp:host=127.0.0.1:port={port}"


class Peer:
    """What a test server saw: each connection's lines, and whether each connection ended."""

    def __init__(self) -> None:
        self.connections = 0
        self.lines: list[bytes] = []
        self.ended = 0
        self.changed = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.changed.set()
        try:
            while line := await reader.readline():
                self.lines.append(line)
                self.changed.set()
                writer.write(b"ack " + line)
        except ConnectionResetError:
            pass  # a client that closes with our ack unread resets the connection
        self.ended += 1
        self.changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self.changed.clear()
            await self.changed.wait()


async def serve(handler: object, endpoint: str = LOOPBACK) -> StreamServer:
    server = StreamServer(endpoint, handler)  # type: ignore[arg-type]
    await server.privileged_start()
    await server.start()
    return server


async def free_port() -> int:
    """A port that was just bound and released: nobody listens on it now."""
    server = await serve(Peer().handle)
    port = server.port
    await server.stop()
    return port


class Greeter(asyncio.Protocol):
    """Sends a line on connect and records the replies; module level so a ClientService holding it pickles."""

    def __init__(self) -> None:
        self.replies: list[bytes] = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(b"hello\n")

    def data_received(self, data: bytes) -> None:
        self.replies.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


# --------------------------------------------------------------------------------------------- StreamClient


def test_stream_client_with_a_protocol_connects_at_start_and_closes_at_stop() -> None:
    """start() returns connected (the server saw the greeting); stop() closes, and the server sees the end."""

    async def scenario() -> None:
        peer = Peer()
        server = await serve(peer.handle)
        client = StreamClient(client_endpoint(server.port), Greeter)
        await client.start()
        assert client.running
        protocol = client.connection
        assert isinstance(protocol, Greeter)
        await peer.until(lambda: peer.lines == [b"hello\n"])
        await client.stop()
        assert not client.running and client.connection is None
        assert protocol.lost.done()
        await peer.until(lambda: peer.ended == 1)
        await server.stop()

    run(scenario)


def test_stream_client_with_a_handler_runs_it_and_stop_gives_it_eof() -> None:
    """A handler gets (reader, writer); stopping the client feeds its reader EOF and waits for it to end."""
    handler_saw: list[bytes] = []

    async def scenario() -> None:
        peer = Peer()
        server = await serve(peer.handle)

        async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"one\n")
            handler_saw.append(await reader.readline())
            handler_saw.append(await reader.readline())  # stays here until the client is stopped

        client = StreamClient(client_endpoint(server.port), talk)
        await client.start()
        connection = client.connection
        assert isinstance(connection, tuple) and isinstance(connection[0], asyncio.StreamReader)
        await peer.until(lambda: peer.lines == [b"one\n"])
        while len(handler_saw) < 1:
            await asyncio.sleep(0.001)
        await client.stop()
        assert handler_saw == [b"ack one\n", b""]
        await peer.until(lambda: peer.ended == 1)
        await server.stop()

    run(scenario)


def test_stream_client_start_raises_when_refused() -> None:
    """start() raises the OSError of a refused connection and the client is not running."""

    async def scenario() -> None:
        client = StreamClient(client_endpoint(await free_port()), Greeter)
        with pytest.raises(ConnectionRefusedError):
            await client.start()
        assert not client.running and client.connection is None

    run(scenario)


# --------------------------------------------------------------------------------------------- ClientService


def test_client_service_starts_at_once_while_the_server_is_down_and_connects_when_it_appears() -> None:
    """start() does not wait for the peer; when_connected() returns the protocol once a server listens."""

    async def scenario() -> None:
        port = await free_port()
        service = ClientService(client_endpoint(port), Greeter, initial_delay=0.02, max_delay=0.05)
        await service.start()
        assert service.running
        waiter = asyncio.create_task(service.when_connected())
        while service.attempts < 3:  # it keeps trying while nobody listens
            await asyncio.sleep(0.005)
        assert not waiter.done()
        peer = Peer()
        server = await serve(peer.handle, f"tcp:{port}:interface=127.0.0.1")
        protocol = await waiter
        assert isinstance(protocol, Greeter)
        await peer.until(lambda: peer.lines == [b"hello\n"])
        assert await service.when_connected() is protocol
        await service.stop()
        await peer.until(lambda: peer.ended == 1)
        await server.stop()

    run(scenario)


def test_client_service_reconnects_after_the_server_closes_the_connection() -> None:
    """When the server drops the connection, a new one is made and when_connected() returns the new protocol."""

    async def scenario() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def hang_up_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)
            if len(accepted) > 1:
                await reader.read()

        server = await serve(hang_up_first)
        service = ClientService(client_endpoint(server.port), Greeter, initial_delay=0.02, max_delay=0.05)
        await service.start()
        first = await service.when_connected()
        await first.lost
        second = await service.when_connected()
        assert isinstance(second, Greeter) and second is not first
        assert len(accepted) == 2
        await service.stop()
        assert second.lost.done()
        await server.stop()

    run(scenario)


def test_a_peer_that_hangs_up_at_once_gets_growing_reconnect_delays(caplog: pytest.LogCaptureFixture) -> None:
    """Connections that end at once count as failures: the reconnect delay grows instead of a tight loop."""

    async def scenario() -> list[float]:
        accepted = asyncio.Event()
        count = 0

        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal count
            count += 1
            if count >= 4:
                accepted.set()

        server = await serve(hang_up)
        service = ClientService(client_endpoint(server.port), Greeter, initial_delay=0.02, max_delay=10.0)
        await service.start()
        await accepted.wait()
        await service.stop()
        await server.stop()
        return [
            float(m.group(1))
            for r in caplog.records
            if (m := re.search(r"lost; reconnecting in ([\d.]+) s", r.getMessage()))
        ]

    with caplog.at_level(logging.INFO, logger="tapster.services"):
        delays = run(scenario)
    assert len(delays) >= 3, delays
    # delay n lies in [0.5, 1] x 0.02 x 2**(n-1): the third is at least 0.04 s, more than any first one (<= 0.02)
    assert delays[2] > delays[0], delays


def test_client_service_with_a_handler_hands_out_reader_and_writer() -> None:
    """With a handler, when_connected() returns its (reader, writer) and the handler runs on the connection."""

    async def scenario() -> None:
        peer = Peer()
        server = await serve(peer.handle)
        replies: list[bytes] = []

        async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hi\n")
            while line := await reader.readline():
                replies.append(line)

        service = ClientService(client_endpoint(server.port), talk, initial_delay=0.02)
        await service.start()
        reader, writer = await service.when_connected()
        assert isinstance(reader, asyncio.StreamReader) and isinstance(writer, asyncio.StreamWriter)
        await peer.until(lambda: peer.lines == [b"hi\n"])
        await service.stop()
        assert replies == [b"ack hi\n"]
        await peer.until(lambda: peer.ended == 1)
        await server.stop()

    run(scenario)


def test_when_connected_refuses_when_not_running_and_wakes_waiters_at_stop() -> None:
    """when_connected() raises before start and after stop, and a caller waiting at stop gets the error too."""

    async def scenario() -> None:
        service = ClientService(client_endpoint(await free_port()), Greeter, initial_delay=0.02)
        with pytest.raises(RuntimeError, match="Greeter is not running"):
            await service.when_connected()
        await service.start()
        waiter = asyncio.create_task(service.when_connected())
        await asyncio.sleep(0)
        await service.stop()
        with pytest.raises(RuntimeError, match="not running"):
            await waiter
        with pytest.raises(RuntimeError, match="not running"):
            await service.when_connected()

    run(scenario)


def test_when_connected_after_stopping_a_connected_service_raises_instead_of_spinning() -> None:
    """Stopping while connected leaves when_connected() raising, not looping on a stale 'connected' flag."""

    async def scenario() -> None:
        peer = Peer()
        server = await serve(peer.handle)
        service = ClientService(client_endpoint(server.port), Greeter, initial_delay=0.02)
        await service.start()
        await service.when_connected()
        await service.stop()
        with pytest.raises(RuntimeError, match="not running"):
            await service.when_connected()
        await server.stop()

    with watchdog(5):
        run(scenario)


@pytest.mark.parametrize(("initial", "factor", "cap"), [(1.0, 2.0, 60.0), (0.1, 3.0, 5.0), (2.0, 1.0, 2.0)])
def test_delay_after_grows_exponentially_is_capped_and_jittered(
    initial: float, factor: float, cap: float
) -> None:
    """delay_after(n) lies in [0.5, 1.0] x min(initial * factor**(n-1), max_delay), and the jitter varies."""
    service = ClientService(
        "tcp:host=127.0.0.1:port=1", Greeter, initial_delay=initial, max_delay=cap, factor=factor
    )
    for failures in range(1, 40):
        base = min(initial * factor ** (failures - 1), cap)
        samples = [service.delay_after(failures) for _ in range(50)]
        assert all(0.5 * base <= delay <= base for delay in samples), (failures, base, samples)
        assert len(set(samples)) > 1
    assert max(service.delay_after(1000) for _ in range(50)) <= cap


@pytest.mark.parametrize(
    "kwargs",
    [{"initial_delay": 0}, {"initial_delay": 5, "max_delay": 1}, {"factor": 0.5}],
)
def test_client_service_refuses_bad_backoff_settings(kwargs: dict[str, Any]) -> None:
    """Non-positive delays, a cap below the first delay, or a shrinking factor are refused at construction."""
    with pytest.raises(ValueError, match="ClientService needs"):
        ClientService("tcp:host=127.0.0.1:port=1", Greeter, **kwargs)


def test_a_started_client_service_pickles_and_reconnects_after_loading() -> None:
    """A connected ClientService's tree pickles without live objects; the copy starts and connects again."""

    async def scenario() -> None:
        peer = Peer()
        server = await serve(peer.handle)
        app = Application("saved")
        ClientService(client_endpoint(server.port), Greeter, name="feed", initial_delay=0.02).set_parent(app)
        await app.start()
        original = app["feed"]
        assert isinstance(original, ClientService)
        await original.when_connected()
        saved = pickle.dumps(app)
        await app.stop()

        copy = pickle.loads(saved)
        service = copy["feed"]
        assert isinstance(service, ClientService)
        assert not copy.running and not service.running
        with pytest.raises(RuntimeError, match="not running"):
            await service.when_connected()
        await copy.start()
        protocol = await service.when_connected()
        assert isinstance(protocol, Greeter) and protocol.replies is not None
        await peer.until(lambda: peer.connections == 2 and len(peer.lines) == 2)
        await copy.stop()
        await server.stop()

    run(scenario)
