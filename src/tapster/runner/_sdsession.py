"""What one serving process tells systemd over its run: starting, serving, reloading, stopping, and that it lives.

Each method is one of the loop's hooks (runner/_serve.py ``Hooks``); docs/running.md ("Deploying under
systemd") lists the lines and when they are sent.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from tapster.runner._sdnotify import SystemdNotifier, reloading_fields, status_field
from tapster.runner._sdtimers import always_healthy, start_extender, watchdog_pinger

__all__ = ["SystemdSession"]

logger = logging.getLogger("tapster")


class SystemdSession:
    """The notifications of a run of the tree called ``name``; nothing without NOTIFY_SOCKET.

    ``healthy`` gates the watchdog pings beyond "the loop turns" (a master: its workers are alive).
    """

    def __init__(
        self, notifier: SystemdNotifier, name: str, *, healthy: Callable[[], bool] = always_healthy
    ) -> None:
        self._notifier = notifier
        self._name = name
        self._serving = False
        self._status = f"serving {name}"
        self._began = time.monotonic()
        self._watchdog = watchdog_pinger(notifier, healthy)
        self._extender = start_extender(notifier, self._start_status)

    def starting(self) -> None:
        """The loop runs and the tree is about to start (called on the loop)."""
        if not self._notifier.enabled:
            return
        self._began = time.monotonic()
        self._notifier.notify(status_field(f"starting {self._name}"))
        if self._watchdog is not None:
            assert self._notifier.watchdog_usec is not None
            logger.info("systemd watchdog: WATCHDOG=1 every %g s.", self._notifier.watchdog_usec / 2e6)
            self._watchdog.start()
        self._extender.start()

    def _start_status(self) -> str:
        return f"starting {self._name} ({time.monotonic() - self._began:.0f} s)"

    def status(self, text: str) -> None:
        """A ``STATUS=`` line of the caller's own (a master: ``3 of 4 workers ready``)."""
        self._notifier.notify(status_field(text))

    def ready(self, status: str | None = None) -> None:
        """Every service has started: the listeners accept. ``status`` replaces ``serving NAME``."""
        self._extender.stop()
        self._serving = True
        self._status = status or f"serving {self._name}"
        self._notifier.notify("READY=1", status_field(self._status), f"MAINPID={os.getpid()}")

    def reloading(self, action: Callable[[], bool], what: str) -> Callable[[], bool]:
        """``action`` (a reload: reopening the log) wrapped in RELOADING=1 ... READY=1 once the tree is serving.

        Before READY=1 or after STOPPING=1 the action runs alone: a READY=1 then would lie about the start, or
        take back the stop.
        """

        def reload() -> bool:
            if not self._serving:
                return action()
            self._notifier.notify(*reloading_fields(f"{what} ({self._name})"))
            status = self._status
            try:
                return action()
            except Exception as exc:
                status = f"{self._status}; {what} failed: {exc}"
                raise
            finally:
                self._notifier.notify("READY=1", status_field(status))

        return reload

    def failed(self, reason: str) -> None:
        """The start failed (the process exits next): ``systemctl status`` shows why."""
        self._extender.stop()
        self._notifier.notify(status_field(f"failed to start: {reason}"))

    def draining(self, delay: float) -> None:
        """A stop signal came and ``--drain-delay`` keeps serving first: ``STATUS=draining`` at once."""
        if delay <= 0:
            return  # stopping() follows at once
        self._extender.stop()
        self._serving = False
        self._notifier.notify("STOPPING=1", status_field(f"draining {self._name} ({delay:g} s)"))

    def stopping(self) -> None:
        """A stop signal came: the tree is stopping."""
        self._extender.stop()
        self._serving = False
        self._notifier.notify("STOPPING=1", status_field(f"stopping {self._name}"))
