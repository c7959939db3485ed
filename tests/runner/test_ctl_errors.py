"""``tapster ctl`` on a server it may not signal, or a pid file path that is not a file: one line, exit 1."""

from __future__ import annotations

import contextlib
import io
import os
import pwd
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import EXAMPLES, pid_alive, run_tapster
from support import run_in_child


def _nobody() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


NOBODY = _nobody()
as_root_with_nobody = pytest.mark.skipif(
    os.geteuid() != 0 or NOBODY is None, reason="needs root and a user 'nobody'"
)


def ctl_in_process(*args: str) -> tuple[int, str, str]:
    """``tapster ctl ARGS`` through the CLI's own entry, in this process: (status, stdout, stderr)."""
    from tapster.cli import run_command

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = run_command(["ctl", *args])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory under /tmp that every user may enter and read (pytest's own temp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="tapster-ctl-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@as_root_with_nobody
@pytest.mark.parametrize("command", ["stop", "rotate", "reopen"])
def test_ctl_on_another_users_server_is_one_line(tapster, shared_dir: Path, command: str) -> None:
    """ctl stop/rotate/reopen as nobody on root's server: one line naming the pid and who runs it, exit 1."""
    pidfile = shared_dir / "server.pid"
    proc = tapster(
        ["-n", "-y", str(EXAMPLES / "echo.tac"), "--pidfile", str(pidfile)], env={"ECHO_PORT": "0"}
    )
    proc.port("Echo")
    server_pid = int(pidfile.read_text())
    status, out, err = run_in_child(
        user="nobody", func=lambda: ctl_in_process(command, "--pidfile", str(pidfile))
    )  # type: ignore[misc]
    lines = err.strip().splitlines()
    assert status == 1, (out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "not permitted to send" in lines[0] and f"pid {server_pid}" in lines[0], lines[0]
    assert "(it runs as root)" in lines[0] and str(pidfile) in lines[0], lines[0]
    assert pid_alive(server_pid)
    state = run_in_child(user="nobody", func=lambda: ctl_in_process("status", "--pidfile", str(pidfile)))
    assert state == (0, f"running (pid {server_pid})\n", "")  # status needs no permission to signal
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


@pytest.mark.parametrize("command", ["status", "stop", "rotate", "reopen"])
def test_ctl_with_a_directory_as_pid_file_says_so(tmp_path: Path, command: str) -> None:
    """--pidfile DIR is not "a stale pid file": the line says it is a directory, exit 1."""
    (tmp_path / "run").mkdir()
    result = run_tapster(["ctl", command, "--pidfile", "run"], cwd=tmp_path)
    assert result.returncode == 1, result
    assert (
        result.stderr.strip()
        == "tapster: pid file run is a directory, not a pid file (give the server's --pidfile)"
    )


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e9"])
def test_ctl_stop_timeout_must_be_finite(tmp_path: Path, value: str) -> None:
    """ctl stop --timeout nan|inf|-1 is a usage error (exit 2) naming the value, without a traceback."""
    result = run_tapster(["ctl", "stop", "--timeout", value], cwd=tmp_path)
    assert result.returncode == 2
    first, usage = result.stderr.strip().splitlines()
    assert first == (
        f"tapster ctl stop: error: --timeout: expected a number of seconds from 0 to 86400, got {value!r}"
    )
    assert usage.startswith("Usage: tapster ctl stop")
