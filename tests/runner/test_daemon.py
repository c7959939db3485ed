"""The daemon runner: start-up pipe, locked pid file, log file, ctl, and bad input, with real daemon processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import EXAMPLES, TAPSTER, connect, pid_alive, read_all, run_tapster
from support import wait_for_text, wait_gone, wait_until

POEM = (EXAMPLES / "poetry" / "ecstasy.txt").read_bytes()
FASTPOETRY = str(EXAMPLES / "fastpoetry.tac")
ENV = {"FASTPOETRY_PORT": "0"}


def logged_port(log: Path) -> int:
    match = re.search(r"starting on (\d+)", log.read_text())
    assert match, log.read_text()
    return int(match.group(1))


@pytest.fixture
def stop_daemons(tmp_path: Path):
    """Make sure no daemon started by a test outlives it."""
    yield
    for pidfile in tmp_path.rglob("*.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError, FileNotFoundError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def start_daemon(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> int:
    result = run_tapster(["-y", FASTPOETRY, *args], cwd=tmp_path, env={**ENV, **(env or {})})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    return int((tmp_path / "tapster.pid").read_text())


def proc_status(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(field)


def test_launch_returns_only_when_the_port_accepts_and_ctl_stops_it(tmp_path: Path, stop_daemons) -> None:
    """The prompt comes back once the port accepts; pid and log files exist; ctl status/stop work."""
    pid = start_daemon(tmp_path)
    log = tmp_path / "tapster.log"
    with connect(logged_port(log)) as sock:  # no waiting: it must accept already
        assert read_all(sock) == POEM
    assert pid_alive(pid) and pid != os.getpid()
    assert os.getsid(pid) != os.getsid(0)  # detached from our session
    assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[4] == "0"  # no controlling tty
    status = run_tapster(["ctl", "status"], cwd=tmp_path)
    assert (status.returncode, status.stdout.strip()) == (0, f"running (pid {pid})")
    stop = run_tapster(["ctl", "stop"], cwd=tmp_path)
    assert (stop.returncode, stop.stdout.strip()) == (0, "stopped")
    assert not pid_alive(pid)
    assert not (tmp_path / "tapster.pid").exists()
    text = log.read_text()
    assert "Received SIGTERM, shutting down." in text and text.rstrip().endswith("Server Shut Down.")
    after = run_tapster(["ctl", "status"], cwd=tmp_path)
    assert (after.returncode, after.stdout.strip()) == (
        3,
        f"not running (no pid file {tmp_path / 'tapster.pid'})",
    )


def test_second_start_is_refused_while_one_runs(tmp_path: Path, stop_daemons) -> None:
    """A second start names the running pid and the pid file, exits 1, and leaves the first one running."""
    pid = start_daemon(tmp_path)
    second = run_tapster(["-y", FASTPOETRY], cwd=tmp_path, env=ENV)
    assert second.returncode == 1
    assert second.stderr.strip() == f"tapster: Another server is running, PID {pid} (from tapster.pid)"
    assert pid_alive(pid)
    assert (tmp_path / "tapster.pid").read_text() == str(pid)


def test_pid_file_of_a_killed_server_is_taken_over(tmp_path: Path, stop_daemons) -> None:
    """After SIGKILL the pid file stays; status says stale (exit 1); the next start takes it over and says so."""
    pid = start_daemon(tmp_path)
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    status = run_tapster(["ctl", "status"], cwd=tmp_path)
    assert (status.returncode, status.stdout.strip()) == (
        1,
        f"not running, stale pid file {tmp_path / 'tapster.pid'}",
    )
    new_pid = start_daemon(tmp_path)
    assert new_pid != pid
    assert (
        f"Removing stale pid file left by PID {pid} (tapster.pid)." in (tmp_path / "tapster.log").read_text()
    )


def test_two_starts_at_the_same_instant_one_runs(tmp_path: Path, stop_daemons) -> None:
    """Two launches racing for the pid file: exactly one daemon runs, the other exits 1."""
    procs = [
        subprocess.Popen(
            [*TAPSTER, "-y", FASTPOETRY],
            cwd=tmp_path,
            env={**os.environ, **ENV},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = sorted((p.wait(timeout=30), p.stderr.read()) for p in procs)  # type: ignore[union-attr]
    assert [code for code, _ in results] == [0, 1], results
    assert "Another server is running" in results[1][1]


def test_failed_daemon_start_prints_one_line_and_leaves_no_pid_file(tmp_path: Path) -> None:
    """A daemon that cannot bind reports the reason to the launching command, which exits 1."""
    with connect_listener() as port:
        result = run_tapster(["-y", FASTPOETRY], cwd=tmp_path, env={"FASTPOETRY_PORT": str(port)})
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"tapster: cannot listen on tcp:{port}:interface=127.0.0.1: address already in use"
    )
    assert not (tmp_path / "tapster.pid").exists()
    log = (tmp_path / "tapster.log").read_text()
    assert "Failed to start" in log and "Traceback" in log  # the log file gets the whole story


class connect_listener:
    """A listening socket holding a port, as another server would."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_daemon_umask_rundir_and_captured_output(tmp_path: Path, stop_daemons) -> None:
    """Umask is 077 by default, -d sets the working directory, print() and warnings land in the log."""
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "noisy.tac").write_text(
        textwrap.dedent("""
        import warnings
        from tapster import Application, Service

        class Noisy(Service):
            async def start(self):
                await super().start()
                print("hello from print")
                warnings.warn("careful now")

        application = Application("noisy")
        Noisy().set_parent(application)
    """)
    )
    result = run_tapster(["-y", "noisy.tac", "-d", "run"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pid = int((tmp_path / "tapster.pid").read_text())
    assert proc_status(pid, "Umask") == "0077"
    assert os.readlink(f"/proc/{pid}/cwd") == str(run)
    text = wait_for_text(tmp_path / "tapster.log", "careful now")
    assert re.search(r"\[stdout\] hello from print", text), text
    os.kill(pid, signal.SIGTERM)
    wait_gone(pid)


def test_explicit_umask(tmp_path: Path, stop_daemons) -> None:
    """--umask sets the daemon's umask."""
    pid = start_daemon(tmp_path, "--umask", "027")
    assert proc_status(pid, "Umask") == "0027"


def test_rotate_and_reopen_through_ctl(tmp_path: Path, stop_daemons) -> None:
    """ctl rotate moves the log to tapster.log.1; ctl reopen writes a new file after logrotate moved it."""
    start_daemon(tmp_path)
    log = tmp_path / "tapster.log"
    mode = log.stat().st_mode & 0o777
    assert run_tapster(["ctl", "rotate"], cwd=tmp_path).returncode == 0
    wait_for_text(log, "Log rotated (SIGUSR1).")
    assert log.stat().st_mode & 0o777 == mode  # the daemon's umask 077 does not narrow later files
    assert "starting on" in (tmp_path / "tapster.log.1").read_text()
    log.rename(tmp_path / "moved.log")
    assert run_tapster(["ctl", "reopen"], cwd=tmp_path).returncode == 0
    wait_for_text(log, "Log file reopened (SIGHUP).")
    assert run_tapster(["ctl", "stop"], cwd=tmp_path).returncode == 0
    assert "Server Shut Down." in log.read_text()


def test_size_rotation_keeps_n_files(tmp_path: Path, stop_daemons) -> None:
    """--log-max-size and --log-keep bound the log files a busy server leaves."""
    (tmp_path / "chatty.tac").write_text(
        textwrap.dedent("""
        import logging
        from tapster import Application
        from tapster.services import TimerService

        count = iter(range(10**9))
        def chat():
            for _ in range(50):
                logging.getLogger("chat").info("line %06d %s", next(count), "x" * 60)

        application = Application("chatty")
        TimerService(0.01, chat).set_parent(application)
    """)
    )
    result = run_tapster(["-y", "chatty.tac", "--log-max-size", "2000", "--log-keep", "2"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    wait_until((tmp_path / "tapster.log.2").exists, 10, "a second rotated file")
    assert run_tapster(["ctl", "stop"], cwd=tmp_path).returncode == 0
    names = sorted(p.name for p in tmp_path.glob("tapster.log*"))
    assert names == ["tapster.log", "tapster.log.1", "tapster.log.2"]
    assert all(p.stat().st_size <= 2000 for p in tmp_path.glob("tapster.log*"))


def test_json_log_format(tmp_path: Path, stop_daemons) -> None:
    """--log-format json writes one JSON object per line."""
    start_daemon(tmp_path, "--log-format", "json")
    assert run_tapster(["ctl", "stop"], cwd=tmp_path).returncode == 0
    records = [json.loads(line) for line in (tmp_path / "tapster.log").read_text().splitlines()]
    assert {"time", "level", "logger", "context", "message"} <= set(records[0])
    assert records[-1]["message"] == "Server Shut Down."


def test_ctl_stop_timeout_gives_a_hint(tmp_path: Path, stop_daemons) -> None:
    """ctl stop on a server whose stop hangs exits 1 after --timeout with a hint."""
    (tmp_path / "hang.tac").write_text(
        textwrap.dedent("""
        import asyncio
        from tapster import Application, Service

        class Hang(Service):
            async def stop(self):
                await asyncio.Event().wait()

        application = Application("hang")
        Hang().set_parent(application)
    """)
    )
    assert run_tapster(["-y", "hang.tac", "--shutdown-timeout", "60"], cwd=tmp_path).returncode == 0
    pid = int((tmp_path / "tapster.pid").read_text())
    stop = run_tapster(["ctl", "stop", "--timeout", "0.3"], cwd=tmp_path)
    assert stop.returncode == 1
    assert f"pid {pid} is still running" in stop.stderr and "kill -KILL" in stop.stderr
    again = run_tapster(["ctl", "stop"], cwd=tmp_path)  # the second SIGTERM forces
    assert again.returncode == 0
    wait_gone(pid)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-l", "-"], "a daemon has no standard output"),
        (["--logfile", "/nonexistent-dir/x.log"], "cannot open log file /nonexistent-dir/x.log"),
        (["--pidfile", "/nonexistent-dir/x.pid"], "cannot write pid file /nonexistent-dir/x.pid"),
        (["-u", "no-such-user-xyz"], "unknown user 'no-such-user-xyz'"),
        (["-g", "no-such-group-xyz"], "unknown group 'no-such-group-xyz'"),
        (["--chroot", "/nonexistent-dir"], "cannot chroot to /nonexistent-dir"),
        (["--umask", "99x"], "invalid umask '99x'"),
    ],
)
def test_bad_daemon_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    """Each bad daemon option is one line on stderr and exit status 1, with no pid file left behind."""
    result = run_tapster(["-y", FASTPOETRY, *args], cwd=tmp_path, env=ENV)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[0]
    assert not (tmp_path / "tapster.pid").exists()
