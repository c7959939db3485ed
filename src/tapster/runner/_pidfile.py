"""A pid file that is also a lock, so a dead server never blocks the next start.

twistd decides whether a server runs by sending signal 0 to the pid in the file: a recycled pid then blocks
every start, and a lock file left by a killed process stays stale. tapster instead holds ``flock(LOCK_EX)`` on
the pid file's open descriptor for the life of the process. The kernel drops the lock when the process dies,
however it dies, so a locked file means a live server and an unlocked one is a leftover to take over.

The lock belongs to the open file description, which ``fork`` shares: the runner acquires before daemonizing
and each parent that exits after a fork closes its copy with :meth:`PidFile.close_without_unlock`.

The file often lives in a directory other users can write (``/tmp``, a shared run directory), and the server
opens it as root. Every open therefore goes through :func:`tapster._safefile.open_regular`: a symbolic link, a
FIFO, a directory, a device or a file with a second hard link planted at the path is refused with one line,
and its target is neither created nor truncated. A leftover file owned by another user, or writable by its
group or others, is refused too: whoever can rewrite the pid in a file the server holds can make
``tapster ctl stop`` signal a process of their choosing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time

from tapster._safefile import UnsafeFileError, open_regular
from tapster.errors import StartupError
from tapster.runner._answers import AnswerFile, answer_path

__all__ = ["NoPidFile", "PidFile", "PidFileLocked", "read_pid_status"]


class PidFileLocked(StartupError):
    """Another live process holds the pid file: "Another server is running, PID N (from F)"."""


# How often acquire() reopens the path when the file it locked was removed or replaced meanwhile (a stopping
# server removes its file just before unlocking it). Each retry needs another process to win a race, so a few
# are plenty.
_ACQUIRE_ATTEMPTS = 5

# A pid is at most a few digits; anything longer than this is not a pid file we wrote.
_MAX_PID_BYTES = 32


class PidFile:
    """The pid file of one server process, held locked from :meth:`acquire` until :meth:`release`.

    Args:
        path: Absolute path of the pid file (the runner resolves it against the start directory).
        display: The path as the user gave it, used in error messages (defaults to ``path``).
    """

    def __init__(self, path: str, *, display: str | None = None) -> None:
        self._path = path
        self._display = path if display is None else display
        self._fd: int | None = None
        # The directory, held open from acquire() on: release() looks up and removes the file through it, so
        # it still works after a chroot has made the absolute path meaningless (twistd leaves the file there).
        self._dir_fd: int | None = None
        self._name = os.path.basename(path)
        self._answers = AnswerFile(answer_path(path))  # what `tapster ctl rotate/reopen` waits for

    @property
    def path(self) -> str:
        """The absolute path of the pid file."""
        return self._path

    @property
    def display(self) -> str:
        """The path as the user gave it; error messages use this."""
        return self._display

    @property
    def fd(self) -> int | None:
        """The locked descriptor while the file is held, else ``None``."""
        return self._fd

    def acquire(self) -> int | None:
        """Open and lock the pid file, creating it if needed; the pid is not written yet.

        Returns:
            The pid found in the file when it was left behind by a process that died without removing it (the
            runner logs it), or ``None`` when the file was new, empty or held no pid.

        Raises:
            StartupError: Another live process holds the file ("Another server is running, PID N (from F)"),
                the file cannot be created or opened, or what is at the path is refused (a symbolic link, not
                a regular file, a second hard link, another user's file): the message names the path and why.
            RuntimeError: This object already holds the file.
        """
        if self._fd is not None:
            raise RuntimeError(f"pid file {self._display} is already held by this process")
        for _ in range(_ACQUIRE_ATTEMPTS):
            try:
                fd = open_regular(
                    self._path, os.O_RDWR | os.O_CREAT, 0o644, what="pid file", shown=self._display
                )
            except UnsafeFileError as exc:
                raise StartupError(str(exc)) from None
            except OSError as exc:
                raise StartupError(f"cannot write pid file {self._display}: {exc.strerror}") from exc
            try:
                _check_owner(fd, self._display)
                _lock_exclusive(fd)
            except BlockingIOError:
                # The holder may be stopping: it removes the file before unlocking. If our inode is no longer
                # the one at the path, the lock we lost is on a dead file; look again.
                if _is_current(fd, self._path):
                    pid = _read_pid(fd)
                    os.close(fd)
                    shown = "unknown" if pid is None else str(pid)
                    raise PidFileLocked(
                        f"Another server is running, PID {shown} (from {self._display})"
                    ) from None
                os.close(fd)
                continue
            except StartupError:
                os.close(fd)
                raise
            except OSError as exc:
                os.close(fd)
                raise StartupError(f"cannot lock pid file {self._display}: {exc.strerror}") from exc
            # We may have opened the file just before a stopping server removed it, then locked the removed
            # inode once it unlocked: that lock guards nothing. Only a lock on the file at the path counts.
            if _is_current(fd, self._path):
                try:
                    self._dir_fd = os.open(os.path.dirname(self._path) or ".", os.O_RDONLY | os.O_DIRECTORY)
                except OSError as exc:
                    os.close(fd)
                    raise StartupError(
                        f"cannot open the directory of pid file {self._display}: {exc.strerror}"
                    ) from exc
                if not _is_current(fd, self._name, dir_fd=self._dir_fd):  # renamed between the two opens
                    self._close_dir()
                    os.close(fd)
                    continue
                self._fd = fd
                self._answers.open()
                return _read_pid(fd)
            os.close(fd)
        raise StartupError(f"cannot lock pid file {self._display}: it was replaced while being locked")

    def write(self, pid: int | None = None) -> None:
        """Replace the file's content with ``pid`` (default: this process) as bare digits, like twistd.

        Raises:
            StartupError: The write failed (disk full, for instance).
            RuntimeError: The file is not held.
        """
        fd = self._held()
        data = str(os.getpid() if pid is None else pid).encode("ascii")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError as exc:
            raise StartupError(f"cannot write pid file {self._display}: {exc.strerror}") from exc

    def release(self) -> None:
        """Remove the pid file, then unlock and close it; does nothing unless the file is held.

        The file goes first so that no starter ever finds it unlocked while it still names this process. A
        file that has been replaced by someone else's is left alone.

        Raises:
            StartupError: The file could not be removed (typically: privileges were dropped and the directory
                is not writable). Its content is cleared and the lock released all the same, so the next start
                takes it over; the runner should log this as a warning.
        """
        fd = self._fd
        if fd is None:
            return
        error: OSError | None = None
        dir_fd = self._dir_fd
        try:
            current = _is_current(fd, self._name, strict=True, dir_fd=dir_fd)
        except OSError as exc:  # the path cannot even be looked at any more (privileges dropped)
            current, error = False, exc
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # a leftover then names no process
        if current:
            try:
                os.unlink(self._name, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                error = exc
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)  # a leftover then names no process
        self._fd = None
        self._answers.remove(dir_fd)
        self._close_dir()
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        if error is not None:
            raise StartupError(f"cannot remove pid file {self._display}: {error.strerror}") from error

    def answer(self, command: str, outcome: str, reason: str = "") -> None:
        """Tell ``tapster ctl`` how a control signal went (``runner/_answers.py``); never raises."""
        self._answers.answer(command, outcome, reason)

    def close_without_unlock(self) -> None:
        """Close this process's descriptor but keep the lock, which a forked child still shares.

        For a parent that exits after forking: ``LOCK_UN`` would unlock the child's shared lock too.
        """
        fd = self._fd
        if fd is not None:
            self._fd = None
            os.close(fd)
        self._answers.close()
        self._close_dir()

    def _close_dir(self) -> None:
        dir_fd, self._dir_fd = self._dir_fd, None
        if dir_fd is not None:
            os.close(dir_fd)

    def _held(self) -> int:
        if self._fd is None:
            raise RuntimeError(f"pid file {self._display} is not held by this process")
        return self._fd


class NoPidFile:
    """``--pidfile=``: a pid file that is not there. Every step the runner takes on a pid file does nothing."""

    path = ""
    display = ""
    fd = None

    def acquire(self) -> int | None:
        return None

    def write(self, pid: int | None = None) -> None:
        pass

    def release(self) -> None:
        pass

    def answer(self, command: str, outcome: str, reason: str = "") -> None:
        pass

    def close_without_unlock(self) -> None:
        pass


def _lock_exclusive(fd: int) -> None:
    """Take the exclusive lock, allowing for a status probe that holds a shared lock for an instant.

    ``read_pid_status`` (``tapster ctl status``) takes a shared lock for a few microseconds; a start racing with
    it must not conclude that a server runs. A real server holds its lock for good, so a few short retries cost
    nothing in the common case and only delay the "Another server is running" answer by ~50 ms.
    """
    for _ in range(10):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.005)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _check_owner(fd: int, display: str) -> None:
    """Refuse a pid file another user could rewrite while we hold it (see the module's docstring)."""
    info = os.fstat(fd)
    if info.st_uid not in (os.geteuid(), 0):
        owners = "root" if os.geteuid() == 0 else f"uid {os.geteuid()} or root"
        raise StartupError(
            f"refusing pid file {display}: it is owned by uid {info.st_uid}, not by {owners}; "
            "remove it if no server of that user runs"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "others" if info.st_mode & stat.S_IWOTH else "its group"
        raise StartupError(f"refusing pid file {display}: it is writable by {who}; remove it")


def read_pid_status(path: str, *, shown: str | None = None) -> tuple[str, int | None]:
    """Tell whether a server holds the pid file at ``path``, without creating or changing it.

    The file is opened like the server opens it: never through a symbolic link, and only if it is a regular
    file with one link, so ``tapster ctl`` cannot be steered into signalling a process named by a planted file.

    Args:
        path: The pid file (absolute, or relative to the working directory).
        shown: The path as the user gave it, for messages (defaults to ``path``).

    Returns:
        ``("running", pid)`` when a live process holds the file's lock (``pid`` is ``None`` if the content is
        not a pid yet, as between acquire and write), ``("stale", pid)`` when the file exists but nobody holds
        it, ``("absent", None)`` when there is no file.

    Raises:
        StartupError: The file exists but cannot be opened (permission denied, for instance), or what is at
            the path is not a pid file tapster would write: a symbolic link ("refusing pid file P: it is a
            symbolic link"), a directory ("refusing pid file P: a directory, not a regular file"), a FIFO, a
            device, a file with several hard links. The message is one line naming the path.
    """
    name = path if shown is None else shown
    try:
        fd = open_regular(path, os.O_RDONLY, what="pid file", shown=name)
    except FileNotFoundError:
        return ("absent", None)
    except UnsafeFileError as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"cannot read pid file {name}: {exc.strerror}") from exc
    try:
        pid = _read_pid(fd)
        try:
            # A shared lock conflicts with the server's exclusive one but not with another status probe.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return ("running", pid)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return ("stale", pid)
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    """The positive pid the file holds (surrounding whitespace allowed), or ``None`` for anything else."""
    try:
        data = os.pread(fd, _MAX_PID_BYTES + 1, 0)
    except OSError:
        return None
    text = data.strip()
    if not text or len(data) > _MAX_PID_BYTES or not text.isdigit():
        return None
    pid = int(text)
    return pid if pid > 0 else None


def _is_current(fd: int, path: str, *, strict: bool = False, dir_fd: int | None = None) -> bool:
    """Whether ``fd`` is still the file found at ``path`` (not removed, not replaced by another file).

    The path is looked at with ``lstat``: a symbolic link put in the file's place is never "our file", even if it
    points at it. With ``strict``, an error other than "no such file" (permission denied) is raised instead of
    answering no. With ``dir_fd``, ``path`` is a name in that directory.
    """
    try:
        at_path = os.lstat(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except OSError:
        if strict:
            raise
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (at_path.st_dev, at_path.st_ino)
