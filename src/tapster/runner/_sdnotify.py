"""systemd's notify protocol: datagrams to ``$NOTIFY_SOCKET`` (READY=1, STATUS=, RELOADING=1, WATCHDOG=1, ...).

With ``Type=notify`` systemd waits for READY=1 before starting units that depend on this one, so "started" means
the listeners accept, as it does for the daemon's launcher. Stdlib only; the ``sdnotify`` package has not been
maintained since 2017. The field helpers here build single lines the way systemd parses them, for the
single-process runner and for a master process alike.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["SystemdNotifier", "monotonic_usec", "reloading_fields", "status_field", "watchdog_usec_for"]


class SystemdNotifier:
    """Sends notifications when tapster runs under systemd with ``NotifyAccess``; does nothing otherwise.

    ``watchdog_usec`` is systemd's ``WatchdogSec=`` in microseconds when the watchdog is on and meant for this
    process, else None; WATCHDOG=1 is then due at least every ``watchdog_usec``.
    """

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self._address = address or None
        self.watchdog_usec = watchdog_usec if self._address is not None else None

    @classmethod
    def from_environment(cls) -> SystemdNotifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` once and remove them.

        Removed so child processes do not notify in our name. The watchdog is ours when ``WATCHDOG_PID`` is unset
        or this process's pid (as ``sd_watchdog_enabled(3)`` decides); read before daemonizing, so the pid
        compared is the one systemd started.
        """
        address = os.environ.pop("NOTIFY_SOCKET", None)
        usec = os.environ.pop("WATCHDOG_USEC", None)
        pid = os.environ.pop("WATCHDOG_PID", None)
        return cls(address, watchdog_usec=watchdog_usec_for(usec, pid, os.getpid()))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def address(self) -> str | None:
        """``NOTIFY_SOCKET`` as systemd wrote it (an abstract socket with its ``@``), for a process that re-executes
        itself and must hand the address on."""
        if self._address is not None and self._address.startswith("\0"):
            return "@" + self._address[1:]
        return self._address

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines; False if there is no socket or it cannot be reached (never raises).

        Non-blocking: a receiver that stops reading must not stop the server (the datagram is dropped instead).
        """
        if self._address is None:
            return False
        try:
            with socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            ) as sock:
                sock.sendto("\n".join(fields).encode(), self._address)
        except OSError:
            return False
        return True


def watchdog_usec_for(usec: str | None, pid: str | None, my_pid: int) -> int | None:
    """``WATCHDOG_USEC`` as a positive number of microseconds when the watchdog applies to ``my_pid``."""
    if usec is None or not usec.isascii() or not usec.isdigit() or int(usec) <= 0:
        return None
    if pid is not None and pid.strip() != str(my_pid):
        return None
    return int(usec)


def status_field(text: str) -> str:
    """``STATUS=text`` on one line: a line break would end the field and start a forged one."""
    return "STATUS=" + " ".join(text.split())


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares ``MONOTONIC_USEC=`` with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def reloading_fields(status: str) -> tuple[str, str, str]:
    """The start of a reload for ``Type=notify-reload``: RELOADING=1 stamped now; READY=1 ends it."""
    return "RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", status_field(status)
