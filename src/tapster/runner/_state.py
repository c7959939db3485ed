"""ServerState: where the serving process is in its life, for --status's /readyz and /metrics.

One small object with one owner: the runner's loop (runner/_serve.py) sets :attr:`ServerState.phase`; a drain
for load balancers calls :meth:`ServerState.begin_drain`. Readers (the status server) only read it, on the loop.
Nothing here imports asyncio or aiohttp: the runner builds it on every run, --status or not.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Literal

from tapster.service import MultiService, Service, service_path, still_stopping

__all__ = ["Phase", "ServerState", "service_states"]

Phase = Literal["starting", "running", "stopping"]


class ServerState:
    """The process's phase (``starting`` -> ``running`` -> ``stopping``) and whether it drains.

    Ready means: the whole tree has started and neither a drain nor the stop has begun.
    """

    __slots__ = ("drain_started", "failed_service", "phase", "stop_started")

    def __init__(self) -> None:
        self.phase: Phase = "starting"
        self.drain_started: float | None = None  # time.time() of begin_drain(), for /metrics
        self.stop_started: float | None = None  # time.time() when the phase became "stopping"
        self.failed_service: str | None = None  # the service path a failed start named

    @property
    def ready(self) -> bool:
        return self.phase == "running" and self.drain_started is None

    @property
    def draining(self) -> bool:
        return self.drain_started is not None

    def begin_drain(self) -> None:
        """From now on the process is not ready (/readyz answers 503); listeners are untouched. Idempotent."""
        if self.drain_started is None:
            self.drain_started = time.time()

    def set_phase(self, phase: Phase) -> None:
        self.phase = phase
        if phase == "stopping" and self.stop_started is None:
            self.stop_started = time.time()
            self.begin_drain()


def _walk(root: Service) -> Iterator[Service]:
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, MultiService):
            stack.extend(reversed(list(node)))


def service_states(root: Service, state: ServerState) -> list[tuple[str, str]]:
    """``(service path, state)`` for every service in the tree, in tree order.

    A service's state is read from what the tree already keeps (``running``, the stops in progress), so services
    need no change: ``running`` when it runs; while the process starts, ``starting`` until its ``start()`` has
    returned (for a parent: until all its children run); while it stops, ``stopping`` until its ``stop()`` has
    returned, then ``stopped``; ``failed`` for the service a failed start named; ``stopped`` for a service not
    running in a running tree (stopped by the application, or never started).
    """
    pending = {id(s) for s in still_stopping(root)} if state.phase == "stopping" else set()
    found: list[tuple[str, str]] = []
    for service in _walk(root):
        path = service_path(service)
        if path == state.failed_service:
            what = "failed"
        elif service.running and not (state.phase == "starting" and _child_not_running(service)):
            what = "running"
        elif state.phase == "starting":
            what = "starting"
        elif state.phase == "stopping":
            what = "stopping" if id(service) in pending or _stopping_parent(service, pending) else "stopped"
        else:
            what = "stopped"
        found.append((path, what))
    return found


def _child_not_running(service: Service) -> bool:
    """A parent marks itself running before it starts its children: it has started once they all have."""
    if not isinstance(service, MultiService):
        return False
    return any(not child.running or _child_not_running(child) for child in service)


def _stopping_parent(service: Service, pending: set[int]) -> bool:
    """A parent whose stop waits on a child still stopping is itself still stopping."""
    if not isinstance(service, MultiService):
        return False
    return any(id(child) in pending or _stopping_parent(child, pending) for child in service)
