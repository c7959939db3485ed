"""The answer file: how a server tells ``tapster ctl rotate``/``reopen`` what it actually did.

A signal carries no reply, so ``ctl`` used to print "sent SIGUSR1" and exit 0 while the server logged that it
could not rotate. The server therefore keeps one small file beside its pid file, ``PIDFILE.answer``, created
and opened (as root, before any privilege drop) together with the pid file and held open for the whole run.
After each SIGUSR1 or SIGHUP it rewrites the file through that descriptor with one line::

    SEQUENCE PID COMMAND (ok|skipped|failed) [reason]

``ctl`` reads the line before signalling, signals, and waits (bounded, ``--timeout``) for a line with another
sequence number from that pid. The file is opened like the pid file (never through a link, a regular file with
one link); it holds no secret and is removed with the pid file at stop (emptied if the directory is no longer
writable after a privilege drop).
"""

from __future__ import annotations

import contextlib
import os
import re
import time

from tapster._safefile import open_regular

__all__ = ["Answer", "AnswerFile", "HeldFile", "answer_path", "read_answer", "read_held", "wait_for_answer"]

SUFFIX = ".answer"
_LINE = re.compile(r"(\d+) (\d+) (rotate|reopen|reload|upgrade) (ok|skipped|failed) ?(.*)")
_MAX_BYTES = 4096


def answer_path(pidfile: str) -> str:
    """The answer file that belongs to the pid file at ``pidfile``."""
    return pidfile + SUFFIX


class Answer:
    """One parsed answer line."""

    def __init__(self, sequence: int, pid: int, command: str, outcome: str, reason: str) -> None:
        self.sequence = sequence
        self.pid = pid
        self.command = command
        self.outcome = outcome
        self.reason = reason


class HeldFile:
    """A small file beside the pid file that the server keeps open and rewrites whole (answers, the workers).

    Opened once, as root, before any privilege drop; each rewrite is one ``pwrite`` and a cut to its length.
    """

    def __init__(self, path: str, *, max_bytes: int = _MAX_BYTES) -> None:
        self.path = path
        self.name = os.path.basename(path)
        self.max_bytes = max_bytes
        self._fd: int | None = None

    def open(self) -> None:
        """Create or take over the file and empty it; an error leaves the server without answers, not failed."""
        try:
            fd = open_regular(self.path, os.O_RDWR | os.O_CREAT, 0o644, what="answer file")
        except OSError:
            return
        info = os.fstat(fd)
        if info.st_uid not in (os.geteuid(), 0):  # another user's file: do not write where they read
            os.close(fd)
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        self._fd = fd

    def rewrite(self, text: str) -> None:
        """Replace the file's content with ``text`` (cut to ``max_bytes``); never raises."""
        if self._fd is None:
            return
        data = text.encode("utf-8", "replace")[: self.max_bytes]
        with contextlib.suppress(OSError):
            os.pwrite(self._fd, data, 0)
            os.ftruncate(self._fd, len(data))

    def remove(self, dir_fd: int | None) -> None:
        """Remove the file (through the pid file's directory descriptor), or empty it if that is refused."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            at_path = os.lstat(self.name if dir_fd is not None else self.path, dir_fd=dir_fd)
            mine = os.fstat(fd)
            if (at_path.st_dev, at_path.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(self.name if dir_fd is not None else self.path, dir_fd=dir_fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close this process's descriptor only (a launcher that forked the daemon)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class AnswerFile(HeldFile):
    """The server's side: created with the pid file, written after each control signal, removed at stop."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        # Not 0: a master that re-executed itself (ctl upgrade) keeps its pid, and ctl tells a new answer from
        # the last one by pid and sequence; microseconds since the epoch never repeat the previous image's.
        self._sequence = time.time_ns() // 1000

    def answer(self, command: str, outcome: str, reason: str = "") -> None:
        """Replace the file's line with this answer (one ``pwrite``, then cut to its length)."""
        if self._fd is None:
            return
        self._sequence += 1
        line = f"{self._sequence} {os.getpid()} {command} {outcome} {reason}".rstrip()
        self.rewrite(line.replace("\n", " ")[: _MAX_BYTES - 1] + "\n")


def read_held(path: str, owner: int | None = None, max_bytes: int = _MAX_BYTES) -> str | None:
    """The text of a :class:`HeldFile` at ``path``, or ``None`` (no file, unreadable, or not ``owner``'s)."""
    try:
        fd = open_regular(path, os.O_RDONLY, what="state file")
    except OSError:
        return None
    try:
        if owner is not None and os.fstat(fd).st_uid != owner:
            return None
        data = os.pread(fd, max_bytes, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace")


def read_answer(path: str, owner: int | None = None) -> Answer | None:
    """The answer in the file at ``path``, or ``None`` (no file, empty, unreadable, or not an answer line).

    With ``owner`` (the pid file's owner), a file someone else owns is ignored: it was not written by the server.
    """
    text = read_held(path, owner)
    if text is None:
        return None
    first, newline, _ = text.partition("\n")
    match = _LINE.fullmatch(first) if newline else None
    if match is None:
        return None
    sequence, pid, command, outcome, reason = match.groups()
    return Answer(int(sequence), int(pid), command, outcome, reason)


def wait_for_answer(
    path: str, pid: int, before: Answer | None, timeout: float, owner: int | None = None
) -> Answer | None:
    """Wait up to ``timeout`` seconds for an answer from ``pid`` newer than ``before``; ``None`` if none came.

    Polled every 10 ms: the answer comes within a loop turn of the signal, and ``ctl`` is a one-shot command.
    """
    deadline = time.monotonic() + timeout
    while True:
        answer = read_answer(path, owner)
        if (
            answer is not None
            and answer.pid == pid
            and (before is None or before.pid != pid or answer.sequence != before.sequence)
        ):
            return answer
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)
