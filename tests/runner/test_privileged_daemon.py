"""A daemon that switches to nobody: its log stays rotatable, its pid file readable, and ctl says what happened."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import EXAMPLES, run_tapster
from support import wait_gone

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")

FASTPOETRY = str(EXAMPLES / "fastpoetry.tac")
ENV = {"FASTPOETRY_PORT": "0"}


@pytest.fixture
def shared() -> Iterator[Path]:
    """A root-owned 0755 directory under /tmp that nobody may enter (pytest's temp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="tapster-priv-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        pid = path / "tapster.pid"
        if pid.exists() and pid.read_text().strip():
            run_tapster(["ctl", "stop", "--pidfile", str(pid)], cwd=path)
        shutil.rmtree(path, ignore_errors=True)


def nobody_dir(parent: Path) -> Path:
    logs = parent / "logs"
    logs.mkdir()
    user = pwd.getpwnam("nobody")
    os.chown(logs, user.pw_uid, user.pw_gid)
    return logs


def test_log_in_a_directory_nobody_cannot_write_is_refused_at_start(shared: Path) -> None:
    """-u nobody with the log in a root-owned directory: refused at start with the reason, no pid file left."""
    result = run_tapster(["-u", "nobody", "-y", FASTPOETRY], cwd=shared, env=ENV)
    assert result.returncode == 1
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert line.startswith(
        f"tapster: user nobody (uid 65534) could not rotate or reopen the log file {shared}/tapster.log"
    )
    assert f"cannot create files in {shared}" in line
    assert not (shared / "tapster.pid").exists()


def test_ctl_rotate_and_reopen_report_what_the_server_did(shared: Path) -> None:
    """As nobody with its own log directory: ctl rotate/reopen answer from the server; a failure is exit 1."""
    logs = nobody_dir(shared)
    log = logs / "tapster.log"
    started = run_tapster(["-u", "nobody", "--logfile", str(log), "-y", FASTPOETRY], cwd=shared, env=ENV)
    assert started.returncode == 0, started.stderr
    pid = int((shared / "tapster.pid").read_text())
    assert log.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    rotated = run_tapster(["ctl", "rotate"], cwd=shared)
    assert (rotated.returncode, rotated.stdout.strip()) == (0, f"log rotated (pid {pid})"), rotated.stderr
    assert (logs / "tapster.log.1").exists()
    log.rename(logs / "moved.log")  # what logrotate does before asking for a reopen
    reopened = run_tapster(["ctl", "reopen"], cwd=shared)
    assert (reopened.returncode, reopened.stdout.strip()) == (0, f"log reopened (pid {pid})")
    assert log.exists()
    logs.chmod(0o555)  # now nobody cannot create the rotated file: the server says so, and so does ctl
    failed = run_tapster(["ctl", "rotate"], cwd=shared)
    logs.chmod(0o755)
    assert failed.returncode == 1
    assert re.fullmatch(rf"pid {pid} could not rotate its log: .*Permission denied.*", failed.stderr.strip())
    stopped = run_tapster(["ctl", "stop"], cwd=shared)
    assert stopped.returncode == 0, stopped.stderr
    wait_gone(pid)
    status = run_tapster(["ctl", "status"], cwd=shared)
    # The root-owned directory kept nobody from removing the pid file: it is empty, and status says why.
    assert status.returncode == 3, (status.stdout, status.stderr)
    assert "not running" in status.stdout and "stale" not in status.stdout


def test_state_is_saved_at_stop_after_switching_to_nobody(shared: Path) -> None:
    """--save -u nobody: saving at stop needs pickle, imported before the switch (the stdlib under /root is 0700)."""
    env = {"PYTHONPATH": str(EXAMPLES)}
    run = nobody_dir(shared)
    args = [
        "-u",
        "nobody",
        "-d",
        str(run),
        "--logfile",
        str(run / "t.log"),
        "--save",
        "fastpoetry",
        "--port",
        "0",
    ]
    started = run_tapster(args, cwd=shared, env=env)
    assert started.returncode == 0, started.stderr
    pid = int((shared / "tapster.pid").read_text())
    assert run_tapster(["ctl", "stop"], cwd=shared).returncode == 0
    wait_gone(pid)
    text = (run / "t.log").read_text()
    assert "Saved application state to fastpoetry-shutdown.tap." in text, text
    assert "ModuleNotFoundError" not in text and "Traceback" not in text, text
