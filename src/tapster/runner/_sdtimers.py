"""Notifications that repeat on the event loop: the watchdog's WATCHDOG=1 and a slow start's EXTEND_TIMEOUT_USEC=.

Both are sent by callbacks the loop itself runs (``call_later``), never by a thread: a loop that is blocked or
stuck sends nothing, so systemd's watchdog restarts the service and a hung start runs out of time, which is
what the pings promise ("this loop still turns").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from tapster.runner._sdnotify import SystemdNotifier, status_field

__all__ = ["EXTEND_BY", "EXTEND_EVERY", "LoopPinger", "always_healthy", "start_extender", "watchdog_pinger"]

# A slow start asks for EXTEND_BY more seconds every EXTEND_EVERY seconds while its loop turns: a loop blocked for
# longer than EXTEND_BY past TimeoutStartSec= ends the start.
EXTEND_EVERY = 1.0
EXTEND_BY = 5.0


def always_healthy() -> bool:
    """The default health check: none beyond the loop turning."""
    return True


class LoopPinger:
    """Every ``interval`` seconds on the running loop, send what ``fields()`` returns (nothing when it returns None).

    ``first`` is the delay before the first send (0: at once). ``stop()`` ends it; so does closing the loop.
    """

    def __init__(
        self,
        notifier: SystemdNotifier,
        interval: float,
        fields: Callable[[], Sequence[str] | None],
        *,
        first: float = 0.0,
    ) -> None:
        self._notifier = notifier
        self._interval = interval
        self._fields = fields
        self._first = first
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        """Start on the running loop (call from a coroutine or a callback of that loop)."""
        if self._handle is None:
            self._loop = asyncio.get_running_loop()
            self._handle = self._loop.call_later(self._first, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        assert self._loop is not None
        self._handle = self._loop.call_later(self._interval, self._tick)
        fields = self._fields()
        if fields:
            self._notifier.notify(*fields)


def watchdog_pinger(
    notifier: SystemdNotifier, healthy: Callable[[], bool] = always_healthy
) -> LoopPinger | None:
    """WATCHDOG=1 at half of ``WATCHDOG_USEC`` while ``healthy()``; None when systemd set no watchdog for us.

    A master process passes its own ``healthy`` (for instance: every worker's heartbeat is recent).
    """
    if notifier.watchdog_usec is None:
        return None

    def fields() -> tuple[str] | None:
        return ("WATCHDOG=1",) if healthy() else None

    return LoopPinger(notifier, notifier.watchdog_usec / 2e6, fields)


def start_extender(notifier: SystemdNotifier, status: Callable[[], str]) -> LoopPinger:
    """While a start takes long, EXTEND_TIMEOUT_USEC= with ``status()`` (say, how long it has taken so far).

    The first one goes out after EXTEND_EVERY seconds, so a quick start sends none; stop the pinger when the
    start ends.
    """

    def fields() -> tuple[str, str]:
        return f"EXTEND_TIMEOUT_USEC={int(EXTEND_BY * 1e6)}", status_field(status())

    return LoopPinger(notifier, EXTEND_EVERY, fields, first=EXTEND_EVERY)
