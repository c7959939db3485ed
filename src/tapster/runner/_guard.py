"""The shutdown guard: after a stop signal the process is gone within ``--shutdown-timeout`` + :data:`GRACE`.

The orderly stop runs on the event loop, so it can be defeated by the code it waits for: a ``stop()`` that calls
``time.sleep``, spins in a busy loop, or swallows ``CancelledError`` and carries on. Signal handlers installed
through the loop (``loop.add_signal_handler``) run only when the loop gets control back, so such a ``stop()``
makes a second SIGTERM useless as well.

The guard therefore lives outside the loop:

* SIGTERM and SIGINT get a plain Python-level handler (``signal.signal``) for the whole serve. CPython runs it in
  the main thread between bytecodes, and interrupts a blocking ``time.sleep`` or ``select`` to do so, so it runs
  even while the loop is blocked or busy. It only writes the signal number to a pipe: nothing else is safe in a
  handler that may interrupt any code, including the logging module.
* A daemon thread reads that pipe. It blocks SIGTERM and SIGINT itself, so the kernel never hands it a stop
  signal (whose handler would then wait for the main thread, perhaps the stuck one). The first signal starts
  the deadline (timeout + grace) and asks the loop to begin the orderly stop (``call_soon_threadsafe``); a
  second signal, or the deadline, forces the exit: the
  thread logs which services were still stopping (and where the loop is blocked, read from the main thread's
  stack), removes the pid file through the runner's callback, flushes the log and calls ``os._exit(1)``.
* With ``--drain-delay``, once the tree has started, the bound starts at timeout + delay + grace. A second
  signal during the delay does not force the exit: it is passed on to the loop (which ends the delay and starts
  the stop) and the deadline shrinks to timeout + grace from then; a signal after that forces the exit as usual.
* As a last resort against code that holds the GIL and never lets the thread run, the first signal also sets an
  interval timer (``SIGALRM``, default action: terminate) :data:`BACKSTOP` seconds past the deadline. When that
  fires the pid file stays behind, but it is unlocked, so the next start takes it over.

The runner's own end (save state, remove the pid file, "Server Shut Down.") and the forced exit exclude each other
through :meth:`ShutdownGuard.finishing`, so the two never remove the pid file or close the log at the same time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import CodeType, FrameType
from typing import Any

from tapster.runner._signals import signal_name
from tapster.service import MultiService, Service, service_path, still_stopping

logger = logging.getLogger("tapster")

GRACE = 2.0
"""Seconds past ``--shutdown-timeout`` before the guard forces the exit (the loop's own cancellation of stuck
stops gets ``_serve.CANCEL_WAIT`` of it, the rest is for saving state, removing the pid file and the last log
line)."""

EXIT_MARGIN = 0.25
"""The guard fires this much before the end of the grace, so that logging, removing the pid file and exiting
happen within the bound, not after it."""

BACKSTOP = 1.0
"""Seconds past the guard's deadline when SIGALRM terminates the process if the guard could not run at all."""

FORCED_STATUS = 1
"""Exit status of a forced exit (a stop that outlived the bound, or a second signal)."""

_GATE_WAIT = 2.0  # how long a forced exit waits for the runner's own last steps before exiting without them
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_DISARM = 0  # a byte no signal has: wakes the thread and tells it to end


class ShutdownGuard:
    """Bounds the time from the first stop signal to the end of the process, whatever the services do.

    Args:
        timeout: ``--shutdown-timeout``; the guard forces the exit so that the process is gone
            ``timeout + GRACE`` seconds after the first stop signal (it starts ``EXIT_MARGIN`` earlier).
        root: the service tree, to name the services still stopping.
        cleanup: called (from the guard's thread, after the log line naming the stuck services) to remove the
            pid file and write the last log line; whatever it raises is logged and the exit goes on.
        flush: flushes the log destination; called after ``cleanup`` and just before ``os._exit``.
        drain_delay: ``--drain-delay``: added to the bound; a second signal within it skips the rest of it.
    """

    def __init__(
        self,
        timeout: float,
        root: Service,
        cleanup: Callable[[], None],
        flush: Callable[[], None],
        drain_delay: float = 0.0,
    ) -> None:
        self.timeout = timeout
        self.drain_delay = drain_delay
        self._serving = False  # the tree has started: only then does a stop signal drain first
        self._draining = False  # between the first signal and the end of the drain delay
        self._drain_bound = 0.0  # the drain delay the deadline includes (0: signalled before serving)
        self._root = root
        self._cleanup = cleanup
        self._flush = flush
        self._gate = threading.Lock()
        self._lock = threading.Lock()  # guards _listener and _first
        self._listener: Callable[[int], None] | None = None
        self._first: int | None = None
        self._read_fd = -1
        self._write_fd = -1
        self._thread: threading.Thread | None = None
        self._previous: dict[int, Any] = {}
        self._alarm_set = False
        self._disarmed = False

    # -- the main thread -----------------------------------------------------------------------------------

    def install(self) -> None:
        """Take over SIGTERM and SIGINT and start the (idle) guard thread; call from the main thread."""
        self._read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._watch, name="tapster-shutdown-guard", daemon=True)
        self._thread.start()
        for signum in _STOP_SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def attach(self, listener: Callable[[int], None] | None) -> None:
        """Set who starts the orderly stop (called from the guard thread with the signal number), or clear it.

        A stop signal that came before a listener was attached is passed on at once.
        """
        with self._lock:
            self._listener = listener
            first = self._first
        if listener is not None and first is not None:
            listener(first)

    def serving(self) -> None:
        """The tree has started (called by the loop): a stop signal from now on runs the drain delay first."""
        self._serving = True

    def end_drain(self) -> None:
        """The loop has ended the drain delay (or had none to run): the next signal forces the exit."""
        self._draining = False

    @property
    def stop_signal(self) -> int | None:
        """The first stop signal received, if any."""
        return self._first

    @contextlib.contextmanager
    def finishing(self) -> Iterator[None]:
        """The runner's last steps (pid file, last log line, closing the log): never at once with a forced exit.

        On leaving, the guard is disarmed and the previous SIGTERM/SIGINT handlers are back.
        """
        self._gate.acquire()  # a forced exit holding it ends the process with os._exit: no deadlock
        try:
            yield
        finally:
            self._disarmed = True
            self._gate.release()
            self._close()

    def _close(self) -> None:
        """Give SIGTERM/SIGINT back, end the thread, close the pipe, cancel the backstop timer."""
        for signum, previous in self._previous.items():
            with contextlib.suppress(
                ValueError, OSError
            ):  # not the main thread, or the interpreter is ending
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        read_fd, write_fd = self._read_fd, self._write_fd
        if write_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(write_fd, bytes([_DISARM]))
            if self._thread is not None:
                self._thread.join(timeout=1.0)
            self._read_fd = (
                self._write_fd
            ) = -1  # before closing: a late handler must not write to a reused fd
            for fd in (read_fd, write_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self._alarm_set:  # the thread has ended: it sets no timer any more
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._alarm_set = False

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Runs in the main thread at any bytecode: touch nothing shared, take no lock, log nothing.
        with contextlib.suppress(OSError):  # a full pipe already holds a signal; a closed one: disarmed
            os.write(self._write_fd, bytes([signum]))

    # -- the guard thread ----------------------------------------------------------------------------------

    def _watch(self) -> None:
        # A stop signal sent to the process goes to any thread that does not block it. Caught here, its Python
        # handler would wait for the main thread, which may be the one stuck in a blocking call, and the signal
        # would be lost (seen once in CI: a start() in time.sleep outlived the bound). Blocked here, it can
        # only go to the main thread, whose blocking call it interrupts.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        deadline: float | None = None
        while True:
            wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                readable, _, _ = select.select([self._read_fd], [], [], wait)
            except (OSError, ValueError):  # the pipe was closed: disarmed
                return
            if not readable:
                self._force(None)
                return
            try:
                data = os.read(self._read_fd, 64)
            except BlockingIOError:
                continue
            except OSError:
                return
            for signum in data:
                if signum == _DISARM or self._disarmed:
                    return
                if deadline is None:
                    self._draining = self.drain_delay > 0 and self._serving
                    self._drain_bound = self.drain_delay if self._draining else 0.0
                    deadline = self._arm(self.timeout + self._drain_bound)
                    self._first_signal(signum)
                elif self._draining:  # skip the rest of the delay: the stop begins now, bounded from now
                    self._draining = False
                    deadline = min(deadline, self._arm(self.timeout))
                    self._pass_on(signum)
                else:
                    self._force(signum)
                    return

    def _arm(self, seconds: float) -> float:
        """The deadline ``seconds`` + grace from now; the backstop timer set a little past it."""
        with contextlib.suppress(OSError, ValueError):
            signal.setitimer(signal.ITIMER_REAL, seconds + GRACE + BACKSTOP - EXIT_MARGIN)
            self._alarm_set = True
        return time.monotonic() + seconds + GRACE - EXIT_MARGIN

    def _first_signal(self, signum: int) -> None:
        with self._lock:
            self._first = signum
        self._pass_on(signum)

    def _pass_on(self, signum: int) -> None:
        with self._lock:
            listener = self._listener
        if listener is not None:
            with contextlib.suppress(Exception):  # the loop is closed already: the runner finishes on its own
                listener(signum)

    def _force(self, signum: int | None) -> None:
        if not self._gate.acquire(timeout=_GATE_WAIT):
            os._exit(FORCED_STATUS)  # the runner's last steps are stuck: exit without them
        if self._disarmed:
            self._gate.release()
            return
        try:
            if signum is not None:
                reason = f"Received {signal_name(signum)} again: forcing shutdown."
            else:
                first = signal_name(self._first) if self._first is not None else "the stop signal"
                drain = f" + --drain-delay ({self._drain_bound:g} s)" if self._drain_bound else ""
                reason = (
                    f"Shutdown did not finish within --shutdown-timeout ({self.timeout:g} s){drain} + "
                    f"{GRACE:g} s of {first}: forcing shutdown."
                )
            logger.error("%s %s", reason, describe_stuck(self._root))
            try:
                self._cleanup()
            except BaseException as exc:
                logger.error("forced shutdown: %s: %s", type(exc).__name__, exc)
        finally:
            with contextlib.suppress(BaseException):
                self._flush()
            os._exit(FORCED_STATUS)


def describe_stuck(root: Service) -> str:
    """Name what keeps the tree from stopping: the service blocking the loop, and those whose stop is pending.

    Reads the main thread's stack (without touching its frames' locals) to find a ``stop()``/``start()`` of a
    service in the tree that is running right now, i.e. blocking the loop; ``still_stopping`` gives the services
    whose ``stop()`` was called and has not returned.
    """
    parts: list[str] = []
    blocking = _blocking_service(root)
    if blocking:
        parts.append(f"The event loop is blocked in {blocking}.")
    pending = _safe_still_stopping(root)
    names = ", ".join(f"{service_path(s)} ({type(s).__qualname__})" for s in pending)
    parts.append(f"Still stopping: {names}." if names else "No service's stop() is pending.")
    return " ".join(parts)


def _blocking_service(root: Service) -> str | None:
    frame: FrameType | None = sys._current_frames().get(threading.main_thread().ident or -1)
    if frame is None:
        return None
    codes: dict[CodeType, list[Service]] = {}
    for service in _walk(root):
        for method in ("stop", "start", "privileged_start"):
            code = getattr(getattr(type(service), method, None), "__code__", None)
            if isinstance(code, CodeType):
                codes.setdefault(code, []).append(service)
    while frame is not None and frame.f_code.co_filename == __file__:  # our own signal handler, running now
        frame = frame.f_back
    if frame is None:
        return None
    innermost = frame
    pending = set(_safe_still_stopping(root))
    while frame is not None:
        candidates = codes.get(frame.f_code)
        if candidates:
            preferred = [s for s in candidates if s in pending] or candidates
            where = f"{innermost.f_code.co_filename}:{innermost.f_lineno}"
            names = " or ".join(service_path(s) for s in preferred[:3])
            return f"{names} ({type(preferred[0]).__qualname__}.{frame.f_code.co_name}, at {where})"
        frame = frame.f_back
    if os.path.basename(innermost.f_code.co_filename) in _IDLE_FILES:
        return None  # the loop is waiting for events, not blocked
    return f"{innermost.f_code.co_name}() at {innermost.f_code.co_filename}:{innermost.f_lineno}"


_IDLE_FILES = frozenset({"selectors.py", "base_events.py", "threading.py"})


def _safe_still_stopping(root: Service) -> list[Service]:
    try:
        return still_stopping(root)
    except RuntimeError:
        return []


def _walk(root: Service) -> Iterator[Service]:
    yield root
    if isinstance(root, MultiService):
        for child in root:
            yield from _walk(child)
