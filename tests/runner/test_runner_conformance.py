"""twistd's runner behaviours tapster adopts (issue 13): empty --logfile, profiler names, which runs save state."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

from conftest import EXAMPLES, run_tapster

FASTPOETRY = str(EXAMPLES / "fastpoetry.tac")
PLUGIN_ENV = {"PYTHONPATH": str(EXAMPLES)}


def test_empty_logfile_in_the_foreground_is_stdout(tapster, tmp_path: Path) -> None:
    """`-n --logfile=` logs to stdout, as twistd does; no ./tapster.log is created."""
    proc = tapster(["-n", "--logfile=", "--pidfile=", "-y", FASTPOETRY], env={"FASTPOETRY_PORT": "0"})
    proc.port("PoetryProtocol")
    proc.signal(signal.SIGTERM)
    status, out, err = proc.finish()
    assert status == 0, err
    assert "Server Shut Down." in out
    assert not (tmp_path / "tapster.log").exists()


def test_profiler_names_are_case_insensitive(tapster, tmp_path: Path) -> None:
    """`--profiler=cProfile` is accepted (twistd compares names case-insensitively) and writes a report."""
    proc = tapster(
        ["-n", "--pidfile=", "--profile", "prof.txt", "--profiler", "cProfile", "-y", FASTPOETRY],
        env={"FASTPOETRY_PORT": "0"},
    )
    proc.port("PoetryProtocol")
    proc.signal(signal.SIGTERM)
    status, _, err = proc.finish()
    assert status == 0, err
    assert "function calls" in (tmp_path / "prof.txt").read_text()


def test_plugin_run_saves_no_state_unless_asked(tapster, tmp_path: Path) -> None:
    """A plugin run writes no NAME-shutdown.tap (twistd saves only -f runs); --save asks for one."""
    plain = tapster(["-n", "--pidfile=", "fastpoetry", "--port", "0"], env=PLUGIN_ENV)
    plain.port("PoetryProtocol")
    plain.signal(signal.SIGTERM)
    status, out, err = plain.finish()
    assert status == 0, err
    assert not (tmp_path / "fastpoetry-shutdown.tap").exists()
    assert "Saved application state" not in out
    saving = tapster(["-n", "--pidfile=", "--save", "fastpoetry", "--port", "0"], env=PLUGIN_ENV)
    saving.port("PoetryProtocol")
    saving.signal(signal.SIGTERM)
    status, out, err = saving.finish()
    assert status == 0, err
    assert (tmp_path / "fastpoetry-shutdown.tap").exists(), out


def test_save_and_no_save_together_is_a_usage_error(tmp_path: Path) -> None:
    """--save with -o contradicts itself: exit 2, one line."""
    result = run_tapster(["--save", "-o", "-y", FASTPOETRY], cwd=tmp_path)
    assert result.returncode == 2
    assert "give only one of --save and -o/--no_save" in result.stderr


def _daemon(tmp_path: Path, *args: str) -> int:
    result = run_tapster(["-y", FASTPOETRY, *args], cwd=tmp_path, env={"FASTPOETRY_PORT": "0"})
    assert result.returncode == 0, result.stderr
    return int((tmp_path / "tapster.pid").read_text())


def _stop(tmp_path: Path) -> None:
    result = run_tapster(["ctl", "stop"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_daemon_log_and_pid_files_follow_the_umask(tmp_path: Path) -> None:
    """A daemon's tapster.log and tapster.pid are 0600 under its default umask 077, 0644 with --umask 022."""
    os.umask(0o022)  # what a shell usually gives: the files must not simply inherit it
    _daemon(tmp_path)
    modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("tapster.log", "tapster.pid")}
    _stop(tmp_path)
    assert modes == {"tapster.log": 0o600, "tapster.pid": 0o600}
    (tmp_path / "tapster.log").unlink()
    _daemon(tmp_path, "--umask", "022")
    modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("tapster.log", "tapster.pid")}
    _stop(tmp_path)
    assert modes == {"tapster.log": 0o644, "tapster.pid": 0o644}


def test_syslog_lines_of_a_daemon_all_carry_its_pid(tmp_path: Path) -> None:
    """With --syslog, "Log opened." and every later line name the daemon's pid, not the launcher's."""
    address = f"/tmp/tapster-syslog-{os.getpid()}-{tmp_path.name[-20:]}.sock"
    with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)) as server:
        server.bind(address)
        try:
            launcher = (
                f"import sys, tapster.log._syslog as s; s.SYSLOG_SOCKET = {address!r}; "
                "from tapster.cli import main; main()"
            )
            result = subprocess.run(
                [sys.executable, "-c", launcher, "--syslog", "-y", FASTPOETRY],
                cwd=tmp_path,
                env={**os.environ, "FASTPOETRY_PORT": "0"},
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert result.returncode == 0, result.stderr
            pid = int((tmp_path / "tapster.pid").read_text())
            _stop(tmp_path)
            server.settimeout(10)
            pids = set()
            lines = []
            while not any("Server Shut Down." in line for line in lines):
                line = server.recv(65536).decode()
                lines.append(line)
                pids.update(re.findall(r"tapster\[(\d+)\]", line))
        finally:
            os.unlink(address)
    assert any("Log opened." in line for line in lines), lines
    assert pids == {str(pid)}, lines


def test_plugin_given_a_global_option_says_where_it_belongs(tmp_path: Path) -> None:
    """`tapster fastpoetry -n` says that -n is a global option that goes before the plugin name."""
    result = run_tapster(["fastpoetry", "-n"], cwd=tmp_path, env=PLUGIN_ENV)
    assert result.returncode == 2
    assert (
        "-n is a global option: give it before the plugin name, tapster -n ... fastpoetry ..."
        in result.stderr
    )
    long = run_tapster(["fastpoetry", "--pidfile", "x.pid"], cwd=tmp_path, env=PLUGIN_ENV)
    assert "--pidfile is a global option" in long.stderr


def test_ctl_stop_in_the_wrong_directory_names_the_pid_file(tmp_path: Path) -> None:
    """`tapster ctl stop` where no pid file is says which file it looked at (still exit 0: nothing runs)."""
    result = run_tapster(["ctl", "stop"], cwd=tmp_path)
    assert (result.returncode, result.stdout.strip()) == (
        0,
        f"not running (no pid file {tmp_path}/tapster.pid)",
    )


def test_second_foreground_server_in_one_directory_hints_at_pidfile(tapster, tmp_path: Path) -> None:
    """Two foreground servers in one directory: the second is refused with a hint at --pidfile."""
    first = tapster(["-n", "-y", FASTPOETRY], env={"FASTPOETRY_PORT": "0"})
    first.port("PoetryProtocol")
    second = run_tapster(["-n", "-y", FASTPOETRY], cwd=tmp_path, env={"FASTPOETRY_PORT": "0"})
    assert second.returncode == 1
    assert "give each its own --pidfile (--pidfile= for none)" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1


def test_ctl_rotate_of_a_server_logging_to_stdout_says_nothing_was_rotated(tapster, tmp_path: Path) -> None:
    """ctl rotate on a foreground server logging to stdout reports the server's answer: nothing to rotate."""
    proc = tapster(["-n", "-y", FASTPOETRY], env={"FASTPOETRY_PORT": "0"})
    proc.port("PoetryProtocol")
    pid = int((tmp_path / "tapster.pid").read_text())
    result = run_tapster(["ctl", "rotate"], cwd=tmp_path)
    assert (result.returncode, result.stdout.strip()) == (
        0,
        f"nothing rotated (pid {pid}): the log is not a file",
    )
    assert (tmp_path / "tapster.pid.answer").exists()
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0
    assert not (tmp_path / "tapster.pid.answer").exists()  # removed with the pid file


def test_ctl_rotate_without_an_answer_in_time_is_a_failure(tapster, tmp_path: Path) -> None:
    """A server that does not answer within --timeout (its loop is stopped) makes ctl rotate exit 1, saying so."""
    proc = tapster(["-n", "-y", FASTPOETRY], env={"FASTPOETRY_PORT": "0"})
    proc.port("PoetryProtocol")
    pid = int((tmp_path / "tapster.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        result = run_tapster(["ctl", "rotate", "--timeout", "0.5"], cwd=tmp_path)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"sent SIGUSR1 to pid {pid}, but it did not answer within 0.5 s (see its log)"
    )
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def test_help_and_ctl_load_neither_asyncio_nor_logging(tmp_path: Path) -> None:
    """`tapster --help` (plugin listing included) and `tapster ctl status` import neither asyncio nor logging."""
    for args in (["--help"], ["ctl", "status"]):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "tapster", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        loaded = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if "|" in line}
        assert not loaded & {"asyncio", "logging"}, (args, sorted(loaded & {"asyncio", "logging"}))
