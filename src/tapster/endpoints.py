r"""Endpoint description strings (Twisted's syntax) turned into asyncio listeners and connectors.

A description is ``TYPE:field:field...``: fields are separated by ``:``, a backslash makes the next character
literal (``tcp6:8080:interface=\:\:1``), a ``key=value`` field is a keyword and any other field is positional.
The type is case-insensitive, and a bare port number means ``tcp:PORT``.

Servers (:func:`parse_server`)::

    tcp:PORT[:interface=IP][:backlog=N]            tcp6:PORT[:interface=IPv6][:backlog=N]
    unix:PATH[:mode=0660][:lockfile=1][:backlog=N]
    ssl:PORT:privateKey=KEY[:certKey=CERT][:interface=IP][:backlog=N]   (also tls:)
    systemd:domain=INET|INET6|UNIX:index=N        (or name=FDNAME, from LISTEN_FDNAMES)
    udp:PORT[:interface=IP]

Clients (:func:`parse_client`)::

    tcp:host=H:port=P[:timeout=S]                 unix:path=P[:timeout=S]
    tls:host=H:port=P[:ca=FILE][:timeout=S]       (also ssl:)

Parsing checks everything that can be checked without touching the system, and raises
:class:`~tapster.errors.EndpointError` naming the whole string and the fault. Binding failures raise
:class:`~tapster.errors.ListenError` naming the endpoint; connecting raises plain :class:`OSError`.
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
import threading
from asyncio import AbstractEventLoop, AbstractServer, DatagramTransport, Transport
from collections.abc import Callable
from typing import Any, Final, Literal, TypeVar, cast

from tapster import _endpoint_parse as _p
from tapster._record import Record
from tapster.errors import EndpointError, ListenError

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

ServerKind = Literal["tcp", "tcp6", "unix", "ssl", "systemd", "udp"]
ClientKind = Literal["tcp", "unix", "tls"]

_P = TypeVar("_P", bound=asyncio.BaseProtocol)
_DP = TypeVar("_DP", bound=asyncio.DatagramProtocol)
ProtocolFactory = Callable[[], asyncio.BaseProtocol]


def _reason(exc: OSError) -> str:
    """The bare reason of a socket error ("address already in use"), without asyncio's wording around it."""
    if isinstance(exc, ssl.SSLError):  # its errno is an OpenSSL code, not an errno
        text = str(exc).split(" (_ssl.c:")[0]
    elif isinstance(exc, socket.gaierror) and exc.strerror:
        text = exc.strerror
    elif exc.errno is not None and exc.errno > 0:
        text = os.strerror(exc.errno)
    else:
        text = str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def _listen_error(description: str, reason: str, cause: OSError | None = None) -> ListenError:
    error = ListenError(f"cannot listen on {description}: {reason}")
    if cause is not None and not isinstance(cause, ssl.SSLError):  # an OpenSSL code is no errno
        error.errno = cause.errno
    return error


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


# --------------------------------------------------------------------------------------------------- servers


class ServerEndpoint(Record):
    """Where and how to listen; made by :func:`parse_server`, immutable, reusable for many listens.

    Endpoints compare equal when they are of the same class with the same attributes, and pickle (they are part
    of a saved application state).

    Attributes:
        description: the string as given (a bare int port becomes ``"tcp:PORT"``).
        kind: ``tcp``, ``tcp6``, ``unix``, ``ssl``, ``systemd`` or ``udp``.
    """

    __slots__ = ("description", "kind")

    description: Final[str]
    kind: Final[ServerKind]

    def __init__(self, *, description: str, kind: ServerKind) -> None:
        self.description = description
        self.kind = kind

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
        return _listen_error(self.description, _reason(exc), exc)


class TCPServerEndpoint(ServerEndpoint):
    """``tcp:`` / ``tcp6:``: an empty ``interface`` means every IPv4 (tcp) or IPv6 (tcp6) address."""

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
            return await asyncio.get_running_loop().create_server(
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


class _NeedsPassphrase(Exception):
    """Raised from the passphrase callback: a daemon must never stop to prompt on a terminal."""


def _no_passphrase() -> bytes:
    raise _NeedsPassphrase


class SSLServerEndpoint(TCPServerEndpoint):
    """``ssl:`` / ``tls:``: TCP with TLS; ``cert_key`` defaults to ``private_key`` (one PEM holding both)."""

    __slots__ = ("cert_key", "private_key")

    private_key: Final[str]
    cert_key: Final[str]

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
    ) -> None:
        super().__init__(description=description, kind=kind, port=port, interface=interface, backlog=backlog)
        self.private_key = private_key
        self.cert_key = cert_key

    def _ssl_context(self) -> ssl.SSLContext:
        """Load the key pair at listen time, so a bad file fails the listen, naming the file."""
        for role, path in (("private key", self.private_key), ("certificate", self.cert_key)):
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise _listen_error(
                    self.description, f"cannot read {role} {path!r}: {_reason(exc)}", exc
                ) from exc
        files = (
            repr(self.cert_key)
            if self.cert_key == self.private_key
            else f"{self.cert_key!r} and {self.private_key!r}"
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert_key, self.private_key, password=_no_passphrase)
        except _NeedsPassphrase:
            reason = f"the private key in {self.private_key!r} is encrypted; give an unencrypted key"
            raise _listen_error(self.description, reason) from None
        except OSError as exc:
            reason = f"cannot load certificate and key from {files}: {_reason(exc)}"
            raise _listen_error(self.description, reason, exc) from exc
        return context


class UDPServerEndpoint(ServerEndpoint):
    """``udp:``: a datagram socket; an empty ``interface`` means every IPv4 address."""

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
                    raise _listen_error(self.description, reason, OSError(errno.EADDRINUSE, reason)) from None
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


# --------------------------------------------------------------------------------------------------- systemd


_passed: _p.PassedSockets | None = None
_passed_lock = threading.Lock()


def claim_systemd_sockets() -> None:
    """Take the sockets systemd passed (socket activation), once per process; later calls do nothing.

    The sockets are ours only when ``LISTEN_PID`` is this process's pid, which stops being true after a fork:
    so the runner calls this before daemonizing, and a systemd endpoint calls it when parsed or listened on.
    ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` are removed from the environment (as systemd's
    ``sd_listen_fds(1)`` does) so that child processes do not take them for their own, and the passed fds are
    made close-on-exec.
    """
    global _passed
    with _passed_lock:
        if _passed is not None:
            return
        pid_text = os.environ.pop("LISTEN_PID", None)
        count_text = os.environ.pop("LISTEN_FDS", None)
        names_text = os.environ.pop("LISTEN_FDNAMES", None)
        _passed = _p.read_listen_env(pid_text, count_text, names_text, os.getpid())
        for fd in _passed.fds:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


_DOMAINS = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}


class SystemdServerEndpoint(ServerEndpoint):
    """``systemd:``: a listening socket passed by systemd, chosen by ``index`` (0 is fd 3) or by ``name``.

    The passed fd is duplicated, never consumed, so the same endpoint can be listened on again after a close.
    """

    __slots__ = ("domain", "index", "name")

    domain: Final[str]
    index: Final[int | None]
    name: Final[str | None]

    def __init__(
        self,
        *,
        description: str,
        kind: ServerKind,
        domain: str,
        index: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(description=description, kind=kind)
        self.domain = domain
        self.index = index
        self.name = name

    def _fd(self) -> int:
        claim_systemd_sockets()
        passed = _passed
        assert passed is not None
        if self.name is not None:
            for fd, fd_name in zip(passed.fds, passed.names, strict=False):
                if fd_name == self.name:
                    return fd
            names = ":".join(passed.names) if passed.names else "not set"
            reason = (
                f"no socket named {self.name!r} passed by systemd ({passed.note}, LISTEN_FDNAMES={names})"
            )
            raise _listen_error(self.description, reason)
        index = self.index or 0
        if index >= len(passed.fds):
            raise _listen_error(
                self.description, f"no socket passed by systemd at index {index} ({passed.note})"
            )
        return passed.fds[index]

    async def listen(
        self, protocol_factory: ProtocolFactory, *, start_serving: bool = True
    ) -> AbstractServer:
        fd = self._fd()
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError as exc:
            raise _listen_error(self.description, f"fd {fd} from systemd: {_reason(exc)}", exc) from exc
        try:
            if sock.family != _DOMAINS[self.domain] or sock.type != socket.SOCK_STREAM:
                raise _listen_error(
                    self.description,
                    f"the socket systemd passed on fd {fd} is {sock.family.name}/{sock.type.name}, "
                    f"not a stream socket of domain {self.domain}",
                )
            loop = asyncio.get_running_loop()
            # systemd already set the queue length; asyncio calls listen() again, so ask for the maximum.
            if sock.family == socket.AF_UNIX:
                return await loop.create_unix_server(
                    protocol_factory, sock=sock, backlog=socket.SOMAXCONN, start_serving=start_serving
                )
            return await loop.create_server(
                protocol_factory, sock=sock, backlog=socket.SOMAXCONN, start_serving=start_serving
            )
        except BaseException as exc:
            sock.close()
            if isinstance(exc, OSError) and not isinstance(exc, ListenError):
                raise self._failed(exc) from exc
            raise


# --------------------------------------------------------------------------------------------------- clients


class ClientEndpoint(Record):
    """Where to connect; made by :func:`parse_client`, immutable; equality and pickling as for servers.

    Attributes:
        description: the string as given.
        kind: ``tcp``, ``unix`` or ``tls``.
        timeout: seconds to wait for the connection (and the TLS handshake).
    """

    __slots__ = ("description", "kind", "timeout")

    description: Final[str]
    kind: Final[ClientKind]
    timeout: Final[float]

    def __init__(
        self, *, description: str, kind: ClientKind, timeout: float = DEFAULT_CONNECT_TIMEOUT
    ) -> None:
        self.description = description
        self.kind = kind
        self.timeout = timeout

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
    """``tcp:``: a host name or IP literal and a port."""

    __slots__ = ("host", "port")

    host: Final[str]
    port: Final[int]

    def __init__(
        self,
        *,
        description: str,
        kind: ClientKind,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        host: str,
        port: int,
    ) -> None:
        super().__init__(description=description, kind=kind, timeout=timeout)
        self.host = host
        self.port = port

    async def _connect(
        self, loop: AbstractEventLoop, protocol_factory: Callable[[], _P]
    ) -> tuple[Transport, _P]:
        return await loop.create_connection(protocol_factory, self.host, self.port)


class TLSClientEndpoint(TCPClientEndpoint):
    """``tls:`` / ``ssl:``: TCP with TLS; the server certificate is checked against ``ca`` or the system's."""

    __slots__ = ("ca",)

    ca: Final[str | None]

    def __init__(
        self,
        *,
        description: str,
        kind: ClientKind,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        host: str,
        port: int,
        ca: str | None = None,
    ) -> None:
        super().__init__(description=description, kind=kind, timeout=timeout, host=host, port=port)
        self.ca = ca

    def _context(self) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=self.ca)
        except OSError as exc:
            raise OSError(f"cannot load CA file {self.ca!r} for {self.description}: {_reason(exc)}") from exc

    async def _connect(
        self, loop: AbstractEventLoop, protocol_factory: Callable[[], _P]
    ) -> tuple[Transport, _P]:
        return await loop.create_connection(
            protocol_factory, self.host, self.port, ssl=self._context(), server_hostname=self.host
        )


class UNIXClientEndpoint(ClientEndpoint):
    """``unix:``: a socket file."""

    __slots__ = ("path",)

    path: Final[str]

    def __init__(
        self, *, description: str, kind: ClientKind, timeout: float = DEFAULT_CONNECT_TIMEOUT, path: str
    ) -> None:
        super().__init__(description=description, kind=kind, timeout=timeout)
        self.path = path

    async def _connect(
        self, loop: AbstractEventLoop, protocol_factory: Callable[[], _P]
    ) -> tuple[Transport, _P]:
        return await loop.create_unix_connection(protocol_factory, self.path)


# --------------------------------------------------------------------------------------------------- parsing


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
