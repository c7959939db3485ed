"""The moment a serving process stops being ready: the first SIGTERM/SIGINT, before ``--drain-delay`` runs out.

A load balancer or Kubernetes takes a process out of rotation when its readiness check fails, which it learns
only at its next probe; ``--drain-delay`` keeps the listeners serving meanwhile. What reports readiness (systemd's
``STATUS=draining``, a ``/readyz`` endpoint) subscribes here; the runner calls :meth:`Draining.begin` once, on the
event loop, as soon as the stop signal arrives (with any delay, 0 included).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["Draining"]

logger = logging.getLogger("tapster")


class Draining:
    """Readiness ends here: ``begun`` turns true and every subscriber is called, in order, once.

    Args:
        delay: ``--drain-delay`` in seconds, for subscribers that say how long the drain lasts.
    """

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.begun = False
        self._subscribers: list[Callable[[float], object]] = []

    def subscribe(self, callback: Callable[[float], object]) -> None:
        """Call ``callback(delay)`` on the loop when the drain begins (at once if it has begun already)."""
        self._subscribers.append(callback)
        if self.begun:
            self._call(callback)

    def begin(self) -> None:
        """The stop signal came: tell every subscriber (a failing one is logged; the others still hear)."""
        if self.begun:
            return
        self.begun = True
        for callback in list(self._subscribers):
            self._call(callback)

    def _call(self, callback: Callable[[float], object]) -> None:
        try:
            callback(self.delay)
        except Exception:
            logger.exception("error while announcing the drain")
