"""The pid file under crashes and races: a daemon killed with SIGKILL never blocks the next start, and of many
launches of one configuration at the same instant exactly one runs, with the others refused in one line.

Real daemons (examples/fastpoetry.tac on a port chosen by the OS), real SIGKILL, real pid and log files.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import EXAMPLES, TAPSTER, connect, pid_alive, read_all, run_tapster
from reliability.conftest import Figures, scale
from tapster.runner._pidfile import read_pid_status

FASTPOETRY = str(EXAMPLES / "fastpoetry.tac")
POEM = (EXAMPLES / "poetry" / "ecstasy.txt").read_bytes()
ENV = {"FASTPOETRY_PORT": "0"}
REFUSED = re.compile(r"tapster: Another server is running, PID (\d+|unknown) \(from tapster\.pid\)")


@pytest.fixture
def rundir(tmp_path: Path) -> Iterator[Path]:
    """A directory for the daemons of one test; a daemon still holding its pid file is killed at the end.

    Only a held (locked) file names a live daemon: the pid in a stale one may belong to anyone by now.
    """
    yield tmp_path
    state, pid = read_pid_status(str(tmp_path / "tapster.pid"))
    if state == "running" and pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_gone(pid: int, timeout: float = 30) -> bool:
    """Wait (polling /proc, the only way for a process that is not our child) until ``pid`` has ended."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def serves(log: Path) -> bool:
    """The daemon whose log this is answers on the port it last said it started on, with the whole poem."""
    ports = re.findall(r"starting on (\d+)", log.read_text())
    with connect(int(ports[-1])) as sock:
        return read_all(sock) == POEM


def test_restart_after_kill_9(rundir: Path, figures: Figures) -> None:
    """Each start after a SIGKILL succeeds, serves, and logs that it removed the stale pid file of the killed pid."""
    restarts = scale(20, 50)
    log, pidfile = rundir / "tapster.log", rundir / "tapster.pid"
    good = 0
    failures: list[str] = []
    previous: int | None = None
    for attempt in range(restarts + 1):  # the first start finds no pid file; each later one a stale one
        started = run_tapster(["-y", FASTPOETRY], cwd=rundir, env=ENV, timeout=60)
        if started.returncode != 0 or started.stdout or started.stderr:
            failures.append(
                f"start {attempt}: exit {started.returncode}, {started.stdout!r} {started.stderr!r}"
            )
            break
        pid = int(pidfile.read_text())
        said_stale = previous is None or (
            f"Removing stale pid file left by PID {previous} (tapster.pid)." in log.read_text()
        )
        if not serves(log) or not said_stale or pid == previous:
            failures.append(f"start {attempt}: pid {pid} (killed {previous}), stale line: {said_stale}")
        elif previous is not None:
            good += 1
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid), f"pid {pid} survived SIGKILL"
        assert pidfile.read_text() == str(pid)  # SIGKILL leaves the file: the next start must take it over
        previous = pid
    figures.record(
        "daemon restarts after kill -9 (each takes over the stale pid file, says so, and serves)",
        f"{good}/{restarts}",
        f"{restarts}/{restarts}",
        good == restarts,
    )
    assert good == restarts, failures


# Each launcher waits for the go file, then turns into the tapster command: the race starts at one instant
# instead of being spread over the launchers' own start-up.
LAUNCHER = """
import os, sys, time
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.001)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def test_simultaneous_starts_one_winner(rundir: Path, figures: Figures) -> None:
    """N launches of one config at once: one daemon runs; each other launch exits 1 with one line naming it."""
    count = scale(50, 100)
    go = rundir / "go"
    launchers = [
        subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(go), *TAPSTER[1:], "-y", FASTPOETRY],
            cwd=rundir,
            env={**os.environ, **ENV},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    go.touch()
    results = [(p.wait(timeout=120), *p.communicate()) for p in launchers]
    winners = [r for r in results if r[0] == 0]
    losers = [r for r in results if r[0] != 0]
    pid = int((rundir / "tapster.pid").read_text())
    status = run_tapster(["ctl", "status"], cwd=rundir)
    # A loser may look between the winner's lock and its write of the (daemon's) pid: it then says "unknown".
    clean_losers = [
        r
        for r in losers
        if r[0] == 1
        and r[1] == ""
        and (match := REFUSED.fullmatch(r[2].rstrip("\n")))
        and match.group(1) in {str(pid), "unknown"}
    ]
    held = (
        len(winners) == 1
        and winners[0][1:] == ("", "")
        and len(clean_losers) == count - 1
        and status.stdout.strip() == f"running (pid {pid})"
        and serves(rundir / "tapster.log")
    )
    figures.record(
        f"{count} simultaneous starts of one daemon config",
        f"{len(winners)} winner, {len(clean_losers)}/{count - 1} refused in one line (exit 1), "
        f"pid file kept: {status.stdout.strip() == f'running (pid {pid})'}",
        f"exactly 1 winner, {count - 1}/{count - 1} refused, pid file of the winner",
        held,
    )
    assert len(winners) == 1, results
    assert len(clean_losers) == count - 1, [r for r in losers if r not in clean_losers]
    assert status.stdout.strip() == f"running (pid {pid})", status
    assert serves(rundir / "tapster.log")
    stop = run_tapster(["ctl", "stop"], cwd=rundir)
    assert stop.returncode == 0, stop.stderr
    assert not (rundir / "tapster.pid").exists()
