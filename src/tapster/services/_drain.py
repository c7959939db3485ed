"""The pieces of a graceful drain: the lingering close, and how a stream handler learns the server is stopping.

A stopping server must never reset a peer for data the peer had sent, and must never invent input. Closing a TCP
socket whose receive queue still holds unread bytes makes the kernel send a reset (RST) instead of an orderly
end (FIN), and a request that crosses the close on the wire meets a socket that is gone: a reset again. So a
connection is ended with a *lingering close* (Apache's name for it): flush what is buffered, shut the write side
(the peer reads end-of-file), read and discard whatever still arrives until the peer closes too or ``linger``
seconds pass, then close. A quiet peer that never closes (a pooled idle connection) would hold every stop for the
linger, so the close comes earlier when the peer has sent nothing since and its stack holds our end-of-file:
a reset can no longer reach it before that end-of-file (see :func:`end_is_delivered`).

A stream handler is told the server is stopping through an :class:`asyncio.Event` (:func:`server_stopping`) and
:func:`unless_stopping`, which wraps one read so that a handler waiting for its next request returns instead of
waiting for the shutdown deadline. Nothing here is on the data path: it runs once per connection at stop.
"""

from __future__ import annotations

import asyncio
import contextvars
import fcntl
import socket
import termios
from asyncio.trsock import TransportSocket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar, cast

if TYPE_CHECKING:
    from tapster.services._connection import ConnectionTracker

__all__ = ["LINGER", "lingering_close", "server_stopping", "unless_stopping"]

T = TypeVar("T")

LINGER = 2.0
"""The most seconds a lingering close waits for a peer that is still sending after our end-of-file (Apache waits
2 s too): long enough for requests already on the wire to arrive and be discarded, short enough that a peer which
keeps sending does not hold the stop for long."""

# The tracker of the StreamServer whose handler runs in this task. Set once per handler connection (the handler
# runs in its own task, so its context is its own): how server_stopping() and unless_stopping() find their server.
serving: contextvars.ContextVar[ConnectionTracker | None] = contextvars.ContextVar(
    "tapster_serving", default=None
)


def shut_write_side(transport: asyncio.BaseTransport) -> bool:
    """Send our end-of-file (``shutdown(SHUT_WR)``) on the transport's socket; False if there is no such socket.

    Done on the socket rather than with ``transport.write_eof()``: after ``write_eof()`` a protocol that still
    writes gets a RuntimeError in its own code, while a write after this shutdown only fails with EPIPE, which
    the transport turns into a quiet ``connection_lost``. uvloop's transport sockets refuse ``shutdown()``: there
    a socket object of our own is made for the same descriptor (and detached, never closed).

    Raises:
        OSError: the peer is already gone (ENOTCONN).
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    fileno = sock.fileno()
    if fileno < 0:
        return False
    if isinstance(sock, _CAN_SHUT_DOWN):
        sock.shutdown(socket.SHUT_WR)
        return True
    # A drain does this once per open connection: tried and failed first, the borrowed socket's exception cost
    # more than the shutdown itself; given family, type and protocol, socket() need not ask the kernel for them.
    try:
        borrowed = socket.socket(sock.family, sock.type, sock.proto, fileno)
    except AttributeError:
        borrowed = socket.socket(fileno=fileno)
    try:
        borrowed.shutdown(socket.SHUT_WR)
    finally:
        borrowed.detach()
    return True


_CAN_SHUT_DOWN = (socket.socket, TransportSocket)


# Linux's tcp_states.h: still ESTABLISHED, or our FIN sent but not yet acknowledged by a peer that has not
# closed. Every other state after our shutdown means the peer holds our FIN (FIN_WAIT2, TIME_WAIT, CLOSE) or has
# closed its side as well (LAST_ACK, CLOSING): nothing of ours can be overtaken by a reset any more.
_TCP_OURS_IN_FLIGHT = (1, 4)
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)


def end_is_delivered(transport: asyncio.BaseTransport) -> bool:
    """True when the peer's stack has everything we sent, our end-of-file included, and nothing waits unread.

    For TCP that is the state FIN_WAIT2 (Linux's TCP_INFO), or a state where the peer has closed too (then its
    end-of-file may have been consumed already, so waiting for it would only wait out the linger); for a unix
    socket it holds as soon as we shut down.
    From then on closing cannot hurt the peer: it reads all our data and then EOF, and a reset the kernel may
    send if data arrives later comes after the EOF, which the peer has already (Linux reports EOF, not a reset,
    to a socket that had the FIN first). False where this cannot be known (another OS): the linger decides.
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        unread = bytearray(4)
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, unread)
        if unread != b"\0\0\0\0":
            return False
        if sock.family == socket.AF_UNIX:
            return True
        if _TCP_INFO is None:
            return False
        return sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 8)[0] not in _TCP_OURS_IN_FLIGHT
    except (OSError, AttributeError):
        return False


class _Lingerer(asyncio.Protocol):
    """Takes over a transport being closed: discards input, and hands ``connection_lost`` to the real protocol.

    After our end-of-file it closes the connection at the first of: the peer's end-of-file; the peer's stack
    holding our end-of-file while the peer has sent nothing since the lingering began (checked soon after the
    shutdown, then at doubling intervals: the kernel has no event for it); ``linger`` seconds. The middle case
    is what keeps an idle client that never reads (a pooled connection) from holding the stop for the linger;
    a client that is still sending is waited for, so what it had in flight is read and discarded, not reset.
    """

    def __init__(
        self,
        transport: asyncio.Transport,
        protocol: asyncio.BaseProtocol,
        linger: float,
        on_lost: Callable[[asyncio.BaseTransport], None] | None,
    ) -> None:
        self.transport = transport
        self.protocol = protocol
        self.linger = linger
        self.timer: asyncio.Handle | None = None
        self.shut = False
        self.heard = False  # the peer sent something during the lingering close
        self.deadline = 0.0
        self.delay = 0.005
        self.on_lost = on_lost

    def begin(self) -> None:
        transport = self.transport
        transport.set_protocol(self)
        transport.resume_reading()  # a protocol that had paused reading: the kernel queue must be drained
        if transport.get_write_buffer_size() == 0:
            self._shut()
        else:
            # With both limits at zero the transport calls resume_writing() exactly when its buffer is empty.
            transport.set_write_buffer_limits(high=0, low=0)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        if not self.shut:
            self._shut()

    def _shut(self) -> None:
        self.shut = True
        try:
            shut = shut_write_side(self.transport)
        except OSError:  # the peer is gone already
            self.transport.close()
            return
        if not shut:
            self.transport.close()
            return
        # Checked at once: over loopback the peer's stack has usually acknowledged our end-of-file by now, and a
        # drain of many idle connections then closes each without another trip through the loop.
        self.deadline = asyncio.get_running_loop().time() + self.linger
        self._check()

    def _check(self) -> None:
        self.timer = None
        if self.transport.is_closing():
            return
        if not self.heard and end_is_delivered(self.transport):
            self.transport.close()
            return
        loop = asyncio.get_running_loop()
        remaining = self.deadline - loop.time()
        if remaining <= 0:
            self.transport.close()
            return
        self.timer = loop.call_later(min(self.delay, remaining), self._check)
        self.delay *= 2

    def data_received(self, data: bytes) -> None:
        # Discarded: the server is closing, and reading it keeps the kernel from answering with a reset. The peer
        # is still sending, so wait for its end-of-file (or the linger) rather than closing under it.
        self.heard = True

    def eof_received(self) -> bool:
        return False  # the peer closed its side too: the transport closes now

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        try:
            self.protocol.connection_lost(exc)
        finally:
            if self.on_lost is not None:
                self.on_lost(self.transport)


def lingering_close(transport: asyncio.BaseTransport, linger: float = LINGER) -> None:
    """Close ``transport`` so that the peer reads end-of-file, never a reset, for what it had sent.

    What the transport has buffered is sent first; then the write side is shut (the peer reads EOF); whatever the
    peer still sends is read and discarded, and the protocol receives nothing more. The connection closes at the
    first of: the peer closes its side; the peer has sent nothing since and its TCP has acknowledged our
    end-of-file (a quiet peer that never closes, such as a pooled connection: about one round trip); ``linger``
    seconds after our end-of-file (a peer still sending). The protocol's ``connection_lost`` is called as usual
    when the connection is gone.

    A transport that is closing already is left alone. TLS (which cannot half-close) is closed with
    ``transport.close()``: TLS's own close, without the linger.

    Args:
        transport: the connection's transport (``self.transport`` in a Protocol, ``writer.transport`` in a handler).
        linger: the most seconds to wait for the peer after our end-of-file.
    """
    start_lingering_close(transport, linger)


def start_lingering_close(
    transport: asyncio.BaseTransport,
    linger: float,
    on_lost: Callable[[asyncio.BaseTransport], None] | None = None,
) -> bool:
    """:func:`lingering_close`; True if it lingers, and then ``on_lost(transport)`` is called once it is gone."""
    if transport.is_closing():
        return False
    # Duck-typed: uvloop's transports are not asyncio.Transport subclasses.
    can_write_eof = getattr(transport, "can_write_eof", None)
    if can_write_eof is None or not can_write_eof():
        transport.close()
        return False
    _Lingerer(cast(asyncio.Transport, transport), transport.get_protocol(), linger, on_lost).begin()
    return True


def is_lingering(transport: asyncio.BaseTransport) -> bool:
    """Whether ``transport`` is in a lingering close already (its protocol is then the lingerer)."""
    get_protocol = getattr(transport, "get_protocol", None)
    return get_protocol is not None and isinstance(get_protocol(), _Lingerer)


def _tracker(caller: str) -> ConnectionTracker:
    tracker = serving.get()
    if tracker is None:
        raise RuntimeError(
            f"{caller} works only inside a stream handler run by a StreamServer, StreamClient or ClientService"
        )
    return tracker


def server_stopping() -> asyncio.Event:
    """The event set when the StreamServer running the current handler begins to stop.

    Check it between requests (``if server_stopping().is_set(): return``) or wait on it; to wait for the next
    request *or* the stop, use :func:`unless_stopping`.

    Raises:
        RuntimeError: called outside a stream handler run by a StreamServer.
    """
    return _tracker("server_stopping()").stopping


async def unless_stopping(awaitable: Awaitable[T]) -> T | None:
    """Await ``awaitable`` (typically the read of the next request), or return None once the server is stopping.

    The usual handler loop ``while line := await unless_stopping(reader.readline()):`` then answers every request
    it had read and returns when the server stops, instead of waiting for the shutdown deadline. If the server
    begins to stop while the awaitable waits, it is cancelled (a StreamReader read keeps the bytes it had in its
    buffer) and None is returned. If the server is stopping already, the awaitable still runs as long as it can
    complete without waiting, so requests already buffered are served; if it has to wait, None is returned.

    A cancellation of the handler from elsewhere (the shutdown deadline) still propagates.

    Raises:
        RuntimeError: called outside a stream handler run by a StreamServer.
    """
    try:
        tracker = _tracker("unless_stopping()")
    except RuntimeError:
        if asyncio.iscoroutine(awaitable):
            awaitable.close()  # never awaited: no "was never awaited" warning on top of the error
        raise
    task = asyncio.current_task()
    assert task is not None
    pending: asyncio.Handle | None = None
    if tracker.stopping.is_set():  # interrupt only if the awaitable has to wait
        pending = asyncio.get_running_loop().call_soon(tracker.interrupt, task)
    tracker.waiting.add(task)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if task in tracker.interrupted:
            tracker.interrupted.discard(task)
            if task.uncancel() == 0:
                return None
        raise
    finally:
        tracker.waiting.discard(task)
        if pending is not None:
            pending.cancel()
        if task in tracker.interrupted:  # interrupted, but the awaitable swallowed the cancellation
            tracker.interrupted.discard(task)
            task.uncancel()
