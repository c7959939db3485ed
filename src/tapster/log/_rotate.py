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

import contextlib
import errno
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from typing import TypeVar

from tapster._safefile import UnsafeFileError, create_exclusive, open_regular
from tapster.errors import StartupError
from tapster.log._dropped import DroppedLines, describe
from tapster.log._format import TextFormatter

__all__ = ["RotatingFileHandler"]

_DATED = re.compile(r"(\d{4})_(\d{1,2})_(\d{1,2})(?:\.(\d+))?")

Day = tuple[int, int, int]
_T = TypeVar("_T")

_TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EIO})
"""Rotation failures that may pass by themselves: retried (at most once a second) rather than given up."""


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

    The file is never opened through a symbolic link, nor when it is a device, a FIFO or has other hard links;
    new files (a missing log, each rotation) are created with ``O_EXCL``, so nobody who can write the directory
    can steer a root process into appending to another file.

    Raises:
        StartupError: the file cannot be opened or was refused (a symbolic link, not a regular file, other hard
            links), or its directory is not writable (rotation creates files there), or ``max_bytes``/``keep``
            is negative. The message names the path or value.
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
        self._spare = -1
        self._rotation_broken = False
        self._rotation_trouble = False  # said in the log already; cleared when a rotation works
        self._rotation_retry_at = 0.0
        self._pending = b""  # notices of our own, written with the next line
        self._dropped = DroppedLines(f"log file {self.path}")
        self._day: Day = (0, 0, 0)
        self._next_midnight = 0.0
        self.setFormatter(TextFormatter())
        self._open_first()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} ({logging.getLevelName(self.level)})>"

    # -- opening ---------------------------------------------------------------------------------------------

    def _open_path(self) -> int:
        """Open ``path`` to append, creating it (``O_EXCL``) if missing: never through a symbolic link, never
        a device, a FIFO or a file with other hard links (:func:`~tapster._safefile.open_regular`)."""
        flags = os.O_WRONLY | os.O_APPEND
        try:
            fd = self._spared(lambda: open_regular(self.path, flags, what="log file"))
        except FileNotFoundError:
            try:
                return self._spared(lambda: self._create(self.path))
            except UnsafeFileError:
                # Something appeared at the path between the two opens: open it if it passes the same checks.
                fd = self._spared(lambda: open_regular(self.path, flags, what="log file"))
        if self.mode is not None:
            try:
                os.fchmod(fd, self.mode)
            except OSError:
                os.close(fd)
                raise
        return fd

    def _create(self, path: str) -> int:
        """Create a new file at ``path`` (``O_EXCL``: nothing planted there is followed) with :attr:`mode`."""
        flags = os.O_WRONLY | os.O_APPEND
        if self.mode is None:
            return create_exclusive(path, flags, 0o666, what="log file")
        # Create it private, then widen to the requested mode: never more open than asked, not even briefly.
        fd = create_exclusive(path, flags, 0o600, what="log file")
        try:
            os.fchmod(fd, self.mode)
        except OSError:
            os.close(fd)
            raise
        return fd

    def _spared(self, call: Callable[[], _T]) -> _T:
        """Run ``call`` (which needs a descriptor); if the process is out of them (``EMFILE``), give up the
        spare one and try again, so that rotating and reopening still work when a flood of connections took
        every other. The spare is taken back at once if ``call`` left its descriptor free (``listdir``)."""
        try:
            return call()
        except OSError as exc:
            if exc.errno != errno.EMFILE or self._spare < 0:
                raise
        os.close(self._spare)
        self._spare = -1
        try:
            return call()
        finally:
            self._refresh_spare()

    def _refresh_spare(self) -> None:
        """Hold one descriptor in reserve (a duplicate of the current file's) for :meth:`_spared`."""
        if self._spare >= 0:
            os.close(self._spare)
            self._spare = -1
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):  # out of descriptors: the next open will have to do without
            self._spare = os.dup(self._fd)

    def _open_first(self) -> None:
        try:
            fd = self._open_path()
        except UnsafeFileError as exc:
            raise StartupError(str(exc)) from None
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
        self._refresh_spare()
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
                except UnsafeFileError as exc:
                    raise StartupError(f"cannot rotate log file {self.path}: {exc}") from None
                except OSError as exc:
                    raise StartupError(f"cannot rotate log file {self.path}: {exc.strerror or exc}") from exc
            self._set_day(today)

    # -- writing ---------------------------------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` as one line, rotating first if it is due. Called with the handler lock held.

        A line is written whole or not at all. A write that fails (full disk, I/O error) drops the line, counts
        it and is reported once on file descriptor 2 (never through ``sys.stderr``, which a daemon captures
        into this log); for the next second lines are dropped unformatted, then one write is tried again. The
        first line that gets through is preceded by a line giving the count of dropped lines.

        A failed rotation is said once in the log and the line goes to the current file: a transient failure
        (out of descriptors or space) is retried at most once a second, any other switches automatic rotation
        off until :meth:`rotate` or :meth:`reopen` works. Records logged after :meth:`close` are dropped.
        """
        if self._fd < 0:
            return
        dropped = self._dropped
        if dropped.failing and not dropped.may_write():
            dropped.drop()
            return
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        except Exception:
            self.handleError(record)  # a bad record (format arguments): logging's report names the call
            return
        if self.daily and (now := self._clock()) >= self._next_midnight and self._day_done():
            self._set_day(self._date(now))
        if self.max_bytes and self._size and self._size + len(data) > self.max_bytes and self._may_rotate():
            self._try_rotate()
        if not dropped.failing and not self._pending:  # the usual case, kept short: one write, whole
            try:
                written = os.write(self._fd, data)
            except OSError as exc:
                dropped.failed(describe(exc))
                return
            if written == len(data):
                self._size += written
            else:
                self._write_whole(data, written)
            return
        prefix = self._pending
        notice = dropped.notice()
        if notice is not None:
            prefix += self._encode(self._notice(logging.WARNING, notice, record))
        if self._write_whole(prefix + data):
            self._pending = b""
            if dropped.failing:
                dropped.recovered()

    def _encode(self, record: logging.LogRecord) -> bytes:
        return (self.format(record) + "\n").encode("utf-8", "backslashreplace")

    def _notice(self, level: int, message: str, record: logging.LogRecord) -> logging.LogRecord:
        """A record of the handler's own, stamped with the time of the record that prompted it."""
        return logging.makeLogRecord(
            {
                "name": "tapster",
                "levelno": level,
                "levelname": logging.getLevelName(level),
                "msg": message,
                "created": record.created,
                "msecs": record.msecs,
            }
        )

    def _write_whole(self, data: bytes, written: int = -1) -> bool:
        """Hand ``data`` to the kernel whole, or leave the file as it was; ``False`` (counted) if it failed.

        A regular file takes a write partly when it runs out of space in the middle of it; the part that went
        in is cut off again (``ftruncate``), so no half line is left to be glued to the next one. ``written``:
        how much of ``data`` a first write took already, if one was made.
        """
        try:
            if written < 0:
                written = 0
                written = os.write(self._fd, data)
            while written < len(data):
                more = os.write(self._fd, data[written:])
                if more <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                written += more
        except OSError as exc:
            if written:
                self._cut_back(written)
            self._dropped.failed(describe(exc))
            return False
        self._size += len(data)
        return True

    def _cut_back(self, written: int) -> None:
        """Remove the last ``written`` bytes of the file (ours: the handler lock is held), or end the line."""
        try:
            end = os.fstat(self._fd).st_size
            os.ftruncate(self._fd, max(0, end - written))
        except OSError:
            with contextlib.suppress(OSError):  # at least do not glue the next line to this half of one
                os.write(self._fd, b"\n")

    def _may_rotate(self) -> bool:
        return not self._rotation_broken and time.monotonic() >= self._rotation_retry_at

    def _day_done(self) -> bool:
        """Midnight has passed: rotate the day's file if there is one. After a failure that may pass, the day
        stays the old one, so the rotation is tried again (at most each second) under the old date."""
        return self._size == 0 or self._rotation_broken or (self._may_rotate() and self._try_rotate())

    def _try_rotate(self) -> bool:
        """Rotate, saying once why not; ``True`` if done with: it worked, or it will not be tried again."""
        try:
            self._rotate_locked()
        except OSError as exc:
            self._rotation_failed(exc)
            return self._rotation_broken
        self._rotation_trouble = False
        return True

    def _rotation_failed(self, exc: OSError) -> None:
        """Say once, in the log itself, that rotation fails; retry each second if it may pass, else stop.

        Out of descriptors, space or memory passes: the log goes on into the current file and rotation is tried
        again at most once a second. Anything else (typically the server dropped privileges and can no longer
        create files in a root-owned log directory, or a planted link was refused) would fail the same way
        every time: automatic rotation stays off until a :meth:`rotate` or :meth:`reopen` works. Never a
        traceback on stderr, which a daemon captures into this very log.
        """
        reason = str(exc) if isinstance(exc, UnsafeFileError) else (exc.strerror or str(exc))
        if exc.errno in _TRANSIENT and not isinstance(exc, UnsafeFileError):
            self._rotation_retry_at = time.monotonic() + 1.0
            if self._rotation_trouble:
                return
            self._rotation_trouble = True
            message = (
                f"cannot rotate the log file {self.path}: {reason}; the log goes on into the current file and"
                " rotation is tried again at most once a second"
            )
        else:
            self._rotation_broken = True
            self._rotation_trouble = True
            message = (
                f"cannot rotate the log file {self.path}: {reason}; automatic rotation is off until"
                " 'tapster ctl rotate' or 'tapster ctl reopen' succeeds (make the directory writable by the"
                " server's user, or rotate with logrotate)"
            )
        notice = self._notice(logging.WARNING, message, logging.makeLogRecord({}))
        with contextlib.suppress(Exception):
            self._pending += self._encode(notice)

    def flush(self) -> None:
        """Nothing to do: every record is handed to the kernel by :meth:`emit`."""

    def close(self) -> None:
        """Close the file; later records are dropped. Safe to call twice."""
        self.acquire()
        try:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._spare >= 0:
                os.close(self._spare)
                self._spare = -1
        finally:
            self.release()
        super().close()

    # -- rotation --------------------------------------------------------------------------------------------

    def rotate(self) -> None:
        """Rotate now (``SIGUSR1``): the current file becomes ``NAME.1`` (or ``NAME.YYYY_MM_DD``).

        Raises:
            OSError: a file could not be renamed or created (:class:`~tapster._safefile.UnsafeFileError` if
                something planted was refused); logging goes on to the file it went to before.
        """
        self.acquire()
        try:
            if self._fd < 0:
                return
            self._rotate_locked()
            self._rotation_broken = False
            self._rotation_trouble = False
            self._rotation_retry_at = 0.0
            if self.daily:
                self._set_day(self._date(self._clock()))
        finally:
            self.release()

    def reopen(self) -> None:
        """Close and open ``path`` again (``SIGHUP``): after logrotate moved the file away, write a new one.

        Raises:
            OSError: the file could not be opened, or was refused (a symbolic link, a device, another hard
                link: :class:`~tapster._safefile.UnsafeFileError`); logging goes on to the file it went to before.
        """
        self.acquire()
        try:
            if self._fd < 0:
                return
            fd = self._open_path()
            old, self._fd = self._fd, fd
            self._size = os.fstat(fd).st_size
            self._rotation_broken = False
            self._rotation_trouble = False
            self._rotation_retry_at = 0.0
            os.close(old)
            self._refresh_spare()
        finally:
            self.release()

    def _rotate_locked(self) -> None:
        """Move the current file aside and put a fresh one at ``path``; the caller holds the lock (or is __init__).

        The fresh file is created first under a random name with ``O_EXCL`` and renamed over ``path`` last, so
        nothing planted at either name is ever opened and ``path`` is missing only between the two renames.
        The old descriptor stays in use until then, so a failure at any step leaves a working handler behind.
        """
        names = self._names()  # first: listing the directory needs a descriptor too, the spare perhaps
        temp = os.path.join(self.directory, f".{self._base}.{os.urandom(4).hex()}.new")
        fd = self._spared(lambda: self._create(temp))
        try:
            if self.daily:
                self._move_dated(names)
            else:
                self._move_numbered(names)
            os.rename(temp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        old, self._fd = self._fd, fd
        self._size = 0
        os.close(old)
        self._refresh_spare()
        if self.daily:
            self._prune_dated()

    def _names(self) -> list[str]:
        prefix = self._base + "."
        found = self._spared(lambda: os.listdir(self.directory or "."))
        return [name[len(prefix) :] for name in found if name.startswith(prefix)]

    def _aside(self, suffix: str) -> str:
        return f"{self.path}.{suffix}"

    def _move_numbered(self, names: list[str]) -> None:
        numbers = sorted((int(s) for s in names if s.isascii() and s.isdigit()), reverse=True)
        for number in numbers:
            if self.keep is not None and number + 1 > self.keep:
                os.unlink(self._aside(str(number)))
            else:
                os.rename(self._aside(str(number)), self._aside(str(number + 1)))
        if self.keep != 0:  # with keep 0 the fresh file simply replaces it
            os.rename(self.path, self._aside("1"))

    def _dated(self, names: list[str]) -> list[tuple[Day, int, str]]:
        """Date-named files among ``names`` as ((year, month, day), piece, suffix), oldest first."""
        found = []
        for suffix in names:
            match = _DATED.fullmatch(suffix)
            if match:
                year, month, day, piece = match.groups()
                found.append(((int(year), int(month), int(day)), int(piece or 0), suffix))
        found.sort()
        return found

    def _move_dated(self, names: list[str]) -> None:
        year, month, day = self._day
        name = f"{year:04d}_{month:02d}_{day:02d}"
        pieces = [piece for date, piece, _ in self._dated(names) if date == self._day]
        if pieces:
            name = f"{name}.{max(pieces) + 1}"
        os.rename(self.path, self._aside(name))

    def _prune_dated(self) -> None:
        if self.keep is None:
            return
        dated = self._dated(self._names())
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
