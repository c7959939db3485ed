"""A real systemd notify receiver for tests: an AF_UNIX datagram socket the test binds, read by a thread.

Each datagram is kept with the CLOCK_MONOTONIC time it arrived, so a test can look at gaps (a blocked loop
stops the watchdog pings) as well as at order.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable

import pytest

__all__ = ["Message", "NotifyReceiver"]


class Message:
    """One datagram: its ``KEY=value`` lines as a dict (``fields``), and when it arrived (``at``)."""

    def __init__(self, text: str, at: float, seq: int) -> None:
        self.text = text
        self.at = at
        self.seq = seq
        self.fields = dict(line.partition("=")[::2] for line in text.splitlines())

    def __repr__(self) -> str:
        return f"<{self.at:.3f} {self.text!r}>"


class NotifyReceiver:
    """Bound to a path in a fresh directory (``address``), or to an abstract name with ``abstract=True``."""

    def __init__(self, *, abstract: bool = False) -> None:
        self._dir = tempfile.mkdtemp(prefix="tapster-notify-")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"tapster-test-{os.getpid()}-{id(self)}"
            self._sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = os.path.join(self._dir, "notify")
            self._sock.bind(self.address)
        self.messages: list[Message] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                return
            if not data:  # shut down by close() (tapster never sends an empty datagram)
                return
            with self._changed:
                self.messages.append(Message(data.decode(), time.monotonic(), len(self.messages)))
                self._changed.notify_all()

    def wait_for(self, match: Callable[[Message], bool], what: str, timeout: float = 15) -> Message:
        """The first message (in arrival order) that ``match``es; fail with all messages seen."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self.messages:
                    if match(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"no notification {what} within {timeout} s; got {self.messages}")
                self._changed.wait(remaining)

    def wait_field(
        self, key: str, value: str | None = None, *, after: Message | None = None, timeout: float = 15
    ) -> Message:
        """The first message (after message ``after``, if given) with ``key`` (equal to ``value`` if given)."""
        first = after.seq + 1 if after is not None else 0
        return self.wait_for(
            lambda m: m.seq >= first and key in m.fields and (value is None or m.fields[key] == value),
            f"with {key}={value if value is not None else '...'} from message {first}",
            timeout,
        )

    def with_field(self, key: str) -> list[Message]:
        with self._changed:
            return [m for m in self.messages if key in m.fields]

    def close(self) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=5)
        if os.path.exists(os.path.join(self._dir, "notify")):
            os.unlink(os.path.join(self._dir, "notify"))
        os.rmdir(self._dir)
