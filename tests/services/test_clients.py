"""StreamClient (connect once) and ClientService (stay connected, with capped, jittered backoff)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

import pytest

from support import wait_until_async
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


@contextlib.asynccontextmanager
async def client_with_peer(handler: Any) -> AsyncIterator[tuple[StreamClient, socket.socket]]:
    """A started StreamClient running ``handler``, and the plain socket of the peer it connected to."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = StreamClient(client_endpoint(listener.getsockname()[1]), handler)
        await client.start()
        conn, _ = listener.accept()
        with conn:
            yield client, conn


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
    """A handler gets (reader, writer); stopping the client sends the peer our end-of-file, and the handler's
    reader sees the end once the peer has closed in turn; the stop waits for the handler to end."""
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
        await wait_until_async(lambda: handler_saw, 10, "the handler's first line")
        await client.stop()
        assert handler_saw == [b"ack one\n", b""]
        await peer.until(lambda: peer.ended == 1)
        await server.stop()

    run(scenario)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_stopping_a_client_whose_peer_keeps_talking_is_clean(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The peer sends without pause and the handler reads slowly (its reader's buffer full, reading paused): the
    stop used to feed the reader an end-of-file the peer never sent, and the bytes still arriving then raised
    ``feed_data after feed_eof`` in the transport, a traceback at every stop. Now: no error at all, the peer
    reads our end-of-file (not a reset), the handler reads on until the real end, and the stop is bounded: a
    handler that never waits for input gets the close after the 2.5 s grace."""
    from support import run_on_loop

    caplog.set_level(logging.DEBUG)
    peer_saw: list[bytes | str] = []
    handler_read: list[int] = [0]
    loop_errors: list[dict[str, Any]] = []

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def read_end() -> None:
            try:
                peer_saw.append(await reader.read())
            except ConnectionResetError:
                peer_saw.append("reset")

        ending = asyncio.ensure_future(read_end())
        while not ending.done():
            writer.write(b"x" * 4096)
            await writer.drain()
            await asyncio.sleep(0)
        await ending

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: loop_errors.append(context))
        server = await serve(chatty)

        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while chunk := await reader.read(4096):
                handler_read[0] += len(chunk)
                await asyncio.sleep(0.001)

        client = StreamClient(client_endpoint(server.port), slow, limit=1024)
        await client.start()
        await wait_until_async(lambda: handler_read[0] > 20_000, 10, "the handler reading")
        began = asyncio.get_running_loop().time()
        await client.stop()
        took = asyncio.get_running_loop().time() - began
        assert took < 4, f"the stop took {took:.1f} s"
        await wait_until_async(lambda: peer_saw, 10, "the peer's read to end")
        await server.stop()

    run_on_loop(scenario, loop)
    assert peer_saw == [b""]  # our end-of-file, never a reset
    assert loop_errors == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def test_a_client_handler_waiting_in_unless_stopping_is_woken_by_the_stop() -> None:
    """A client handler gets the servers' stop signal: its wait in unless_stopping() returns None at once, and
    server_stopping() is set, so a peer that says nothing does not hold the stop."""
    from tapster.services import server_stopping, unless_stopping

    got: list[object] = []

    async def scenario() -> None:
        never_sent = asyncio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await never_sent.wait()

        server = await serve(silent)

        async def waits(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.append(await unless_stopping(reader.readline()))
            got.append(server_stopping().is_set())

        client = StreamClient(client_endpoint(server.port), waits)
        await client.start()
        began = asyncio.get_running_loop().time()
        await client.stop()
        assert asyncio.get_running_loop().time() - began < 1
        never_sent.set()
        await server.stop()

    run(scenario)
    assert got == [None, True]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_handler_told_to_stop_mid_request_still_sends_its_answer(loop: str) -> None:
    """Stopped while it works on a request it has read, a client handler (``unless_stopping`` around its reads)
    finishes the request: the peer reads the answer, then our end-of-file, as from a StreamServer's handler."""
    import threading

    from support import run_on_loop
    from tapster.services import unless_stopping

    peer_read: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await unless_stopping(reader.readline()):
            await asyncio.sleep(0.3)  # the work the stop begins during
            writer.write(b"answer " + line)
            await writer.drain()

    def read_to_end(sock: socket.socket) -> None:
        data = b""
        while chunk := sock.recv(100):
            data += chunk
        peer_read.append(data)

    async def scenario() -> None:
        async with client_with_peer(handler) as (client, conn):
            conn.sendall(b"request\n")
            reader = threading.Thread(target=read_to_end, args=(conn,))
            reader.start()
            await asyncio.sleep(0.1)  # the handler is at work on the request
            await client.stop()
            await asyncio.to_thread(reader.join, 10)

    run_on_loop(scenario, loop)
    assert peer_read == [b"answer request\n"]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_stop_returns_only_once_the_handlers_answer_is_sent(loop: str) -> None:
    """The handler answers a request with 8 MB the peer is slow to read, and returns: the stop waits until all of
    it has left (the lingering close is tracked), so a process exiting right after the stop cuts nothing."""
    import threading

    from support import run_on_loop
    from tapster.services import unless_stopping

    size = 8_000_000
    peer_read: list[int] = []
    left_in_buffer: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await unless_stopping(reader.readline()):
            writer.write(b"x" * size)

    def read_slowly(sock: socket.socket) -> None:
        time.sleep(0.5)  # the peer is slow to read: the answer waits in our buffer
        total = 0
        while chunk := sock.recv(1 << 16):
            total += len(chunk)
        peer_read.append(total)

    async def scenario() -> None:
        async with client_with_peer(handler) as (client, conn):
            connection = client.connection
            assert isinstance(connection, tuple)
            transport = connection[1].transport
            conn.sendall(b"request\n")
            peer = threading.Thread(target=read_slowly, args=(conn,))
            peer.start()
            await wait_until_async(lambda: transport.get_write_buffer_size() > 0, 10, "the answer queued")
            await client.stop()
            left_in_buffer.append(transport.get_write_buffer_size())
            await asyncio.to_thread(peer.join, 20)

    run_on_loop(scenario, loop)
    assert left_in_buffer == [0]
    assert peer_read == [size]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_handler_awaiting_its_answer_at_the_stop_gets_it(loop: str) -> None:
    """A handler that sent a request and waits for the answer with a plain read (no unless_stopping) when the
    stop begins is not cut off: the answer, sent by the peer half a second later, reaches it."""
    import threading

    from support import run_on_loop

    got: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"question\n")
        got.append(await reader.readexactly(7))

    def answer_late(sock: socket.socket) -> None:
        sock.makefile("rb").readline()
        time.sleep(0.5)
        sock.sendall(b"answer\n")
        with contextlib.suppress(OSError):
            sock.recv(100)

    async def scenario() -> None:
        async with client_with_peer(handler) as (client, conn):
            peer = threading.Thread(target=answer_late, args=(conn,))
            peer.start()
            await asyncio.sleep(0.1)
            await client.stop()
            await asyncio.to_thread(peer.join, 10)

    run_on_loop(scenario, loop)
    assert got == [b"answer\n"]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_stopping_a_tls_client_whose_peer_keeps_the_connection_ends_it_before_the_bound(
    loop: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """TLS cannot half-close: after the handler's grace (2.5 s: it reads without unless_stopping) the stop sends
    close_notify, and a peer that keeps the connection open anyway has a second to answer before the connection
    is aborted; the handler's reader then sees the end (it is not cancelled at the 5 s bound)."""
    import socket
    import ssl
    import threading

    from support import run_on_loop, self_signed_cert

    key, cert = self_signed_cert(tmp_path_factory.mktemp("tls-client"))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    release = threading.Event()
    got: list[object] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(100):
            got.append(data)
        got.append("end")

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def serve() -> None:
            conn, _ = listener.accept()
            with server_context.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"hello\n")
                with contextlib.suppress(OSError):
                    tls.recv(100)  # our close_notify
                release.wait(10)  # and the connection kept open, as a busy peer may

        peer = threading.Thread(target=serve)
        peer.start()

        async def scenario() -> float:
            endpoint = f"ssl:host=127.0.0.1:port={listener.getsockname()[1]}:ca={cert}"
            client = StreamClient(endpoint, handler)
            await client.start()
            await wait_until_async(lambda: got, 10, "the greeting")
            began = asyncio.get_running_loop().time()
            await client.stop()
            return asyncio.get_running_loop().time() - began

        try:
            took = run_on_loop(scenario, loop)
        finally:
            release.set()
            peer.join(10)
    assert got == [b"hello\n", "end"]
    assert 2.5 <= took < 4.5, f"the stop took {took:.1f} s"


def test_a_client_handler_that_ignores_the_stop_is_cancelled_at_the_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler that neither reads nor returns (it waits on something of its own): the stop still returns
    within its 5 s bound, the handler is cancelled (its own clean-up runs), and one line says so."""
    ran: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ran.append("clean-up")

    async def scenario() -> float:
        async with client_with_peer(handler) as (client, _conn):
            began = asyncio.get_running_loop().time()
            await client.stop()
            return asyncio.get_running_loop().time() - began

    with caplog.at_level(logging.WARNING):
        took = run(scenario)
    assert 5 <= took < 6.5, f"the stop took {took:.1f} s"
    assert ran == ["clean-up"]
    assert [r.getMessage() for r in caplog.records if "aborted 1 connection(s)" in r.getMessage()], (
        caplog.text
    )


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
        await wait_until_async(
            lambda: service.attempts >= 3, 10, "three attempts"
        )  # it keeps trying meanwhile
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


def lost_delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [
        float(m.group(1))
        for r in caplog.records
        if (m := re.search(r"lost; reconnecting in ([\d.]+) s", r.getMessage()))
    ]


def test_a_peer_that_hangs_up_at_once_is_retried_no_faster_than_the_first_delay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A connection that succeeds resets the backoff (as in Twisted), yet never allows a tight loop: each
    reconnect after a loss waits delay_after(1), within [0.5, 1] x initial_delay."""

    async def scenario() -> None:
        accepted = asyncio.Event()
        count = 0

        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal count
            count += 1
            if count >= 5:
                accepted.set()

        server = await serve(hang_up)
        service = ClientService(client_endpoint(server.port), Greeter, initial_delay=0.02, max_delay=10.0)
        await service.start()
        await accepted.wait()
        await service.stop()
        await server.stop()

    with caplog.at_level(logging.INFO, logger="tapster.services"):
        run(scenario)
    delays = lost_delays(caplog)
    assert len(delays) >= 4, delays
    assert all(0.01 <= delay <= 0.02 for delay in delays), delays


def test_a_successful_connection_resets_the_backoff(caplog: pytest.LogCaptureFixture) -> None:
    """After failures have grown the delay, a connection that succeeds and is lost waits only delay_after(1)."""

    async def scenario() -> None:
        port = await free_port()
        service = ClientService(client_endpoint(port), Greeter, initial_delay=0.02, max_delay=10.0)
        await service.start()
        # Refused 4+ times: the next delay is at least 0.5 x 0.02 x 2**3 = 0.08 s.
        await wait_until_async(lambda: service.attempts >= 5, 10, "five attempts")
        accepted = asyncio.Event()
        count = 0

        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal count
            count += 1
            if count >= 2:
                accepted.set()

        server = await serve(hang_up, f"tcp:{port}:interface=127.0.0.1")
        await accepted.wait()
        await service.stop()
        await server.stop()

    with caplog.at_level(logging.INFO, logger="tapster.services"):
        run(scenario)
    retries = [
        float(m.group(1))
        for r in caplog.records
        if (m := re.search(r"cannot connect .*; retrying in ([\d.]+) s", r.getMessage()))
    ]
    assert len(retries) >= 4 and max(retries) >= 0.08, retries
    delays = lost_delays(caplog)
    assert delays and all(delay <= 0.02 for delay in delays), delays


class Hold:
    """A client handler that, at the end of its input, stays open until released: a stop that is pending."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.saw_eof = asyncio.Event()
        self.release = asyncio.Event()
        self.opened = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        number = self.opened
        self.events.append(f"open {number}")
        await reader.read()
        self.saw_eof.set()
        await self.release.wait()
        self.events.append(f"close {number}")


async def not_within(awaitable: Awaitable[Any], seconds: float) -> bool:
    """True if ``awaitable`` (a task) is still pending after ``seconds``: a bounded look for something that must
    not happen yet."""
    future = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({future}, timeout=seconds)
    return not done


def test_start_during_a_pending_stop_connects_only_after_the_old_connection_closed() -> None:
    """stop() then start() while the old connection is still closing: the new one opens after it, never beside
    it, and a when_connected() called during the stop returns the new connection instead of raising."""

    async def scenario() -> None:
        peer = Peer()
        server = await serve(peer.handle)
        hold = Hold()
        service = ClientService(client_endpoint(server.port), hold.handle, initial_delay=0.02)
        await service.start()
        await service.when_connected()
        stopping = asyncio.create_task(service.stop())
        await hold.saw_eof.wait()
        waiter = asyncio.create_task(service.when_connected())
        starting = asyncio.create_task(service.start())
        assert await not_within(asyncio.shield(starting), 0.3)
        assert hold.events == ["open 1"] and peer.connections == 1
        hold.release.set()
        await stopping
        await starting
        reader, _writer = await waiter
        assert isinstance(reader, asyncio.StreamReader)
        assert hold.events[:3] == ["open 1", "close 1", "open 2"]
        await service.stop()
        await server.stop()

    run(scenario)


def test_every_stop_call_returns_only_after_the_connection_closed() -> None:
    """Two concurrent stop() calls and a third after them all wait until the connection has really closed."""

    async def scenario() -> None:
        peer = Peer()
        server = await serve(peer.handle)
        hold = Hold()
        service = ClientService(client_endpoint(server.port), hold.handle, initial_delay=0.02)
        await service.start()
        await service.when_connected()
        order: list[str] = []

        async def stop(label: str) -> None:
            await service.stop()
            order.append(label)

        first = asyncio.create_task(stop("first"))
        await hold.saw_eof.wait()
        second = asyncio.create_task(stop("second"))
        third = asyncio.create_task(stop("third"))
        assert await not_within(asyncio.shield(asyncio.gather(first, second, third)), 0.3)
        assert order == []
        hold.release.set()
        await asyncio.gather(first, second, third)
        assert hold.events == ["open 1", "close 1"]
        assert sorted(order) == ["first", "second", "third"]
        await server.stop()

    run(scenario)


def test_when_connected_during_a_stop_raises_once_the_stop_ends() -> None:
    """Without a new start(), a caller waiting during a stop learns the service stopped when the stop ends."""

    async def scenario() -> None:
        peer = Peer()
        server = await serve(peer.handle)
        hold = Hold()
        service = ClientService(client_endpoint(server.port), hold.handle, initial_delay=0.02)
        await service.start()
        await service.when_connected()
        stopping = asyncio.create_task(service.stop())
        await hold.saw_eof.wait()
        waiter = asyncio.create_task(service.when_connected())
        assert await not_within(asyncio.shield(waiter), 0.1)
        hold.release.set()
        await stopping
        with pytest.raises(RuntimeError, match="not running"):
            await waiter
        await server.stop()

    run(scenario)


def test_a_second_start_does_not_launch_a_second_connection() -> None:
    """start() on a running ClientService does nothing: one connection, and stop() leaves none behind."""

    async def scenario() -> None:
        peer = Peer()
        server = await serve(peer.handle)
        service = ClientService(client_endpoint(server.port), Greeter, initial_delay=0.02)
        await service.start()
        await service.start()
        await service.when_connected()
        assert await not_within(peer.until(lambda: peer.connections >= 2), 0.3)
        await service.stop()
        await peer.until(lambda: peer.ended == peer.connections)
        assert peer.connections == 1
        await server.stop()

    run(scenario)


class Slotted(asyncio.Protocol):
    """A bare asyncio Protocol with __slots__: no instance __dict__ to wrap a method in."""

    __slots__ = ("lost", "replies", "transport")

    def __init__(self) -> None:
        self.replies: list[bytes] = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(b"slotted\n")

    def data_received(self, data: bytes) -> None:
        self.replies.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


def test_a_protocol_with_slots_works_and_its_loss_is_noticed() -> None:
    """A __slots__ protocol is served (no AttributeError); its loss makes the service reconnect; stop closes it."""

    async def scenario() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def answer_then_hang_up_first(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            accepted.append(writer)
            writer.write(b"ack " + await reader.readline())
            await writer.drain()
            if len(accepted) > 1:
                await reader.read()

        server = await serve(answer_then_hang_up_first)
        service = ClientService(client_endpoint(server.port), Slotted, initial_delay=0.02)
        await service.start()
        first = await service.when_connected()
        assert type(first) is Slotted
        await first.lost
        assert first.replies == [b"ack slotted\n"]
        second = await service.when_connected()
        assert type(second) is Slotted and second is not first
        await service.stop()
        assert second.lost.done()

        client = StreamClient(client_endpoint(server.port), Slotted)
        await client.start()
        assert type(client.connection) is Slotted
        await client.stop()
        await server.stop()

    run(scenario)


def test_no_protocol_is_built_for_a_failed_attempt() -> None:
    """The factory runs only for connections that exist: refused attempts build nothing."""
    built: list[Greeter] = []

    def factory() -> Greeter:
        built.append(Greeter())
        return built[-1]

    async def scenario() -> None:
        port = await free_port()
        service = ClientService(client_endpoint(port), factory, initial_delay=0.01, max_delay=0.02)
        await service.start()
        await wait_until_async(lambda: service.attempts >= 4, 10, "four attempts")
        assert built == []
        peer = Peer()
        server = await serve(peer.handle, f"tcp:{port}:interface=127.0.0.1")
        assert await service.when_connected() is built[0]
        assert len(built) == 1
        await service.stop()
        await server.stop()

    run(scenario)


def test_a_factory_that_raises_is_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    """A factory raising a non-OSError does not end the reconnect loop: it is logged with its traceback, its
    connection is dropped, and the next attempt (after the backoff) connects."""
    calls = 0

    def flaky() -> Greeter:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise ValueError(f"not ready yet ({calls})")
        return Greeter()

    async def scenario() -> None:
        peer = Peer()
        server = await serve(peer.handle)
        service = ClientService(client_endpoint(server.port), flaky, name="flaky", initial_delay=0.01)
        await service.start()
        protocol = await service.when_connected()
        assert isinstance(protocol, Greeter) and calls == 3
        await peer.until(lambda: peer.connections == 3 and peer.ended >= 2)
        await service.stop()
        await server.stop()

    with caplog.at_level(logging.INFO, logger="tapster.services"):
        run(scenario)
    failures = [r for r in caplog.records if "flaky: connecting to" in r.getMessage()]
    assert len(failures) == 2 and all(r.levelno == logging.ERROR and r.exc_info for r in failures)
    assert "not ready yet (1)" in str(failures[0].exc_info[1])  # type: ignore[index]


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
