"""--status with --workers: the master's view of its workers for /healthz, /readyz and /metrics.

The master serves the status listener on its own loop (runner/_master_run.py); the workers serve none. What it
reports is what it already keeps to supervise them (runner/_master.py): each slot's process, state and
restarts, its own phase and drain. The workers' listeners and connections live in the workers and are not
reported here (docs/status.md). Imported only with --status.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tapster.runner._master import Master
    from tapster.runner._status_metrics import LogCounter, LoopLag

__all__ = ["WORKER_STATES", "MasterView"]

WORKER_STATES = ("booting", "ready", "stopping", "exited", "replacing")
"""A slot's state: its process's (runner/_master_workers.py), or ``replacing`` while it has none."""


class MasterView:
    """The --workers master as /readyz and /metrics report it; the run wires :meth:`answered` to ctl answers."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self.commands: Counter[tuple[str, str]] = Counter()  # (ctl command, ok|skipped|failed) answered

    def answered(self, command: str, outcome: str) -> None:
        self.commands[(command, outcome)] += 1

    def phase(self) -> str:
        master = self.master
        if master.stopping:
            return "stopping"
        return "running" if master.running else "starting"

    def draining(self) -> bool:
        return self.master.drain_skipped is not None

    def ready(self) -> bool:
        master = self.master
        every = master.ready_count() == len(master.slots)
        return self.phase() == "running" and not self.draining() and every

    def workers(self) -> list[tuple[int, int | None, str, int]]:
        """``(number, pid, state, restarts)`` of each slot; pid None while the slot is being refilled."""
        rows: list[tuple[int, int | None, str, int]] = []
        for slot in self.master.slots:
            worker = slot.current
            if worker is None:
                rows.append((slot.number, None, "replacing", slot.restarts))
            else:
                rows.append((slot.number, worker.pid, worker.state.value, slot.restarts))
        return rows

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        ready = self.ready()
        workers = [
            {"worker": number, "pid": pid, "state": state, "restarts": restarts}
            for number, pid, state, restarts in self.workers()
        ]
        return ready, {"ready": ready, "phase": self.phase(), "draining": self.draining(), "workers": workers}

    def trouble(self) -> str | None:
        late = self.master.overdue(time.monotonic())
        if late is None:
            return None
        return f"worker {late.number} (pid {late.pid}) is late: no heartbeat or not started in time"

    def collector(self, lag: LoopLag, logs: LogCounter) -> MasterCollector:
        return MasterCollector(self, lag, logs)


class MasterCollector:
    """The master's metrics, read from the master's own bookkeeping at each scrape."""

    def __init__(self, view: MasterView, lag: LoopLag, logs: LogCounter) -> None:
        self.view = view
        self.lag = lag
        self.logs = logs

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        view = self.view
        ready = GaugeMetricFamily(
            "tapster_ready", "1 while /readyz answers 200 (all workers ready, not draining)"
        )
        ready.add_metric([], 1.0 if view.ready() else 0.0)
        yield ready
        phase = GaugeMetricFamily(
            "tapster_phase", "The master's phase: 1 for the current one", labels=["phase"]
        )
        current = view.phase()
        for name in ("starting", "running", "stopping"):
            phase.add_metric([name], 1.0 if current == name else 0.0)
        yield phase
        draining = GaugeMetricFamily("tapster_draining", "1 during the master's --drain-delay")
        draining.add_metric([], 1.0 if view.draining() else 0.0)
        yield draining
        lag = GaugeMetricFamily("tapster_event_loop_lag_seconds", "How late the loop ran its last timer tick")
        lag.add_metric([], self.lag.lag())
        yield lag
        rows = view.workers()
        count = GaugeMetricFamily("tapster_workers", "Worker processes the master keeps (--workers)")
        count.add_metric([], float(len(rows)))
        yield count
        ready_count = GaugeMetricFamily("tapster_workers_ready", "Workers that said ready and run")
        ready_count.add_metric([], float(view.master.ready_count()))
        yield ready_count
        states = GaugeMetricFamily(
            "tapster_worker_state", "Each worker's state: 1 for the current one", labels=["worker", "state"]
        )
        restarts = CounterMetricFamily(
            "tapster_worker_restarts",
            "Times the worker was replaced after it died or hung",
            labels=["worker"],
        )
        for number, _pid, state, count_ in rows:
            for name in WORKER_STATES:
                states.add_metric([str(number), name], 1.0 if state == name else 0.0)
            restarts.add_metric([str(number)], float(count_))
        yield states
        yield restarts
        commands = CounterMetricFamily(
            "tapster_master_commands",
            "ctl commands (reload, upgrade, rotate, reopen) this master image answered, by outcome",
            labels=["command", "outcome"],
        )
        for (command, outcome), times in sorted(view.commands.items()):
            commands.add_metric([command, outcome], float(times))
        yield commands
        yield self.logs.family()
