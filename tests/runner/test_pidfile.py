"""Tests for the locked pid file: taking it, refusing a second server, taking over leftovers, forking."""

from __future__ import annotations

import fcntl
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tapster.errors
from support import run_in_child
from tapster.errors import StartupError
from tapster.runner._pidfile import PidFile, read_pid_status

SRC_DIR = str(Path(tapster.errors.__file__).resolve().parent.parent)

# Holds a pid file in a separate process. argv: path, display, and "go" to wait for a line on stdin before
# acquiring. Prints "acquired <stale pid>" or "error <message>", then releases on the next line (or on EOF).
HOLDER = textwrap.dedent(
    """
    import sys
    from tapster.errors import StartupError
    from tapster.runner._pidfile import PidFile

    path, display, wait = sys.argv[1:4]
    if wait == "go":
        sys.stdin.readline()
    pidfile = PidFile(path, display=display)
    try:
        stale = pidfile.acquire()
    except StartupError as exc:
        print("error", exc, flush=True)
        sys.exit(1)
    pidfile.write()
    print("acquired", stale, flush=True)
    sys.stdin.readline()
    pidfile.release()
    """
)


@pytest.fixture
def holder_script(tmp_path: Path) -> Path:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    return script


@pytest.fixture
def spawn(holder_script: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start holder processes; whatever is still alive at the end is killed."""
    started: list[subprocess.Popen[str]] = []

    def start(path: Path, display: str = "tapster.pid", wait: str = "now") -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": SRC_DIR}
        proc = subprocess.Popen(
            [sys.executable, str(holder_script), str(path), display, wait],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_acquire_write_release(tmp_path: Path) -> None:
    """acquire() creates and locks the file, write() stores bare digits, release() removes it."""
    path = tmp_path / "tapster.pid"
    pidfile = PidFile(str(path))
    assert pidfile.acquire() is None
    assert path.read_text() == ""
    assert read_pid_status(str(path)) == ("running", None)
    pidfile.write()
    assert path.read_text() == str(os.getpid())
    pidfile.write(7)
    assert path.read_text() == "7"
    assert read_pid_status(str(path)) == ("running", 7)
    pidfile.release()
    assert not path.exists()
    assert pidfile.fd is None
    pidfile.release()  # idempotent


def test_properties_and_default_display(tmp_path: Path) -> None:
    """path, display (defaulting to the path) and fd report what the object holds."""
    path = str(tmp_path / "a.pid")
    pidfile = PidFile(path)
    assert (pidfile.path, pidfile.display, pidfile.fd) == (path, path, None)
    assert PidFile(path, display="a.pid").display == "a.pid"
    pidfile.acquire()
    assert isinstance(pidfile.fd, int)
    pidfile.release()


def test_acquired_descriptor_is_close_on_exec(tmp_path: Path) -> None:
    """The lock is not inherited by programs the server executes."""
    pidfile = PidFile(str(tmp_path / "a.pid"))
    pidfile.acquire()
    assert pidfile.fd is not None
    assert fcntl.fcntl(pidfile.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    pidfile.release()


def test_acquire_twice_and_write_unheld_are_errors(tmp_path: Path) -> None:
    """Misusing the object (double acquire, write before acquire) raises instead of corrupting the lock."""
    pidfile = PidFile(str(tmp_path / "a.pid"))
    with pytest.raises(RuntimeError, match="not held"):
        pidfile.write()
    pidfile.acquire()
    with pytest.raises(RuntimeError, match="already held"):
        pidfile.acquire()
    pidfile.release()


def test_second_process_is_refused_with_the_pid(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    """A second server on a held pid file fails with "Another server is running, PID N (from tapster.pid)"."""
    path = tmp_path / "tapster.pid"
    pidfile = PidFile(str(path))
    pidfile.acquire()
    pidfile.write()
    proc = spawn(path)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert out == f"error Another server is running, PID {os.getpid()} (from tapster.pid)\n"
    assert path.read_text() == str(os.getpid())
    pidfile.release()


def test_second_descriptor_in_same_process_conflicts(tmp_path: Path) -> None:
    """flock locks separate open files even within one process, so a second PidFile here is refused too."""
    path = str(tmp_path / "tapster.pid")
    first = PidFile(path)
    first.acquire()
    first.write(4321)
    with pytest.raises(StartupError) as info:
        PidFile(path, display="x.pid").acquire()
    assert str(info.value) == "Another server is running, PID 4321 (from x.pid)"
    first.release()


def test_held_file_without_pid_yet(tmp_path: Path) -> None:
    """A file locked but not yet written (between acquire and write) is refused with PID unknown."""
    path = str(tmp_path / "tapster.pid")
    first = PidFile(path)
    first.acquire()
    with pytest.raises(StartupError, match=r"^Another server is running, PID unknown \(from "):
        PidFile(path).acquire()
    first.release()


@pytest.mark.parametrize(
    ("content", "stale"),
    [
        ("4242", 4242),
        ("4242\n", 4242),
        ("", None),
        ("junk", None),
        ("0", None),
        ("-5", None),
        ("9" * 40, None),
    ],
)
def test_unlocked_leftover_is_taken_over(tmp_path: Path, content: str, stale: int | None) -> None:
    """A file nobody holds is taken over, and acquire() returns the pid it named, if any."""
    path = tmp_path / "tapster.pid"
    path.write_text(content)
    pidfile = PidFile(str(path))
    assert pidfile.acquire() == stale
    pidfile.write()
    assert path.read_text() == str(os.getpid())
    pidfile.release()


def test_file_of_sigkilled_holder_is_taken_over(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    """A server killed with SIGKILL leaves its file, and the next start takes it over and reports its pid."""
    path = tmp_path / "tapster.pid"
    proc = spawn(path)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "acquired None\n"
    assert read_pid_status(str(path)) == ("running", proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert path.read_text() == str(proc.pid)
    assert read_pid_status(str(path)) == ("stale", proc.pid)
    pidfile = PidFile(str(path))
    assert pidfile.acquire() == proc.pid
    pidfile.release()


def test_simultaneous_starts_one_wins(tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]) -> None:
    """Two processes told to start at the same moment: exactly one gets the pid file."""
    for round_ in range(3):
        path = tmp_path / f"race{round_}.pid"
        procs = [spawn(path, wait="go") for _ in range(2)]
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        lines = []
        for proc in procs:
            assert proc.stdout is not None
            lines.append(proc.stdout.readline())
        winners = [proc for proc, line in zip(procs, lines, strict=True) if line.startswith("acquired ")]
        losers = [line for line in lines if line.startswith("error ")]
        assert len(winners) == 1, lines
        assert len(losers) == 1, lines
        assert losers[0].startswith("error Another server is running, PID ")
        assert losers[0].endswith(" (from tapster.pid)\n")
        winner = winners[0]
        assert winner.stdin is not None
        winner.stdin.write("stop\n")
        winner.stdin.flush()
        winner.wait(timeout=30)
        assert not path.exists()


def test_read_pid_status_states(tmp_path: Path) -> None:
    """read_pid_status tells absent, stale and running apart and never creates the file."""
    path = tmp_path / "tapster.pid"
    assert read_pid_status(str(path)) == ("absent", None)
    assert not path.exists()
    path.write_text("1234")
    assert read_pid_status(str(path)) == ("stale", 1234)
    path.write_text("junk")
    assert read_pid_status(str(path)) == ("stale", None)
    pidfile = PidFile(str(path))
    pidfile.acquire()
    assert read_pid_status(str(path)) == ("running", None)  # junk content while locked
    pidfile.write(5678)
    assert read_pid_status(str(path)) == ("running", 5678)
    # The probe must not disturb the holder's lock.
    with pytest.raises(StartupError, match="PID 5678"):
        PidFile(str(path)).acquire()
    pidfile.release()
    assert read_pid_status(str(path)) == ("absent", None)


def test_missing_directory_is_a_startup_error(tmp_path: Path) -> None:
    """A pid file in a directory that does not exist fails with a message naming it."""
    pidfile = PidFile(str(tmp_path / "nodir" / "tapster.pid"), display="nodir/tapster.pid")
    with pytest.raises(StartupError) as info:
        pidfile.acquire()
    assert str(info.value) == "cannot write pid file nodir/tapster.pid: No such file or directory"


def test_unwritable_directory_is_a_startup_error() -> None:
    """A pid file in a directory the user cannot write fails with a message naming it."""
    directory = tempfile.mkdtemp()  # under the system temp dir, so that nobody can reach it when we are root
    try:
        os.chmod(directory, 0o555)
        path = os.path.join(directory, "tapster.pid")

        def attempt() -> object:
            if os.geteuid() == 0:
                nobody = pwd.getpwnam("nobody")
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
            return PidFile(path, display="ro/tapster.pid").acquire()

        if os.geteuid() == 0:
            try:
                pwd.getpwnam("nobody")
            except KeyError:
                pytest.skip("no user 'nobody' to drop to")
        with pytest.raises(StartupError) as info:
            run_in_child(attempt)
        assert str(info.value) == "cannot write pid file ro/tapster.pid: Permission denied"
        assert not os.path.exists(path)
    finally:
        os.chmod(directory, 0o700)
        os.rmdir(directory)


def test_lock_survives_fork(tmp_path: Path) -> None:
    """After fork the parent closes without unlocking; the child keeps the lock and its release removes it."""
    path = tmp_path / "tapster.pid"
    pidfile = PidFile(str(path))
    pidfile.acquire()
    go_read, go_write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        try:
            os.close(go_write)
            pidfile.write()
            os.read(go_read, 1)
            pidfile.release()
        finally:
            os._exit(0)
    os.close(go_read)
    pidfile.close_without_unlock()
    assert pidfile.fd is None
    pidfile.release()  # the parent no longer holds it: no effect on the file
    assert path.exists()
    status, _ = read_pid_status(str(path))
    assert status == "running"
    with pytest.raises(StartupError, match="Another server is running"):
        PidFile(str(path)).acquire()
    os.write(go_write, b"x")
    os.close(go_write)
    os.waitpid(child, 0)
    assert not path.exists()


def test_file_removed_between_open_and_lock_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock got on a file removed meanwhile is dropped, and the new file at the path is locked instead."""
    path = tmp_path / "tapster.pid"
    path.write_text("99")
    real_flock = fcntl.flock
    calls = 0

    def flock_after_removal(fd: int, op: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            path.unlink()  # a stopping server removes its file just before unlocking
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_removal)
    pidfile = PidFile(str(path))
    assert pidfile.acquire() is None  # the new file holds no pid
    assert calls == 2
    assert pidfile.fd is not None
    assert os.fstat(pidfile.fd).st_ino == os.stat(path).st_ino
    monkeypatch.undo()
    assert read_pid_status(str(path)) == ("running", None)
    pidfile.release()


def test_lock_lost_to_a_stopping_holder_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused by a holder whose file is already gone, acquire() looks again instead of calling it running."""
    path = tmp_path / "tapster.pid"
    holder = PidFile(str(path))
    holder.acquire()
    holder.write(1111)
    real_flock = fcntl.flock
    calls = 0

    def flock_after_removal(fd: int, op: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            path.unlink()  # the holder has removed its file but not yet unlocked it
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_removal)
    pidfile = PidFile(str(path))
    assert pidfile.acquire() is None
    assert calls > 1  # refused at first, then retried on the new file
    monkeypatch.undo()
    assert pidfile.fd is not None
    assert os.fstat(pidfile.fd).st_ino == os.stat(path).st_ino
    pidfile.release()
    holder.release()  # its file is gone and ours was removed: nothing left behind
    assert not path.exists()


def test_file_replaced_every_time_gives_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the file keeps being replaced under it, acquire() gives up with an error instead of looping."""
    path = tmp_path / "tapster.pid"
    real_flock = fcntl.flock

    def flock_after_removal(fd: int, op: int) -> None:
        path.unlink()
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_removal)
    with pytest.raises(StartupError, match=r"^cannot lock pid file p\.pid: it was replaced"):
        PidFile(str(path), display="p.pid").acquire()


def test_release_leaves_a_replacement_file_alone(tmp_path: Path) -> None:
    """release() does not remove a file that is no longer the one it locked."""
    path = tmp_path / "tapster.pid"
    pidfile = PidFile(str(path))
    pidfile.acquire()
    path.unlink()
    path.write_text("2222")
    pidfile.release()
    assert path.read_text() == "2222"


def test_release_in_unwritable_directory_clears_and_unlocks(tmp_path: Path) -> None:
    """When the file cannot be removed, release() empties and unlocks it, then reports the failure."""
    if os.geteuid() == 0:
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("no user 'nobody' to drop to")
    directory = tempfile.mkdtemp()
    try:
        if os.geteuid() == 0:
            os.chown(directory, nobody.pw_uid, nobody.pw_gid)  # so that the child can make it read-only
        path = os.path.join(directory, "tapster.pid")

        def run() -> object:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
            pidfile = PidFile(path, display="t.pid")
            pidfile.acquire()
            pidfile.write()
            os.chmod(directory, 0o555)
            try:
                pidfile.release()
            except StartupError as exc:
                return (str(exc), pidfile.fd)
            return None

        assert run_in_child(run) == ("cannot remove pid file t.pid: Permission denied", None)
        assert read_pid_status(path) == ("stale", None)
    finally:
        os.chmod(directory, 0o700)
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)


# --- what is planted at the path is refused, never followed (issue 9, point 3) ---


def plant(kind: str, path: Path) -> Path | None:
    """Put ``kind`` at ``path``; return the file an attack would aim at (to check it is untouched), if any."""
    target = path.parent / "precious"
    if kind == "symlink":
        target.write_text("root:secret\n")
        path.symlink_to(target)
    elif kind == "dangling symlink":
        path.symlink_to(target)  # the attacker hopes we create it
    elif kind == "fifo":
        os.mkfifo(path)
        return None
    elif kind == "directory":
        path.mkdir()
        return None
    elif kind == "hard link":
        target.write_text("root:secret\n")
        os.link(target, path)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return target


PLANTED = {
    "symlink": "it is a symbolic link",
    "dangling symlink": "it is a symbolic link",
    "fifo": "a FIFO, not a regular file",
    "directory": "a directory, not a regular file",
    "hard link": "it has 2 hard links (another name may point at the same file)",
}


@pytest.mark.parametrize("kind", PLANTED)
def test_planted_file_is_refused_and_its_target_untouched(tmp_path: Path, kind: str) -> None:
    """acquire() refuses whatever was planted with one line naming the path; a link's target stays as it was."""
    path = tmp_path / "x.pid"
    target = plant(kind, path)
    before = target.read_bytes() if target is not None and target.exists() else None
    with pytest.raises(StartupError) as info:
        PidFile(str(path), display="x.pid").acquire()
    assert str(info.value) == f"refusing pid file x.pid: {PLANTED[kind]}"
    if kind == "dangling symlink":
        assert target is not None and not target.exists()
    elif target is not None:
        assert target.read_bytes() == before
        assert target.stat().st_nlink == (2 if kind == "hard link" else 1)


@pytest.mark.parametrize("kind", PLANTED)
def test_status_probe_refuses_what_was_planted(tmp_path: Path, kind: str) -> None:
    """read_pid_status (tapster ctl) never follows a link either; a directory is named as one."""
    path = tmp_path / "x.pid"
    plant(kind, path)
    with pytest.raises(StartupError) as info:
        read_pid_status(str(path), shown="x.pid")
    assert str(info.value) == f"refusing pid file x.pid: {PLANTED[kind]}"


def test_status_probe_of_a_directory_without_shown_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(
        StartupError, match=rf"^refusing pid file {tmp_path}: a directory, not a regular file$"
    ):
        read_pid_status(str(tmp_path))


def test_group_writable_leftover_is_refused(tmp_path: Path) -> None:
    """A leftover pid file others may rewrite is refused: its pid could be changed under a running server."""
    path = tmp_path / "x.pid"
    path.write_text("123")
    path.chmod(0o666)
    with pytest.raises(
        StartupError, match=r"^refusing pid file x\.pid: it is writable by others; remove it$"
    ):
        PidFile(str(path), display="x.pid").acquire()
    path.chmod(0o620)
    with pytest.raises(StartupError, match="writable by its group"):
        PidFile(str(path), display="x.pid").acquire()
    assert path.read_text() == "123"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_leftover_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """A pid file someone else owns is not taken over by root: they could rewrite the pid ctl stop signals."""
    path = tmp_path / "x.pid"
    path.write_text("123")
    os.chown(path, 65534, 65534)
    with pytest.raises(
        StartupError, match=r"^refusing pid file x\.pid: it is owned by uid 65534, not by root; remove it"
    ):
        PidFile(str(path), display="x.pid").acquire()
    assert path.read_text() == "123"


def test_symlink_swapped_in_after_the_lock_is_not_removed_at_release(tmp_path: Path) -> None:
    """release() removes only the file it locked: a symbolic link put in its place (even to it) stays."""
    path = tmp_path / "x.pid"
    pidfile = PidFile(str(path))
    pidfile.acquire()
    moved = tmp_path / "moved.pid"
    path.rename(moved)
    path.symlink_to(moved)
    pidfile.release()
    assert path.is_symlink() and moved.exists()
