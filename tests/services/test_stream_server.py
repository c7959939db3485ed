"""StreamServer: binding, serving, graceful and forced stops, per-connection log context, pickling."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import pickle
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

import pytest

from support import run_on_loop, wait_until_async
from tapster import Application
from tapster.errors import ListenError
from tapster.log._context import record_context
from tapster.services import StreamServer, unless_stopping

T = TypeVar("T")

LOOPBACK = "tcp:0:interface=127.0.0.1"
LOOPS = ["asyncio", "uvloop"]
log = logging.getLogger("tests.services.stream")


def run(scenario: Callable[[], Awaitable[T]], loop: str = "asyncio") -> T:
    """Run an async scenario on a fresh event loop of the given kind."""
    return run_on_loop(scenario, loop)


@pytest.fixture
def seen(caplog: pytest.LogCaptureFixture) -> Iterator[list[tuple[str, str]]]:
    """(message, context) of every record, the context read while the record is emitted."""
    lines: list[tuple[str, str]] = []

    def stamp(record: logging.LogRecord) -> bool:
        lines.append((record.getMessage(), record_context(record)))
        return True

    caplog.handler.addFilter(stamp)
    with caplog.at_level(logging.INFO):
        yield lines
    caplog.handler.removeFilter(stamp)


class Echo(asyncio.Protocol):
    """Echoes bytes back; module level so it pickles."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await unless_stopping(reader.readline()):
        writer.write(line)
        await writer.drain()


async def round_trip(port: int, payload: bytes = b"ping\n") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    answer = await reader.readexactly(len(payload))
    writer.close()
    await writer.wait_closed()
    return answer


async def started(server: StreamServer) -> StreamServer:
    await server.privileged_start()
    await server.start()
    return server


async def reaches_eof(reader: asyncio.StreamReader, *, reset_ok: bool = True) -> bool:
    """True when the peer closed without sending anything more (by reset too, unless ``reset_ok`` is False)."""
    try:
        return await reader.read() == b""
    except ConnectionResetError:
        return reset_ok


async def read_to_end(reader: asyncio.StreamReader) -> int:
    """How many bytes arrive before the peer closes or resets the connection."""
    total = 0
    try:
        while chunk := await reader.read(2**20):
            total += len(chunk)
    except ConnectionResetError:
        pass
    return total


# --------------------------------------------------------------------------------------------- binding


@pytest.mark.parametrize("loop", LOOPS)
def test_privileged_start_reserves_the_port_and_start_accepts(loop: str) -> None:
    """After privileged_start the port is bound (and reported) but refuses connections; after start it serves."""

    async def scenario() -> None:
        server = StreamServer(LOOPBACK, Echo)
        await server.privileged_start()
        port = server.port
        assert port > 0 and server.address == ("127.0.0.1", port)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        probe = socket.socket()
        with pytest.raises(OSError, match="in use"):
            probe.bind(("127.0.0.1", port))
        probe.close()
        await server.start()
        assert server.running and server.port == port
        assert await round_trip(port) == b"ping\n"
        await server.stop()
        assert not server.running
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)

    run(scenario, loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_start_without_privileged_start_binds_and_serves(loop: str) -> None:
    """start() alone binds too (a service added to a running tree, or used outside the runner)."""

    async def scenario() -> None:
        server = StreamServer(LOOPBACK, echo_handler)
        await server.start()
        assert await round_trip(server.port, b"hello\n") == b"hello\n"
        await server.stop()

    run(scenario, loop)


def test_port_in_use_fails_privileged_start_with_listen_error_naming_the_endpoint() -> None:
    """A second server on a port another one listens on raises ListenError naming the endpoint string."""

    async def scenario() -> None:
        first = await started(StreamServer(LOOPBACK, Echo))
        endpoint = f"tcp:{first.port}:interface=127.0.0.1"
        second = StreamServer(endpoint, Echo)
        with pytest.raises(ListenError, match=rf"cannot listen on {endpoint}: address already in use"):
            await second.privileged_start()
        assert second.server is None and not second.running
        await first.stop()

    run(scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_two_servers_bound_to_one_port_the_second_fails_start_with_listen_error(loop: str) -> None:
    """Both may bind (SO_REUSEADDR) before either listens; the one that cannot listen raises ListenError."""

    async def scenario() -> None:
        first = StreamServer(LOOPBACK, Echo)
        await first.privileged_start()
        endpoint = f"tcp:{first.port}:interface=127.0.0.1"
        second = StreamServer(endpoint, Echo)
        await second.privileged_start()
        await first.start()
        with pytest.raises(ListenError, match=rf"cannot listen on {endpoint}"):
            await second.start()
        assert not second.running and second.server is None
        assert await round_trip(first.port) == b"ping\n"
        await first.stop()

    run(scenario, loop)


def test_a_udp_endpoint_is_refused() -> None:
    """StreamServer with a datagram endpoint is a ValueError that points to UDPServer."""
    with pytest.raises(ValueError, match=r"'udp:0'.*UDPServer"):
        StreamServer("udp:0", Echo)


# --------------------------------------------------------------------------------------------- graceful stop


class Firehose(asyncio.Protocol):
    """Writes a large payload as soon as it connects, then waits."""

    payload = bytes(range(256)) * (32 * 1024 * 1024 // 256)
    instances: list[Firehose]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.instances.append(self)
        self.transport.write(self.payload)


@pytest.mark.parametrize("loop", LOOPS)
def test_stop_flushes_what_a_protocol_has_buffered(loop: str) -> None:
    """Stopping closes a Protocol connection politely: the client receives every buffered byte, then EOF."""

    async def scenario() -> None:
        instances: list[Firehose] = []
        factory = type("Firehose", (Firehose,), {"instances": instances})
        server = await started(StreamServer(LOOPBACK, factory))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=2**20)
        received = len(await reader.read(65536))
        assert instances[0].transport.get_write_buffer_size() > 0  # the stop really has bytes to flush
        stopping = asyncio.create_task(server.stop())
        while chunk := await reader.read(2**20):  # a reset would raise here
            received += len(chunk)
        assert received == len(Firehose.payload)
        writer.close()  # our end-of-file ends the server's lingering close
        async with asyncio.timeout(5):
            await stopping

    run(scenario, loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_stop_wakes_a_handler_waiting_in_unless_stopping(loop: str, caplog: pytest.LogCaptureFixture) -> None:
    """A handler waiting in unless_stopping(reader.readline()) gets None at stop (never a fake b""), nothing aborted."""
    got: list[bytes | None] = []

    async def scenario() -> None:
        waiting = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            waiting.set()
            got.append(await unless_stopping(reader.readline()))

        server = await started(StreamServer(LOOPBACK, handle))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await waiting.wait()
        stopping = asyncio.create_task(server.stop())
        assert await reaches_eof(reader, reset_ok=False)
        writer.close()
        async with asyncio.timeout(5):
            await stopping

    with caplog.at_level(logging.INFO):
        run(scenario, loop)
    assert got == [None]
    assert not any("aborted" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("loop", LOOPS)
def test_stop_lets_a_handler_finish_its_request_then_see_the_end(loop: str) -> None:
    """A handler in the middle of a request completes it (the reply reaches the client), then sees the stop."""
    after_reply: list[bytes | None] = []

    async def scenario() -> None:
        working = asyncio.Event()
        release = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await reader.readline()
            working.set()
            await release.wait()
            writer.write(b"done " + request)
            await writer.drain()
            after_reply.append(await unless_stopping(reader.readline()))

        server = await started(StreamServer(LOOPBACK, handle))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"job\n")
        await working.wait()
        stopping = asyncio.create_task(server.stop())
        done, _ = await asyncio.wait({stopping}, timeout=0.05)
        assert not done, "stop() must wait for the handler's request"
        release.set()
        assert await reader.readline() == b"done job\n"
        assert await reaches_eof(reader, reset_ok=False)
        writer.close()
        await stopping

    run(scenario, loop)
    assert after_reply == [None]


@pytest.mark.parametrize("loop", LOOPS)
def test_drain_timeout_cancels_a_handler_that_ignores_the_stop_and_logs_the_count(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler unaware of the stop is never fed EOF: it runs until drain_timeout, then is cancelled, and counted."""
    outcome: list[str] = []

    async def scenario() -> None:
        connected = asyncio.Event()

        async def stubborn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connected.set()
            try:
                outcome.append(repr(await reader.readline()))
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise

        server = await started(StreamServer(LOOPBACK, stubborn, drain_timeout=0.2))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await connected.wait()
        await server.stop()
        assert server.open_connections == 0
        assert await reaches_eof(reader)
        writer.close()

    with caplog.at_level(logging.INFO):
        run(scenario, loop)
    assert outcome == ["cancelled"]
    messages = [record.getMessage() for record in caplog.records]
    assert "stubborn: aborted 1 connection(s) still open after 0.2 s" in messages
    # Python 3.11's StreamReaderProtocol must not log a traceback for the cancelled handler task.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], messages


class Stuck(asyncio.Protocol):
    """A protocol whose connection cannot close politely: the client never reads its large write."""

    payload = b"x" * (32 * 1024 * 1024)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).write(self.payload)


@pytest.mark.parametrize("loop", LOOPS)
def test_cancelling_stop_aborts_open_connections_and_logs_the_count(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelling stop() (the runner's shutdown timeout) aborts transports and cancels handlers, and says so."""
    cancelled: list[str] = []

    async def scenario() -> None:
        connected = asyncio.Event()

        async def stubborn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connected.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append("handler")
                raise

        app = Application("shutdown")
        StreamServer(LOOPBACK, Stuck, name="stuck").set_parent(app)
        StreamServer(LOOPBACK, stubborn, name="stubborn").set_parent(app)
        await app.privileged_start()
        await app.start()
        clients = []
        for child in app:
            assert isinstance(child, StreamServer)
            clients.append(await asyncio.open_connection("127.0.0.1", child.port))
        await connected.wait()
        await wait_until_async(
            lambda: all(child.open_connections for child in app if isinstance(child, StreamServer)),
            10,
            "both connections tracked",
        )
        stopping = asyncio.create_task(app.stop())
        done, _ = await asyncio.wait({stopping}, timeout=0.1)
        assert not done, "neither connection can close by itself"
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        assert [child.open_connections for child in app if isinstance(child, StreamServer)] == [0, 0]
        received = []
        for reader, writer in clients:
            received.append(await read_to_end(reader))
            writer.close()
        assert received[0] < len(Stuck.payload), "an aborted transport drops what it had buffered"
        assert received[1] == 0

    with caplog.at_level(logging.INFO):
        run(scenario, loop)
    assert cancelled == ["handler"]
    messages = [record.getMessage() for record in caplog.records]
    for label in ("stuck", "stubborn"):
        assert f"{label}: aborted 1 connection(s) still open at the shutdown deadline" in messages


class Counted(asyncio.Protocol):
    """Counts connections made, setting an event when the expected number is reached."""

    def __init__(self, tally: list[int], expected: int, all_in: asyncio.Event) -> None:
        self.tally, self.expected, self.all_in = tally, expected, all_in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tally.append(1)
        if len(self.tally) == self.expected:
            self.all_in.set()


async def connect_many(port: int, count: int) -> list[socket.socket]:
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(count):
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, ("127.0.0.1", port))
        clients.append(client)
    return clients


async def all_see_eof(clients: list[socket.socket]) -> None:
    """Each client reads a clean EOF (a reset fails the test), then closes, ending the server's lingering close."""
    loop = asyncio.get_running_loop()

    async def one(client: socket.socket) -> None:
        try:
            assert await loop.sock_recv(client, 16) == b""
        except ConnectionResetError:
            pytest.fail("a client was reset instead of closed")
        finally:
            client.close()

    await asyncio.gather(*(one(client) for client in clients))


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("style", ["protocol", "handler"])
def test_a_thousand_idle_connections_stop_promptly(loop: str, style: str) -> None:
    """With 1,000 idle clients that close on EOF, stop() needs no timeout, and every client sees a clean EOF."""
    count = 1000

    async def scenario() -> None:
        tally: list[int] = []
        all_in = asyncio.Event()

        async def idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            tally.append(1)
            if len(tally) == count:
                all_in.set()
            await unless_stopping(reader.read())

        factory: Any = idle if style == "handler" else functools.partial(Counted, tally, count, all_in)
        server = await started(StreamServer(LOOPBACK, factory))
        clients = await connect_many(server.port, count)
        await all_in.wait()
        assert server.open_connections == count
        async with asyncio.timeout(5):
            await asyncio.gather(server.stop(), all_see_eof(clients))
        assert server.open_connections == 0

    run(scenario, loop)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("style", ["protocol", "handler"])
def test_stop_right_after_connections_arrive_does_not_wait_on_late_ones(loop: str, style: str) -> None:
    """Connections accepted as the stop begins (not yet made / handler not yet run) are closed too."""

    async def scenario() -> None:
        factory: Any = echo_handler if style == "handler" else Echo
        server = await started(StreamServer(LOOPBACK, factory, linger=0.2))
        clients = await connect_many(server.port, 500)
        async with asyncio.timeout(5):  # the clients never close: each lingering close ends after 0.2 s
            await server.stop()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(5):
            for client in clients:
                with contextlib.suppress(ConnectionResetError):  # still queued when the listener closed
                    assert await loop.sock_recv(client, 16) == b""
                client.close()

    run(scenario, loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_connection_made_after_the_stop_began_is_closed(loop: str) -> None:
    """A protocol whose connection_made runs after stop() began is told at once (closed), not waited on."""

    async def scenario() -> None:
        servers: list[StreamServer] = []
        stops: list[asyncio.Task[None]] = []

        def factory() -> asyncio.Protocol:
            if not stops:  # begin the stop between this protocol's creation and its connection_made
                stops.append(asyncio.get_running_loop().create_task(servers[0].stop()))
            return Echo()

        servers.append(await started(StreamServer(LOOPBACK, factory)))
        reader, writer = await asyncio.open_connection("127.0.0.1", servers[0].port)
        await wait_until_async(lambda: stops, 10, "the stop begun")
        async with asyncio.timeout(5):
            assert await reaches_eof(reader, reset_ok=False)
            writer.close()
            await stops[0]

    run(scenario, loop)


# --------------------------------------------------------------------------------------------- log context


class Chatty(asyncio.Protocol):
    """Logs in connection_made and data_received, tagging each line with its own id."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        log.info("made %d", id(self))

    def data_received(self, data: bytes) -> None:
        log.info("data %d", id(self))
        self.transport.write(data)


def contexts_by_event(seen: list[tuple[str, str]], event: str) -> list[str]:
    return [context for message, context in seen if message.startswith(event + " ")]


def test_protocol_lines_carry_label_number_and_peer(seen: list[tuple[str, str]]) -> None:
    """On the asyncio loop both connection_made and data_received lines say "Chatty,N,127.0.0.1", N = 1, 2, 3."""

    async def scenario() -> None:
        server = await started(StreamServer(LOOPBACK, Chatty))
        for _ in range(3):
            assert await round_trip(server.port) == b"ping\n"
        await server.stop()

    run(scenario)
    expected = [f"Chatty,{n},127.0.0.1" for n in (1, 2, 3)]
    assert contexts_by_event(seen, "made") == expected
    assert contexts_by_event(seen, "data") == expected


@pytest.mark.parametrize("loop", LOOPS)
def test_handler_lines_carry_the_service_name_number_and_peer(loop: str, seen: list[tuple[str, str]]) -> None:
    """A handler's lines are tagged with the service name (when given), the connection number and the peer."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        log.info("request %r", await reader.readline())
        await asyncio.sleep(0)
        log.info("reply sent")
        writer.write(b"pong\n")

    async def scenario() -> None:
        server = await started(StreamServer(LOOPBACK, handle, name="poetry"))
        for _ in range(3):
            assert await round_trip(server.port) == b"pong\n"
        await server.stop()

    run(scenario, loop)
    expected = [f"poetry,{n},127.0.0.1" for n in (1, 2, 3)]
    assert contexts_by_event(seen, "request") == expected
    assert contexts_by_event(seen, "reply") == expected


def test_uvloop_context_is_right_in_connection_made_and_never_another_connections(
    seen: list[tuple[str, str]],
) -> None:
    """Under uvloop connection_made is tagged; data_received may fall back to "-" but never to another peer's."""

    async def scenario() -> None:
        server = await started(StreamServer(LOOPBACK, Chatty))
        streams = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
        for turn in range(2):  # interleave the connections' data
            for reader, writer in streams:
                writer.write(b"%d\n" % turn)
                assert await reader.readline() == b"%d\n" % turn
        for _, writer in streams:
            writer.close()
        await server.stop()

    run(scenario, "uvloop")
    made = {message.split()[1]: context for message, context in seen if message.startswith("made ")}
    assert sorted(made.values()) == [f"Chatty,{n},127.0.0.1" for n in (1, 2, 3)]
    data = [(message.split()[1], context) for message, context in seen if message.startswith("data ")]
    assert len(data) == 6
    for ident, context in data:
        assert context in (made[ident], "-")


async def named_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, greeting: bytes) -> None:
    writer.write(greeting)


@pytest.mark.parametrize(
    ("factory", "name", "label"),
    [
        (Echo, None, "Echo"),
        (Echo, "web", "web"),
        (functools.partial(Echo), None, "Echo"),
        (echo_handler, None, "echo_handler"),
        (functools.partial(functools.partial(named_handler, greeting=b"hi")), None, "named_handler"),
    ],
)
def test_label_is_the_name_or_the_factory_name(factory: Any, name: str | None, label: str) -> None:
    """The context label is the service name if given, else the class or function name, partials unwrapped."""
    assert StreamServer(LOOPBACK, factory, name=name).label == label


def test_a_partial_handler_is_served_as_a_handler() -> None:
    """functools.partial around an async handler is recognised as a handler, not a protocol factory."""

    async def scenario() -> bytes:
        server = await started(StreamServer(LOOPBACK, functools.partial(named_handler, greeting=b"hi\n")))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        line = await reader.readline()
        writer.close()
        await server.stop()
        return line

    assert run(scenario) == b"hi\n"


# --------------------------------------------------------------------------------------------- pickling


def test_a_started_server_pickles_without_live_objects_and_serves_again() -> None:
    """A running server's tree pickles; the copy is stopped, holds no server, and starts and serves anew."""

    async def first_run() -> bytes:
        app = Application("saved")
        StreamServer(LOOPBACK, Echo, name="echo", drain_timeout=3).set_parent(app)
        await app.privileged_start()
        await app.start()
        saved = pickle.dumps(app)
        await app.stop()
        return saved

    saved = run(first_run)

    async def second_run() -> None:
        app = pickle.loads(saved)
        server = app["echo"]
        assert isinstance(server, StreamServer)
        assert not app.running and not server.running and server.server is None
        assert server.drain_timeout == 3 and server.factory is Echo
        await app.privileged_start()
        await app.start()
        assert await round_trip(server.port) == b"ping\n"
        await app.stop()

    run(second_run)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_stop_cancelled_while_it_stops_accepting_still_closes_the_listener(loop: str) -> None:
    """The shutdown deadline can cancel stop() during the loop turns it gives the last accepts: the listener is
    closed all the same (it used to stay open, accepting for nobody, until the process exited), and the open
    connections are aborted as at a drain's deadline."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def scenario() -> None:
        server = await started(StreamServer(LOOPBACK, handle))
        port = server.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await wait_until_async(lambda: server.open_connections == 1, 5, "the connection tracked")
        stopping = asyncio.ensure_future(server.stop())
        await asyncio.sleep(0)  # the stop is now in its first loop turn of _stop_accepting
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        # and what was open is aborted, as at the deadline of a drain: not left running after the stop
        assert await asyncio.wait_for(reaches_eof(reader), 5)
        writer.close()

    run(scenario, loop)
