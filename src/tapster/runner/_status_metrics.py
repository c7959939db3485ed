"""What /metrics and /healthz read: loop lag, log records by level, and tapster's collector for Prometheus.

Everything the data path touches is a plain attribute bumped on the event loop (a listener's accepted count,
the log counter's dict); the cost of turning it into Prometheus text is paid by the scrape, in
:meth:`TapsterCollector.collect`, never by a connection. Imported only with --status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

from tapster.runner._state import ServerState, _walk, service_states
from tapster.service import Service, service_path

__all__ = ["LogCounter", "LoopLag", "TapsterCollector"]


class LoopLag:
    """A timer that measures how late the event loop runs it: the loop's responsiveness, for /healthz.

    ``lag()`` is the larger of the last lateness measured and how overdue the next tick already is, so a reading
    taken just after a long block sees the block even before the tick has run.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.loop = loop
        self.interval = interval
        self.last = 0.0
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._due = self.loop.time() + self.interval
        self._handle = self.loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        now = self.loop.time()
        self.last = max(0.0, now - self._due)
        self._due = now + self.interval
        self._handle = self.loop.call_at(self._due, self._tick)

    def lag(self) -> float:
        return max(self.last, self.loop.time() - self._due)


class LogCounter(logging.Handler):
    """Counts the records that reach the root logger, by level name; formats and writes nothing.

    ``handle`` is overridden to skip the handler lock: records come from the loop's thread (and rarely others;
    a lost increment there is the price of no lock on every line).
    """

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.counts: dict[str, int] = dict.fromkeys(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), 0)

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        name = record.levelname
        self.counts[name] = self.counts.get(name, 0) + 1
        return True

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - handle() never calls it
        pass

    def family(self) -> Any:
        """``tapster_log_records_total{level}``, as of now."""
        from prometheus_client.core import CounterMetricFamily

        logs = CounterMetricFamily("tapster_log_records", "Log records by level", labels=["level"])
        for level, count in list(self.counts.items()):
            logs.add_metric([level], float(count))
        return logs


_STATES = ("starting", "running", "stopping", "stopped", "failed")


class TapsterCollector:
    """tapster's own metrics, read from the live tree and the counters above at each scrape."""

    def __init__(self, root: Service, state: ServerState, lag: LoopLag, logs: LogCounter) -> None:
        self.root = root
        self.state = state
        self.lag = lag
        self.logs = logs

    def describe(self) -> list[Any]:
        return []  # no fixed list: the services and listeners are only known at the scrape

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        state = self.state
        ready = GaugeMetricFamily("tapster_ready", "1 while /readyz answers 200 (started, not stopping)")
        ready.add_metric([], 1.0 if state.ready else 0.0)
        yield ready
        phase = GaugeMetricFamily(
            "tapster_phase", "The process's phase: 1 for the current one", labels=["phase"]
        )
        for name in ("starting", "running", "stopping"):
            phase.add_metric([name], 1.0 if state.phase == name else 0.0)
        yield phase
        for metric, when, text in (
            ("tapster_drain_started_timestamp_seconds", state.drain_started, "When the drain began"),
            ("tapster_stop_started_timestamp_seconds", state.stop_started, "When the stop began"),
        ):
            if when is not None:
                gauge = GaugeMetricFamily(metric, f"{text} (Unix time); absent before")
                gauge.add_metric([], when)
                yield gauge
        lag = GaugeMetricFamily("tapster_event_loop_lag_seconds", "How late the loop ran its last timer tick")
        lag.add_metric([], self.lag.lag())
        yield lag
        services = GaugeMetricFamily(
            "tapster_service_state",
            "Each service's state: 1 for the current one",
            labels=["service", "state"],
        )
        for path, current in service_states(self.root, state):
            for name in _STATES:
                services.add_metric([path, name], 1.0 if current == name else 0.0)
        yield services
        yield from self._listeners()
        yield self.logs.family()

    def _listeners(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from tapster.services._stream_server import StreamServer

        open_ = GaugeMetricFamily(
            "tapster_listener_connections_open", "Open connections", labels=["service", "endpoint"]
        )
        accepted = CounterMetricFamily(
            "tapster_listener_connections_accepted",
            "Connections accepted since the listener last started",
            labels=["service", "endpoint"],
        )
        for service in _walk(self.root):
            if isinstance(service, StreamServer):
                labels = [service_path(service), service.endpoint.description]
                open_.add_metric(labels, float(service.open_connections))
                accepted.add_metric(labels, float(service.accepted_connections))
        yield open_
        yield accepted
