"""PortForward: every connection accepted on one endpoint is joined to a new connection to another.

Both ends are tapster endpoints (tcp, tcp6, ssl/tls, unix, systemd to listen; tcp, tls, unix to connect), so a
unix socket can be forwarded to a TCP port and the other way round. Three promises:

- **back-pressure both ways**: when one side's transport holds more than its high-water mark of unsent bytes,
  the other side stops being read until it drains (asyncio's ``pause_writing``/``resume_writing`` drive
  ``pause_reading``/``resume_reading``). A peer that does not read makes the kernel's buffers fill and the
  sender wait: the forwarder itself holds at most about one high-water mark (64 KiB) per direction.
- **half-close passed on**: a side's end-of-file becomes ``shutdown(SHUT_WR)`` on the other, whose answer
  still flows back; the pair closes when both directions have ended (or either side is lost). A TLS side has
  no half-close: its end closes the pair, after what was buffered is written.
- **drain on stop**: the listener closes; open connections run on until they end by themselves, within the
  service's ``drain_timeout`` or the runner's ``--shutdown-timeout``; what is left then is aborted and counted
  in the log (a forwarder cannot know where a request ends, so it never cuts a connection short on its own).

The client side is not read until the destination is connected; if the destination cannot be reached, the
client's connection is closed and one line says why.

Once joined, a pair of plain sockets (TCP or unix, no TLS) is handed to the kernel-side relay of
``services/_splice.py`` (:func:`relay_pair`), which keeps the same three promises with ``splice(2)``: what is
above describes the copying path that TLS pairs, ``splice=False`` and the relay's fallbacks use.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from tapster.endpoints import ClientEndpoint, parse_client
from tapster.services._drain import LINGER
from tapster.services._splice import Relay, can_relay
from tapster.services._stream_server import StreamServer

__all__ = ["PortForward", "relay_pair"]

logger = logging.getLogger("tapster.services")


_READ_SIZE = 256 * 1024
"""Bytes one read may take: asyncio's own read size, but read into a buffer that is reused."""


class _ReadBuffer(threading.local):
    """The buffer every side reads into, one per thread (one per event loop, in practice).

    One is enough: a read is handed to the peer's transport before anything else runs, so the buffer is free
    again when the next read comes, whichever connection it is for. A buffer per connection would cost 256 KiB
    of memory for each idle one.
    """

    view: memoryview | None = None

    def take(self) -> memoryview:
        view = self.view
        if view is None:
            view = self.view = memoryview(bytearray(_READ_SIZE))
        return view


_read_buffer = _ReadBuffer()


class _Half(asyncio.BufferedProtocol):
    """One side of a forwarded pair: what it reads is written to ``peer``'s transport.

    A buffered protocol: the transport reads straight into the shared buffer (``recv_into``), and the bytes
    are written to the peer from there, so a chunk costs no allocation and no copy in Python. The buffer is
    reused only while no transport holds any of it: when a write could not be sent at once, the transport may
    keep a reference to the unsent part (Python 3.12+ and uvloop do), so that buffer is left to the transport
    and the next read gets a new one; and what is written while unsent data is queued is written as a copy
    of its own bytes, so a stalled direction holds at most one such buffer plus the high-water mark.

    A side whose pair is moved by a :class:`Relay` reads and writes nothing itself: its transport is paused and
    stays only as the connection's handle.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.ended = False  # this side sent its end-of-file
        self.lost = False
        self.throttled = False  # the peer's transport asked us to stop reading (its buffer is full)
        self.relay: Relay | None = None
        self._lent: memoryview | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        self._lent = _read_buffer.take()
        return self._lent

    def buffer_updated(self, nbytes: int) -> None:
        lent, self._lent = self._lent, None
        assert lent is not None
        self.data_received(lent[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            return
        transport = peer.transport
        if transport.get_write_buffer_size():
            # Queued behind unsent data: hand over a copy of just these bytes. A view would keep the whole
            # 256 KiB buffer alive for a few bytes, and a peer that reads nothing would make every small
            # chunk cost that much while back-pressure counts only the chunk.
            transport.write(bytes(data))
            return
        transport.write(data)
        if transport.get_write_buffer_size():
            _read_buffer.view = None  # the transport may hold the unsent part: that buffer is its now

    def eof_received(self) -> bool:
        self.ended = True
        peer = self.peer
        if peer is None or peer.transport is None or peer.lost:
            return False
        if peer.ended or not peer.transport.can_write_eof():
            peer.transport.close()  # both directions are done (or the peer cannot half-close): end the pair
            return False
        peer.transport.write_eof()  # written after what is still buffered
        return True  # keep our side open: the answer still comes back through it

    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.throttled = True
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.lost:
            peer.throttled = False
            peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.relay is not None:
            self.relay.close()  # aborted from outside (the drain's deadline): the relay lets go first
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.lost:
            if exc is None:
                peer.transport.close()  # what is buffered for the peer is still written first
            else:
                peer.transport.abort()


def relay_pair(first: _Half, second: _Half) -> bool:
    """Hand a joined pair to a kernel-side :class:`Relay` if both sides are plain sockets with nothing queued.

    False leaves the pair to copy through the process: a TLS side, bytes still queued in a transport, a side
    that has ended already, or no descriptor left for the relay's duplicates.
    """
    for side in (first, second):
        transport = side.transport
        if side.lost or side.ended or transport is None or transport.get_write_buffer_size():
            return False
        if not can_relay(transport):
            return False
    assert first.transport is not None and second.transport is not None

    def finished(exc: OSError | None) -> None:
        for side in (first, second):
            side.relay = None
            if side.transport is not None and not side.lost:
                if exc is None:
                    side.transport.close()
                else:
                    side.transport.abort()

    try:
        relay = Relay(asyncio.get_running_loop(), first.transport, second.transport, finished)
    except OSError:
        return False
    for side in (first, second):
        side.transport.pause_reading()  # type: ignore[union-attr]  # uvloop may be reading already
        side.relay = relay
    relay.start()
    return True


class _Early(_Half):
    """A side that may read before it has a peer: what it reads then is kept (and reading paused), and so is its
    end-of-file, for :meth:`pass_early` to pass on once paired."""

    def __init__(self) -> None:
        super().__init__()
        self.early: list[bytes] = []

    def data_received(self, data: bytes | memoryview) -> None:
        if self.peer is None:
            self.early.append(bytes(data))  # a copy: the buffer it is in is read into again
            if self.transport is not None:
                self.transport.pause_reading()
            return
        super().data_received(data)

    def eof_received(self) -> bool:
        if self.peer is None:
            self.ended = True  # passed on once paired
            return True
        return super().eof_received()

    def pass_early(self) -> bool:
        """Write what was read before pairing to the peer, and its end-of-file; False if that ended the pair."""
        early, self.early = self.early, []
        for data in early:
            super().data_received(data)
        if self.ended:
            self.ended = False
            if not super().eof_received():
                assert self.transport is not None
                self.transport.close()
                return False
        return True


class _Inbound(_Early):
    """The accepted side: connects to the destination, and reads only once it is connected.

    Reading is paused until then; what arrives anyway (uvloop starts reading after ``connection_made`` even when
    it paused reading) is kept, with any end-of-file, and passed on once the destination is connected. The
    destination's side keeps what it reads before the pairing in the same way.
    """

    def __init__(self, dest: ClientEndpoint, splice: bool) -> None:
        super().__init__()
        self.dest = dest
        self.splice = splice
        self.connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport.pause_reading()  # type: ignore[union-attr]
        self.connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        try:
            _, outbound = await self.dest.connect(_Early)
        except (OSError, TimeoutError) as exc:
            logger.warning("cannot connect to %s: %s; closing the client's connection", self.dest, exc)
            if self.transport is not None and not self.lost:
                self.transport.close()
            return
        except Exception:  # a bug, or a module gone after a chroot: never leave the client hanging
            logger.exception("connecting to %s failed; closing the client's connection", self.dest)
            if self.transport is not None and not self.lost:
                self.transport.close()
            return
        finally:
            self.connecting = None
        if self.lost:
            outbound.transport.close()  # type: ignore[union-attr]
            return
        self.peer, outbound.peer = outbound, self
        if not (self.pass_early() and outbound.pass_early()):
            return
        if self.splice and relay_pair(self, outbound):
            return
        for side in (self, outbound):
            if not side.lost and not side.ended and not side.throttled:
                side.transport.resume_reading()  # type: ignore[union-attr]

    def stop_requested(self) -> None:
        """The server is stopping: a forwarded connection runs on until it ends (or the drain times out)."""

    def connection_lost(self, exc: Exception | None) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        super().connection_lost(exc)


class PortForward(StreamServer):
    """Listen on ``listen`` and forward each connection to ``dest`` (see the module docstring).

    Args:
        listen: a server endpoint string (``"tcp:8000"``, ``"unix:/run/app.sock"``) or a port number.
        dest: a client endpoint string (``"tcp:example.com:80"``, ``"unix:path=/run/db.sock"``) or endpoint.
        name: the service name and log label.
        drain_timeout: seconds open connections get to end at stop; None: until the runner's shutdown timeout.
        splice: move the bytes of plain TCP/unix pairs inside the kernel (``splice(2)``, Linux); False copies
            them through the process as for TLS.
    """

    def __init__(
        self,
        listen: str | int,
        dest: str | ClientEndpoint,
        *,
        name: str = "PortForward",
        drain_timeout: float | None = None,
        linger: float = LINGER,
        splice: bool = True,
    ) -> None:
        self.dest = parse_client(dest) if isinstance(dest, str) else dest
        self.splice = splice
        super().__init__(listen, self._protocol, name=name, drain_timeout=drain_timeout, linger=linger)

    def _protocol(self) -> asyncio.BaseProtocol:
        return _Inbound(self.dest, getattr(self, "splice", True))

    def __repr__(self) -> str:
        return f"<PortForward {self.endpoint.description} -> {self.dest.description}>"
