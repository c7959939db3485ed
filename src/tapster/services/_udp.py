"""UDPServer: a datagram socket bound to a DatagramProtocol."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from tapster.endpoints import ServerEndpoint, parse_server
from tapster.service import Service
from tapster.services._connection import callable_label

__all__ = ["UDPServer"]

logger = logging.getLogger("tapster.services")


class UDPServer(Service):
    """Bind ``endpoint`` (``udp:PORT[:interface=IP]``) in ``privileged_start`` and serve it with the protocol."""

    transient = ("transport", "protocol")

    def __init__(
        self,
        endpoint: str,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        *,
        name: str | None = None,
    ) -> None:
        self.endpoint: ServerEndpoint = parse_server(endpoint)
        if not self.endpoint.is_datagram:
            raise ValueError(f"UDPServer needs a udp: endpoint, not {self.endpoint.description!r}")
        self.protocol_factory = protocol_factory
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None
        self.protocol: asyncio.DatagramProtocol | None = None

    @property
    def address(self) -> Any:
        if self.transport is None:
            raise RuntimeError(f"{self.name or callable_label(self.protocol_factory)} is not listening")
        return self.transport.get_extra_info("sockname")

    @property
    def port(self) -> int:
        return int(self.address[1])

    async def privileged_start(self) -> None:
        await super().privileged_start()
        if self.transport is None:
            self.transport, self.protocol = await self.endpoint.listen_datagram(self.protocol_factory)

    async def start(self) -> None:
        if self.transport is None:
            await self.privileged_start()
        await super().start()
        logger.info("%s starting on %s", self.name or callable_label(self.protocol_factory), self.port)

    async def stop(self) -> None:
        """Close the socket and return only once it is closed, so the port can be bound again at once."""
        await super().stop()
        transport, self.transport = self.transport, None
        if transport is not None:
            sock = transport.get_extra_info("socket")
            transport.close()
            await _until_closed(sock)


async def _until_closed(sock: Any) -> None:
    """Wait until the transport has closed its socket.

    asyncio closes a datagram socket one loop turn after ``transport.close()`` (after calling the protocol's
    ``connection_lost``), and offers nothing to await. Wrapping the protocol would put a call on every
    datagram, so this watches the socket's descriptor instead: a few loop turns, then short sleeps, bounded.
    """
    if sock is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    turns = 0
    while sock.fileno() != -1 and loop.time() < deadline:
        turns += 1
        await asyncio.sleep(0 if turns < 10 else 0.005)
