"""Every built-in server releases its socket before stop() returns: the same address binds again at once.

twistd's stopService() Deferred fires once the port is closed; code that restarts a service (a reload, a test)
relies on that. Each test starts a server on a port the OS chose, uses it once, stops it, and binds the same
address again in the very next statement, with no loop turn in between.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from tapster.auth import InMemoryChecker
from tapster.manhole import ManholeService
from tapster.services import StreamServer, UDPServer

T = TypeVar("T")


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        async with asyncio.timeout(20):
            return await scenario()

    return asyncio.run(main())


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.readline())
    await writer.drain()
    writer.close()


async def udp_round_trip(port: int) -> bytes:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            if not answer.done():
                answer.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(b"ping")
        async with asyncio.timeout(5):
            return await answer
    finally:
        transport.close()


async def stream_round_trip(
    open_connection: Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
) -> bytes:
    reader, writer = await open_connection
    writer.write(b"ping\n")
    line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return line


def test_udp_server_port_binds_again_right_after_stop() -> None:
    """UDPServer.stop() returns after the socket is closed: a new UDPServer on that port binds at once."""

    async def scenario() -> None:
        for _ in range(20):  # the old bug lost a race every time; repeat to catch a rare one too
            first = UDPServer("udp:0:interface=127.0.0.1", Echo)
            await first.start()
            port = first.port
            assert await udp_round_trip(port) == b"ping"
            await first.stop()
            second = UDPServer(f"udp:{port}:interface=127.0.0.1", Echo)
            await second.start()  # raised "address already in use" before the fix
            assert second.port == port
            await second.stop()
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # and a plain socket, no SO_REUSEADDR
            probe.bind(("127.0.0.1", port))
            probe.close()

    run(scenario)


def test_tcp_stream_server_port_binds_again_right_after_stop() -> None:
    """StreamServer on tcp: after stop() (with a connection served), the same port listens again at once."""

    async def scenario() -> None:
        first = StreamServer("tcp:0:interface=127.0.0.1", echo_handler)
        await first.privileged_start()
        await first.start()
        port = first.port
        assert await stream_round_trip(asyncio.open_connection("127.0.0.1", port)) == b"ping\n"
        await first.stop()
        second = StreamServer(f"tcp:{port}:interface=127.0.0.1", echo_handler)
        await second.privileged_start()
        await second.start()
        assert await stream_round_trip(asyncio.open_connection("127.0.0.1", port)) == b"ping\n"
        await second.stop()

    run(scenario)


def test_unix_stream_server_path_binds_again_right_after_stop(tmp_path: Path) -> None:
    """StreamServer on unix: stop() removes the socket file before it returns; the path binds again at once."""
    path = str(tmp_path / "app.sock")

    async def scenario() -> None:
        for lockfile in ("0", "1"):
            first = StreamServer(f"unix:{path}:lockfile={lockfile}", echo_handler)
            await first.privileged_start()
            await first.start()
            assert await stream_round_trip(asyncio.open_unix_connection(path)) == b"ping\n"
            await first.stop()
            assert not os.path.exists(path)
            second = StreamServer(f"unix:{path}:lockfile={lockfile}", echo_handler)
            await second.privileged_start()
            await second.start()
            assert await stream_round_trip(asyncio.open_unix_connection(path)) == b"ping\n"
            await second.stop()

    run(scenario)


def test_manhole_listeners_bind_again_right_after_stop(tmp_path: Path) -> None:
    """A stopped manhole's telnet and SSH ports are free when stop() returns: a new manhole takes both."""

    def manhole(ssh: str, telnet: str) -> ManholeService:
        return ManholeService(
            {},
            ssh=ssh,
            telnet=telnet,
            checkers=[InMemoryChecker({"admin": "secret"})],
            host_key=tmp_path / "host_key",
        )

    async def scenario() -> None:
        first = manhole("tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1")
        await first.privileged_start()
        await first.start()
        assert first.ssh is not None and first.telnet is not None
        ports = first.ssh.port, first.telnet.port
        _, writer = await asyncio.open_connection("127.0.0.1", ports[1])  # a live telnet session at stop
        await first.stop()
        writer.close()
        second = manhole(f"tcp:{ports[0]}:interface=127.0.0.1", f"tcp:{ports[1]}:interface=127.0.0.1")
        await second.privileged_start()
        await second.start()
        assert second.ssh is not None and second.telnet is not None
        assert (second.ssh.port, second.telnet.port) == ports
        await second.stop()

    run(scenario)
