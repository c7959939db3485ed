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
        await super().stop()
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.close()
