"""Moving a forwarded connection's bytes inside the kernel with ``splice(2)``: socket -> pipe -> socket.

A forwarder that reads into Python and writes back out copies every byte twice across the kernel boundary and
pays a Python call per chunk for it; with ``splice`` the bytes stay in the kernel (for TCP, the pipe takes
references to the received pages), and a chunk costs two system calls and no copy in the process. This is what
HAProxy does for plain TCP, and it is what makes a 1 GB stream cheap.

The relay works on duplicates of the two sockets' descriptors, registered with the loop's own ``add_reader`` and
``add_writer``, while the asyncio transports stay as the connections' handles: paused (so they read nothing
themselves), tracked by the server's drain like any other connection, and closed or aborted when the relay ends.
A duplicate is needed because a loop refuses ``add_reader`` on a descriptor a transport owns.

The promises of the copying path hold here too:

- **back-pressure**: a direction moves one pipe's worth (or one buffer's) at a time; while that cannot be sent
  to the destination, the source is not read. A pipe is the most it holds (``PIPE_SIZE`` bytes, kernel
  memory; a copied chunk at most ``COPY_SIZE``), and the rest waits in the kernel's socket buffers, where the
  sender feels it.
- **half-close**: the source's end-of-file becomes ``shutdown(SHUT_WR)`` on the destination once the pipe is
  empty; the pair ends when both directions have, or at once (aborted both ways) on an error either way.
- **few descriptors**: the duplicates are made only while they stay below a quarter of the soft descriptor
  limit (:func:`_relay_budget`); later pairs are copied. A direction holds a pipe only while bytes are in it.
  An emptied pipe goes back to a small per-thread pool, so an idle connection costs its two duplicates and no
  pipe. When no pipe can be had (the descriptor limit), a direction copies through a buffer instead, with the
  same bound.

Small chunks (a request, an interactive session, an echo) are copied even so: moving a few bytes through a pipe
costs the kernel more than copying them (on the bench machine, about 10% more system time per 64-byte round
trip), so a direction copies until a read fills its buffer (``COPY_SIZE``), then splices while the chunks stay
large (``SMALL``). Copying on the relay's own descriptors is still cheaper than through the asyncio transports:
one callback per chunk and no protocol calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import resource
import socket
import threading
from collections.abc import Callable

from tapster.services._relay_poller import poller_for

__all__ = ["COPY_SIZE", "PIPE_SIZE", "SMALL", "Relay", "can_relay"]

logger = logging.getLogger("tapster.services")

PIPE_SIZE = 256 * 1024
"""Bytes a direction's pipe holds (asked with F_SETPIPE_SZ; a smaller kernel limit leaves the default 64 KiB)."""

COPY_SIZE = 64 * 1024
"""Bytes one copying read takes; a read that fills it switches the direction to splice."""

SMALL = 16 * 1024
"""A splice that moves fewer bytes than this switches the direction back to copying."""

_IDLE_PIPES = 16
"""Emptied pipes kept per thread for the next chunk, so a busy forwarder does not make a pipe per chunk."""

_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_SET_PIPE_SIZE = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_STREAM_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)


def _relay_budget() -> int:
    """The lowest descriptor number the relay leaves alone: a quarter of the soft limit.

    A relayed pair holds four descriptors (its two sockets and their duplicates), a copied one two. Relaying
    every pair would halve how many connections fit under the limit (systemd's default soft limit is 1024);
    with the duplicates kept below a quarter of it, the forwarder carries at least seven eighths of what copying
    alone would, and the first pairs (usually the long, busy ones) still get the relay.
    """
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft // 4 if soft != resource.RLIM_INFINITY else 1 << 62


def can_relay(transport: asyncio.BaseTransport) -> bool:
    """Whether the transport is a plain stream socket (TCP or unix, not TLS) the relay can take over."""
    if not hasattr(os, "splice") or transport.get_extra_info("sslcontext") is not None:
        return False
    sock = transport.get_extra_info("socket")
    return sock is not None and sock.family in _STREAM_FAMILIES and sock.type == socket.SOCK_STREAM


class _PipePool(threading.local):
    """Empty pipes, one pool per thread (per loop, in practice)."""

    def __init__(self) -> None:
        self.idle: list[tuple[int, int]] = []

    def take(self) -> tuple[int, int] | None:
        if self.idle:
            return self.idle.pop()
        try:
            read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None  # the descriptor limit: the direction copies instead
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_end, _SET_PIPE_SIZE, PIPE_SIZE)
        return read_end, write_end

    def give(self, pipe: tuple[int, int]) -> None:
        if len(self.idle) < _IDLE_PIPES:
            self.idle.append(pipe)
        else:
            _close_pipe(pipe)

    def forget(self) -> None:
        """In a forked child: the idle pipes are the parent's too, and two processes must never share one."""
        idle, self.idle = self.idle, []
        for pipe in idle:
            _close_pipe(pipe)


_pipes = _PipePool()
os.register_at_fork(after_in_child=_pipes.forget)  # the forking thread is the child's only one


def _close_pipe(pipe: tuple[int, int]) -> None:
    for fd in pipe:
        os.close(fd)


class _CopyBuffer(threading.local):
    """The buffer small chunks are read into, one per thread: a chunk is sent (or what is left of it copied)
    before anything else runs, so one is enough for every connection."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(COPY_SIZE))


_copy_buffer = _CopyBuffer()


class _Direction:
    """Bytes from ``source`` to ``dest`` (two descriptors of the relay's own).

    A direction reads small chunks into the shared buffer and sends them (``readv``/``write``: for a few
    bytes a pipe costs more in the kernel than the copy), and switches to ``splice`` when a read fills the
    buffer: bulk data is coming. A splice that moves less than ``SMALL`` bytes switches it back.
    """

    def __init__(self, relay: Relay, source: int, dest: int) -> None:
        self.relay = relay
        self.source = source
        self.dest = dest
        self.bulk = False  # splice the next read
        self.pipe: tuple[int, int] | None = None
        self.in_pipe = 0  # bytes spliced into the pipe and not yet out of it
        self.held = b""  # bytes read into the buffer and not yet sent (a copy of their own)
        self.reading = False
        self.writing = False
        self.ended = False  # the source's end-of-file was passed on

    def start(self) -> None:
        self.reading = True
        self.relay.poller.add_reader(self.source, self._readable)

    def stop(self) -> None:
        """Forget the loop registrations and the pipe (the relay is ending)."""
        self._stop_reading()
        if self.writing:
            self.relay.poller.remove_writer(self.dest)
            self.writing = False
        if self.pipe is not None:
            pipe, self.pipe = self.pipe, None
            if self.in_pipe:
                _close_pipe(pipe)  # bytes no one will send: never reuse a pipe that is not empty
            else:
                _pipes.give(pipe)

    def _readable(self) -> None:
        try:
            if self.bulk:
                pipe = _pipes.take()  # reading only ever starts with the direction's pipe given back empty
                if pipe is not None:
                    self._splice(pipe)
                    return
            self._copy()
        except Exception:
            self.relay.crash()

    def _writable(self) -> None:
        try:
            self._send()
        except Exception:
            self.relay.crash()

    def _copy(self) -> None:
        view = _copy_buffer.view
        try:
            count = os.readv(self.source, (view,))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.relay.fail(exc)
            return
        if count == 0:
            self._end()
            return
        self.bulk = count == COPY_SIZE
        try:
            sent = os.write(self.dest, view[:count])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.relay.fail(exc)
            return
        if sent < count:
            self.held = bytes(view[sent:count])  # the buffer is read into again for the next chunk
            self._wait_for_dest()

    def _splice(self, pipe: tuple[int, int]) -> None:
        try:
            count = os.splice(self.source, pipe[1], PIPE_SIZE, flags=_FLAGS)
        except (BlockingIOError, InterruptedError):
            # Nothing to read, or TCP urgent data: splice stops at the urgent mark and says EAGAIN while the
            # socket stays readable, so retrying it would spin for ever. A copying read steps over the mark.
            _pipes.give(pipe)
            self.bulk = False
            self._copy()
            return
        except OSError as exc:
            _pipes.give(pipe)
            self.relay.fail(exc)
            return
        if count == 0:
            _pipes.give(pipe)
            self._end()
            return
        self.bulk = count >= SMALL
        self.pipe = pipe
        self.in_pipe = count
        self._send()

    def _send(self) -> None:
        """Send what is held; wait for the destination to be writable (not reading meanwhile) if it cannot all go."""
        try:
            if self.pipe is not None:
                while self.in_pipe:
                    self.in_pipe -= os.splice(self.pipe[0], self.dest, self.in_pipe, flags=_FLAGS)
                pipe, self.pipe = self.pipe, None
                _pipes.give(pipe)
            else:
                while self.held:
                    self.held = self.held[os.write(self.dest, self.held) :]
        except (BlockingIOError, InterruptedError):
            self._wait_for_dest()
            return
        except OSError as exc:
            self.relay.fail(exc)
            return
        if self.writing:
            self.relay.poller.remove_writer(self.dest)
            self.writing = False
        if not self.reading:
            self.reading = True
            self.relay.poller.add_reader(self.source, self._readable)

    def _stop_reading(self) -> None:
        if self.reading:
            self.relay.poller.remove_reader(self.source)
            self.reading = False

    def _wait_for_dest(self) -> None:
        self._stop_reading()
        if not self.writing:
            self.writing = True
            self.relay.poller.add_writer(self.dest, self._writable)

    def _end(self) -> None:
        """The source ended and everything it sent was passed on: pass its end-of-file on."""
        self._stop_reading()
        self.ended = True
        try:
            _shutdown_write(self.dest)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                self.relay.fail(exc)
                return
        self.relay.direction_ended()


def _shutdown_write(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_WR)
    finally:
        sock.detach()


class Relay:
    """Moves the bytes of one forwarded pair until both directions have ended or one fails.

    ``finished(error)`` is called once, after the relay let go of its descriptors: with None when both
    directions ended (the caller closes the two transports) or with the error that ended it (the caller aborts
    them).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        first: asyncio.BaseTransport,
        second: asyncio.BaseTransport,
        finished: Callable[[OSError | None], None],
    ) -> None:
        self.loop = loop
        self.finished = finished
        self.done = False
        fds: list[int] = []
        try:
            for transport in (first, second):
                fds.append(os.dup(transport.get_extra_info("socket").fileno()))
            if fds[-1] >= _relay_budget():
                raise OSError(errno.EMFILE, "over the relay's share of the descriptor limit")
            self.poller = poller_for(loop)
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        self.fds = fds
        self.directions = (_Direction(self, fds[0], fds[1]), _Direction(self, fds[1], fds[0]))

    def start(self) -> None:
        for direction in self.directions:
            direction.start()

    def direction_ended(self) -> None:
        if all(direction.ended for direction in self.directions):
            self._let_go()
            self.finished(None)

    def fail(self, exc: OSError) -> None:
        self._let_go()
        self.finished(exc)

    def crash(self) -> None:
        """An error that is not the connection's (a bug): say so, and end the pair rather than leave it hanging."""
        logger.exception("the splice relay failed; aborting the forwarded connection")
        self.fail(OSError(errno.EIO, "relay failed"))

    def close(self) -> None:
        """Let go at once (a transport was lost or aborted from outside)."""
        self._let_go()

    def _let_go(self) -> None:
        if self.done:
            return
        self.done = True
        for direction in self.directions:
            direction.stop()
        for fd in self.fds:
            os.close(fd)
        self.poller.release()
