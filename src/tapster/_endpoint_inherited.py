"""Listening sockets a worker inherits from its master, found by name the way systemd's are.

A master (runner/_master.py) binds each server endpoint of the tree once and passes the sockets to every worker
with systemd's convention: ``LISTEN_FDS``, ``LISTEN_FDNAMES`` and ``LISTEN_PID``. The worker builds the same tree
and replaces each server endpoint with an :class:`InheritedServerEndpoint`, which takes the passed socket named
after the endpoint (through the ``systemd:name=`` lookup, so there is one adoption path) instead of binding.

A name is the endpoint's description with ``%``, ``:``, spaces and other characters systemd does not allow in a
name written as ``%XX`` (``tcp%3A8080%3Ainterface=127.0.0.1``), so it stays readable in ``/proc/PID/environ``;
the second endpoint with the same description gets ``#2`` appended, and a description too long for a name
(systemd allows 255 characters) is replaced by a digest of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from asyncio import AbstractServer, DatagramTransport
from collections.abc import Callable, Iterable
from typing import Final, TypeVar

from tapster._endpoint_errors import listen_error, reason
from tapster._endpoint_server import (
    ProtocolFactory,
    ServerEndpoint,
    TCPServerEndpoint,
    UNIXServerEndpoint,
    serving_tls,
)
from tapster._endpoint_systemd import SystemdServerEndpoint
from tapster.errors import ListenError

__all__ = ["InheritedServerEndpoint", "listener_names"]

_DP = TypeVar("_DP", bound=asyncio.DatagramProtocol)
_MAX_NAME = 255
_ALLOWED = frozenset(chr(c) for c in range(0x21, 0x7F)) - {":", "%", "#"}


def _encode(description: str) -> str:
    parts = []
    for char in description:
        if char in _ALLOWED:
            parts.append(char)
        else:
            parts.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(parts)


def listener_names(descriptions: Iterable[str]) -> list[str]:
    """The socket name for each endpoint description, in order; the master and its workers compute the same."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for description in descriptions:
        base = _encode(description)
        if len(base) > _MAX_NAME - 4:
            base = "sha256-" + hashlib.sha256(description.encode("utf-8", "surrogatepass")).hexdigest()[:48]
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return names


class InheritedServerEndpoint(ServerEndpoint):
    """``original``'s listener, taken from the socket passed under ``fd_name`` instead of bound again.

    It listens as ``original`` would: the same TLS context (its files read in the worker), the same backlog,
    streams or datagrams. Closing it never removes a unix socket file: the master owns that.
    """

    __slots__ = ("fd_name", "original")

    original: Final[ServerEndpoint]
    fd_name: Final[str]

    def __init__(self, original: ServerEndpoint, fd_name: str) -> None:
        super().__init__(description=original.description, kind=original.kind)
        self.original = original
        self.fd_name = fd_name

    @property
    def is_datagram(self) -> bool:
        return self.original.is_datagram

    def _socket(self, kind: socket.SocketKind) -> socket.socket:
        finder = SystemdServerEndpoint(
            description=self.description, kind="systemd", domain="INET", name=self.fd_name
        )
        fd = finder._fd()  # the systemd lookup: LISTEN_PID checked, the name matched in LISTEN_FDNAMES
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError as exc:
            raise listen_error(self.description, f"fd {fd} from the master: {reason(exc)}", exc) from exc
        if sock.type != kind:
            sock.close()
            raise listen_error(
                self.description, f"the socket passed on fd {fd} is {sock.type.name}, not {kind.name}"
            )
        return sock

    async def listen(
        self, protocol_factory: ProtocolFactory, *, start_serving: bool = True
    ) -> AbstractServer:
        if self.original.is_datagram:
            return await self.original.listen(protocol_factory)  # raises: a datagram endpoint
        sock = self._socket(socket.SOCK_STREAM)
        original = self.original
        backlog = original.backlog if isinstance(original, (TCPServerEndpoint, UNIXServerEndpoint)) else None
        try:
            loop = asyncio.get_running_loop()
            if sock.family == socket.AF_UNIX:
                return await loop.create_unix_server(
                    protocol_factory,
                    sock=sock,
                    backlog=backlog or socket.SOMAXCONN,
                    start_serving=start_serving,
                )
            context = original._ssl_context() if isinstance(original, TCPServerEndpoint) else None
            server = await loop.create_server(
                protocol_factory,
                sock=sock,
                backlog=backlog or socket.SOMAXCONN,
                ssl=context,
                start_serving=start_serving,
            )
            return serving_tls(server, context)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, OSError) and not isinstance(exc, ListenError):
                raise self._failed(exc) from exc
            raise

    async def listen_datagram(self, protocol_factory: Callable[[], _DP]) -> tuple[DatagramTransport, _DP]:
        if not self.original.is_datagram:
            return await self.original.listen_datagram(protocol_factory)  # raises: a stream endpoint
        sock = self._socket(socket.SOCK_DGRAM)
        try:
            return await asyncio.get_running_loop().create_datagram_endpoint(protocol_factory, sock=sock)
        except OSError as exc:
            sock.close()
            raise self._failed(exc) from exc
