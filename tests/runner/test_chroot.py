"""--chroot with real daemons: the run directory is the jail's /, nothing is imported after the chroot, no pid file
is left behind (needs root)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import connect, read_all, run_tapster
from support import PERSIST_FIXTURES, make_state, wait_gone

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")

ENV = {"PYTHONPATH": PERSIST_FIXTURES}


def test_daemon_in_an_empty_jail_serves_saves_and_removes_its_pid_file(tmp_path: Path) -> None:
    """--chroot DIR without --rundir runs in the jail's /; the stop saves state there and removes the pid file."""
    jail = tmp_path / "jail"
    jail.mkdir()
    state = make_state(tmp_path)
    started = run_tapster(["--chroot", "jail", "--logfile", "t.log", "-f", state], cwd=tmp_path, env=ENV)
    assert started.returncode == 0, started.stderr
    log = tmp_path / "t.log"
    pid = int((tmp_path / "tapster.pid").read_text())
    assert os.readlink(f"/proc/{pid}/root") == str(jail)
    port = int(re.search(r"starting on (\d+)", log.read_text()).group(1))  # type: ignore[union-attr]
    with connect(port) as sock:
        assert read_all(sock) == b"1\n"
    stopped = run_tapster(["ctl", "stop"], cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    wait_gone(pid)
    text = log.read_text()
    assert "Traceback" not in text and "Error" not in text, text
    assert "Saved application state to counting-shutdown.tap." in text, text
    assert (jail / "counting-shutdown.tap").exists()
    assert not (tmp_path / "tapster.pid").exists(), text
    assert "Server Shut Down." in text


def test_failed_start_in_a_jail_leaves_no_pid_file(tmp_path: Path) -> None:
    """A start that fails inside the jail (no such --rundir there) is one line and leaves no tapster.pid."""
    (tmp_path / "jail").mkdir()
    state = make_state(tmp_path)
    result = run_tapster(
        ["--chroot", "jail", "-d", "nowhere", "--logfile", "t.log", "-f", state], cwd=tmp_path, env=ENV
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip() == "tapster: cannot change to run directory /nowhere: No such file or directory"
    )
    assert not (tmp_path / "tapster.pid").exists()
