"""What a log destination does while it cannot be written: drop lines, count them, say so once, retry each second.

A full disk, an I/O error or a closed pipe must not slow the server down. Retrying every line would cost a failed
system call per line; reporting every failure (``logging``'s own ``handleError`` prints a traceback to
``sys.stderr``, which a daemon captures back into this very log) made each log call some 40-60 times dearer.
So: the first failure is reported once, on file descriptor 2 (never through ``sys.stderr``); until a second has
passed, lines are dropped without even being formatted; then one write is tried. When a write works again, the
count of dropped lines goes into the log, just before the line that got through.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

__all__ = ["DroppedLines", "describe", "report_on_fd2"]

RETRY_INTERVAL = 1.0
"""Seconds between write attempts while a destination fails."""


def report_on_fd2(text: str) -> None:
    """Write ``text`` on the process's real standard error: a terminal with ``-n``, the journal under systemd,
    ``/dev/null`` for a daemon. Never ``sys.stderr``, which a daemon captures into the failing log."""
    with contextlib.suppress(OSError):
        os.write(2, text.encode("utf-8", "backslashreplace"))


class DroppedLines:
    """The failure state of one destination; the handler holds its lock around every call.

    Args:
        destination: what is written, for messages (``log file /var/log/app.log``).
        report: where the one report per failure episode goes.
        monotonic: the clock for the retry interval; wall: the clock for the times in the notice.
    """

    def __init__(
        self,
        destination: str,
        *,
        report: Callable[[str], None] = report_on_fd2,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.destination = destination
        self.count = 0
        self.reason = ""
        self.since = 0.0
        self.failing = False
        """True from a failed write until one works again (an attribute: handlers test it on every line)."""
        self._retry_at = 0.0
        self._report = report
        self._monotonic = monotonic
        self._wall = wall

    def may_write(self) -> bool:
        """Whether to try a write now; when ``False`` the caller drops its line (and calls :meth:`drop`)."""
        return not self.failing or self._monotonic() >= self._retry_at

    def drop(self) -> None:
        """Count a line dropped without trying to write it."""
        self.count += 1

    def failed(self, reason: str) -> None:
        """Count a line whose write failed for ``reason``; the first failure of an episode is reported."""
        self.count += 1
        self._retry_at = self._monotonic() + RETRY_INTERVAL
        if not self.failing:
            self.failing = True
            self.since = self._wall()
            self.reason = reason
            self._report(
                f"tapster: cannot write the {self.destination}: {reason}; dropping log lines until it works"
                " again (tried at most once a second), then their count is logged\n"
            )

    def notice(self) -> str | None:
        """The line to log before the next one that gets through, or ``None`` if nothing was dropped."""
        if not self.count:
            return None
        lines = "line was" if self.count == 1 else "lines were"
        return (
            f"{self.count} log {lines} dropped from {_clock(self.since)} to {_clock(self._wall())}: "
            f"cannot write the {self.destination}: {self.reason}"
        )

    def recovered(self) -> None:
        """A write (carrying :meth:`notice`) worked: start counting afresh."""
        self.count = 0
        self.reason = ""
        self.failing = False


def _clock(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def describe(exc: OSError) -> str:
    """``[Errno 28] No space left on device`` for an ``OSError``; its text for anything else."""
    if exc.errno is not None and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return str(exc) or type(exc).__name__
