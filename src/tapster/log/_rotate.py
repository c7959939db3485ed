"""A log file that rotates by size or by day, as twistd's LogFile and DailyLogFile do, written for speed.

The stdlib's rotating handlers ask the file for its position on every record; this one counts the bytes
it writes and hands each encoded line to the kernel with one ``write`` on an ``O_APPEND`` descriptor, so a
line is visible to ``tail -f`` (and to tests) the moment the call returns, and nothing sits in a Python
buffer when the process dies.

Rotated files, in the directory of the log:

* by size (and by :meth:`RotatingFileHandler.rotate`): ``NAME.1`` is the newest, ``NAME.2`` older, and so on;
* with ``daily=True``: ``NAME.YYYY_MM_DD``, named by the day the lines were written; a second file of the same
  day (a size rotation, or a manual rotation) is ``NAME.YYYY_MM_DD.1``, then ``.2``, in the order they were
  written. twistd writes the day unpadded (``NAME.2026_1_5``); such files are recognised when pruning.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from collections.abc import Callable

from tapster.errors import StartupError
from tapster.log._format import TextFormatter

__all__ = ["RotatingFileHandler"]

_DATED = re.compile(r"(\d{4})_(\d{1,2})_(\d{1,2})(?:\.(\d+))?")

Day = tuple[int, int, int]


class RotatingFileHandler(logging.Handler):
    """Append formatted records to ``path``, rotating it by size and/or at local midnight.

    Every record is written with one system call and is on disk (in the page cache) when :meth:`emit` returns.
    :meth:`rotate` and :meth:`reopen` take the handler's lock, so they may be called from any thread while
    others log; no line is lost or reordered across a rotation. The default formatter is
    :class:`~tapster.log.TextFormatter`.

    Args:
        path: the log file; made absolute at once, so a later ``chdir`` does not move it.
        max_bytes: rotate before a record would make the file larger than this; ``None`` or 0: never by size.
            A single record larger than ``max_bytes`` still goes into one (fresh) file.
        keep: how many rotated files to keep, the oldest being deleted; ``None`` keeps all (twistd's
            behaviour), 0 keeps none.
        daily: rotate at the first record after local midnight, and at open if the file was last written on an
            earlier day; rotated files are named by date.
        mode: permission bits applied to the log file when it is opened (twistd's ``defaultMode``); ``None``
            leaves new files to the umask and existing files alone.
        clock: the time source for daily rotation (tests pass a fake one).

    Raises:
        StartupError: the file cannot be opened, or its directory is not writable (rotation creates files
            there), or ``max_bytes``/``keep`` is negative. The message names the path or value.
    """

    def __init__(
        self,
        path: str,
        max_bytes: int | None = 1_000_000,
        keep: int | None = None,
        daily: bool = False,
        mode: int | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise StartupError(f"log rotation size must not be negative, got {max_bytes}")
        if keep is not None and keep < 0:
            raise StartupError(f"number of rotated log files to keep must not be negative, got {keep}")
        super().__init__()
        self.path = os.path.abspath(path)
        self.directory, self._base = os.path.split(self.path)
        self.max_bytes = max_bytes or 0
        self.keep = keep
        self.daily = daily
        self.mode = mode
        self._clock = clock
        self._fd = -1
        self._size = 0
        self._rotation_broken = False
        self._day: Day = (0, 0, 0)
        self._next_midnight = 0.0
        self.setFormatter(TextFormatter())
        self._open_first()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} ({logging.getLevelName(self.level)})>"

    # -- opening ---------------------------------------------------------------------------------------------

    def _open_fd(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        if self.mode is None:
            return os.open(self.path, flags, 0o666)
        # Create it private, then widen to the requested mode: never more open than asked, not even briefly.
        fd = os.open(self.path, flags, 0o600)
        try:
            os.fchmod(fd, self.mode)
        except OSError:
            os.close(fd)
            raise
        return fd

    def _open_first(self) -> None:
        try:
            fd = self._open_fd()
        except OSError as exc:
            raise StartupError(f"cannot open log file {self.path}: {exc.strerror or exc}") from exc
        if not os.access(self.directory, os.W_OK | os.X_OK):
            os.close(fd)
            raise StartupError(
                f"cannot open log file {self.path}: directory {self.directory} is not writable"
                " (rotation creates files there)"
            )
        st = os.fstat(fd)
        self._fd = fd
        self._size = st.st_size
        if self.mode is None:
            # Later files (rotation, reopen) get this file's mode, not whatever the umask is by then (a daemon
            # sets 077 after opening its log): a log shipper that could read the first file can read them all.
            self.mode = stat.S_IMODE(st.st_mode)
        if self.daily:
            today = self._date(self._clock())
            file_day = self._date(st.st_mtime)
            if self._size > 0 and file_day < today:
                self._day = file_day
                try:
                    self._rotate_locked()
                except OSError as exc:
                    raise StartupError(f"cannot rotate log file {self.path}: {exc.strerror or exc}") from exc
            self._set_day(today)

    # -- writing ---------------------------------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` as one line, rotating first if it is due. Called with the handler lock held.

        A failed rotation is reported like any logging error (on stderr) and the line is written to the
        current file; rotation is tried again after another ``max_bytes`` bytes or at the next midnight.
        Records logged after :meth:`close` are dropped.
        """
        if self._fd < 0:
            return
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        except Exception:
            self.handleError(record)
            return
        if self.daily and (now := self._clock()) >= self._next_midnight:
            today = self._date(now)
            if self._size > 0 and not self._rotation_broken:
                try:
                    self._rotate_locked()
                except OSError as exc:
                    self._rotation_failed(exc, record)
            self._set_day(today)
        if (
            self.max_bytes
            and self._size
            and self._size + len(data) > self.max_bytes
            and not self._rotation_broken
        ):
            try:
                self._rotate_locked()
            except OSError as exc:
                self._rotation_failed(exc, record)
        try:
            written = os.write(self._fd, data)
            while written < len(data):  # a short write: only on a full disk or an odd file system
                written += os.write(self._fd, data[written:])
        except OSError:
            self.handleError(record)
        else:
            self._size += len(data)

    def _rotation_failed(self, exc: OSError, record: logging.LogRecord) -> None:
        """Say once, in the log itself, that rotation fails, and stop trying until a rotate or reopen works.

        Typically the server dropped privileges and can no longer create files in a root-owned log directory:
        retrying would fail the same way, and a traceback per attempt on stderr (captured into this very log)
        would flood it.
        """
        self._rotation_broken = True
        notice = logging.makeLogRecord(
            {
                "name": "tapster",
                "levelno": logging.WARNING,
                "levelname": "WARNING",
                "msg": "cannot rotate the log file %s: %s; automatic rotation is off until "
                "'tapster ctl rotate' or 'tapster ctl reopen' succeeds (make the directory writable by the "
                "server's user, or rotate with logrotate)",
                "args": (self.path, exc.strerror or exc),
                "created": record.created,
                "msecs": record.msecs,
            }
        )
        try:
            os.write(self._fd, (self.format(notice) + "\n").encode("utf-8", "backslashreplace"))
        except OSError:
            self.handleError(record)

    def flush(self) -> None:
        """Nothing to do: every record is handed to the kernel by :meth:`emit`."""

    def close(self) -> None:
        """Close the file; later records are dropped. Safe to call twice."""
        self.acquire()
        try:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        finally:
            self.release()
        super().close()

    # -- rotation --------------------------------------------------------------------------------------------

    def rotate(self) -> None:
        """Rotate now (``SIGUSR1``): the current file becomes ``NAME.1`` (or ``NAME.YYYY_MM_DD``).

        Raises:
            OSError: a file could not be renamed or created; logging goes on to the file it went to before.
        """
        self.acquire()
        try:
            if self._fd < 0:
                return
            self._rotate_locked()
            self._rotation_broken = False
            if self.daily:
                self._set_day(self._date(self._clock()))
        finally:
            self.release()

    def reopen(self) -> None:
        """Close and open ``path`` again (``SIGHUP``): after logrotate moved the file away, write a new one.

        Raises:
            OSError: the file could not be opened; logging goes on to the file it went to before.
        """
        self.acquire()
        try:
            if self._fd < 0:
                return
            fd = self._open_fd()
            old, self._fd = self._fd, fd
            self._size = os.fstat(fd).st_size
            self._rotation_broken = False
            os.close(old)
        finally:
            self.release()

    def _rotate_locked(self) -> None:
        """Move the current file aside and open a fresh one; the caller holds the lock (or is __init__).

        The old descriptor stays in use until the new file is open, so a failure at any step leaves a working
        handler behind.
        """
        if self.daily:
            self._move_dated()
        else:
            self._move_numbered()
        fd = self._open_fd()
        old, self._fd = self._fd, fd
        self._size = 0
        os.close(old)
        if self.daily:
            self._prune_dated()

    def _names(self) -> list[str]:
        prefix = self._base + "."
        return [name[len(prefix) :] for name in os.listdir(self.directory or ".") if name.startswith(prefix)]

    def _aside(self, suffix: str) -> str:
        return f"{self.path}.{suffix}"

    def _move_numbered(self) -> None:
        numbers = sorted((int(s) for s in self._names() if s.isascii() and s.isdigit()), reverse=True)
        for number in numbers:
            if self.keep is not None and number + 1 > self.keep:
                os.unlink(self._aside(str(number)))
            else:
                os.rename(self._aside(str(number)), self._aside(str(number + 1)))
        if self.keep == 0:
            os.unlink(self.path)
        else:
            os.rename(self.path, self._aside("1"))

    def _dated(self) -> list[tuple[Day, int, str]]:
        """Existing date-named files as ((year, month, day), piece, suffix), oldest first."""
        found = []
        for suffix in self._names():
            match = _DATED.fullmatch(suffix)
            if match:
                year, month, day, piece = match.groups()
                found.append(((int(year), int(month), int(day)), int(piece or 0), suffix))
        found.sort()
        return found

    def _move_dated(self) -> None:
        year, month, day = self._day
        name = f"{year:04d}_{month:02d}_{day:02d}"
        pieces = [piece for date, piece, _ in self._dated() if date == self._day]
        if pieces:
            name = f"{name}.{max(pieces) + 1}"
        os.rename(self.path, self._aside(name))

    def _prune_dated(self) -> None:
        if self.keep is None:
            return
        dated = self._dated()
        for _, _, suffix in dated[: max(0, len(dated) - self.keep)]:
            os.unlink(self._aside(suffix))

    # -- days ------------------------------------------------------------------------------------------------

    @staticmethod
    def _date(when: float) -> Day:
        tm = time.localtime(when)
        return (tm.tm_year, tm.tm_mon, tm.tm_mday)

    def _set_day(self, day: Day) -> None:
        self._day = day
        year, month, mday = day
        # mktime normalises day 32 to the 1st of the next month; -1 lets it work out DST for that midnight.
        self._next_midnight = time.mktime((year, month, mday + 1, 0, 0, 0, 0, 0, -1))
