"""RotatingFileHandler: writing, size and daily rotation, rotate(), reopen(), open errors."""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import pytest

from support import Plain, emit
from support import make_handler as make
from tapster.errors import StartupError
from tapster.log import RotatingFileHandler


class Clock:
    """A settable time source for daily rotation."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def local(year: int, month: int, day: int, hour: int = 12, minute: int = 0) -> float:
    return time.mktime((year, month, day, hour, minute, 0, 0, 0, -1))


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_lines_are_on_disk_when_emit_returns(tmp_path: Path, opened: list[RotatingFileHandler]) -> None:
    """Each record is readable from the file as soon as handle() returns, newline-terminated."""
    handler = make(opened, tmp_path / "app.log")
    emit(handler, "first")
    assert (tmp_path / "app.log").read_text() == "first\n"
    emit(handler, "zweite ✓")
    assert (tmp_path / "app.log").read_text(encoding="utf-8") == "first\nzweite ✓\n"


def test_default_formatter_is_text(tmp_path: Path, opened: list[RotatingFileHandler]) -> None:
    """Without setFormatter the handler writes twistd lines."""
    handler = RotatingFileHandler(str(tmp_path / "app.log"))
    opened.append(handler)
    emit(handler, "hello")
    assert (tmp_path / "app.log").read_text().endswith(" [-] hello\n")


def test_appends_to_existing_file_and_counts_its_size(
    tmp_path: Path, opened: list[RotatingFileHandler]
) -> None:
    """An existing file is appended to, and its bytes count towards max_bytes."""
    (tmp_path / "app.log").write_text("123456789\n")  # 10 bytes
    handler = make(opened, tmp_path / "app.log", max_bytes=20)
    emit(handler, "abcdefghi")  # 10 more: exactly 20, fits
    assert names(tmp_path) == ["app.log"]
    emit(handler, "x")
    assert names(tmp_path) == ["app.log", "app.log.1"]
    assert (tmp_path / "app.log.1").read_text() == "123456789\nabcdefghi\n"
    assert (tmp_path / "app.log").read_text() == "x\n"


def test_size_rotation_boundary(tmp_path: Path, opened: list[RotatingFileHandler]) -> None:
    """A file may reach max_bytes exactly; the record that would pass it starts a new file."""
    handler = make(opened, tmp_path / "app.log", max_bytes=10)
    emit(handler, "abcd")  # 5
    emit(handler, "efgh")  # 10: fits exactly
    assert names(tmp_path) == ["app.log"]
    emit(handler, "i")  # 12 would pass
    assert (tmp_path / "app.log.1").read_text() == "abcd\nefgh\n"
    assert (tmp_path / "app.log").read_text() == "i\n"


def test_record_larger_than_max_bytes_gets_its_own_file(
    tmp_path: Path, opened: list[RotatingFileHandler]
) -> None:
    """An oversized record is written whole, and rotation never leaves an empty file behind for it."""
    handler = make(opened, tmp_path / "app.log", max_bytes=5)
    emit(handler, "0123456789")
    emit(handler, "abcdefghij")
    assert (tmp_path / "app.log").read_text() == "abcdefghij\n"
    assert (tmp_path / "app.log.1").read_text() == "0123456789\n"
    assert names(tmp_path) == ["app.log", "app.log.1"]


def test_no_size_rotation_when_max_bytes_is_none_or_zero(
    tmp_path: Path, opened: list[RotatingFileHandler]
) -> None:
    """max_bytes None or 0 never rotates by size."""
    for index, max_bytes in enumerate((None, 0)):
        path = tmp_path / f"{index}.log"
        handler = make(opened, path, max_bytes=max_bytes)
        for _ in range(100):
            emit(handler, "x" * 50)
        assert path.stat().st_size == 5100
    assert names(tmp_path) == ["0.log", "1.log"]


def test_keep_none_keeps_all_in_order(tmp_path: Path, opened: list[RotatingFileHandler]) -> None:
    """With keep=None every rotated file stays, .1 the newest."""
    handler = make(opened, tmp_path / "app.log", max_bytes=2)
    for n in range(6):
        emit(handler, str(n))
    assert names(tmp_path) == ["app.log", *(f"app.log.{n}" for n in range(1, 6))]
    assert [(tmp_path / f"app.log.{n}").read_text() for n in range(5, 0, -1)] == [f"{n}\n" for n in range(5)]
    assert (tmp_path / "app.log").read_text() == "5\n"


def test_keep_n_deletes_older_files(tmp_path: Path, opened: list[RotatingFileHandler]) -> None:
    """With keep=2 only the two newest rotated files remain."""
    handler = make(opened, tmp_path / "app.log", max_bytes=2, keep=2)
    for n in range(6):
        emit(handler, str(n))
    assert names(tmp_path) == ["app.log", "app.log.1", "app.log.2"]
    assert (tmp_path / "app.log.2").read_text() == "3\n"
    assert (tmp_path / "app.log.1").read_text() == "4\n"
    assert (tmp_path / "app.log").read_text() == "5\n"


def test_keep_zero_keeps_no_old_file(tmp_path: Path, opened: list[RotatingFileHandler]) -> None:
    """With keep=0 rotation discards the old file."""
    handler = make(opened, tmp_path / "app.log", max_bytes=2, keep=0)
    for n in range(3):
        emit(handler, str(n))
    assert names(tmp_path) == ["app.log"]
    assert (tmp_path / "app.log").read_text() == "2\n"


def test_other_files_in_the_directory_are_left_alone(
    tmp_path: Path, opened: list[RotatingFileHandler]
) -> None:
    """Rotation touches only NAME and NAME.<number>."""
    for name in ("app.log.old", "app.logx.1", "other.log.1"):
        (tmp_path / name).write_text("keep me\n")
    handler = make(opened, tmp_path / "app.log", max_bytes=2, keep=1)
    for n in range(3):
        emit(handler, str(n))
    assert names(tmp_path) == ["app.log", "app.log.1", "app.log.old", "app.logx.1", "other.log.1"]


def test_rotate_now(tmp_path: Path, opened: list[RotatingFileHandler]) -> None:
    """rotate() moves the file to .1 at once; later lines go to a fresh file."""
    handler = make(opened, tmp_path / "app.log")
    emit(handler, "before")
    handler.rotate()
    assert (tmp_path / "app.log.1").read_text() == "before\n"
    assert (tmp_path / "app.log").read_text() == ""
    emit(handler, "after")
    assert (tmp_path / "app.log").read_text() == "after\n"


def test_reopen_after_file_was_moved_away(tmp_path: Path, opened: list[RotatingFileHandler]) -> None:
    """After logrotate renames the file, lines go to the old file until reopen(), then to a new one."""
    handler = make(opened, tmp_path / "app.log")
    emit(handler, "one")
    (tmp_path / "app.log").rename(tmp_path / "app.log-20261123")
    emit(handler, "two")
    assert not (tmp_path / "app.log").exists()
    handler.reopen()
    emit(handler, "three")
    assert (tmp_path / "app.log-20261123").read_text() == "one\ntwo\n"
    assert (tmp_path / "app.log").read_text() == "three\n"


def test_reopen_counts_size_of_new_file(tmp_path: Path, opened: list[RotatingFileHandler]) -> None:
    """After reopen() the size limit applies to the file now at the path."""
    handler = make(opened, tmp_path / "app.log", max_bytes=10)
    emit(handler, "12345678")
    (tmp_path / "app.log").rename(tmp_path / "moved")
    handler.reopen()
    emit(handler, "12345678")  # 9 bytes in the new file: no rotation yet
    assert names(tmp_path) == ["app.log", "moved"]


def test_mode_is_applied(tmp_path: Path, opened: list[RotatingFileHandler]) -> None:
    """mode sets the permission bits of the log file and of the files created by rotation."""
    handler = make(opened, tmp_path / "app.log", mode=0o640)
    assert stat.S_IMODE((tmp_path / "app.log").stat().st_mode) == 0o640
    handler.rotate()
    assert stat.S_IMODE((tmp_path / "app.log").stat().st_mode) == 0o640


def test_path_is_made_absolute(
    tmp_path: Path, opened: list[RotatingFileHandler], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path keeps naming the same file after the process changes directory."""
    monkeypatch.chdir(tmp_path)
    handler = make(opened, Path("rel.log"), max_bytes=2)
    monkeypatch.chdir("/")
    emit(handler, "a")
    emit(handler, "b")
    assert names(tmp_path) == ["rel.log", "rel.log.1"]


def test_close_then_emit_drops(tmp_path: Path) -> None:
    """After close() records are dropped quietly and close() may be repeated."""
    handler = RotatingFileHandler(str(tmp_path / "app.log"))
    handler.setFormatter(Plain())
    emit(handler, "kept")
    handler.close()
    emit(handler, "dropped")
    handler.close()
    handler.rotate()
    assert (tmp_path / "app.log").read_text() == "kept\n"


def test_missing_directory_is_startup_error(tmp_path: Path) -> None:
    """A log path in a missing directory fails with a StartupError naming the path and the reason."""
    path = tmp_path / "nope" / "app.log"
    with pytest.raises(StartupError, match=rf"^cannot open log file {path}: No such file or directory$"):
        RotatingFileHandler(str(path))


def test_parent_is_a_file_is_startup_error(tmp_path: Path) -> None:
    """A log path whose parent is a regular file fails with a StartupError (a real failure, even as root)."""
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "app.log"
    with pytest.raises(StartupError, match=rf"^cannot open log file {path}: Not a directory$"):
        RotatingFileHandler(str(path))


def test_unwritable_location_is_startup_error() -> None:
    """A log path the kernel refuses (sysfs, read-only even for root) fails with Permission denied."""
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("no sysfs")
    with pytest.raises(StartupError, match=r"^cannot open log file /sys/tapster\.log: "):
        RotatingFileHandler("/sys/tapster.log")


def test_unwritable_directory_is_startup_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An openable file in a directory where rotation could not create files is refused at open."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(tmp_path) else real_access(p, m))
    with pytest.raises(StartupError, match=rf"directory {tmp_path} is not writable"):
        RotatingFileHandler(str(tmp_path / "app.log"))


def test_negative_settings_are_rejected(tmp_path: Path) -> None:
    """Negative max_bytes or keep raise StartupError naming the value."""
    with pytest.raises(StartupError, match="-5"):
        RotatingFileHandler(str(tmp_path / "a.log"), max_bytes=-5)
    with pytest.raises(StartupError, match="-1"):
        RotatingFileHandler(str(tmp_path / "a.log"), keep=-1)


def test_daily_rotates_at_first_record_after_midnight(
    tmp_path: Path, opened: list[RotatingFileHandler]
) -> None:
    """A record after local midnight moves the previous day's lines to NAME.YYYY_MM_DD."""
    clock = Clock(local(2026, 1, 5, 23, 59))
    handler = make(opened, tmp_path / "app.log", daily=True, clock=clock)
    emit(handler, "monday")
    assert names(tmp_path) == ["app.log"]
    clock.now = local(2026, 1, 6, 0, 0) + 1
    emit(handler, "tuesday")
    assert names(tmp_path) == ["app.log", "app.log.2026_01_05"]
    assert (tmp_path / "app.log.2026_01_05").read_text() == "monday\n"
    assert (tmp_path / "app.log").read_text() == "tuesday\n"
    clock.now += 3600
    emit(handler, "still tuesday")
    assert names(tmp_path) == ["app.log", "app.log.2026_01_05"]


def test_daily_rotates_at_open_if_file_is_from_earlier_day(
    tmp_path: Path, opened: list[RotatingFileHandler]
) -> None:
    """Opening a non-empty file last written yesterday moves it to yesterday's name first."""
    path = tmp_path / "app.log"
    path.write_text("old\n")
    yesterday = local(2026, 3, 9)
    os.utime(path, (yesterday, yesterday))
    handler = make(opened, path, daily=True, clock=Clock(local(2026, 3, 10)))
    emit(handler, "new")
    assert (tmp_path / "app.log.2026_03_09").read_text() == "old\n"
    assert path.read_text() == "new\n"


def test_daily_open_same_day_appends(tmp_path: Path, opened: list[RotatingFileHandler]) -> None:
    """A file last written today is simply appended to."""
    path = tmp_path / "app.log"
    path.write_text("old\n")
    today = local(2026, 3, 10, 8)
    os.utime(path, (today, today))
    handler = make(opened, path, daily=True, clock=Clock(local(2026, 3, 10, 9)))
    emit(handler, "new")
    assert names(tmp_path) == ["app.log"]
    assert path.read_text() == "old\nnew\n"


def test_daily_keep_prunes_oldest_days(tmp_path: Path, opened: list[RotatingFileHandler]) -> None:
    """keep=2 with daily rotation keeps the two most recent dated files, twistd's unpadded names included."""
    (tmp_path / "app.log.2025_1_2").write_text("twistd's\n")
    clock = Clock(local(2026, 1, 30))
    handler = make(opened, tmp_path / "app.log", daily=True, keep=2, clock=clock)
    for day in (30, 31):
        emit(handler, f"jan {day}")
        clock.now += 86400
    emit(handler, "feb 1")
    assert names(tmp_path) == ["app.log", "app.log.2026_01_30", "app.log.2026_01_31"]
    clock.now += 86400
    emit(handler, "feb 2")
    assert names(tmp_path) == ["app.log", "app.log.2026_01_31", "app.log.2026_02_01"]


def test_daily_second_file_of_a_day_gets_a_piece_number(
    tmp_path: Path, opened: list[RotatingFileHandler]
) -> None:
    """rotate() twice in one day, and size rotation in daily mode, give NAME.DATE, NAME.DATE.1, .2 in order."""
    clock = Clock(local(2026, 7, 4))
    handler = make(opened, tmp_path / "app.log", daily=True, max_bytes=2, clock=clock)
    emit(handler, "a")
    handler.rotate()
    emit(handler, "b")
    emit(handler, "c")  # size rotation
    emit(handler, "d")
    clock.now += 86400
    emit(handler, "e")  # midnight rotation
    assert (tmp_path / "app.log.2026_07_04").read_text() == "a\n"
    assert (tmp_path / "app.log.2026_07_04.1").read_text() == "b\n"
    assert (tmp_path / "app.log.2026_07_04.2").read_text() == "c\n"
    assert (tmp_path / "app.log.2026_07_04.3").read_text() == "d\n"
    assert (tmp_path / "app.log").read_text() == "e\n"


def test_daily_empty_file_is_not_rotated_at_midnight(
    tmp_path: Path, opened: list[RotatingFileHandler]
) -> None:
    """A day without lines leaves no empty dated file."""
    clock = Clock(local(2026, 7, 4))
    handler = make(opened, tmp_path / "app.log", daily=True, clock=clock)
    clock.now += 86400
    emit(handler, "x")
    assert names(tmp_path) == ["app.log"]


def test_failed_rotation_keeps_logging(
    tmp_path: Path, opened: list[RotatingFileHandler], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed rotation is said once in the log itself; lines still arrive, and no retry floods the log."""
    handler = make(opened, tmp_path / "app.log", max_bytes=2)
    emit(handler, "a")
    reported: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", reported.append)
    attempts: list[object] = []

    def refuse(src: object, dst: object) -> None:
        attempts.append(src)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "rename", refuse)
    emit(handler, "b")
    emit(handler, "c")
    lines = (tmp_path / "app.log").read_text().splitlines()
    assert lines[0] == "a"
    assert lines[1].startswith(f"cannot rotate the log file {tmp_path / 'app.log'}: Permission denied;")
    assert lines[2:] == ["b", "c"]
    assert len(attempts) == 1  # not retried on every record
    assert reported == []  # nothing on stderr (which a daemon captures into this same log)
    with pytest.raises(PermissionError):
        handler.rotate()
    monkeypatch.undo()
    handler.rotate()  # a manual rotation that works turns automatic rotation back on
    emit(handler, "d")
    emit(handler, "e")
    assert (tmp_path / "app.log.1").exists()
