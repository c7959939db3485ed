"""UDPServer: a datagram socket bound in privileged_start, served by a DatagramProtocol, closed at stop."""

from __future__ import annotations

import asyncio
import pickle
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import pytest

from tapster import Application
from tapster.errors import ListenError
from tapster.services import UDPServer

T = TypeVar("T")

LOOPBACK = "udp:0:interface=127.0.0.1"


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        async with asyncio.timeout(15):
            return await scenario()

    return asyncio.run(main())


class Upper(asyncio.DatagramProtocol):
    """Answers each datagram with its upper-case version; module level so the service pickles."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.closed = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data.upper(), addr)


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.replies.put_nowait(data)


async def ask(port: int, question: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(question)
        async with asyncio.timeout(5):
            return await client.replies.get()
    finally:
        transport.close()


def test_datagram_round_trip_on_the_bound_port() -> None:
    """privileged_start binds a real port (port 0 -> .port); after start a datagram gets its answer."""

    async def scenario() -> None:
        server = UDPServer(LOOPBACK, Upper)
        await server.privileged_start()
        assert server.port > 0 and server.address == ("127.0.0.1", server.port)
        await server.start()
        assert server.running and isinstance(server.protocol, Upper)
        assert await ask(server.port, b"hello") == b"HELLO"
        assert await ask(server.port, b"again") == b"AGAIN"
        await server.stop()

    run(scenario)


def test_stop_closes_the_socket_and_frees_the_port() -> None:
    """After stop the transport is gone and the port can be bound by someone else."""

    async def scenario() -> None:
        server = UDPServer(LOOPBACK, Upper)
        await server.start()
        port = server.port
        protocol = server.protocol
        assert isinstance(protocol, Upper)
        await server.stop()
        assert not server.running and server.transport is None
        with pytest.raises(RuntimeError, match="not listening"):
            server.address  # noqa: B018 - the property is what is tested
        await protocol.closed.wait()
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", port))
        probe.close()

    run(scenario)


def test_port_in_use_raises_listen_error_naming_the_endpoint() -> None:
    """Binding a UDP port someone else holds raises ListenError with the endpoint string."""

    async def scenario() -> None:
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        holder.bind(("127.0.0.1", 0))
        endpoint = f"udp:{holder.getsockname()[1]}:interface=127.0.0.1"
        try:
            with pytest.raises(ListenError, match=f"cannot listen on {endpoint}"):
                await UDPServer(endpoint, Upper).privileged_start()
        finally:
            holder.close()

    run(scenario)


def test_a_stream_endpoint_is_refused() -> None:
    """UDPServer with a tcp endpoint is a ValueError naming the endpoint."""
    with pytest.raises(ValueError, match="needs a udp: endpoint, not 'tcp:0'"):
        UDPServer("tcp:0", Upper)


def test_a_started_udp_server_pickles_and_serves_again() -> None:
    """The running tree pickles without its transport; the loaded copy is stopped and can serve again."""

    async def first_run() -> bytes:
        app = Application("saved")
        UDPServer(LOOPBACK, Upper, name="upper").set_parent(app)
        await app.privileged_start()
        await app.start()
        saved = pickle.dumps(app)
        await app.stop()
        return saved

    saved = run(first_run)

    async def second_run() -> None:
        app = pickle.loads(saved)
        server = app["upper"]
        assert isinstance(server, UDPServer)
        assert not server.running and server.transport is None and server.protocol is None
        await app.privileged_start()
        await app.start()
        assert await ask(server.port, b"back") == b"BACK"
        await app.stop()

    run(second_run)
