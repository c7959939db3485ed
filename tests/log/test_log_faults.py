"""The log under faults: planted links and devices refused, failed writes dropped whole and counted, EMFILE rotation.

Write failures are produced for real, in a child process: ``RLIMIT_FSIZE`` makes the kernel take a write only
partly and then refuse with EFBIG, as a full disk does; ``RLIMIT_NOFILE`` runs the process out of descriptors.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES, run_tapster
from support import emit
from support import make_handler as make
from tapster._safefile import UnsafeFileError
from tapster.errors import StartupError
from tapster.log import RotatingFileHandler, _rotate
from tapster.log._stream import StreamHandler
from tapster.log._syslog import make_syslog_handler

# -- refused at open ---------------------------------------------------------------------------------------


def test_symbolic_link_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "shadow"
    target.write_text("precious\n")
    (tmp_path / "app.log").symlink_to(target)
    with pytest.raises(StartupError, match=r"^refusing log file .*app\.log: it is a symbolic link$"):
        RotatingFileHandler(str(tmp_path / "app.log"))
    assert target.read_text() == "precious\n"


def test_dangling_symbolic_link_is_refused_without_creating_its_target(tmp_path: Path) -> None:
    (tmp_path / "app.log").symlink_to(tmp_path / "created")
    with pytest.raises(StartupError, match="symbolic link"):
        RotatingFileHandler(str(tmp_path / "app.log"))
    assert not (tmp_path / "created").exists()


def test_hard_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "other").write_text("")
    os.link(tmp_path / "other", tmp_path / "app.log")
    with pytest.raises(StartupError, match=r"app\.log: it has 2 hard links"):
        RotatingFileHandler(str(tmp_path / "app.log"))


def test_device_and_fifo_are_refused_without_blocking(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"^refusing log file /dev/null: a device, not a regular file$"):
        RotatingFileHandler("/dev/null")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(StartupError, match="a FIFO, not a regular file"):
        RotatingFileHandler(str(tmp_path / "fifo"))


@pytest.mark.parametrize("path", ["/dev/full", "/dev/zero"])
def test_device_on_the_command_line_is_one_line_and_exit_1(tmp_path: Path, path: str) -> None:
    """Was 188 lines of '--- Logging error ---' for /dev/full."""
    done = run_tapster(["-n", "--logfile", path, "-y", str(EXAMPLES / "echo.tac")], cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == (
        f"tapster: refusing log file {path}: a device, not a regular file (log to standard output with '-')\n"
    )


def test_logfile_dev_null_keeps_no_log_and_never_touches_the_device(tmp_path: Path) -> None:
    """twistd's ``--logfile /dev/null``: the server runs and serves with no log at all (nothing on its standard
    output or error either), ``ctl rotate`` finds no log file to rotate, and /dev/null is still the device."""
    sock_path = Path(tempfile.mkdtemp(prefix="tapster-null-", dir="/tmp")) / "echo.sock"
    tac = tmp_path / "echo.tac"
    tac.write_text(
        textwrap.dedent(
            f"""
            from tapster import Application
            from tapster.services import StreamServer

            async def echo(reader, writer):
                writer.write(await reader.readline())

            application = Application("quiet")
            StreamServer("unix:{sock_path}", echo).set_parent(application)
            """
        )
    )
    before = os.stat(os.devnull)
    server = subprocess.Popen(
        [sys.executable, "-m", "tapster", "-n", "--pidfile", str(tmp_path / "quiet.pid"), "--logfile",
         os.devnull, "-y", str(tac)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as client:
                    client.connect(str(sock_path))
                    client.sendall(b"hello\n")
                    assert client.makefile("rb").readline() == b"hello\n"
                break
            except (FileNotFoundError, ConnectionRefusedError):
                assert server.poll() is None and time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.01)
        rotate = run_tapster(["ctl", "rotate", "--pidfile", str(tmp_path / "quiet.pid")], cwd=tmp_path)
        assert "nothing rotated" in rotate.stdout and "the log is not a file" in rotate.stdout
        server.terminate()
        out, err = server.communicate(timeout=15)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert (server.returncode, out, err) == (0, "", "")
    after = os.stat(os.devnull)
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    shutil.rmtree(sock_path.parent, ignore_errors=True)


def test_reopen_refuses_a_planted_link_and_goes_on_with_the_old_file(
    tmp_path: Path, opened: list[RotatingFileHandler]
) -> None:
    handler = make(opened, tmp_path / "app.log")
    emit(handler, "a")
    os.rename(tmp_path / "app.log", tmp_path / "moved.log")
    (tmp_path / "app.log").symlink_to(tmp_path / "target")
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        handler.reopen()
    emit(handler, "b")
    assert (tmp_path / "moved.log").read_text() == "a\nb\n"
    assert not (tmp_path / "target").exists()


# -- rotation ----------------------------------------------------------------------------------------------


def test_rotation_replaces_planted_links_instead_of_following_them(
    tmp_path: Path, opened: list[RotatingFileHandler]
) -> None:
    """Rotated names are only renamed over, never opened: a link planted at NAME.1 or NAME.2 is replaced."""
    target = tmp_path / "shadow"
    target.write_text("precious\n")
    handler = make(opened, tmp_path / "app.log")
    emit(handler, "one")
    (tmp_path / "app.log.1").symlink_to(target)
    handler.rotate()
    emit(handler, "two")
    assert target.read_text() == "precious\n"
    assert not (tmp_path / "app.log.1").is_symlink()
    assert (tmp_path / "app.log.1").read_text() == "one\n"
    assert (tmp_path / "app.log").read_text() == "two\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.log", "app.log.1", "app.log.2", "shadow"]


def test_refused_rotation_is_said_once_and_logging_goes_on(
    tmp_path: Path, opened: list[RotatingFileHandler], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = make(opened, tmp_path / "app.log", max_bytes=4)
    attempts: list[str] = []

    def planted(path: str, flags: int, mode: int = 0o600, *, what: str = "file") -> int:
        attempts.append(path)
        raise UnsafeFileError(
            f"refusing {what} {path}: a symbolic link appeared there while it was being created"
        )

    monkeypatch.setattr(_rotate, "create_exclusive", planted)
    for line in ("aaa", "bbb", "ccc"):
        emit(handler, line)
    lines = (tmp_path / "app.log").read_text().splitlines()
    assert lines[0] == "aaa"
    assert lines[1].startswith(f"cannot rotate the log file {tmp_path / 'app.log'}: refusing log file ")
    assert "automatic rotation is off" in lines[1]
    assert lines[2:] == ["bbb", "ccc"]
    assert len(attempts) == 1


def test_transient_rotation_failure_is_said_once_and_retried_later(
    tmp_path: Path, opened: list[RotatingFileHandler], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = make(opened, tmp_path / "app.log", max_bytes=4)
    attempts: list[str] = []

    def full(path: str, flags: int, mode: int = 0o600, *, what: str = "file") -> int:
        attempts.append(path)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real = _rotate.create_exclusive
    monkeypatch.setattr(_rotate, "create_exclusive", full)
    for line in ("aaa", "bbb", "ccc"):
        emit(handler, line)
    assert len(attempts) == 1  # not on every line: at most once a second
    handler._rotation_retry_at = 0.0  # a second has passed
    emit(handler, "ddd")
    assert len(attempts) == 2
    monkeypatch.setattr(_rotate, "create_exclusive", real)
    handler._rotation_retry_at = 0.0
    emit(handler, "eee")
    text = (tmp_path / "app.log.1").read_text()
    assert text.count("cannot rotate the log file") == 1
    assert "tried again at most once a second" in text
    assert (tmp_path / "app.log").read_text() == "eee\n"


def test_daily_rotation_that_failed_for_lack_of_space_is_retried_under_the_old_date(
    tmp_path: Path, opened: list[RotatingFileHandler], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(time.mktime((2026, 7, 4, 12, 0, 0, 0, 0, -1)))
    handler = make(opened, tmp_path / "app.log", daily=True, clock=clock)
    emit(handler, "on the 4th")
    real = _rotate.create_exclusive

    def full(path: str, flags: int, mode: int = 0o600, *, what: str = "file") -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_rotate, "create_exclusive", full)
    clock.now += 86400
    emit(handler, "on the 5th, not rotated yet")
    monkeypatch.setattr(_rotate, "create_exclusive", real)
    handler._rotation_retry_at = 0.0  # a second has passed
    emit(handler, "on the 5th, rotated")
    old = (tmp_path / "app.log.2026_07_04").read_text().splitlines()
    assert old[0] == "on the 4th"
    assert "cannot rotate the log file" in old[1]
    assert old[2] == "on the 5th, not rotated yet"
    assert (tmp_path / "app.log").read_text() == "on the 5th, rotated\n"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run_child(tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_rotation_and_reopen_work_when_out_of_descriptors(tmp_path: Path) -> None:
    """The handler keeps one descriptor in reserve: with every other taken, SIGUSR1/SIGHUP still work."""
    done = run_child(
        tmp_path,
        """
        import logging, os, resource
        from tapster.log import RotatingFileHandler
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        handler = RotatingFileHandler("app.log", max_bytes=40)
        def emit(msg):
            handler.handle(logging.makeLogRecord({"msg": msg, "levelno": 20, "levelname": "INFO"}))
        emit("before")
        hog = []
        try:
            while True:
                hog.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == 24
        handler.rotate()
        emit("after a rotation, out of descriptors")
        emit("and a size rotation")
        os.rename("app.log", "moved.log")
        handler.reopen()
        emit("after a reopen")
        for fd in hog:
            os.close(fd)
        print("ok", sorted(os.listdir(".")))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok"), done.stdout
    assert (tmp_path / "app.log").read_text().endswith("after a reopen\n")
    assert "and a size rotation" in (tmp_path / "moved.log").read_text()
    assert "before" in (tmp_path / "app.log.2").read_text()
    assert done.stderr == ""


# -- failed writes -----------------------------------------------------------------------------------------

_WRITE_FAILURE = """
    import logging, os, resource, signal
    from tapster.log import RotatingFileHandler
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past RLIMIT_FSIZE: a short write, then EFBIG
    now = [1000.0]
    handler = RotatingFileHandler("app.log", max_bytes=0)
    handler._dropped._monotonic = lambda: now[0]
    handler.setFormatter(logging.Formatter("%(message)s"))
    def emit(msg):
        handler.handle(logging.makeLogRecord({"msg": msg, "levelno": 20, "levelname": "INFO"}))
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
    for i in range(30):  # lines of 105 bytes: the 10th is cut at byte 1000 by the limit
        emit(f"line {i:03d} " + "x" * 95)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    emit("too soon: dropped unformatted")
    now[0] += 1.0
    emit("works again")
    print(os.path.getsize("app.log"))
"""


def test_failed_write_drops_whole_lines_reports_once_and_counts(tmp_path: Path) -> None:
    done = run_child(tmp_path, _WRITE_FAILURE)
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "app.log").read_text().split("\n")
    assert lines[-1] == ""  # ends with a newline: no half line left
    lines.pop()
    assert [line[:8] for line in lines[:9]] == [f"line {i:03d}" for i in range(9)]
    assert all(len(line) == 104 for line in lines[:9])  # whole, and the 10th cut back out
    assert len(lines) == 11
    assert lines[9].startswith("22 log lines were dropped from ")  # 21 failed or skipped, and "too soon"
    assert lines[9].endswith(f"cannot write the log file {tmp_path / 'app.log'}: [Errno 27] File too large")
    assert lines[10] == "works again"
    assert done.stderr.count("\n") == 1  # one report, on fd 2, not a traceback per line
    assert done.stderr.startswith(f"tapster: cannot write the log file {tmp_path / 'app.log'}: [Errno 27]")
    assert "Traceback" not in done.stderr


def test_closed_pipe_on_stdout_is_dropped_and_reported_once(capfd: pytest.CaptureFixture[str]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = os.fdopen(write_end, "w", buffering=1)
    handler = StreamHandler(stream)
    try:
        for i in range(50):
            emit(handler, f"line {i}")
    finally:
        handler.close()
        with contextlib.suppress(OSError):
            stream.close()
    err = capfd.readouterr().err
    assert err.count("tapster: cannot write the standard output: [Errno 32] Broken pipe") == 1
    assert "Traceback" not in err
    assert handler._dropped.count == 50


def test_syslog_gone_is_dropped_counted_and_reported_once(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The syslog daemon goes away: lines are dropped and counted; when it is back the count is sent first."""
    directory = tempfile.mkdtemp(prefix="tsl")  # short: a unix socket path has ~108 bytes
    path = os.path.join(directory, "log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    handler = make_syslog_handler("svc", address=path)
    now = [1000.0]
    handler._dropped._monotonic = lambda: now[0]  # type: ignore[attr-defined]
    try:
        server.close()
        os.unlink(path)
        for i in range(5):
            emit(handler, f"lost {i}")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        server.settimeout(10)
        emit(handler, "too soon")
        now[0] += 1.0
        emit(handler, "back")
        notice = server.recv(4096).decode()
        assert re.fullmatch(
            rf"<28>svc\[{os.getpid()}\]: \[-\] 6 log lines were dropped from .* cannot write the syslog socket "
            rf"{re.escape(path)}: \[Errno \d+\] .*\x00",
            notice,
        ), notice
        assert server.recv(4096).decode() == f"<30>svc[{os.getpid()}]: [-] back\x00"
    finally:
        handler.close()
        server.close()
        shutil.rmtree(directory)
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"tapster: cannot write the syslog socket {path}: [Errno")
