"""What tapster keeps per connection and per service: no reference cycle, log names that stay right, tree stops.

The tracker stands in for each protocol's connection_made/connection_lost with one small object. These tests hold
it to what that design promises: with the garbage collector off, a closed connection's protocol is freed at once
(by reference counting, as with a bare asyncio server), whether the client closed it or the server's drain did;
the connection's log context still names it ``label,number,peer``, in every callback, before and after close.
A MultiService stops children whose stop is the base class's inline, without a task: the tree tests hold the stop
semantics (reverse order, concurrency, errors logged, still_stopping) for a mixed tree. No timings here: the costs
themselves are measured by bench/connections.py.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest

from support import run_on_loop, wait_until_async
from tapster.log._context import record_context
from tapster.service import MultiService, Service, still_stopping
from tapster.services import StreamServer, lingering_close

T = TypeVar("T")
LOOPS = ["asyncio", "uvloop"]
COUNT = 200
log = logging.getLogger("tests.services.connection_cost")


def run(scenario: Callable[[], Awaitable[T]], loop: str) -> T:
    """Run an async scenario on a fresh event loop of the given kind."""
    return run_on_loop(scenario, loop, timeout=20)


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Echo(asyncio.Protocol):
    """The echo of examples/echo.tac; every instance is remembered weakly, to see which are still alive."""

    alive: weakref.WeakSet[Echo] = weakref.WeakSet()

    def __init__(self) -> None:
        Echo.alive.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


class EchoWithHook(Echo):
    def stop_requested(self) -> None:
        lingering_close(self.transport)


async def open_echoed(port: int, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``count`` client connections, each with one byte echoed (so the server has set every one up)."""
    clients = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        clients.append((reader, writer))
    return clients


async def bare_server(protocol: type[Echo]) -> asyncio.AbstractServer:
    return await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0)


async def tapster_server(protocol: type[Echo]) -> StreamServer:
    server = StreamServer("tcp:0:interface=127.0.0.1", protocol)
    await server.privileged_start()
    await server.start()
    return server


def alive(cls: type[Echo]) -> int:
    return sum(1 for protocol in Echo.alive if type(protocol) is cls)


@pytest.mark.parametrize("loop", LOOPS)
def test_protocols_of_connections_the_client_closed_are_freed_without_the_collector(
    loop: str, collector_off: None
) -> None:
    class Tracked(Echo):
        pass

    class Bare(Echo):
        pass

    async def scenario() -> tuple[int, int]:
        bare = await bare_server(Bare)
        clients = await open_echoed(bare.sockets[0].getsockname()[1], COUNT)
        for _, writer in clients:
            writer.close()
        del clients
        await wait_until_async(lambda: alive(Bare) == 0, 5, "the bare server's protocols to be freed")
        bare.close()

        server = await tapster_server(Tracked)
        clients = await open_echoed(server.port, COUNT)
        assert server.open_connections == COUNT
        assert alive(Tracked) == COUNT
        for _, writer in clients:
            writer.close()
        del clients
        await wait_until_async(
            lambda: server.open_connections == 0, 5, "the server to see every connection closed"
        )
        # Nothing but reference counting runs: a cycle per connection would keep its protocol for ever.
        await wait_until_async(
            lambda: alive(Tracked) == 0,
            5,
            f"closed connections' protocols to be freed ({alive(Tracked)} left)",
        )
        await server.stop()
        return alive(Bare), alive(Tracked)

    assert run(scenario, loop) == (0, 0)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("protocol", [Echo, EchoWithHook], ids=["lingering close", "stop_requested hook"])
def test_protocols_of_connections_the_drain_closed_are_freed_without_the_collector(
    loop: str, protocol: type[Echo], collector_off: None
) -> None:
    cls = type("Drained", (protocol,), {})

    async def scenario() -> None:
        server = await tapster_server(cls)
        clients = await open_echoed(server.port, COUNT)
        stopping = asyncio.ensure_future(server.stop())
        for reader, writer in clients:  # each idle client reads its end-of-file, then closes
            assert await reader.read() == b""
            writer.close()
        del clients
        await stopping
        assert server.open_connections == 0
        await wait_until_async(
            lambda: alive(cls) == 0, 5, f"drained connections' protocols to be freed ({alive(cls)} left)"
        )

    run(scenario, loop)


class Chatty(asyncio.Protocol):
    """Logs from every callback, so each line shows the connection's context at that moment."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        log.info("made")

    def data_received(self, data: bytes) -> None:
        log.info("data")
        self.transport.write(data)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        log.info("lost")


@pytest.mark.parametrize("loop", LOOPS)
def test_the_log_names_each_connection_in_every_callback_before_and_after_close(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    lines: list[tuple[str, str]] = []

    def stamp(record: logging.LogRecord) -> bool:
        if record.name == log.name:
            lines.append((record.getMessage(), record_context(record)))
        return True

    async def scenario() -> None:
        server = await tapster_server(Chatty)
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            writer.close()
        await wait_until_async(lambda: server.open_connections == 0, 5, "both connections to close")
        await server.stop()

    caplog.handler.addFilter(stamp)
    with caplog.at_level(logging.INFO):
        run(scenario, loop)
    caplog.handler.removeFilter(stamp)
    assert ("made", "Chatty,1,127.0.0.1") in lines
    assert ("lost", "Chatty,1,127.0.0.1") in lines
    assert ("made", "Chatty,2,127.0.0.1") in lines
    assert ("lost", "Chatty,2,127.0.0.1") in lines
    if loop == "asyncio":  # uvloop runs data_received in the server's shared context (docs/logging.md)
        assert ("data", "Chatty,1,127.0.0.1") in lines
        assert ("data", "Chatty,2,127.0.0.1") in lines


class OwnMade(Echo):
    """Sets its own instance attribute connection_made: it must keep working (untracked)."""

    def __init__(self) -> None:
        super().__init__()
        self.connection_made = self._made  # type: ignore[method-assign]

    def _made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport


def test_a_protocol_with_its_own_connection_made_attribute_still_serves() -> None:
    async def scenario() -> None:
        server = await tapster_server(OwnMade)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()
        await server.stop()

    run(scenario, "asyncio")


# ------------------------------------------------------------------------------------------ stop of a service tree


class Slow(Service):
    """A stop that waits (a listener draining): it must still run concurrently with its siblings' stops."""

    def __init__(self, name: str, release: asyncio.Event, calls: list[str]) -> None:
        self.name, self.release, self.calls = name, release, calls

    async def stop(self) -> None:
        self.calls.append(self.name)
        await super().stop()
        await self.release.wait()


class Failing(Service):
    async def stop(self) -> None:
        await super().stop()
        raise RuntimeError("stop went wrong")


def test_plain_children_stop_at_once_and_the_others_still_concurrently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A mixed tree: plain services stop inline, waiting ones overlap, a failure is logged, none is skipped."""

    async def scenario() -> None:
        release, calls = asyncio.Event(), []
        root = MultiService()
        plain = [Service() for _ in range(3)]
        slow = [Slow(f"slow{n}", release, calls) for n in range(2)]
        for child in (plain[0], slow[0], plain[1], Failing(), slow[1], plain[2]):
            child.set_parent(root)
        await root.start()
        stopping = asyncio.ensure_future(root.stop())
        await wait_until_async(lambda: len(calls) == 2, 5, "both waiting stops to have begun")
        assert calls == ["slow1", "slow0"]  # reverse order, and the second began before the first ended
        assert not any(child.running for child in root)
        assert set(still_stopping(root)) == set(slow)  # the plain ones are stopped already
        release.set()
        await stopping
        assert still_stopping(root) == []

    with caplog.at_level(logging.ERROR):
        run(scenario, "asyncio")
    assert [record.getMessage() for record in caplog.records] == ["error stopping MultiService/Failing"]


def test_a_service_with_its_own_stop_attribute_is_not_stopped_inline() -> None:
    """Only the base class's stop is run inline: a stop set on the instance is called (and awaited) as usual."""

    async def scenario() -> list[str]:
        seen: list[str] = []
        child = Service()

        async def stop() -> None:
            await asyncio.sleep(0)
            seen.append("own stop")

        child.stop = stop  # type: ignore[method-assign]
        root = MultiService()
        child.set_parent(root)
        await root.start()
        await root.stop()
        return seen

    assert run(scenario, "asyncio") == ["own stop"]
