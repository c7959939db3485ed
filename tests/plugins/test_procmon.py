"""`tapster procmon` in a real process with real children: output lines with the name prefix, restart backoff
(doubling and reset, measured from start timestamps the children record), stop with children and grandchildren that
ignore SIGTERM, leftovers of a child's group, exec failures, bad options, sockets handed over by LISTEN_FDS, and
children of a monitor killed with SIGKILL."""

from __future__ import annotations

import ast
import itertools
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from conftest import TapsterProcess, pid_alive, read_all, run_tapster
from support import one_line, wait_gone, wait_until

PY = sys.executable
LOOPS = [pytest.param([], id="asyncio"), pytest.param(["--reactor", "uvloop"], id="uvloop")]


def procmon(tapster: type[TapsterProcess], *args: str, loop: Sequence[str] = ()) -> TapsterProcess:
    return tapster(["-n", "-o", "--pidfile=", *loop, "procmon", *args])


def procmon_once(tapster: type[TapsterProcess], *args: str) -> TapsterProcess:
    """A monitor whose program runs once in the test's time (the next run would be a minute away)."""
    return procmon(tapster, "--min-restart-delay", "60", "--max-restart-delay", "60", *args)


def stop_cleanly(process: TapsterProcess) -> str:
    """SIGTERM the monitor; it must exit 0 without a traceback. Returns its log."""
    process.signal(signal.SIGTERM)
    status, out, err = process.finish()
    assert status == 0, err
    assert "Traceback" not in out + err
    return out


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry))
    return found


def starts(path: Path, count: int, timeout: float = 20) -> list[float]:
    """Wait until ``path`` holds ``count`` start timestamps (one a line, written by each run); return them."""

    def lines() -> list[str]:
        return path.read_text().split() if path.exists() else []

    wait_until(lambda: len(lines()) >= count, timeout, f"{count} starts recorded in {path}")
    return [float(value) for value in lines()[:count]]


def test_output_lines_reach_the_log_with_the_name_prefix(tapster: type[TapsterProcess]) -> None:
    """stdout and stderr lines, a partial last line and a line longer than the bound all reach the log, whole."""
    code = (
        "import sys\n"
        "print('to stdout', flush=True)\n"
        "print('to stderr', file=sys.stderr, flush=True)\n"
        "sys.stdout.write('x' * 40000 + '\\n')\n"
        "sys.stdout.write('caf\\u00e9 without newline')\n"
    )
    process = procmon_once(tapster, "--name", "talker", "--", PY, "-c", code)
    process.wait_for(r"\[talker\] pid \d+ exited with status 0 after .*; restarting in 60 s")
    lines = [line.split("] ", 1)[1] for line in process.lines if "[talker] " in line]
    messages = [line.split("[talker] ", 1)[1] for line in process.lines if "[talker] " in line]
    assert "to stdout" in messages
    assert "to stderr" in messages
    assert "caf\u00e9 without newline" in messages
    pieces = [m for m in messages if m.startswith("x")]
    assert len(pieces) == 3, lines
    assert all(len(p.removesuffix(" [line continues]")) <= 16 * 1024 for p in pieces)
    assert sum(len(p.removesuffix(" [line continues]")) for p in pieces) == 40000
    stop_cleanly(process)


def test_quick_deaths_double_the_delay_up_to_the_max_and_a_long_run_resets_it(
    tapster: type[TapsterProcess], tmp_path: Path
) -> None:
    """Restarts after 0.2, 0.4, 0.8, 0.8 s (max), then a run past the threshold resets the delay to 0.2 s."""
    record = tmp_path / "starts"
    code = (
        "import sys, time\n"
        "with open(sys.argv[1], 'a') as f: f.write(f'{time.monotonic()}\\n')\n"
        "n = len(open(sys.argv[1]).read().split())\n"
        "print('run', n, flush=True)\n"
        "time.sleep(0.9 if n == 5 else 0)\n"
    )
    process = procmon(
        tapster,
        "--threshold",
        "0.6",
        "--min-restart-delay",
        "0.2",
        "--max-restart-delay",
        "0.8",
        "--name",
        "crasher",
        "--",
        PY,
        "-c",
        code,
        str(record),
    )
    times = starts(record, 7)
    process.wait_for(r"\[crasher\] run 7$")  # every line before it has been read
    gaps = [b - a for a, b in itertools.pairwise(times)]
    delays = [
        float(m)
        for m in re.findall(
            r"\[crasher\] pid \d+ exited .*restarting in ([\d.]+) s", "\n".join(process.lines)
        )
    ]
    assert delays[:6] == [0.2, 0.4, 0.8, 0.8, 0.2, 0.2], process.lines
    # each gap is the delay plus one start of the program (run 5 also ran 0.9 s); the bound is generous for a busy CI
    for gap, delay, ran in zip(gaps, delays, [0, 0, 0, 0, 0.9, 0], strict=False):
        assert delay + ran <= gap < delay + ran + 1.0, (gaps, delays)
    stop_cleanly(process)


def test_a_crash_is_replaced_within_a_second_at_the_minimum_delay(
    tapster: type[TapsterProcess], tmp_path: Path
) -> None:
    """A running child killed with SIGKILL is running again within a second (--min-restart-delay 0.1)."""
    record = tmp_path / "starts"
    code = "import sys, time\nopen(sys.argv[1], 'a').write(f'{time.monotonic()}\\n')\ntime.sleep(300)\n"
    process = procmon(
        tapster, "--min-restart-delay", "0.1", "--name", "sleeper", "--", PY, "-c", code, str(record)
    )
    starts(record, 1)
    pid = int(process.wait_for(r"\[sleeper\] started, pid (\d+)").group(1))
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    again = starts(record, 2)[1]
    assert again - killed < 1.0
    process.wait_for(r"\[sleeper\] pid \d+ killed by SIGKILL after .*; restarting in 0.1 s")
    stop_cleanly(process)


IGNORING = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "if os.fork() == 0:\n"
    "    time.sleep(300)\n"
    "    os._exit(0)\n"
    "print('ready', flush=True)\n"
    "time.sleep(300)\n"
)


@pytest.mark.parametrize("loop", LOOPS)
def test_stop_kills_children_and_grandchildren_that_ignore_sigterm(
    tapster: type[TapsterProcess], loop: list[str]
) -> None:
    """SIGTERM to the monitor: SIGTERM to the group, SIGKILL after --killtime; nothing of the group is left."""
    process = procmon(tapster, "--killtime", "0.5", "--name", "stubborn", "--", PY, "-c", IGNORING, loop=loop)
    pid = int(process.wait_for(r"\[stubborn\] started, pid (\d+)").group(1))
    process.wait_for(r"\[stubborn\] ready")
    wait_until(lambda: len(group_members(pid)) == 2, what="child and grandchild in the child's group")
    members = group_members(pid)
    asked = time.monotonic()
    out = stop_cleanly(process)
    took = time.monotonic() - asked
    assert "sent SIGKILL to its process group" in out
    assert "killed by SIGKILL" in out
    assert took < 0.5 + 5  # killtime, plus a generous allowance for a busy machine's process exit
    for member in members:
        assert not pid_alive(member)
    assert group_members(pid) == []


def test_what_a_child_leaves_in_its_group_is_ended_when_it_exits(
    tapster: type[TapsterProcess], tmp_path: Path
) -> None:
    """A child that exits leaving a background process in its group: that process is ended before the restart."""
    pidfile = tmp_path / "orphan"
    script = f"sleep 300 & echo $! > {pidfile}; exit 0"
    process = procmon(
        tapster,
        "--min-restart-delay",
        "60",
        "--max-restart-delay",
        "60",
        "--killtime",
        "1",
        "--name",
        "leaver",
        "--",
        "/bin/sh",
        "-c",
        script,
    )
    process.wait_for(r"\[leaver\] pid \d+ exited with status 0 .*restarting in 60 s")
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), what="orphan pid written")
    wait_gone(int(pidfile.read_text()))
    stop_cleanly(process)


@pytest.mark.parametrize(
    ("program", "reason"),
    [("missing", "No such file or directory"), ("not-executable", "Permission denied")],
)
def test_a_program_that_cannot_run_is_one_line_and_a_backoff(
    tapster: type[TapsterProcess], tmp_path: Path, program: str, reason: str
) -> None:
    """A missing or non-executable program: one line per attempt with the reason, a growing delay, no traceback."""
    path = tmp_path / program
    if program == "not-executable":
        path.write_text("#!/bin/sh\necho never\n")
        path.chmod(0o644)
    process = procmon(
        tapster, "--min-restart-delay", "0.1", "--max-restart-delay", "0.2", "--", str(path), "arg"
    )
    first = process.wait_for(rf"\[{program}\] cannot run: (.*); restarting in 0.1 s").group(1)
    assert first == f"{path}: {reason}"
    process.wait_for(rf"\[{program}\] cannot run: .*; restarting in 0.2 s")
    out = stop_cleanly(process)
    assert f"[{program}] started" not in out
    attempts = [line for line in out.splitlines() if f"[{program}]" in line]
    assert all("cannot run" in line for line in attempts), attempts


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "no command given"),
        (["--"], "no command given"),
        (["--threshold", "-1", "x"], "--threshold: expected a finite number of seconds >= 0"),
        (["--killtime", "soon", "x"], "--killtime: expected a number of seconds, got 'soon'"),
        (["--min-restart-delay", "inf", "x"], "--min-restart-delay: expected a finite number"),
        (["--min-restart-delay", "5", "--max-restart-delay", "1", "x"], "--min-restart-delay 5 is above"),
        (["--listen", "udp:0", "x"], "plain stream socket"),
        (["--listen", "nonsense:1", "x"], "--listen: "),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    """No command, negative or infinite times, min above max, an unusable endpoint: one line, exit 2."""
    result = run_tapster(["-n", "-o", "--pidfile=", "procmon", *args], cwd=tmp_path)
    assert expected in one_line(result, 2)


def test_the_command_line_after_the_first_word_belongs_to_the_program(tapster: type[TapsterProcess]) -> None:
    """Options after COMMAND are the program's own, even without --."""
    process = procmon(
        tapster,
        "--min-restart-delay",
        "60",
        "--max-restart-delay",
        "60",
        PY,
        "-c",
        "import sys; print(sys.argv[1:])",
        "--threshold",
        "-x",
    )
    process.wait_for(r"\[python[\d.]*\] \['--threshold', '-x'\]")
    stop_cleanly(process)


SERVE_FD3 = (
    "import os, socket\n"
    "listener = socket.socket(fileno=3)\n"
    "conn, _ = listener.accept()\n"
    "env = os.environ\n"
    "conn.sendall(f\"{env['LISTEN_FDS']} {env['LISTEN_FDNAMES']} {env['LISTEN_PID']} {os.getpid()}\".encode())\n"
    "conn.close()\n"
)


@pytest.mark.parametrize("loop", LOOPS)
def test_listening_sockets_are_handed_over_by_listen_fds(
    tapster: type[TapsterProcess], loop: list[str]
) -> None:
    """--listen: the child serves on fd 3 with LISTEN_FDS=1 and LISTEN_PID its own pid; the socket outlives runs."""
    process = procmon(
        tapster,
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--min-restart-delay",
        "0.1",
        "--name",
        "server",
        "--",
        PY,
        "-c",
        SERVE_FD3,
        loop=loop,
    )
    port = int(process.wait_for(r"\[server\] socket tcp on 127\.0\.0\.1:(\d+)").group(1))
    seen = []
    for _ in range(2):  # each run serves one connection and exits; the next run gets the same socket
        with socket.create_connection(("127.0.0.1", port), timeout=15) as client:
            fds, names, listen_pid, pid = read_all(client).decode().split()
        assert (fds, names) == ("1", "tcp")
        assert listen_pid == pid
        seen.append(pid)
    assert seen[0] != seen[1]
    stop_cleanly(process)


def test_children_die_with_a_monitor_killed_by_sigkill(tapster: type[TapsterProcess]) -> None:
    """PR_SET_PDEATHSIG: when the monitor is killed with SIGKILL, its child does not linger."""
    process = procmon(tapster, "--name", "orphan", "--", "/bin/sleep", "300")
    pid = int(process.wait_for(r"\[orphan\] started, pid (\d+)").group(1))
    assert pid_alive(pid)
    process.signal(signal.SIGKILL)
    process.finish()
    wait_gone(pid)


REPORT_PDEATHSIG = (
    "import ctypes, os, sys\n"
    "value = ctypes.c_int()\n"
    "ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)\n"  # PR_GET_PDEATHSIG
    "print('pdeathsig', value.value, 'parent', os.getppid(), 'fds', sorted(os.listdir('/proc/self/fd')), flush=True)\n"
)


@pytest.mark.parametrize("way", ["fast", "wrapper"])
def test_every_run_asks_to_die_with_the_monitor(
    tapster: type[TapsterProcess], tmp_path: Path, way: str
) -> None:
    """Both ways of starting a program (setpriv + sh for a plain one, the Python wrapper for one given sockets)
    leave it with PR_SET_PDEATHSIG = SIGKILL, the monitor as its parent, and no descriptor of the monitor's
    beyond stdin/stdout/stderr (and fd 3, the socket, when one is passed)."""
    from tapster.services._procmon_child import _setpriv

    if way == "fast" and _setpriv() is None:
        pytest.skip("util-linux setpriv with --pdeathsig is not installed: every program uses the wrapper")
    listen = ["--listen", "tcp:0:interface=127.0.0.1"] if way == "wrapper" else []
    process = procmon_once(tapster, *listen, "--", PY, "-c", REPORT_PDEATHSIG)
    found = process.wait_for(r"pdeathsig (\d+) parent (\d+) fds (\[.*\])")
    assert int(found.group(1)) == signal.SIGKILL
    assert int(found.group(2)) == process.proc.pid
    expected = ["0", "1", "2", "3"] if listen else ["0", "1", "2"]
    open_fds = ast.literal_eval(found.group(3))
    assert [fd for fd in open_fds if fd in expected] == expected
    assert len(open_fds) == len(expected) + 1  # the one more: the fd listdir itself had open
    stop_cleanly(process)


def test_the_fast_way_is_taken_only_where_it_does_all_the_wrapper_would(tmp_path: Path) -> None:
    """setpriv + sh for a program found on PATH with no sockets and no user switch; the wrapper otherwise (it
    places sockets, switches users, and says exactly why an exec failed)."""
    from tapster.services._procmon_child import _fast_launch, _setpriv

    if _setpriv() is None:
        pytest.skip("util-linux setpriv with --pdeathsig is not installed")
    env = {"PATH": "/usr/bin:/bin"}
    fast = _fast_launch(["sleep", "1"], env, None, None, None, ())
    assert fast is not None and fast[1:4] == ["--pdeathsig", "KILL", "--"] and fast[-2:] == ["sleep", "1"]
    assert _fast_launch(["sleep"], env, None, None, None, (5,)) is None  # sockets to place
    assert _fast_launch(["sleep"], env, None, 65534, None, ()) is None  # a user switch
    assert _fast_launch(["no-such-program-here"], env, None, None, None, ()) is None  # the wrapper says why
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    assert _fast_launch(["./run.sh"], env, str(tmp_path), None, None, ()) is None  # not executable
    script.chmod(0o755)
    assert _fast_launch(["./run.sh"], env, str(tmp_path), None, None, ()) is not None  # found from the cwd


def test_the_fast_way_needs_an_absolute_path_list(tmp_path: Path) -> None:
    """No PATH (the shell would search its own default, the wrapper Python's) or a relative entry (found from
    the monitor's directory, searched from the program's): the wrapper decides, as it always did."""
    from tapster.services._procmon_child import _fast_launch, _setpriv

    if _setpriv() is None:
        pytest.skip("util-linux setpriv with --pdeathsig is not installed")
    assert _fast_launch(["sleep"], {}, None, None, None, ()) is None
    assert _fast_launch(["sleep"], {"PATH": "bin:/usr/bin:/bin"}, None, None, None, ()) is None
    assert _fast_launch(["sleep"], {"PATH": "/usr/bin:/bin"}, None, None, None, ()) is not None


def test_the_fast_way_refuses_to_run_once_the_monitor_is_not_its_parent(tmp_path: Path) -> None:
    """The fast way's parent check: run by the monitor (here: this process) the program runs; run under any
    other parent (what a program whose monitor died before setpriv's request took effect would see: a new
    parent) it exits 125 without running the program."""
    import subprocess

    from tapster.services._procmon_child import _fast_launch, _setpriv

    if _setpriv() is None:
        pytest.skip("util-linux setpriv with --pdeathsig is not installed")
    marker = tmp_path / "ran"
    argv = _fast_launch(["touch", str(marker)], {"PATH": "/usr/bin:/bin"}, None, None, None, ())
    assert argv is not None
    other_parent = [PY, "-c", "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"]
    assert subprocess.run([*other_parent, *argv], timeout=30).returncode == 125
    assert not marker.exists()
    assert subprocess.run(argv, timeout=30).returncode == 0
    assert marker.exists()
