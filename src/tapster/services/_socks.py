"""SOCKSServer: a SOCKS 4, 4a and 5 proxy (CONNECT; SOCKS5 UDP ASSOCIATE), with a destination policy and
RFC 1929 logins.

Each accepted connection goes through three steps:

1. **the handshake** (:mod:`tapster.services._socks_wire`), within ``handshake_timeout`` seconds. What the client
   sends is buffered in the protocol; past :data:`_BUFFER_LIMIT` bytes reading pauses until the handshake has
   read what it needs, so a client that floods the proxy cannot make it buffer more. Logins (SOCKS5 only) go
   through an :class:`~tapster.auth.Authenticator`: the same checkers, failure delay and per-address throttle
   as the manhole.
2. **the destination**: a hostname is resolved, and each address is checked against the
   :class:`~tapster.services._socks_policy.DestinationPolicy`; the proxy connects to the first allowed address
   that answers (within ``connect_timeout``), never to a name resolved a second time.
3. **the relay**: the forwarder of :class:`~tapster.services.PortForward` (back-pressure both ways, half-close
   passed on). Bytes the client sent after its request, and bytes the destination sent before the reply went
   out, are kept and passed on in order.

One log line per connection says who asked for what and what came of it. A handshake that fails (malformed,
truncated, too long, too slow, refused) is answered with the protocol's refusal where it has one and closed
lingering (:mod:`tapster.services._drain`), so the client reads the answer rather than a reset.

A UDP ASSOCIATE keeps its connection open and relays datagrams instead
(:mod:`tapster.services._socks_udp`) until that connection ends.

Stopping drains like :class:`~tapster.services.PortForward`: connections still in their handshake are closed,
and so are UDP associations; relayed ones run on until they end or the drain timeout.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tapster.services._drain import LINGER, start_lingering_close
from tapster.services._portforward import _Early, _Half, relay_pair
from tapster.services._socks_policy import DestinationPolicy, Network
from tapster.services._socks_udp import UDPAssociation
from tapster.services._socks_wire import HandshakeFailed, PasswordCheck, Reply, Request, negotiate
from tapster.services._stream_server import StreamServer

if TYPE_CHECKING:
    from tapster.auth import Checker

__all__ = ["SOCKSServer"]

logger = logging.getLogger("tapster.services")

DEFAULT_LISTEN = "tcp:1080:interface=127.0.0.1"

_BUFFER_LIMIT = 4096
"""Bytes buffered while the handshake runs before reading pauses (the largest handshake is about 1 KiB)."""

_ERRNO_REPLIES = {
    errno.ECONNREFUSED: Reply.CONNECTION_REFUSED,
    errno.ENETUNREACH: Reply.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: Reply.HOST_UNREACHABLE,
    errno.EHOSTDOWN: Reply.HOST_UNREACHABLE,
    errno.ETIMEDOUT: Reply.TTL_EXPIRED,
}


class _Refused(Exception):
    """The request was read whole but is not carried out: ``reason`` for the log, ``code`` for the client."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
        return f"{host}:{peer[1]}"
    return "unix" if isinstance(peer, str | bytes) else "-"


class _Outbound(_Early):
    """The destination side: what it sends before it is paired with the client (before the reply has been
    written) is kept, reading paused, and passed on after the reply."""


class _Client(_Half):
    """The accepted side: runs the handshake as a task reading from a bounded buffer, then relays."""

    def __init__(self, server: SOCKSServer) -> None:
        super().__init__()
        self.server = server
        self.buffer = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.task: asyncio.Task[None] | None = None
        self.client = "-"
        self.settled = False  # the connection's one log line is written (and, if refused, its end begun)
        self.association: UDPAssociation | None = None  # after a UDP ASSOCIATE: this connection only keeps it

    # -- the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.client = _peer(transport)
        self.task = asyncio.ensure_future(self._serve())

    def data_received(self, data: bytes | memoryview) -> None:
        if self.peer is not None:
            super().data_received(data)
            return
        if self.association is not None:
            return  # the control connection of a UDP association carries nothing more: discarded
        self.buffer += data
        if len(self.buffer) >= _BUFFER_LIMIT and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        if self.association is not None:
            self._end_association("the client closed its connection")
            return False
        if self.peer is None:
            self.ended = True  # the handshake sees it; after the request, it is passed on once connected
            self._wake()
            return True
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.association is not None:
            self._end_association("the connection was lost" if exc is not None else "the connection closed")
        if not self.settled:
            self.settled = True
            logger.warning("SOCKS client %s: the connection was lost during the handshake", self.client)
        super().connection_lost(exc)

    def stop_requested(self) -> None:
        """The server is stopping: a relayed connection runs on; one still in its handshake is closed.

        Done here, not in the handshake's task: that task may not have run its first step yet."""
        if self.task is not None:
            self.task.cancel()
        if self.association is not None:
            self._end_association("the server is stopping")
            self._end(None)
        elif not self.settled:
            self.settled = True
            logger.info("SOCKS client %s: closed in its handshake, the server is stopping", self.client)
            self._end(None)

    def _end_association(self, why: str) -> None:
        association, self.association = self.association, None
        if association is not None:
            association.close()
            if self.settled:  # announced; one that ends while its sockets are made is the handshake's line
                logger.info("SOCKS5 UDP %s: association ended: %s", self.client, why)

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the handshake's stream (HandshakeStream)

    async def _more(self) -> None:
        if self.ended:
            raise HandshakeFailed("the client ended its side in the middle of the handshake")
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter

    async def read_exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            await self._more()
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    async def read_until_nul(self, limit: int, what: str) -> bytes:
        while (end := self.buffer.find(0, 0, limit + 1)) < 0:
            if len(self.buffer) > limit:
                raise HandshakeFailed(f"{what} is longer than {limit} bytes")
            await self._more()
        data = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        return data

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    # -- the steps

    async def _serve(self) -> None:
        server = self.server
        request: Request | None = None
        try:
            try:
                async with asyncio.timeout(server.handshake_timeout):
                    request = await negotiate(self, server._check_password(self.transport))
            except TimeoutError:
                raise HandshakeFailed(f"no complete request within {server.handshake_timeout:g} s") from None
            if request.udp:
                await self._associate(request)
                return
            outbound, where = await self._connect(request)
        except HandshakeFailed as failed:
            self.settled = True
            logger.warning("SOCKS client %s: %s; closing", self.client, failed.reason)
            self._end(failed.reply)
            return
        except _Refused as refused:
            assert request is not None
            self.settled = True
            logger.warning(
                "SOCKS%s %s -> %s: %s",
                request.version,
                self.client,
                request.destination,
                refused.reason,
            )
            self._end(request.reply(refused.code))
            return
        except asyncio.CancelledError:
            return  # the connection was lost, or the server is stopping: stop_requested or connection_lost says so
        finally:
            self.task = None
        self.settled = True
        logger.info("SOCKS%s %s -> %s%s: connected", request.version, self.client, request.destination, where)
        self._pair(request, outbound)

    async def _associate(self, request: Request) -> None:
        """UDP ASSOCIATE: open the relay's sockets, tell the client where to send, keep the connection."""
        transport = self.transport
        assert transport is not None
        local, peer = transport.get_extra_info("sockname"), transport.get_extra_info("peername")
        if not (isinstance(local, tuple) and isinstance(peer, tuple)):
            raise _Refused("refused: UDP ASSOCIATE needs a TCP listener", Reply.COMMAND_NOT_SUPPORTED)
        association = UDPAssociation(
            self.server.policy, (str(peer[0]), request.port), self.client, self.server.connect_timeout
        )
        self.association = association
        try:
            bound = await association.open(str(local[0]))
        except OSError as exc:
            self.association = None
            association.close()
            raise _Refused(f"failed: cannot open a UDP relay: {exc}", Reply.GENERAL_FAILURE) from None
        except BaseException:
            self.association = None
            association.close()
            raise
        self.buffer.clear()
        transport.write(request.reply(Reply.SUCCEEDED, bound))
        self.settled = True
        host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        logger.info(
            "SOCKS5 %s -> UDP ASSOCIATE: relaying datagrams through %s:%d", self.client, host, bound[1]
        )
        if self.ended:
            self._end_association("the client closed its connection")
            transport.close()
        elif self.paused:
            self.paused = False
            transport.resume_reading()

    def _end(self, reply: bytes | None) -> None:
        """Answer (if there is an answer) and close without resetting the client (a lingering close)."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.lost:
            return
        if reply:
            transport.write(reply)
        start_lingering_close(transport, self.server.linger)  # closes at once where there is no half-close

    async def _connect(self, request: Request) -> tuple[_Outbound, str]:
        """Resolve, check and connect; return the destination's protocol and the address for the log."""
        server = self.server
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(server.connect_timeout):
                addresses = await self._addresses(request)
                refusals: list[str] = []
                allowed: list[tuple[Any, ...]] = []
                for family, sockaddr in addresses:
                    reason = server.policy.refusal(ipaddress.ip_address(sockaddr[0]))
                    if reason is None:
                        allowed.append((family, sockaddr))
                    elif reason not in refusals:
                        refusals.append(reason)
                if not allowed:
                    raise _Refused("refused: " + "; ".join(refusals), Reply.NOT_ALLOWED)
                error: OSError | None = None
                for family, sockaddr in allowed:
                    try:
                        return await self._open(loop, family, sockaddr), _shown(request, sockaddr)
                    except OSError as exc:
                        error = exc
                assert error is not None
                raise _Refused(
                    f"failed: {os.strerror(error.errno) if error.errno else error}",
                    _ERRNO_REPLIES.get(error.errno or 0, Reply.GENERAL_FAILURE),
                )
        except TimeoutError:
            raise _Refused(
                f"failed: no connection within {server.connect_timeout:g} s", Reply.TTL_EXPIRED
            ) from None

    async def _addresses(self, request: Request) -> list[tuple[int, tuple[Any, ...]]]:
        if request.version == "4" or not request.is_name:
            address = ipaddress.ip_address(request.host)
            if address.version == 4:
                return [(socket.AF_INET, (request.host, request.port))]
            return [(socket.AF_INET6, (request.host, request.port, 0, 0))]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                request.host, request.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except (socket.gaierror, UnicodeError) as exc:
            raise _Refused(
                f"failed: cannot resolve {request.host!r}: {exc}", Reply.HOST_UNREACHABLE
            ) from None
        seen: list[tuple[int, tuple[Any, ...]]] = []
        for family, _, _, _, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6) and (family, sockaddr) not in seen:
                seen.append((family, sockaddr))
        if not seen:
            raise _Refused(f"failed: {request.host!r} has no IP address", Reply.HOST_UNREACHABLE)
        return seen

    async def _open(
        self, loop: asyncio.AbstractEventLoop, family: int, sockaddr: tuple[Any, ...]
    ) -> _Outbound:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, sockaddr)
            _, outbound = await loop.create_connection(_Outbound, sock=sock)
        except BaseException:
            sock.close()
            raise
        return outbound

    def _pair(self, request: Request, outbound: _Outbound) -> None:
        """Send the success reply, then join the two sides and pass on what each sent early."""
        client, dest = self.transport, outbound.transport
        assert dest is not None
        if client is None or self.lost:
            dest.close()
            return
        bound = dest.get_extra_info("sockname")
        client.write(request.reply(Reply.SUCCEEDED, (str(bound[0]), int(bound[1])) if bound else None))
        self.peer, outbound.peer = outbound, self
        early, outbound.early = outbound.early, []
        for data in early:
            client.write(data)
        if outbound.lost:
            client.close()
            return
        if outbound.ended:
            outbound.ended = False
            if not _Half.eof_received(outbound):
                dest.close()
        else:
            dest.resume_reading()
        leftover = bytes(self.buffer)
        self.buffer.clear()
        if leftover:
            dest.write(leftover)
        if self.ended:
            self.ended = False
            if not _Half.eof_received(self):
                client.close()
            return
        was_paused, self.paused = self.paused, False
        if relay_pair(self, outbound):
            return  # moved in the kernel from now on (see PortForward)
        if was_paused:
            client.resume_reading()


def _shown(request: Request, sockaddr: tuple[Any, ...]) -> str:
    """The address connected to, for the log line, when the request named a host."""
    return f" ({sockaddr[0]})" if request.is_name else ""


class SOCKSServer(StreamServer):
    """A SOCKS 4, 4a and 5 proxy (CONNECT; SOCKS5 UDP ASSOCIATE) on ``listen`` (see the module docstring).

    Args:
        listen: a server endpoint string or a port number; by default port 1080 on 127.0.0.1 only.
        allow: the destination networks allowed (CIDR strings or networks; ``"public"`` for every public
            address); None: public addresses only.
        checkers: credential checkers for SOCKS5 logins (RFC 1929); when given, SOCKS4 and SOCKS5 without a
            login are refused. None or empty: no login.
        name: the service name and log label.
        handshake_timeout: seconds a client has to send a complete request (and log in).
        connect_timeout: seconds to resolve and connect to the destination.
        failure_delay: seconds before a failed login is answered.
        drain_timeout: seconds relayed connections get to end at stop; None: the runner's shutdown timeout.
    """

    def __init__(
        self,
        listen: str | int = DEFAULT_LISTEN,
        *,
        allow: Iterable[str | Network] | None = None,
        checkers: Iterable[Checker] | None = None,
        name: str = "SOCKSServer",
        handshake_timeout: float = 10.0,
        connect_timeout: float = 30.0,
        failure_delay: float = 1.0,
        drain_timeout: float | None = None,
        linger: float = LINGER,
    ) -> None:
        for label, value in (("handshake_timeout", handshake_timeout), ("connect_timeout", connect_timeout)):
            if not 0 < value < float("inf"):
                raise ValueError(f"{label} must be a finite number of seconds > 0, not {value!r}")
        self.policy = DestinationPolicy(allow)
        from tapster.auth import Authenticator  # only a server with logins pays for importing it

        checkers = list(checkers or ())
        self.authenticator = Authenticator(checkers, failure_delay=failure_delay) if checkers else None
        if self.authenticator is not None and not (
            self.authenticator.accepts_passwords or self.authenticator.accepts_anyone
        ):
            raise ValueError("SOCKS5 logins need a password checker: SSH keys cannot be used")
        self.handshake_timeout = float(handshake_timeout)
        self.connect_timeout = float(connect_timeout)
        super().__init__(listen, self._protocol, name=name, drain_timeout=drain_timeout, linger=linger)

    def _protocol(self) -> asyncio.BaseProtocol:
        return _Client(self)

    def _check_password(self, transport: asyncio.BaseTransport | None) -> PasswordCheck | None:
        """The handshake's password check for one connection, or None when no login is needed."""
        if self.authenticator is None:
            return None
        peer = transport.get_extra_info("peername") if transport is not None else None
        host = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
        return self.authenticator.attempts(host).password

    async def start(self) -> None:
        if self.authenticator is not None:
            self.authenticator.verify_files()  # privileges are dropped by now: judged for the serving user
        await super().start()
        login = "SOCKS5 login required" if self.authenticator is not None else "no login"
        logger.info("%s: destinations allowed: %s; %s", self.label, self.policy.description, login)

    def __repr__(self) -> str:
        return f"<SOCKSServer {self.endpoint.description} allow={self.policy.description}>"
