"""Daemonizing: fork, setsid, fork, and a pipe that tells the launching command how the start went.

The launching process does not return to the shell until the daemon has started its services (listeners bound
and accepting) or failed; on failure it raises with the daemon's one-line reason, so the user sees why at once
instead of reading a log. This is twistd's best feature, kept.
"""

from __future__ import annotations

import os

from tapster.errors import StartupError

_OK = b"0"
_FAILED = b"1"


class StartupPipe:
    """The daemon's end of the pipe: say ``ready()`` or ``failed(reason)`` exactly once."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def ready(self) -> None:
        self._send(_OK)

    def failed(self, reason: str) -> None:
        self._send(_FAILED + b" " + reason.replace("\n", " ").encode("utf-8", "replace")[:2000])

    def _send(self, message: bytes) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.write(fd, message)
        except OSError:  # the launcher was killed: nobody is listening, the daemon goes on
            pass
        finally:
            os.close(fd)


def daemonize() -> StartupPipe | None:
    """Detach from the terminal. Returns the pipe in the daemon, ``None`` in the launcher once the daemon started.

    Raises (in the launcher only):
        StartupError: the daemon reported a failed start, or died before reporting.
    """
    read_fd, write_fd = os.pipe()
    first = os.fork()
    if first > 0:
        os.close(write_fd)
        report = _read_all(read_fd)
        os.waitpid(first, 0)
        if report.startswith(_OK):
            return None
        if report.startswith(_FAILED):
            raise StartupError(report[2:].decode("utf-8", "replace") or "the daemon failed to start")
        raise StartupError("the daemon exited before it finished starting (see its log file)")
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    _stdio_to_devnull()
    return StartupPipe(write_fd)


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _stdio_to_devnull() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
