"""systemd's readiness protocol: a datagram to ``$NOTIFY_SOCKET`` saying READY=1, STATUS=..., STOPPING=1.

With ``Type=notify`` systemd waits for READY=1 before starting units that depend on this one, so "started" means
the listeners accept, as it does for the daemon's launcher. Thirty lines of stdlib; the ``sdnotify`` package has
not been maintained since 2017.
"""

from __future__ import annotations

import os
import socket


class SystemdNotifier:
    """Sends notifications when tapster runs under systemd with ``NotifyAccess``; does nothing otherwise."""

    def __init__(self, address: str | None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self._address = address or None

    @classmethod
    def from_environment(cls) -> SystemdNotifier:
        """Read ``NOTIFY_SOCKET`` once and remove it, so child processes do not notify in our name."""
        return cls(os.environ.pop("NOTIFY_SOCKET", None))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines; False if there is no socket or it cannot be reached (never raises)."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self._address)
        except OSError:
            return False
        return True
