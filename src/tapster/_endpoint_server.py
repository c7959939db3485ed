"""Server endpoints: where and how to listen (tcp, tcp6, ssl, udp, unix), made by ``tapster.endpoints``.

The classes are public through :mod:`tapster.endpoints` (their ``__module__`` says so, which keeps saved states
naming them there); this module only holds their code.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import ssl
import stat
import weakref
from asyncio import AbstractServer, DatagramTransport
from collections.abc import Callable
from typing import Any, ClassVar, Final, Literal, TypeVar

from tapster._endpoint_errors import listen_error, reason
from tapster._endpoint_parse import DEFAULT_BACKLOG
from tapster._endpoint_tls import TLSFileError, server_context
from tapster._record import Record
from tapster.errors import EndpointError, ListenError

__all__ = [
    "ProtocolFactory",
    "SSLServerEndpoint",
    "ServerEndpoint",
    "ServerKind",
    "TCPServerEndpoint",
    "UDPServerEndpoint",
    "UNIXServerEndpoint",
    "listener_tls",
    "serving_tls",
]

ServerKind = Literal["tcp", "tcp6", "unix", "ssl", "systemd", "udp"]

_DP = TypeVar("_DP", bound=asyncio.DatagramProtocol)
ProtocolFactory = Callable[[], asyncio.BaseProtocol]

# The TLS context each TLS listener serves with. A listener's stop accepts what still waits in its queue and
# must give those connections the same TLS; the context cannot be made again then (the key file may be
# readable only before --uid), and uvloop's server does not expose its own.
_listener_contexts: weakref.WeakKeyDictionary[AbstractServer, ssl.SSLContext] = weakref.WeakKeyDictionary()


def serving_tls(server: AbstractServer, context: ssl.SSLContext | None) -> AbstractServer:
    """Remember that ``server`` speaks TLS with ``context`` (None: plain); return ``server``."""
    if context is not None:
        _listener_contexts[server] = context
    return server


def listener_tls(server: AbstractServer) -> ssl.SSLContext | None:
    """The TLS context ``server`` was made with by a tapster endpoint; None for a plain listener."""
    return _listener_contexts.get(server)


def _format_address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) == 2:
        return f"{address[0]}:{address[1]}"
    if isinstance(address, tuple) and len(address) == 4:
        return f"[{address[0]}]:{address[1]}"
    if isinstance(address, bytes):  # Linux abstract namespace
        address = address.decode("utf-8", "backslashreplace")
    if isinstance(address, str) and address.startswith("\0"):
        return "@" + address[1:]
    return str(address) if address else "(unnamed)"


class ServerEndpoint(Record):
    """Where and how to listen; made by :func:`parse_server`, immutable, reusable for many listens.

    Endpoints compare equal when they are of the same class with the same attributes, and pickle (they are part
    of a saved application state).

    Attributes:
        description: the string as given (a bare int port becomes ``"tcp:PORT"``).
        kind: ``tcp``, ``tcp6``, ``unix``, ``ssl``, ``systemd`` or ``udp``.
    """

    __module__ = "tapster.endpoints"

    __slots__ = ("description", "kind")

    description: Final[str]
    kind: Final[ServerKind]

    def __init__(self, *, description: str, kind: ServerKind) -> None:
        self.description = description
        self.kind = kind

    _added_fields: ClassVar[dict[str, Any]] = {}
    """Fields added after the first release, with their defaults: a state saved before loads with them."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__({**self._added_fields, **state})

    def __str__(self) -> str:
        return self.description

    @property
    def is_datagram(self) -> bool:
        """True for ``udp``: use :meth:`listen_datagram` instead of :meth:`listen`."""
        return False

    async def listen(
        self, protocol_factory: ProtocolFactory, *, start_serving: bool = True
    ) -> AbstractServer:
        """Bind and listen; accept connections at once unless ``start_serving`` is false.

        Raises:
            ListenError: the socket could not be bound (address in use, permission, bad key file, ...).
            EndpointError: this is a datagram endpoint.
        """
        raise NotImplementedError

    async def listen_datagram(self, protocol_factory: Callable[[], _DP]) -> tuple[DatagramTransport, _DP]:
        """Bind a datagram socket (``udp`` only).

        Raises:
            ListenError: the socket could not be bound.
            EndpointError: this is a stream endpoint.
        """
        raise EndpointError(
            f"endpoint {self.description!r} is a stream endpoint: use listen(), not listen_datagram()"
        )

    def bound_address(self, server: asyncio.AbstractServer | asyncio.BaseTransport) -> str:
        """What was actually bound, for people: ``127.0.0.1:43121``, ``[::1]:5000``, ``/run/app.sock``.

        Accepts the server from :meth:`listen` or the transport from :meth:`listen_datagram`; several sockets
        (not made by tapster's own endpoints) are joined with ``", "``.
        """
        if isinstance(server, asyncio.BaseTransport):
            names = [server.get_extra_info("sockname")]
        else:
            names = [sock.getsockname() for sock in getattr(server, "sockets", None) or ()]
        formatted = list(dict.fromkeys(_format_address(name) for name in names if name is not None))
        return ", ".join(formatted) or "(not listening)"

    def _failed(self, exc: OSError) -> ListenError:
        return listen_error(self.description, reason(exc), exc)


class TCPServerEndpoint(ServerEndpoint):
    """``tcp:`` / ``tcp6:``: an empty ``interface`` means every IPv4 (tcp) or IPv6 (tcp6) address."""

    __module__ = "tapster.endpoints"

    __slots__ = ("backlog", "interface", "port")

    port: Final[int]
    interface: Final[str]
    backlog: Final[int]

    def __init__(
        self,
        *,
        description: str,
        kind: ServerKind,
        port: int,
        interface: str = "",
        backlog: int = DEFAULT_BACKLOG,
    ) -> None:
        super().__init__(description=description, kind=kind)
        self.port = port
        self.interface = interface
        self.backlog = backlog

    def _host(self) -> tuple[str, socket.AddressFamily]:
        host = self.interface or ("::" if self.kind == "tcp6" else "0.0.0.0")
        return host, socket.AF_INET6 if ":" in host else socket.AF_INET

    def _ssl_context(self) -> ssl.SSLContext | None:
        return None

    async def listen(
        self, protocol_factory: ProtocolFactory, *, start_serving: bool = True
    ) -> AbstractServer:
        context = self._ssl_context()
        host, family = self._host()
        try:
            server = await asyncio.get_running_loop().create_server(
                protocol_factory,
                host,
                self.port,
                family=family,
                backlog=self.backlog,
                ssl=context,
                start_serving=start_serving,
            )
        except OSError as exc:
            raise self._failed(exc) from exc
        return serving_tls(server, context)


class SSLServerEndpoint(TCPServerEndpoint):
    """``ssl:`` / ``tls:``: TCP with TLS; ``cert_key`` defaults to ``private_key`` (one PEM holding both).

    Attributes:
        ssl_method: Twisted's ``sslmethod`` (``TLSv1_2_METHOD`` pins TLS 1.2; None or ``TLS_METHOD``: any
            version the system's OpenSSL allows).
        extra_cert_chain: a PEM file of intermediate certificates sent after the server's own.
        dh_parameters: a PEM file of Diffie-Hellman parameters, enabling the DHE ciphers.
    """

    __module__ = "tapster.endpoints"
    __slots__ = ("cert_key", "dh_parameters", "extra_cert_chain", "private_key", "ssl_method")

    private_key: Final[str]
    cert_key: Final[str]
    ssl_method: Final[str | None]
    extra_cert_chain: Final[str | None]
    dh_parameters: Final[str | None]

    _added_fields: ClassVar[dict[str, Any]] = {
        "ssl_method": None,
        "extra_cert_chain": None,
        "dh_parameters": None,
    }

    def __init__(
        self,
        *,
        description: str,
        kind: ServerKind,
        port: int,
        interface: str = "",
        backlog: int = DEFAULT_BACKLOG,
        private_key: str,
        cert_key: str,
        ssl_method: str | None = None,
        extra_cert_chain: str | None = None,
        dh_parameters: str | None = None,
    ) -> None:
        super().__init__(description=description, kind=kind, port=port, interface=interface, backlog=backlog)
        self.private_key = private_key
        self.cert_key = cert_key
        self.ssl_method = ssl_method
        self.extra_cert_chain = extra_cert_chain
        self.dh_parameters = dh_parameters

    def _ssl_context(self) -> ssl.SSLContext:
        """Load the files at listen time, so a bad file fails the listen, naming the file."""
        try:
            return server_context(
                self.private_key,
                self.cert_key,
                ssl_method=self.ssl_method,
                extra_cert_chain=self.extra_cert_chain,
                dh_parameters=self.dh_parameters,
            )
        except TLSFileError as exc:
            raise listen_error(self.description, str(exc), exc.cause) from exc.cause


class UDPServerEndpoint(ServerEndpoint):
    """``udp:``: a datagram socket; an empty ``interface`` means every IPv4 address."""

    __module__ = "tapster.endpoints"

    __slots__ = ("interface", "port")

    port: Final[int]
    interface: Final[str]

    def __init__(self, *, description: str, kind: ServerKind, port: int, interface: str = "") -> None:
        super().__init__(description=description, kind=kind)
        self.port = port
        self.interface = interface

    @property
    def is_datagram(self) -> bool:
        return True

    async def listen(
        self, protocol_factory: ProtocolFactory, *, start_serving: bool = True
    ) -> AbstractServer:
        raise EndpointError(
            f"endpoint {self.description!r} is a datagram endpoint: use listen_datagram(), not listen()"
        )

    async def listen_datagram(self, protocol_factory: Callable[[], _DP]) -> tuple[DatagramTransport, _DP]:
        host = self.interface or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            return await asyncio.get_running_loop().create_datagram_endpoint(
                protocol_factory, local_addr=(host, self.port), family=family
            )
        except OSError as exc:
            raise self._failed(exc) from exc


class _CleanupServer(asyncio.AbstractServer):
    """An asyncio server that also runs a cleanup once when closed (unlink the socket file, drop the lock)."""

    def __init__(self, server: asyncio.AbstractServer, cleanup: Callable[[], None]) -> None:
        self._server = server
        self._cleanup: Callable[[], None] | None = cleanup

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(getattr(self._server, "sockets", None) or ())

    def close(self) -> None:
        self._server.close()
        cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            cleanup()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._server.get_loop()

    def is_serving(self) -> bool:
        return self._server.is_serving()

    async def start_serving(self) -> None:
        await self._server.start_serving()

    async def serve_forever(self) -> None:
        try:
            await self._server.serve_forever()
        finally:
            self.close()

    async def wait_closed(self) -> None:
        await self._server.wait_closed()

    def __getattr__(self, name: str) -> Any:  # newer asyncio methods (close_clients, abort_clients)
        return getattr(self._server, name)


class _Locked(Exception):
    """The lock file is held by another process (or another open file in this one)."""


def _lock_file(path: str) -> int:
    """Take an exclusive flock on ``path`` and write our pid in it; return the fd that holds the lock.

    flock (not POSIX record locks) so that a second open of the same file in this process conflicts too. The
    inode check guards against a previous owner unlinking the file between our open and our lock.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise _Locked(f" (pid {holder})" if holder.isdigit() else "") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.stat(path), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _unlink_if_same(path: str, identity: os.stat_result | None) -> None:
    with contextlib.suppress(OSError):
        if identity is None or os.path.samestat(os.lstat(path), identity):
            os.unlink(path)


class UNIXServerEndpoint(ServerEndpoint):
    """``unix:``: a socket file; removed again when the server closes.

    Attributes:
        mode: permission bits applied to the socket file after bind (``None``: as the umask leaves them).
        lockfile: hold an exclusive lock on ``PATH.lock`` while listening; with the lock, a leftover socket
            file from a dead server is removed. Without it, an existing path is "address already in use".
    """

    __module__ = "tapster.endpoints"

    __slots__ = ("backlog", "lockfile", "mode", "path")

    path: Final[str]
    mode: Final[int | None]
    lockfile: Final[bool]
    backlog: Final[int]

    def __init__(
        self,
        *,
        description: str,
        kind: ServerKind,
        path: str,
        mode: int | None = None,
        lockfile: bool = False,
        backlog: int = DEFAULT_BACKLOG,
    ) -> None:
        super().__init__(description=description, kind=kind)
        self.path = path
        self.mode = mode
        self.lockfile = lockfile
        self.backlog = backlog

    async def listen(
        self, protocol_factory: ProtocolFactory, *, start_serving: bool = True
    ) -> AbstractServer:
        lock_path = self.path + ".lock"
        lock_fd: int | None = None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        identity: os.stat_result | None = None
        try:
            if self.lockfile:
                try:
                    lock_fd = _lock_file(lock_path)
                except _Locked as locked:
                    reason = f"{lock_path} is locked by another process{locked}"
                    raise listen_error(self.description, reason, OSError(errno.EADDRINUSE, reason)) from None
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                        os.unlink(self.path)  # stale: its server is gone, or it would hold the lock
            sock.bind(self.path)
            identity = os.lstat(self.path)
            if self.mode is not None:
                os.chmod(self.path, self.mode)
            server = await asyncio.get_running_loop().create_unix_server(
                protocol_factory, sock=sock, backlog=self.backlog, start_serving=start_serving
            )
        except BaseException as exc:
            sock.close()
            if identity is not None:
                _unlink_if_same(self.path, identity)
            if lock_fd is not None:
                _unlink_if_same(lock_path, os.fstat(lock_fd))
                os.close(lock_fd)
            if isinstance(exc, OSError) and not isinstance(exc, ListenError):
                raise self._failed(exc) from exc
            raise

        def cleanup() -> None:
            _unlink_if_same(self.path, identity)
            if lock_fd is not None:
                _unlink_if_same(lock_path, os.fstat(lock_fd))
                os.close(lock_fd)

        return _CleanupServer(server, cleanup)
