"""Client endpoints: where to connect (tcp, tls/ssl, unix), made by ``tapster.endpoints.parse_client``.

The classes are public through :mod:`tapster.endpoints` (their ``__module__`` says so, which keeps saved states
naming them there); this module only holds their code.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import ssl
from asyncio import AbstractEventLoop, Transport
from collections.abc import Callable
from typing import Any, ClassVar, Final, Literal, TypeVar

from tapster._endpoint_parse import DEFAULT_CONNECT_TIMEOUT
from tapster._endpoint_tls import TLSFileError, client_context
from tapster._record import Record

__all__ = ["ClientEndpoint", "ClientKind", "TCPClientEndpoint", "TLSClientEndpoint", "UNIXClientEndpoint"]

ClientKind = Literal["tcp", "unix", "tls"]

_P = TypeVar("_P", bound=asyncio.BaseProtocol)


class ClientEndpoint(Record):
    """Where to connect; made by :func:`parse_client`, immutable; equality and pickling as for servers.

    Attributes:
        description: the string as given.
        kind: ``tcp``, ``unix`` or ``tls``.
        timeout: seconds to wait for the connection (and the TLS handshake).
    """

    __module__ = "tapster.endpoints"
    __slots__ = ("description", "kind", "timeout")

    description: Final[str]
    kind: Final[ClientKind]
    timeout: Final[float]

    _added_fields: ClassVar[dict[str, Any]] = {}
    """Fields added after the first release, with their defaults: a state saved before loads with them."""

    def __init__(
        self, *, description: str, kind: ClientKind, timeout: float = DEFAULT_CONNECT_TIMEOUT
    ) -> None:
        self.description = description
        self.kind = kind
        self.timeout = timeout

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__({**self._added_fields, **state})

    def __str__(self) -> str:
        return self.description

    async def connect(self, protocol_factory: Callable[[], _P]) -> tuple[asyncio.Transport, _P]:
        """Connect, within ``timeout`` seconds.

        Raises:
            OSError: the connection failed (ConnectionRefusedError, FileNotFoundError, an ssl error, ...).
            TimeoutError: no connection within the timeout; the message names the endpoint.
        """
        try:
            async with asyncio.timeout(self.timeout):
                return await self._connect(asyncio.get_running_loop(), protocol_factory)
        except TimeoutError as exc:
            raise TimeoutError(
                f"timed out connecting to {self.description} (timeout {self.timeout:g}s)"
            ) from exc

    async def _connect(
        self, loop: AbstractEventLoop, protocol_factory: Callable[[], _P]
    ) -> tuple[Transport, _P]:
        raise NotImplementedError


class TCPClientEndpoint(ClientEndpoint):
    """``tcp:``: a host name or IP literal and a port; ``bind_address`` is the local address to connect from
    (Twisted's ``bindAddress``: an address only, the port is chosen by the system)."""

    __module__ = "tapster.endpoints"
    __slots__ = ("bind_address", "host", "port")

    host: Final[str]
    port: Final[int]
    bind_address: Final[str | None]

    _added_fields: ClassVar[dict[str, Any]] = {"bind_address": None}

    def __init__(
        self,
        *,
        description: str,
        kind: ClientKind,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        host: str,
        port: int,
        bind_address: str | None = None,
    ) -> None:
        super().__init__(description=description, kind=kind, timeout=timeout)
        self.host = host
        self.port = port
        self.bind_address = bind_address

    def _local_addr(self) -> tuple[str, int] | None:
        return None if self.bind_address is None else (self.bind_address, 0)

    async def _connect(
        self, loop: AbstractEventLoop, protocol_factory: Callable[[], _P]
    ) -> tuple[Transport, _P]:
        return await loop.create_connection(
            protocol_factory, self.host, self.port, local_addr=self._local_addr()
        )


class TLSClientEndpoint(TCPClientEndpoint):
    """``tls:`` / ``ssl:``: TCP with TLS. The server certificate is checked against ``ca`` and ``ca_dir`` (or
    the system's trust roots when neither is given), for the name ``hostname`` (default: ``host``).

    Attributes:
        ca: a PEM file of trusted CA certificates (tapster's own parameter).
        ca_dir: a directory whose ``*.pem`` files are the trusted CAs (Twisted's ``caCertsDir`` for ``ssl:``,
            ``trustRoots`` for ``tls:``).
        cert: a client certificate to present (``certKey`` / ``certificate``); its key is in ``private_key``,
            or in the same file.
        private_key: the key of ``cert``.
        hostname: the name the server's certificate must carry, when it differs from ``host``.
    """

    __module__ = "tapster.endpoints"
    __slots__ = ("ca", "ca_dir", "cert", "hostname", "private_key")

    ca: Final[str | None]
    ca_dir: Final[str | None]
    cert: Final[str | None]
    private_key: Final[str | None]
    hostname: Final[str | None]

    _added_fields: ClassVar[dict[str, Any]] = {
        "bind_address": None,
        "ca_dir": None,
        "cert": None,
        "private_key": None,
        "hostname": None,
    }

    def __init__(
        self,
        *,
        description: str,
        kind: ClientKind,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        host: str,
        port: int,
        bind_address: str | None = None,
        ca: str | None = None,
        ca_dir: str | None = None,
        cert: str | None = None,
        private_key: str | None = None,
        hostname: str | None = None,
    ) -> None:
        super().__init__(
            description=description,
            kind=kind,
            timeout=timeout,
            host=host,
            port=port,
            bind_address=bind_address,
        )
        self.ca = ca
        self.ca_dir = ca_dir
        self.cert = cert
        self.private_key = private_key
        self.hostname = hostname

    def _context(self) -> ssl.SSLContext:
        try:
            return client_context(
                ca=self.ca, ca_dir=self.ca_dir, cert=self.cert, private_key=self.private_key
            )
        except TLSFileError as exc:
            raise OSError(f"{exc} (for {self.description})") from exc.cause

    async def _connect(
        self, loop: AbstractEventLoop, protocol_factory: Callable[[], _P]
    ) -> tuple[Transport, _P]:
        return await loop.create_connection(
            protocol_factory,
            self.host,
            self.port,
            ssl=self._context(),
            server_hostname=self.hostname or self.host,
            local_addr=self._local_addr(),
        )


def _check_server_lock(path: str) -> None:
    """Refuse to connect unless a server holds the lock on ``PATH.lock`` (Twisted's ``checkPID``).

    tapster's unix server with ``lockfile=1`` holds an exclusive ``flock`` on that file while it listens; a
    shared lock that can be taken means nobody does, so the socket file is a leftover.
    """
    lock_path = path + ".lock"
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise ConnectionRefusedError(
            errno.ECONNREFUSED, f"no server holds {lock_path} ({os.strerror(exc.errno or 0).lower()})"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # held: a server is listening
    finally:
        os.close(fd)
    raise ConnectionRefusedError(errno.ECONNREFUSED, f"no server holds {lock_path}: {path} is a leftover")


class UNIXClientEndpoint(ClientEndpoint):
    """``unix:``: a socket file; with ``lockfile``, connect only while a server holds ``PATH.lock``."""

    __module__ = "tapster.endpoints"
    __slots__ = ("lockfile", "path")

    path: Final[str]
    lockfile: Final[bool]

    _added_fields: ClassVar[dict[str, Any]] = {"lockfile": False}

    def __init__(
        self,
        *,
        description: str,
        kind: ClientKind,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        path: str,
        lockfile: bool = False,
    ) -> None:
        super().__init__(description=description, kind=kind, timeout=timeout)
        self.path = path
        self.lockfile = lockfile

    async def _connect(
        self, loop: AbstractEventLoop, protocol_factory: Callable[[], _P]
    ) -> tuple[Transport, _P]:
        if self.lockfile:
            _check_server_lock(self.path)
        return await loop.create_unix_connection(protocol_factory, self.path)
