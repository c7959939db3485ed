r"""Endpoint description strings (Twisted's syntax) turned into asyncio listeners and connectors.

A description is ``TYPE:field:field...``: fields are separated by ``:``, a backslash makes the next character
literal (``tcp6:8080:interface=\:\:1``), a ``key=value`` field is a keyword and any other field is positional.
Positional values fill, in order, the positional parameters not given by keyword (``tcp:host=H:80`` is port 80,
as in Twisted). The type is case-insensitive, and a bare port number means ``tcp:PORT``.

Servers (:func:`parse_server`)::

    tcp:PORT[:interface=IP][:backlog=N]            tcp6:PORT[:interface=IPv6][:backlog=N]
    unix:PATH[:mode=0660][:lockfile=1][:backlog=N]
    ssl:PORT:privateKey=KEY[:certKey=CERT][:interface=IP][:backlog=N]   (also tls:)
        [:sslmethod=TLSv1_2_METHOD][:extraCertChain=FILE][:dhParameters=FILE]
    systemd:domain=INET|INET6|UNIX:index=N        (or name=FDNAME, from LISTEN_FDNAMES)
    udp:PORT[:interface=IP]

Clients (:func:`parse_client`)::

    tcp:host=H:port=P[:timeout=S][:bindAddress=IP]
    ssl:host=H:port=P[:ca=FILE][:caCertsDir=DIR][:certKey=CERT][:privateKey=KEY][:hostname=NAME]
        [:timeout=S][:bindAddress=IP]
    tls:host=H:port=P[:ca=FILE][:trustRoots=DIR][:certificate=CERT][:privateKey=KEY][:hostname=NAME]
        [:timeout=S][:bindAddress=IP]
    unix:path=P[:timeout=S][:lockfile=1]

Parsing checks everything that can be checked without touching the system, and raises
:class:`~tapster.errors.EndpointError` naming the whole string and the fault. Binding failures raise
:class:`~tapster.errors.ListenError` naming the endpoint; connecting raises plain :class:`OSError`.

The code lives in ``_endpoint_parse`` (the grammar), ``_endpoint_server``, ``_endpoint_systemd``,
``_endpoint_client`` and ``_endpoint_tls`` (contexts from files); this module is the public face.
"""

from __future__ import annotations

from typing import cast

from tapster import _endpoint_parse as _p
from tapster._endpoint_client import (
    ClientEndpoint,
    ClientKind,
    TCPClientEndpoint,
    TLSClientEndpoint,
    UNIXClientEndpoint,
)
from tapster._endpoint_server import (
    ServerEndpoint,
    ServerKind,
    SSLServerEndpoint,
    TCPServerEndpoint,
    UDPServerEndpoint,
    UNIXServerEndpoint,
)
from tapster._endpoint_systemd import SystemdServerEndpoint, claim_systemd_sockets
from tapster.errors import EndpointError

__all__ = [
    "DEFAULT_BACKLOG",
    "DEFAULT_CONNECT_TIMEOUT",
    "ClientEndpoint",
    "SSLServerEndpoint",
    "ServerEndpoint",
    "SystemdServerEndpoint",
    "TCPClientEndpoint",
    "TCPServerEndpoint",
    "TLSClientEndpoint",
    "UDPServerEndpoint",
    "UNIXClientEndpoint",
    "UNIXServerEndpoint",
    "claim_systemd_sockets",
    "parse_client",
    "parse_server",
]

DEFAULT_BACKLOG = _p.DEFAULT_BACKLOG
"""Listen queue length when ``backlog=`` is not given."""

DEFAULT_CONNECT_TIMEOUT = _p.DEFAULT_CONNECT_TIMEOUT
"""Seconds a client waits for a connection when ``timeout=`` is not given (Twisted's default)."""


_SERVER_CLASSES: dict[str, type[ServerEndpoint]] = {
    "tcp": TCPServerEndpoint,
    "tcp6": TCPServerEndpoint,
    "ssl": SSLServerEndpoint,
    "unix": UNIXServerEndpoint,
    "systemd": SystemdServerEndpoint,
    "udp": UDPServerEndpoint,
}
_CLIENT_CLASSES: dict[str, type[ClientEndpoint]] = {
    "tcp": TCPClientEndpoint,
    "tls": TLSClientEndpoint,
    "unix": UNIXClientEndpoint,
}


def parse_server(description: str | int) -> ServerEndpoint:
    """Parse a server endpoint description; a port number (int or all-digit string) means ``tcp:PORT``.

    Nothing is bound and no file is read here, except that a ``systemd:`` endpoint claims the passed sockets
    (see :func:`claim_systemd_sockets`).

    Raises:
        EndpointError: the description is malformed; the message names it and the fault.
    """
    if isinstance(description, int) and not isinstance(description, bool):
        description = f"tcp:{description}"
    if not isinstance(description, str):
        raise EndpointError(
            f"invalid endpoint {description!r}: expected a string or a port number, "
            f"not {type(description).__name__}"
        )
    text = f"tcp:{description}" if description.isascii() and description.isdigit() else None
    kind, values = _p.parse(description, _p.SERVER_GRAMMARS, text=text)
    if kind == "systemd":
        claim_systemd_sockets()
    return _SERVER_CLASSES[kind](description=description, kind=cast(ServerKind, kind), **values)


def parse_client(description: str) -> ClientEndpoint:
    """Parse a client endpoint description such as ``tcp:host=example.com:port=80:timeout=5``.

    Raises:
        EndpointError: the description is malformed; the message names it and the fault.
    """
    if not isinstance(description, str):
        raise EndpointError(
            f"invalid endpoint {description!r}: expected a string, not {type(description).__name__}"
        )
    if description.isascii() and description.isdigit():
        raise EndpointError(
            f"invalid endpoint {description!r}: a client endpoint needs a type and a host, such as "
            f"tcp:host=localhost:port={description}"
        )
    kind, values = _p.parse(description, _p.CLIENT_GRAMMARS)
    return _CLIENT_CLASSES[kind](description=description, kind=cast(ClientKind, kind), **values)
