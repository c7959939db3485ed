"""The serving process: start the tree, wait for a signal, stop it within the shutdown timeout.

This module owns the event loop's whole life. Everything before it (parsing, loading, the pid file, the log,
daemonizing) happened already; everything after (saving state, removing the pid file, "Server Shut Down.")
happens once it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from tapster._version import __version__
from tapster.errors import StartupError, TapsterError
from tapster.runner._config import RunConfig
from tapster.runner._debug import install_debug_exception_handler
from tapster.runner._loop_errors import guard_accept_errors
from tapster.runner._reactors import describe_loop, new_event_loop
from tapster.runner._signals import SignalHandlers, signal_name
from tapster.runner._state import ServerState
from tapster.service import Service, service_path, still_stopping

if TYPE_CHECKING:
    from tapster.runner._guard import ShutdownGuard
    from tapster.runner._status import StatusServer

# Seconds the loop waits for cancelled stops to end (the shutdown guard's GRACE leaves room for it).
CANCEL_WAIT = 1.0

logger = logging.getLogger("tapster")


def _nothing() -> None:
    pass


def _false() -> bool:
    return False


def _no_answer(_command: str, _outcome: str, _reason: str) -> None:
    pass


class Outcome(enum.IntEnum):
    """How a run ended; the value is the process exit status."""

    CLEAN = 0  # started, then stopped within the timeout (or stopped during start-up)
    UNCLEAN = 1  # the stop timed out, was forced, or a stop raised


class _Phase(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"  # --drain-delay: stop signalled, listeners still serving
    STOPPING = "stopping"
    FORCED = "forced"


class Hooks:
    """What the runner around the loop wants to hear about; every hook does nothing unless given.

    Built once, complete, by the runner. A plain class rather than a dataclass: dataclasses generate code at
    import, and this module is on the start-up path that bench/startup_echo.py measures.
    """

    def __init__(
        self,
        *,
        starting: Callable[[], None] = _nothing,
        ready: Callable[[], None] = _nothing,
        rotate: Callable[[], bool] = _false,
        reopen: Callable[[], bool] = _false,
        drop_privileges: Callable[[], None] = _nothing,
        draining: Callable[[], object] = _nothing,
        stopping: Callable[[], object] = _nothing,
        answer: Callable[[str, str, str], None] = _no_answer,
        guard: ShutdownGuard | None = None,
        extra_signals: dict[int, Callable[[], None]] | None = None,
    ) -> None:
        self.starting = starting  # the loop runs, the tree is about to start (systemd: status, watchdog)
        self.ready = ready  # the tree has started: tell the launcher / systemd
        self.rotate = rotate  # SIGUSR1; True if a log file was rotated
        self.reopen = reopen  # SIGHUP; True if a log file was reopened
        self.drop_privileges = drop_privileges  # between privileged_start and start
        self.draining = draining  # a stop signal was received: no longer ready (runner/_drain.py)
        self.stopping = stopping  # the tree stops now (after the drain delay, if any)
        self.answer = answer  # how a SIGUSR1/SIGHUP went, for `tapster ctl` (command, ok|skipped|failed, why)
        # SIGTERM/SIGINT come through the guard (a handler outside the loop) when there is one; else the loop's
        self.guard = guard
        self.extra_signals = dict(extra_signals or {})


class StartFailed(StartupError):
    """The tree failed to start; ``__cause__`` holds the original exception."""


def run_loop(config: RunConfig, root: Service, hooks: Hooks) -> Outcome:
    """Create the configured event loop, serve ``root`` on it until a stop signal, and close it."""
    loop = new_event_loop(config.reactor)
    asyncio.set_event_loop(loop)
    if config.debug:
        loop.set_debug(True)
        install_debug_exception_handler(loop)
    guard_accept_errors(loop)  # out of descriptors: pause listeners quietly (docs/running.md, "Logs")
    try:
        return loop.run_until_complete(_Server(config, root, hooks, loop).serve())
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


class _Server:
    def __init__(
        self, config: RunConfig, root: Service, hooks: Hooks, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.config = config
        self.root = root
        self.hooks = hooks
        self.loop = loop
        self.phase = _Phase.STARTING
        self.stop_requested = asyncio.Event()
        self.drain_skipped = asyncio.Event()
        self.stop_task: asyncio.Task[None] | None = None
        # what --status reports (docs/status.md); a drain for load balancers calls state.begin_drain()
        self.state = ServerState()
        self.status: StatusServer | None = None
        if config.status is not None:  # built now, so the log lines from here on are counted
            from tapster.runner._status import StatusServer, TreeView

            self.status = StatusServer(config.status, config.health_timeout, TreeView(root, self.state))

    async def serve(self) -> Outcome:
        logger.info("tapster %s (python %d.%d.%d) starting up.", __version__, *sys.version_info[:3])
        logger.info("event loop: %s", describe_loop(self.loop))
        signals = SignalHandlers(self.loop)
        guard = self.hooks.guard
        if guard is not None:
            guard.attach(self._stop_signal_from_guard)
        else:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signals.install(signum, self._on_stop_signal)
        signals.install(signal.SIGUSR1, self._on_rotate)
        signals.install(signal.SIGHUP, self._on_reopen)
        for extra, callback in self.hooks.extra_signals.items():
            signals.install(extra, _ignore_signum(callback))
        try:
            self.hooks.starting()
            if not await self._start():
                return Outcome.CLEAN
            self.phase = _Phase.RUNNING
            self.state.set_phase("running")
            if self.hooks.guard is not None:
                self.hooks.guard.serving()
            self.hooks.ready()
            await self.stop_requested.wait()
            await self._drain()
            return await self._stop()
        finally:
            if self.status is not None:  # after the tree: /readyz answers 503 through the whole stop
                await self.status.stop()
            if guard is not None:
                guard.attach(None)
            signals.restore()

    def _stop_signal_from_guard(self, signum: int) -> None:
        """Called in the guard's thread on the first stop signal: hand it to the loop."""
        self.loop.call_soon_threadsafe(self._on_stop_signal, signum)

    async def _start(self) -> bool:
        """Start the tree; False if a stop signal came first (what had started is stopped again)."""
        start = asyncio.ensure_future(self._start_tree())
        waiter = asyncio.ensure_future(self.stop_requested.wait())
        try:
            await asyncio.wait({start, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            await asyncio.wait({waiter})  # let it end here, not be destroyed pending when the loop closes
        if start.done():
            exc = start.exception()
            if exc is not None:
                if isinstance(exc, TapsterError):
                    raise exc
                where = getattr(exc, "tapster_service_path", None)
                self.state.failed_service = where
                prefix = f"{where}: " if where else ""
                from tapster._extras import install_hint

                raise StartFailed(f"{prefix}{type(exc).__name__}: {exc}{install_hint(exc)}") from exc
            return True
        logger.info("Stopping during start-up: stopping the services that started.")
        self.state.set_phase("stopping")
        start.cancel()
        try:
            await start
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("error while abandoning start-up")
        return False

    async def _start_tree(self) -> None:
        try:
            if self.status is not None:  # its own listener first: a port in use fails before the tree starts
                await self.status.start()
            await self.root.privileged_start()
            self.hooks.drop_privileges()
            await self.root.start()
        except (SystemExit, KeyboardInterrupt) as exc:
            # asyncio lets these escape the loop ("Task exception was never retrieved" and a traceback); a
            # service calling sys.exit() in start() is a failed start like any other.
            where = getattr(exc, "tapster_service_path", None)
            prefix = f"{where}: " if where else ""
            what = f"sys.exit({exc.code!r}) called" if isinstance(exc, SystemExit) else "KeyboardInterrupt"
            raise StartFailed(f"{prefix}{what} while starting") from exc

    async def _drain(self) -> None:
        """--drain-delay: the listeners keep accepting and serving until the delay ends or a second signal."""
        if self.phase is _Phase.DRAINING:
            delay = self.config.drain_delay
            logger.info(
                "Draining for %g s (--drain-delay): still accepting connections; a second signal stops at once.",
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drain_skipped.wait(), delay)
        self._drain_over()

    def _drain_over(self) -> None:
        if self.hooks.guard is not None:
            self.hooks.guard.end_drain()
        if self.phase is _Phase.DRAINING:
            self.hooks.stopping()

    async def _stop(self) -> Outcome:
        """Stop the tree within the shutdown timeout; 0 means no drain: each stop is cancelled at its first wait."""
        self.phase = _Phase.STOPPING
        self.state.set_phase("stopping")
        self.stop_task = asyncio.ensure_future(self.root.stop())
        timeout = self.config.shutdown_timeout
        done, _ = await asyncio.wait({self.stop_task}, timeout=timeout)  # 0: one turn of the loop
        if not done and timeout == 0:
            logger.info("--shutdown-timeout 0: no drain; cancelling the stops at once.")
            return await self._cancel_stop(clean=Outcome.CLEAN)
        if not done:
            names = ", ".join(
                f"{service_path(s)} ({type(s).__qualname__})" for s in still_stopping(self.root)
            )
            logger.error(
                "Shutdown timeout (%s s) passed; still stopping: %s. Cancelling them.",
                timeout,
                names or "(unknown)",
            )
            return await self._cancel_stop()
        if self.phase is _Phase.FORCED:
            return Outcome.UNCLEAN
        exc = self.stop_task.exception() if not self.stop_task.cancelled() else None
        if exc is not None:
            logger.error("error while stopping", exc_info=(type(exc), exc, exc.__traceback__))
            return Outcome.UNCLEAN
        return Outcome.CLEAN

    async def _cancel_stop(self, clean: Outcome = Outcome.UNCLEAN) -> Outcome:
        """Cancel the stops; ``clean`` is the outcome when they then end (without an error) within CANCEL_WAIT."""
        assert self.stop_task is not None
        self.stop_task.cancel()
        done, _ = await asyncio.wait({self.stop_task}, timeout=CANCEL_WAIT)
        if not done:
            names = ", ".join(service_path(s) for s in still_stopping(self.root))
            logger.error("services ignored cancellation%s; exiting anyway", f" ({names})" if names else "")
            # abandoned on purpose: no "Task was destroyed but it is pending!" on stderr when the loop closes
            for task in asyncio.all_tasks(self.loop):
                with contextlib.suppress(AttributeError):
                    task._log_destroy_pending = False  # type: ignore[attr-defined]
            return Outcome.UNCLEAN
        if not self.stop_task.cancelled() and self.stop_task.exception() is not None:
            exc = self.stop_task.exception()
            assert exc is not None
            logger.error("error while stopping", exc_info=(type(exc), exc, exc.__traceback__))
            return Outcome.UNCLEAN
        return clean

    def _on_stop_signal(self, signum: int) -> None:
        name = signal_name(signum)
        if self.phase in (_Phase.STARTING, _Phase.RUNNING) and not self.stop_requested.is_set():
            logger.info("Received %s, shutting down.", name)
            self.stop_requested.set()
            self.state.begin_drain()  # /readyz: 503 from now on
            self.hooks.draining()
            if self.phase is _Phase.RUNNING and self.config.drain_delay > 0:
                self.phase = _Phase.DRAINING
            else:
                self._drain_over()
                self.hooks.stopping()
        elif self.phase is _Phase.DRAINING and not self.drain_skipped.is_set():
            logger.info("Received %s again: skipping the rest of the drain delay.", name)
            self.drain_skipped.set()
        elif self.phase is _Phase.STOPPING and self.stop_task is not None:
            logger.warning("Received %s again: forcing shutdown.", name)
            self.phase = _Phase.FORCED
            self.stop_task.cancel()

    def _on_rotate(self, _signum: int) -> None:
        self._log_command(
            "rotate", self.hooks.rotate, "Log rotated (SIGUSR1).", "cannot rotate the log (SIGUSR1)"
        )

    def _on_reopen(self, _signum: int) -> None:
        self._log_command(
            "reopen", self.hooks.reopen, "Log file reopened (SIGHUP).", "cannot reopen the log (SIGHUP)"
        )

    def _log_command(self, command: str, action: Callable[[], bool], done: str, failed: str) -> None:
        """Carry out a rotate or reopen, log how it went, and answer `tapster ctl` the same."""
        try:
            changed = action()
        except (OSError, TapsterError) as exc:  # the old file stays in use
            logger.error("%s: %s", failed, exc)
            self.hooks.answer(command, "failed", str(exc))
            return
        if changed:
            logger.info("%s", done)
            self.hooks.answer(command, "ok", "")
        else:
            self.hooks.answer(command, "skipped", "the log is not a file")


def _ignore_signum(callback: Callable[[], None]) -> Callable[[int], None]:
    def handler(_signum: int) -> None:
        callback()

    return handler
