"""The listeners of a tree: found by walking it, bound once by the master, adopted by name in each worker.

A server service is any service in the tree with an ``endpoint`` attribute holding a server endpoint:
StreamServer, UDPServer and the servers inside a manhole. A service that binds in some other way is not seen,
and would bind again in every worker (docs/workers.md says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import Iterator
from typing import Any

from tapster._endpoint_inherited import InheritedServerEndpoint, listener_names
from tapster._endpoint_server import ServerEndpoint, TCPServerEndpoint, UNIXServerEndpoint
from tapster.errors import StartupError
from tapster.service import MultiService, Service

__all__ = [
    "BoundListener",
    "adopt_listeners",
    "bind_endpoint",
    "bind_listeners",
    "handed_over",
    "held_listeners",
    "server_services",
]


def server_services(root: Service) -> list[Service]:
    """Every service in ``root``'s tree that listens on a server endpoint, depth first, in tree order."""
    return list(_walk(root))


def _walk(service: Service) -> Iterator[Service]:
    if isinstance(getattr(service, "endpoint", None), ServerEndpoint):
        yield service
    if isinstance(service, MultiService):
        for child in service:
            yield from _walk(child)


def held_listeners(root: Service, held: set[str], change: str) -> list[tuple[Service, str]]:
    """Each server service of ``root`` with the name of its listener, all among the ``held`` names.

    Raises:
        StartupError: the tree has an endpoint the master does not listen on (it changed since the master
            started: a ``change``, reload or upgrade, cannot add a listener).
    """
    services = server_services(root)
    names = listener_names(service.endpoint.description for service in services)  # type: ignore[attr-defined]
    for service, name in zip(services, names, strict=True):
        if name not in held:
            raise StartupError(
                f"{service.endpoint.description} is not one of the master's listeners "  # type: ignore[attr-defined]
                f"(a {change} cannot add one: restart tapster)"
            )
    return list(zip(services, names, strict=True))


def adopt_listeners(root: Service, passed: set[str]) -> int:
    """In a worker: make each server service listen on the socket its master passed under its name.

    Raises:
        StartupError: the tree has an endpoint the master does not listen on.
    """
    pairs = held_listeners(root, passed, "reload")
    for service, name in pairs:
        service.endpoint = InheritedServerEndpoint(service.endpoint, name)  # type: ignore[attr-defined]
    return len(pairs)


class BoundListener:
    """One socket the master bound: its name for the workers, its descriptor, what to close at the end."""

    def __init__(self, name: str, description: str, sock: socket.socket, keep: object | None) -> None:
        self.name = name
        self.description = description
        self.sock = sock
        self._keep = keep  # the asyncio server that owns a unix socket file: closing it removes the file
        self.handed_over = (
            False  # from an old master image (an upgrade): it removes a unix socket file itself
        )

    def close(self) -> None:
        path = self._unix_path() if self._keep is None and self.sock.fileno() >= 0 else None
        self.sock.close()
        keep, self._keep = self._keep, None
        if isinstance(keep, asyncio.AbstractServer):
            keep.close()
        elif path is not None:  # handed over by an upgrade: the server that would remove the file is gone
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)

    def _unix_path(self) -> str | None:
        if self.sock.family != socket.AF_UNIX or not self.handed_over:
            return None
        name = self.sock.getsockname()
        return name if isinstance(name, str) and name and not name.startswith("\0") else None


def handed_over(listeners: list[list[Any]]) -> list[BoundListener]:
    """The listeners an in-place upgrade handed over, as ``[name, fd]`` pairs (runner/_upgrade.py)."""
    from urllib.parse import unquote

    bound = []
    for name, fd in listeners:
        os.set_inheritable(fd, False)
        listener = BoundListener(name, unquote(name.split("#")[0]), socket.socket(fileno=fd), None)
        listener.handed_over = True
        bound.append(listener)
    return bound


class _NoConnections(asyncio.Protocol):
    """The master never accepts: its listeners are created with start_serving=False."""


async def bind_listeners(root: Service) -> list[BoundListener]:
    """Bind every server endpoint of ``root``'s tree, as ``privileged_start`` would, and listen on it.

    Listening here, not in the first worker, means connections queue from the start and a moment with no
    worker (all replaced at once) loses none: the queue belongs to the socket the master keeps open.

    Raises:
        ListenError: an endpoint could not be bound (its own one-line message).
        StartupError: there is nothing to listen on, or an endpoint gave several sockets.
    """
    endpoints: list[ServerEndpoint] = [s.endpoint for s in server_services(root)]  # type: ignore[attr-defined]
    if not endpoints:
        raise StartupError("--workers needs a server in the application: it has no StreamServer or UDPServer")
    bound: list[BoundListener] = []
    try:
        for endpoint, name in zip(endpoints, listener_names(e.description for e in endpoints), strict=True):
            bound.append(await bind_endpoint(endpoint, name))
    except BaseException:
        for listener in bound:
            listener.close()
        raise
    return bound


async def bind_endpoint(endpoint: ServerEndpoint, name: str) -> BoundListener:
    """Bind and listen on one endpoint for the master to hold (a tree's listener, or --status's)."""
    if endpoint.is_datagram:
        transport, _ = await endpoint.listen_datagram(asyncio.DatagramProtocol)
        try:
            sock = _copy(transport.get_extra_info("socket"))
        finally:
            transport.close()  # the copy stays bound; the master reads no datagram
        return BoundListener(name, endpoint.description, sock, None)
    server = await endpoint.listen(_NoConnections, start_serving=False)
    sockets = list(getattr(server, "sockets", None) or ())
    if len(sockets) != 1:
        server.close()
        raise StartupError(
            f"{endpoint.description} gives {len(sockets)} sockets; with --workers give an address that is one "
            "(an IP address rather than a host name)"
        )
    sock = _copy(sockets[0])
    if isinstance(endpoint, (TCPServerEndpoint, UNIXServerEndpoint)):
        sock.listen(
            endpoint.backlog
        )  # a passed systemd socket already listens, with the backlog systemd gave
    if isinstance(endpoint, UNIXServerEndpoint):
        return BoundListener(name, endpoint.description, sock, server)  # closed at the end: removes the file
    server.close()
    return BoundListener(name, endpoint.description, sock, None)


def _copy(sock: socket.socket) -> socket.socket:
    copy = socket.socket(fileno=os.dup(sock.fileno()))
    with contextlib.suppress(OSError):
        copy.setblocking(False)
    return copy
