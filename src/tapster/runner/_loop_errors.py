"""Out of descriptors while accepting: pause that listener with backoff and say so once per period, not per try.

asyncio's selector loop (CPython 3.11 to 3.13), when ``accept()`` fails with EMFILE, ENFILE, ENOBUFS or ENOMEM,
reports it to the loop's exception handler (a traceback in the log), stops watching the listener and schedules
a retry a second later; then it goes on with the same loop for up to ``backlog`` more ``accept()`` calls, each
failing the same way, each reported and each scheduling a retry of its own. A second later those retries fire
one after another; each watches the listener again, the listener is still readable, and each round multiplies
the retries. With ``ulimit -n 256`` and 400 clients this logged "Too many open files" 1.36 million times
(583 MB in 130 s) at 99 % CPU.

:func:`guard_accept_errors` puts two things on a selector loop. An exception handler that takes those reports
(the rest go on to the handler that was there, or the default one): it counts them and writes one line when a
listener starts failing, at most one summary per :data:`REPORT_PERIOD` while it goes on, and one when accepting
has worked for a whole period. And a wrapper of the loop's ``_start_serving`` that swallows asyncio's
per-failure retries and lets one retry of its own watch the listener again, after a pause that doubles from
:data:`FIRST_PAUSE` up to :data:`LONGEST_PAUSE`. Connections already open are served all along: only the
listener is paused.

uvloop (libuv) needs none of this: it keeps a spare descriptor, accepts and closes the connections it cannot
keep, and reports nothing; the guard is not installed on other loops.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import selector_events
from collections.abc import Callable
from typing import Any

__all__ = ["FIRST_PAUSE", "LONGEST_PAUSE", "REPORT_PERIOD", "guard_accept_errors"]

logger = logging.getLogger("tapster")

FIRST_PAUSE = 0.1
"""Seconds a listener is paused after its first failed accept; doubled at each failure in a row."""
LONGEST_PAUSE = 1.0
"""The longest pause: once clients leave, full service is back within this."""
REPORT_PERIOD = 10.0
"""At most one line per listener in this many seconds while accepting fails; also the quiet time that ends it."""

_MESSAGE = "socket.accept() out of system resource"  # asyncio's words for it (selector_events.py)

Handler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


def guard_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Install the guard on ``loop`` if it is an asyncio selector loop; keep its current exception handler."""
    if not isinstance(loop, selector_events.BaseSelectorEventLoop) or not hasattr(loop, "_start_serving"):
        return
    guard = _Guard(loop, loop._start_serving, loop.get_exception_handler())
    loop._start_serving = guard.start_serving  # type: ignore[method-assign]
    loop.set_exception_handler(guard.handle)


class _Listener:
    """One listening socket: how asyncio serves it, and how its accepts have been failing."""

    def __init__(
        self, sock: Any, protocol_factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.args = args
        self.kwargs = kwargs
        self.retries_to_swallow = 0  # asyncio schedules one retry per failed accept(); ours decides instead
        self.failures = 0  # failed accept() calls since the last line about them
        self.total = 0  # ... since this episode began
        self.since = 0.0  # loop time the episode began; 0: accepting works
        self.said_at = 0.0
        self.last_failure = 0.0
        self.reason = ""
        self.pause = FIRST_PAUSE
        self.resume: asyncio.TimerHandle | None = None
        self.check: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        try:
            address = self.sock.getsockname()
        except OSError:
            return "a listener"
        if isinstance(address, tuple) and len(address) >= 2:
            host = f"[{address[0]}]" if ":" in str(address[0]) else str(address[0])
            return f"listener {host}:{address[1]}"
        return f"listener {address!r}"

    def serving(self) -> bool:
        server = self.args[1] if len(self.args) > 1 else self.kwargs.get("server")
        is_serving = getattr(server, "is_serving", None)
        return self.sock.fileno() >= 0 and (is_serving is None or bool(is_serving()))


class _Guard:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        start_serving: Callable[..., None],
        previous: Handler | None,
    ) -> None:
        self.loop = loop
        self.original = start_serving
        self.previous = previous
        self.listeners: dict[int, _Listener] = {}

    def start_serving(self, protocol_factory: Any, sock: Any, *args: Any, **kwargs: Any) -> None:
        """The loop's ``_start_serving``: watch ``sock`` for connections, unless this is a retry to swallow."""
        fd = sock.fileno()
        if fd < 0:
            return  # a retry for a listener closed meanwhile: nothing to watch (asyncio would log an error)
        listener = self.listeners.get(fd)
        if listener is not None and listener.sock is sock:
            if listener.retries_to_swallow > 0:
                listener.retries_to_swallow -= 1
                return
            listener.protocol_factory, listener.args, listener.kwargs = protocol_factory, args, kwargs
        else:
            for closed in [known for known in self.listeners.values() if known.sock.fileno() < 0]:
                self._forget(closed)  # listeners closed since: do not keep their servers alive
            self.listeners[fd] = _Listener(sock, protocol_factory, args, kwargs)
        self.original(protocol_factory, sock, *args, **kwargs)

    def handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's exception handler: accept failures are counted here; the rest go on as before."""
        exc = context.get("exception")
        transport_socket = context.get("socket")
        if context.get("message") == _MESSAGE and isinstance(exc, OSError) and transport_socket is not None:
            listener = self.listeners.get(transport_socket.fileno())
            if listener is not None:
                self._failed(listener, exc)
                return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def _failed(self, listener: _Listener, exc: OSError) -> None:
        now = self.loop.time()
        listener.retries_to_swallow += 1
        listener.failures += 1
        listener.total += 1
        listener.last_failure = now
        if listener.resume is None:  # the first failure since the listener was last watched: pause it
            if listener.since:
                listener.pause = min(listener.pause * 2, LONGEST_PAUSE)
            listener.resume = self.loop.call_later(listener.pause, self._resume, listener)
        if not listener.since:
            listener.since = now
            listener.said_at = now
            listener.reason = f"[Errno {exc.errno}] {exc.strerror}" if exc.strerror else str(exc)
            listener.failures = 0
            logger.warning(
                "%s: cannot accept connections: %s; pausing it (retried with backoff up to %g s), open"
                " connections are still served; at most one line every %g s until it recovers",
                listener.name,
                listener.reason,
                LONGEST_PAUSE,
                REPORT_PERIOD,
            )
        elif now - listener.said_at >= REPORT_PERIOD:
            logger.warning(
                "%s: still cannot accept connections (%s): %d failed accept() calls in the last %.0f s",
                listener.name,
                listener.reason,
                listener.failures,
                now - listener.said_at,
            )
            listener.said_at = now
            listener.failures = 0

    def _resume(self, listener: _Listener) -> None:
        listener.resume = None
        if not listener.serving():
            self._forget(listener)
            return
        self.original(listener.protocol_factory, listener.sock, *listener.args, **listener.kwargs)
        if listener.check is None:
            listener.check = self.loop.call_later(REPORT_PERIOD, self._check, listener)

    def _check(self, listener: _Listener) -> None:
        """End the episode once accepting has not failed for a whole period (so that it cannot flap)."""
        listener.check = None
        if not listener.since:
            return
        quiet = self.loop.time() - listener.last_failure
        if quiet < REPORT_PERIOD:
            listener.check = self.loop.call_later(REPORT_PERIOD - quiet, self._check, listener)
            return
        if listener.serving():
            logger.warning(
                "%s: accepting connections again, after %d failed accept() calls over %.0f s (%s)",
                listener.name,
                listener.total,
                listener.last_failure - listener.since,
                listener.reason,
            )
        listener.since = 0.0
        listener.total = listener.failures = 0
        listener.pause = FIRST_PAUSE

    def _forget(self, listener: _Listener) -> None:
        for fd, known in list(self.listeners.items()):
            if known is listener:
                del self.listeners[fd]
        for handle in (listener.resume, listener.check):
            if handle is not None:
                handle.cancel()
