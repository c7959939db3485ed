"""The master of ``--workers N``: holds the listeners, starts N workers, keeps N running, rolls reloads.

It runs no part of the application after building the tree once to find its listeners. Its loop watches each
worker through a pidfd (exit), a control socket (``ready``, ``failed REASON``, ``beat``) and its output (log
records, relayed by runner/_worker_log.py). The rules (docs/workers.md):

* start: all N start at once; the master is ready (launcher exit, ``READY=1``) when all N said ``ready``; the
  first that fails, dies or outlives ``--worker-boot-timeout`` fails the start with its reason.
* a worker that dies, or whose heartbeat stops for ``--worker-heartbeat-timeout`` (it is killed), is
  replaced after a jittered backoff that doubles with each failed start in a row; after
  :data:`CRASH_LIMIT` of those the master gives up, stops the others and exits 1.
* reload (SIGUSR2): for each worker in turn, start a new one, wait until it is ready, stop the old one
  gracefully. A new worker that fails ends the reload; the old workers keep serving.
* stop (SIGTERM/SIGINT): with ``--drain-delay``, first keep everything serving for the delay (a second signal
  ends it early); then close the master's own copies of the listeners, SIGTERM every worker, SIGKILL those
  still running :data:`KILL_AFTER` seconds past ``--shutdown-timeout``. The workers themselves run with no
  delay of their own: the master's is the one the load balancer sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from tapster.runner._master_workers import Slot, Worker, WorkerState
from tapster.runner._spawn import SpawnedWorker, spawn_worker
from tapster.runner._upgrade import check_new_code, exec_new_master, handoff
from tapster.runner._workers_table import WorkerRow, format_table

__all__ = ["CRASH_LIMIT", "KILL_AFTER", "Master", "MasterHooks", "WorkersFailed"]

logger = logging.getLogger("tapster")

CRASH_LIMIT = 5
"""Failed starts in a row (a worker that exits before it is ready or within :data:`STABLE` s of it) after which
the master gives up."""

STABLE = 1.0
"""Seconds a worker must stay up after ``ready`` for its start to count as a success."""

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
KILL_AFTER = 1.5
"""Seconds past ``--shutdown-timeout`` that a stopping worker gets (its own cancel and exit) before SIGKILL."""

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGURG)
_TICK = 0.1  # how often the master checks boot deadlines and heartbeats


class WorkersFailed(Exception):
    """The workers could not be started (at start-up) or kept running (crash loop); the message says why."""


class MasterHooks:
    """What the run around the master wants to hear; see runner/_master_run.py."""

    def __init__(
        self,
        *,
        ready: Callable[[], None],
        status: Callable[[str], object],
        reloading: Callable[[], object],
        stopping: Callable[[], object],
        draining: Callable[[float], object],
        answer: Callable[[str, str, str], None],
        rotate: Callable[[], bool],
        reopen: Callable[[], bool],
        workers_changed: Callable[[str], None],
        watchdog: Callable[[], object] | None = None,
        extend_start: Callable[[float], object] | None = None,
        prepare_exec: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.ready = ready  # all N workers are ready, the first time
        self.status = status  # a one-line status for systemd (STATUS=)
        self.reloading = reloading  # a reload begins (RELOADING=1)
        self.stopping = stopping  # the workers are being stopped (STOPPING=1)
        self.draining = draining  # a stop signal came, --drain-delay S keeps serving first (STATUS=draining)
        self.answer = answer  # how a ctl command went (command, ok|skipped|failed, reason)
        self.rotate = rotate
        self.reopen = reopen
        self.workers_changed = workers_changed  # the workers table for `tapster ctl status`
        self.watchdog = watchdog  # all is well (WATCHDOG=1); None: systemd asked for no watchdog
        self.extend_start = extend_start  # the start goes on: more seconds for it (EXTEND_TIMEOUT_USEC)
        self.prepare_exec = prepare_exec  # before an upgrade's exec: flush the log; what the new image needs


class Master:
    """Supervises ``count`` workers on ``listeners`` until a stop signal; see the module docstring."""

    def __init__(
        self,
        *,
        count: int,
        listeners: Sequence[tuple[str, socket.socket]],
        close_listeners: Callable[[], None],
        argv: Sequence[str],
        launch_dir: str,
        boot_timeout: float,
        heartbeat_timeout: float,
        shutdown_timeout: float,
        hooks: MasterHooks,
        watchdog_interval: float | None = None,
        drain_delay: float = 0.0,
    ) -> None:
        self.slots = [Slot(number) for number in range(1, count + 1)]
        self.listeners = list(listeners)
        self.close_listeners = close_listeners
        self.argv = list(argv)
        self.launch_dir = launch_dir
        self.boot_timeout = boot_timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.beat = min(1.0, heartbeat_timeout / 4)
        self.shutdown_timeout = shutdown_timeout
        self.hooks = hooks
        self.drain_delay = drain_delay
        self.drain_skipped: asyncio.Event | None = None  # set: in the drain delay; set again: skip its rest
        self.workers: set[Worker] = set()  # every live process: current, new in a reload, retiring
        self.running = False  # all started once, not stopping: a dead worker is replaced
        self.stopping = False  # the stop (or giving up) began: nothing is started any more
        self.stop_requested: asyncio.Event | None = None
        self.give_up: str | None = None
        self.failed_starts = 0
        self.reload_task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop_signals = 0
        self.watchdog_interval = watchdog_interval  # WATCHDOG_USEC / 2, in seconds
        self._last_watchdog = 0.0
        self._last_extend = 0.0

    # -- the whole life --------------------------------------------------------------------------------------

    async def run(self, adopted: Sequence[Sequence[Any]] | None = None) -> int:
        """Start the workers, supervise them until a stop signal, stop them; the exit status.

        ``adopted``: after an in-place upgrade, the old image's workers (number, pid, control fd, output fd,
        start time, restarts), which are taken over and rolled onto new ones instead of a start.

        Raises:
            WorkersFailed: the workers did not all start (nothing is left running).
        """
        self.loop = asyncio.get_running_loop()
        self.stop_requested = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self._on_stop_signal, signum)
        self.loop.add_signal_handler(signal.SIGUSR2, self._on_reload_signal)
        self.loop.add_signal_handler(signal.SIGURG, self._on_upgrade_signal)
        self.loop.add_signal_handler(signal.SIGUSR1, self._log_command, "rotate", self.hooks.rotate)
        self.loop.add_signal_handler(signal.SIGHUP, self._log_command, "reopen", self.hooks.reopen)
        watcher = asyncio.ensure_future(self._watch())
        try:
            if adopted is not None:
                self._adopt(adopted)
                self.running = True
                self.reload_task = asyncio.ensure_future(self._reload("upgrade"))
            elif not await self._boot():
                return 0 if await self._stop_all() else 1
            else:
                self.running = True
                self.hooks.ready()
            self._changed()
            await self.stop_requested.wait()
            await self._drain()
            self.running = False
            clean = await self._stop_all()
        finally:
            watcher.cancel()
            for signum in _SIGNALS:
                self.loop.remove_signal_handler(signum)
        if self.give_up is not None:
            raise WorkersFailed(self.give_up)
        return 0 if clean else 1

    async def _drain(self) -> None:
        """--drain-delay: the workers go on serving (and the master replacing them) until it ends."""
        skipped = self.drain_skipped
        if skipped is None:
            return
        logger.info(
            "Draining for %g s (--drain-delay): the workers still accept connections; a second signal stops at "
            "once.",
            self.drain_delay,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(skipped.wait(), self.drain_delay)
        self.drain_skipped = None
        self.stopping = True
        self.hooks.stopping()

    async def _boot(self) -> bool:
        """Start every slot's worker at once; True when all are ready, False if a stop signal came first."""
        logger.info("Starting %d worker(s).", len(self.slots))
        try:
            for slot in self.slots:
                slot.current = self._spawn(slot.number)
        except OSError as exc:
            await self._stop_all()
            raise WorkersFailed(f"cannot start a worker: {exc}") from exc
        assert self.stop_requested is not None
        stop: asyncio.Future[object] = asyncio.ensure_future(self.stop_requested.wait())
        pending: set[asyncio.Future[object]] = {
            asyncio.ensure_future(self._ready_or_reason(slot)) for slot in self.slots
        }
        try:
            while pending:
                done, pending = await asyncio.wait(pending | {stop}, return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    logger.info("Stopping during start-up: stopping the workers.")
                    return False
                pending.discard(stop)
                for task in done:
                    reason = task.result()
                    if reason is not None:
                        await self._stop_all()
                        raise WorkersFailed(reason)
        finally:
            stop.cancel()
            for task in pending:
                task.cancel()
        return True

    async def _ready_or_reason(self, slot: Slot) -> str | None:
        worker = slot.current
        assert worker is not None
        reason = await worker.ready
        return None if reason is None else f"worker {slot.number} failed to start: {reason}"

    # -- processes ---------------------------------------------------------------------------------------------

    def _spawn(self, number: int) -> Worker:
        assert self.loop is not None
        spawned = spawn_worker(
            number, self.listeners, argv=self.argv, launch_dir=self.launch_dir, beat=self.beat
        )
        worker = self._watch_worker(Worker(number, spawned, self.loop))
        logger.info("worker %d started (pid %d).", number, worker.pid)
        return worker

    def _watch_worker(self, worker: Worker) -> Worker:
        assert self.loop is not None
        self.workers.add(worker)
        worker.pidfd = os.pidfd_open(worker.pid)
        self.loop.add_reader(worker.pidfd, self._on_exit, worker)
        self.loop.add_reader(worker.control.fileno(), self._on_control, worker)
        self.loop.add_reader(worker.output_fd, self._on_output, worker)
        return worker

    def _adopt(self, adopted: Sequence[Sequence[Any]]) -> None:
        """Take over the workers an in-place upgrade handed over: ready, serving, still our children."""
        assert self.loop is not None
        for number, pid, control_fd, output_fd, started_wall, restarts in adopted:
            os.set_inheritable(control_fd, False)
            os.set_inheritable(output_fd, False)
            control = socket.socket(fileno=control_fd)
            control.setblocking(False)
            os.set_blocking(output_fd, False)
            worker = Worker(number, SpawnedWorker(pid, control, output_fd), self.loop)
            worker.state = WorkerState.READY
            worker.started_wall = started_wall
            worker.ready_at = time.monotonic() - STABLE
            worker.settle_ready(None)
            slot = self.slots[number - 1]
            slot.current, slot.restarts = self._watch_worker(worker), restarts
            logger.info("worker %d (pid %d) taken over from the old master.", number, pid)

    def _on_control(self, worker: Worker) -> None:
        was_booting = worker.state is WorkerState.BOOTING
        if worker.read_control() is False:
            assert self.loop is not None
            self.loop.remove_reader(worker.control.fileno())
        if was_booting and worker.state is WorkerState.READY:
            if not self.running and not self.stopping and self.ready_count() == len(self.slots):
                self.running = (
                    True  # at once, not when the start-up task next runs: a ctl command may come first
                )
            logger.info("worker %d ready (pid %d).", worker.number, worker.pid)
            self._changed()

    def _on_output(self, worker: Worker) -> None:
        if worker.read_output() is False:
            assert self.loop is not None
            self.loop.remove_reader(worker.output_fd)

    def _on_exit(self, worker: Worker) -> None:
        assert self.loop is not None and worker.pidfd is not None
        try:
            _, status = os.waitpid(worker.pid, os.WNOHANG)
        except ChildProcessError:
            status = 0
        self.loop.remove_reader(worker.pidfd)
        os.close(worker.pidfd)
        worker.pidfd = None
        while worker.read_output():  # what it wrote last, before we say why it died (a process it started
            pass  # may hold the pipe open: read what is there, not until the end)
        worker.relay.close()
        while worker.read_control():  # a "failed" line sent just before exiting
            pass
        for fd in (worker.control.fileno(), worker.output_fd):
            self.loop.remove_reader(fd)
        worker.control.close()
        os.close(worker.output_fd)
        worker.state = WorkerState.EXITED
        self.workers.discard(worker)
        how = _describe_status(status)
        worker.settle_ready(worker.failure or f"it {how} before it was ready")
        worker.exited.set_result(status)
        if worker.retiring:
            logger.info("worker %d (pid %d) stopped: %s.", worker.number, worker.pid, how)
        else:
            logger.error("worker %d (pid %d) %s%s", worker.number, worker.pid, how, _why(worker))
        slot = self.slots[worker.number - 1]
        if slot.current is worker:
            slot.current = None
            # a worker that was serving is replaced, even one lost while the others still start (the start
            # goes on: it was ready); one that never was fails the start instead
            if not worker.retiring and not self.stopping and (self.running or worker.ready_at is not None):
                self._replace_later(slot, worker)
        self._changed()

    def _replace_later(self, slot: Slot, dead: Worker) -> None:
        """Start a new worker for ``slot`` after a jittered backoff; give up on a crash loop."""
        assert self.loop is not None and self.stop_requested is not None
        stable = dead.ready_at is not None and time.monotonic() - dead.ready_at >= STABLE
        self.failed_starts = 0 if stable else self.failed_starts + 1
        if self.failed_starts >= CRASH_LIMIT:
            self.give_up = (
                f"workers crash-loop: {self.failed_starts} starts in a row failed; the last: worker "
                f"{dead.number}: {dead.failure or 'it exited'}"
            )
            logger.error("Giving up: %s.", self.give_up)
            self.stopping = True
            if self.drain_skipped is not None:  # no point draining with no workers left
                self.drain_skipped.set()
            self.stop_requested.set()
            return
        delay = min(BACKOFF_FIRST * 2**self.failed_starts, BACKOFF_MAX) * random.uniform(0.5, 1.0)
        self.loop.call_later(delay, self._replace, slot)

    def _replace(self, slot: Slot) -> None:
        if self.stopping or slot.current is not None:  # stopping, or a reload filled the slot meanwhile
            return
        try:
            slot.current = self._spawn(slot.number)
        except OSError as exc:
            logger.error("cannot start worker %d: %s", slot.number, exc)
            assert self.loop is not None
            self.loop.call_later(BACKOFF_MAX, self._replace, slot)
            return
        slot.restarts += 1
        self._changed()

    async def _watch(self) -> None:
        """Kill a worker that takes too long to start, or whose heartbeat stopped; keep systemd informed."""
        while True:
            await asyncio.sleep(_TICK)
            now = time.monotonic()
            self._tell_systemd(now)
            for worker in list(self.workers):
                if worker.state is WorkerState.BOOTING and now - worker.started > self.boot_timeout:
                    worker.failure = (
                        f"it did not start within {self.boot_timeout:g} s (--worker-boot-timeout)"
                    )
                    self._kill(worker)
                elif worker.state is WorkerState.READY and now - worker.last_beat > self.heartbeat_timeout:
                    worker.failure = (
                        f"its event loop sent no heartbeat for {self.heartbeat_timeout:g} s "
                        "(--worker-heartbeat-timeout): killed"
                    )
                    self._kill(worker)

    def overdue(self, now: float) -> Worker | None:
        """A late worker (a started one that missed two beats, or one past its boot time), or None.

        The systemd watchdog and --status's /healthz judge by this; the kill waits for the longer timeouts.
        """
        for worker in self.workers:
            if worker.state is WorkerState.READY and now - worker.last_beat > 2 * self.beat + _TICK:
                return worker
            if worker.state is WorkerState.BOOTING and now - worker.started > self.boot_timeout:
                return worker
        return None

    def _tell_systemd(self, now: float) -> None:
        """WATCHDOG=1 at half the watchdog interval while all is well; EXTEND_TIMEOUT_USEC while booting."""
        hooks = self.hooks
        interval = self.watchdog_interval
        due = interval is not None and now - self._last_watchdog >= interval
        if hooks.watchdog is not None and due and self.overdue(now) is None:
            self._last_watchdog = now
            hooks.watchdog()
        if hooks.extend_start is not None and not self.running and now - self._last_extend >= 1.0:
            booting = [
                w.started + self.boot_timeout - now for w in self.workers if w.state is WorkerState.BOOTING
            ]
            if booting and self.stop_requested is not None and not self.stop_requested.is_set():
                self._last_extend = now
                hooks.extend_start(max(booting) + 5.0)  # the master's own bound on the start, and a margin

    def _kill(self, worker: Worker) -> None:
        logger.error("worker %d (pid %d): %s.", worker.number, worker.pid, worker.failure)
        worker.settle_ready(worker.failure)
        worker.state = WorkerState.STOPPING
        worker.signal(signal.SIGKILL)

    async def _retire(self, worker: Worker) -> bool:
        """Stop ``worker`` gracefully; SIGKILL it if it is still running KILL_AFTER s past the timeout.

        Returns whether it stopped cleanly (exit status 0 by itself).
        """
        worker.retiring = True
        if worker.state is WorkerState.EXITED:
            return worker.exited.result() == 0
        booting = (
            worker.state is WorkerState.BOOTING
        )  # SIGTERM may end it before it has a handler: a clean stop
        if worker.state is not WorkerState.STOPPING:  # a second SIGTERM would cut its drain short
            worker.state = WorkerState.STOPPING
            worker.signal(signal.SIGTERM)
        try:
            status = await asyncio.wait_for(asyncio.shield(worker.exited), self.shutdown_timeout + KILL_AFTER)
        except TimeoutError:
            logger.error(
                "worker %d (pid %d) still running %g s after SIGTERM: killing it.",
                worker.number,
                worker.pid,
                self.shutdown_timeout + KILL_AFTER,
            )
            worker.signal(signal.SIGKILL)
            await asyncio.shield(worker.exited)
            return False
        return status == 0 or (booting and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM)

    async def _stop_all(self) -> bool:
        """Close the master's listeners, then stop every worker (at once, each bounded); True if all cleanly."""
        self.running = False
        self.stopping = True
        self.close_listeners()
        if self.reload_task is not None:
            self.reload_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reload_task
        if not self.workers:
            return True
        logger.info("Stopping %d worker(s).", len(self.workers))
        self.hooks.status("stopping workers")
        stopped = await asyncio.gather(*(self._retire(worker) for worker in list(self.workers)))
        return all(stopped)

    # -- signals -----------------------------------------------------------------------------------------------

    def _on_stop_signal(self, signum: int) -> None:
        assert self.stop_requested is not None
        self._stop_signals += 1
        name = signal.Signals(signum).name
        if self._stop_signals == 1:
            logger.info("Received %s, shutting down.", name)
            if self.running and self.drain_delay > 0:
                self.drain_skipped = asyncio.Event()
                self.hooks.draining(self.drain_delay)
            else:
                self.hooks.stopping()
                self.stopping = True
            self.stop_requested.set()
            return
        if self.drain_skipped is not None and not self.drain_skipped.is_set():
            logger.info("Received %s again: skipping the rest of the drain delay.", name)
            self.drain_skipped.set()
            return
        logger.warning("Received %s again: killing the workers.", name)
        for worker in list(self.workers):
            worker.signal(signal.SIGKILL)

    def _log_command(self, command: str, action: Callable[[], bool]) -> None:
        try:
            changed = action()
        except OSError as exc:
            logger.error("cannot %s the log: %s", command, exc)
            self.hooks.answer(command, "failed", str(exc))
            return
        if changed:
            logger.info("Log %s.", "rotated (SIGUSR1)" if command == "rotate" else "file reopened (SIGHUP)")
            self.hooks.answer(command, "ok", "")
        else:
            self.hooks.answer(command, "skipped", "the log is not a file")

    def _on_reload_signal(self) -> None:
        if not self.running or self.drain_skipped is not None:
            self.hooks.answer("reload", "skipped", "the server is starting or stopping")
            return
        if self.reload_task is not None and not self.reload_task.done():
            logger.info("Received SIGUSR2 during a reload: the reload goes on.")
            self.hooks.answer("reload", "skipped", "a reload is already running")
            return
        self.reload_task = asyncio.ensure_future(self._reload())

    def _on_upgrade_signal(self) -> None:
        reloading = self.reload_task is not None and not self.reload_task.done()
        busy = reloading or len(self.workers) != len(self.slots) or self.ready_count() != len(self.slots)
        stopping = not self.running or self.drain_skipped is not None
        if stopping or busy:
            why = "the server is starting or stopping" if stopping else "workers are being replaced"
            logger.info("Received SIGURG while %s: no upgrade now.", why)
            self.hooks.answer("upgrade", "skipped", f"{why}; try again in a moment")
            return
        self.reload_task = asyncio.ensure_future(self._upgrade())

    async def _upgrade(self) -> None:
        """Check that the new code loads, hand everything over, exec; on any failure nothing changes."""
        logger.info("Received SIGURG: upgrading in place; checking that the new code loads.")
        names = [name for name, _ in self.listeners]
        reason = await check_new_code(self.argv, self.launch_dir, names, self.boot_timeout)
        if reason is None and (not self.running or len(self.workers) != len(self.slots)):
            reason = "a worker changed during the check"
        if reason is not None:
            logger.error("Upgrade aborted: %s; the master and its workers go on unchanged.", reason)
            self.hooks.answer("upgrade", "failed", f"{reason} (nothing changed)")
            return
        self.hooks.reloading()
        logger.info("Re-executing the master (pid %d) with the code installed now.", os.getpid())
        extra = self.hooks.prepare_exec() if self.hooks.prepare_exec is not None else {}
        workers = [(slot.current, slot.restarts) for slot in self.slots if slot.current is not None]
        state = handoff(self.listeners, workers, **extra)
        try:
            exec_new_master(self.argv, self.launch_dir, state)
        except OSError as exc:
            logger.error("Upgrade aborted: cannot execute %s: %s; nothing changed.", sys.executable, exc)
            self.hooks.answer("upgrade", "failed", f"cannot execute {sys.executable}: {exc}")
            self.hooks.ready()

    # -- rolling reload ----------------------------------------------------------------------------------------

    async def _reload(self, command: str = "reload") -> None:
        count = len(self.slots)
        if command == "reload":
            logger.info("Received SIGUSR2: reloading %d worker(s) one by one.", count)
            self.hooks.reloading()
        else:
            logger.info("Replacing the %d worker(s) of the old master one by one.", count)
        started = time.monotonic()
        done = 0
        try:
            for slot in self.slots:
                self.hooks.status(f"reloading: {done} of {count} workers new")
                try:
                    new = self._spawn(slot.number)
                except OSError as exc:
                    self._reload_failed(command, f"cannot start a new worker {slot.number}: {exc}", done)
                    return
                new.retiring = True  # not slot.current yet: its death during the boot is no crash
                reason = await new.ready
                if reason is not None:
                    if new.state is not WorkerState.EXITED:
                        await self._retire(new)
                    self._reload_failed(
                        command, f"the new worker {slot.number} failed to start: {reason}", done
                    )
                    return
                new.retiring = False
                old, slot.current = slot.current, new
                self._changed()
                if old is not None:
                    await self._retire(old)
                done += 1
        except asyncio.CancelledError:
            for worker in list(self.workers):
                if worker.retiring and worker.state is WorkerState.BOOTING:
                    worker.signal(signal.SIGKILL)
            raise
        elapsed = time.monotonic() - started
        logger.info("%s done: %d worker(s) replaced in %.2f s.", command.capitalize(), count, elapsed)
        self.hooks.answer(command, "ok", f"{count} worker(s) replaced in {elapsed:.2f} s")
        self.hooks.ready()
        self._changed()

    def _reload_failed(self, command: str, reason: str, done: int) -> None:
        logger.error(
            "%s aborted: %s; %d worker(s) were replaced, the others keep serving the old code.",
            command.capitalize(),
            reason,
            done,
        )
        self.hooks.answer(command, "failed", f"{reason} ({done} replaced, the old workers keep serving)")
        self.hooks.ready()
        self._changed()

    # -- reporting ---------------------------------------------------------------------------------------------

    def ready_count(self) -> int:
        return sum(
            1 for slot in self.slots if slot.current is not None and slot.current.state is WorkerState.READY
        )

    def _changed(self) -> None:
        rows = []
        for slot in self.slots:
            worker = slot.current
            if worker is None:
                rows.append(WorkerRow(slot.number, None, None, slot.restarts, "replacing"))
            else:
                rows.append(
                    WorkerRow(slot.number, worker.pid, worker.started_wall, slot.restarts, worker.state.value)
                )
        self.hooks.workers_changed(format_table(rows))
        if self.running:
            ready, count = self.ready_count(), len(self.slots)
            self.hooks.status(
                f"{ready} workers ready" if ready == count else f"{ready} of {count} workers ready"
            )


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        try:
            name = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            name = f"signal {os.WTERMSIG(status)}"
        return f"was killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _why(worker: Worker) -> str:
    return f": {worker.failure}" if worker.failure else "."
