"""The bound on shutdown holds whatever stop() does: gone by --shutdown-timeout + grace, and at once on a 2nd signal.

Each case runs a real tapster (foreground, or a real daemon launched with -y, --pidfile and --logfile) whose
``stop()`` misbehaves in one way: blocks the loop in ``time.sleep``, spins in a pure-Python busy loop, swallows
every cancellation, or awaits forever. A small driver process sends the signals and reaps the server: for a
daemon it makes itself a child subreaper (prctl), so the double-forked daemon becomes its child and its real exit
status can be read. Every case checks the time from the signal to the exit, the exit status, that the log names
the stuck service and ends with the last line (flushed), and that no pid file is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tapster.runner._guard import BACKSTOP, GRACE
from tapster.runner._serve import CANCEL_WAIT

TIMEOUT = 1.0  # --shutdown-timeout of every case
LONG = os.environ.get("TAPSTER_RELIABILITY_LONG") == "1"
long_only = pytest.mark.skipif(not LONG, reason="same path as a CI case; run by bench/reliability.py")
SLACK = 1.5  # what a loaded CI machine may add to the measured time before the test fails

HANG_TAC = textwrap.dedent("""
    import asyncio, logging, os, re, time
    from tapster import Application, Service

    log = logging.getLogger("hang")
    MODE = os.environ["HANG_MODE"]

    def misbehave():
        if MODE.endswith("sleep"):
            time.sleep(60)  # blocks the event loop
        elif MODE.endswith("native"):  # a regular expression that backtracks for ages without the GIL going
            re.match(r"(a+)+$", "a" * 64 + "b")
        elif MODE.endswith("busy"):
            end = time.monotonic() + 60
            while time.monotonic() < end:  # pure Python, never yields to the loop
                pass

    class Stuck(Service):
        name = "stuck"

        async def start(self):
            await super().start()
            log.info("stuck started")
            if MODE.startswith("start-"):
                log.info("stuck blocking its start (%s)", MODE)
                misbehave()
            elif MODE.startswith("callback-"):  # the loop is blocked by other code when SIGTERM comes

                def block():
                    log.info("a callback blocks the loop (%s)", MODE)
                    misbehave()

                asyncio.get_running_loop().call_later(0.2, block)

        async def stop(self):
            await super().stop()
            log.info("stuck stopping (%s)", MODE)
            if MODE == "swallow":
                end = time.monotonic() + 30
                while time.monotonic() < end:
                    try:
                        await asyncio.sleep(30)
                    except asyncio.CancelledError:
                        log.info("swallowed a cancellation")
            elif MODE == "forever":
                await asyncio.Event().wait()
            else:
                misbehave()

    class Quick(Service):
        name = "quick"

    application = Application("hangapp")
    Quick().set_parent(application)
    Stuck().set_parent(application)
""")

DRIVER = textwrap.dedent("""
    import ctypes, json, os, signal, subprocess, sys, time

    cfg = json.loads(sys.argv[1])

    def log_text():
        try:
            with open(cfg["log"], encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def fail(message):
        print(json.dumps({"error": message, "log": log_text()}))
        sys.exit(0)

    def wait_log(text, timeout=30.0):
        deadline = time.monotonic() + timeout
        while text not in log_text():  # the readiness the test waits on: a line in the log
            if time.monotonic() > deadline:
                fail(f"no {text!r} in the log")
            time.sleep(0.005)

    cmd = [sys.executable, "-m", "tapster", *cfg["args"]]
    if cfg["daemon"]:
        if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
            fail("prctl(PR_SET_CHILD_SUBREAPER) failed")
        launch = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if launch.returncode != 0:
            fail(f"launch failed: {launch.returncode} {launch.stderr}")
        with open(cfg["pidfile"]) as f:
            pid = int(f.read())
    else:
        out = open(cfg["log"], "w")
        pid = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT).pid
    wait_log(cfg["ready"])
    os.kill(pid, signal.SIGTERM)
    start = time.monotonic()
    if cfg["second"]:
        wait_log(cfg["stopping"])
        start = time.monotonic()
        os.kill(pid, getattr(signal, cfg["second"]))
    deadline = start + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            fail("still running 30 s after the signal: killed")
        time.sleep(0.002)
    elapsed = time.monotonic() - start
    print(json.dumps({"status": os.waitstatus_to_exitcode(status), "elapsed": elapsed, "log": log_text()}))
""")


def run_case(
    tmp_path: Path, mode: str, *, daemon: bool, second: str | None = None, timeout: float = TIMEOUT
) -> dict[str, Any]:
    """Start the hanging server, signal it, reap it; return its exit status, the seconds it took and its log."""
    (tmp_path / "hang.tac").write_text(HANG_TAC)
    (tmp_path / "driver.py").write_text(DRIVER)
    log = tmp_path / "hang.log"
    pidfile = tmp_path / "hang.pid"
    args = ["-y", "hang.tac", "--shutdown-timeout", f"{timeout:g}", "--pidfile", str(pidfile)]
    args += ["--logfile", str(log)] if daemon else ["-n"]
    ready = {"start": "stuck blocking its start", "callback": "a callback blocks the loop"}.get(
        mode.split("-")[0], "stuck started"
    )
    config = {
        "args": args,
        "daemon": daemon,
        "log": str(log),
        "pidfile": str(pidfile),
        "ready": ready,
        "stopping": f"stuck stopping ({mode})",
        "second": second,
    }
    done = subprocess.run(
        [sys.executable, str(tmp_path / "driver.py"), json.dumps(config)],
        cwd=tmp_path,
        env={**os.environ, "HANG_MODE": mode},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in result, result
    result["pidfile_left"] = pidfile.exists()
    return result


def check_forced_exit(result: dict[str, Any], bound: float, stuck: str) -> None:
    """Non-zero status, within the bound, the stuck service named, the log complete, no pid file."""
    log = result["log"]
    assert result["status"] == 1, result
    assert result["elapsed"] <= bound + SLACK, result
    assert stuck in log, log
    assert log.rstrip("\n").splitlines()[-1].endswith("Server Shut Down (forced, exit status 1)."), log
    assert "Traceback" not in log, log
    assert not result["pidfile_left"]


# mode -> (what names the stuck service in the log, the bound measured from the first SIGTERM)
MODES = {
    "sleep": ("The event loop is blocked in hangapp/stuck (Stuck.stop, at", TIMEOUT + GRACE),
    "busy": ("The event loop is blocked in hangapp/stuck (Stuck.stop, at", TIMEOUT + GRACE),
    "swallow": ("services ignored cancellation (hangapp/stuck)", TIMEOUT + CANCEL_WAIT),
    "forever": ("still stopping: hangapp/stuck (Stuck)", TIMEOUT),
    "start-sleep": ("The event loop is blocked in hangapp/stuck (Stuck.start, at", TIMEOUT + GRACE),
    "callback-sleep": ("The event loop is blocked in misbehave() at", TIMEOUT + GRACE),
}


@pytest.mark.parametrize(
    ("mode", "daemon"),
    # a daemon whose start() blocks never tells its launcher it started: the launcher would wait with it;
    # a blocking callback is the same guard path as a blocking stop(): the foreground run is enough
    [
        pytest.param(mode, daemon, marks=[long_only] if (mode, daemon) == ("busy", True) else [])
        for mode in MODES
        for daemon in (False, True)
        if not (daemon and "-" in mode)
    ],
)
def test_stop_is_bounded_whatever_stop_does(tmp_path: Path, figures, mode: str, daemon: bool) -> None:
    """A stop() that blocks, spins, swallows cancellation or waits forever: gone by timeout + grace, status 1.

    A start(), or any callback, that blocks the loop when SIGTERM comes is held to the same bound: the signal
    is seen outside the loop.
    """
    stuck, bound = MODES[mode]
    result = run_case(tmp_path, mode, daemon=daemon)
    held = result["elapsed"] <= TIMEOUT + GRACE and result["status"] == 1 and not result["pidfile_left"]
    figures.record(
        f"stop() {mode}, {'daemon' if daemon else 'foreground'}, --shutdown-timeout 1",
        f"gone after {result['elapsed']:.2f} s, status {result['status']}, "
        f"pid file {'left' if result['pidfile_left'] else 'removed'}",
        f"<= {TIMEOUT + GRACE:g} s (timeout + {GRACE:g} s grace), status 1, stuck service named",
        held,
    )
    log = result["log"]
    assert result["status"] == 1, result
    assert result["elapsed"] <= bound + SLACK, result
    assert stuck in log, log
    assert "Server Shut Down" in log.rstrip("\n").splitlines()[-1], log
    assert "Traceback" not in log and "destroyed but it is pending" not in log, log
    assert not result["pidfile_left"]


@pytest.mark.parametrize(
    ("mode", "second", "daemon"),
    [
        ("sleep", "SIGTERM", False),
        pytest.param("sleep", "SIGINT", False, marks=long_only),
        pytest.param("busy", "SIGTERM", False, marks=long_only),
        ("busy", "SIGINT", False),
        ("sleep", "SIGTERM", True),
        ("swallow", "SIGINT", True),
    ],
)
def test_second_signal_forces_at_once_with_the_loop_blocked(
    tmp_path: Path, figures, mode: str, second: str, daemon: bool
) -> None:
    """With the loop blocked in stop() and a long timeout, a second SIGTERM or SIGINT ends the process at once."""
    result = run_case(tmp_path, mode, daemon=daemon, second=second, timeout=60)
    figures.record(
        f"second {second} during stop() {mode}, {'daemon' if daemon else 'foreground'}, timeout 60 s",
        f"gone {result['elapsed']:.3f} s after it, status {result['status']}",
        "< 1 s, status 1, pid file removed",
        result["elapsed"] < 1 and result["status"] == 1 and not result["pidfile_left"],
    )
    check_forced_exit(result, 1.0, f"Received {second} again: forcing shutdown.")
    assert "Still stopping: hangapp/stuck (Stuck)." in result["log"]


def test_timeout_zero_means_no_drain(tmp_path: Path, figures) -> None:
    """--shutdown-timeout 0: stops are cancelled at once; a stop that honours cancellation exits 0 at once."""
    result = run_case(tmp_path, "forever", daemon=False, timeout=0)
    figures.record(
        "--shutdown-timeout 0, stop() awaiting forever",
        f"gone after {result['elapsed']:.2f} s, status {result['status']}",
        f"< {CANCEL_WAIT:g} s, status 0",
        result["elapsed"] < CANCEL_WAIT and result["status"] == 0,
    )
    assert result["status"] == 0, result
    assert result["elapsed"] <= CANCEL_WAIT + SLACK
    assert "--shutdown-timeout 0: no drain" in result["log"]
    assert result["log"].rstrip("\n").splitlines()[-1].endswith("Server Shut Down.")
    assert not result["pidfile_left"]


def test_timeout_zero_still_bounds_a_blocking_stop(tmp_path: Path) -> None:
    """--shutdown-timeout 0 never means forever: a stop() that blocks the loop is forced after the grace."""
    result = run_case(tmp_path, "sleep", daemon=False, timeout=0)
    check_forced_exit(result, GRACE, "The event loop is blocked in hangapp/stuck")


def test_native_code_holding_the_gil_is_ended_by_the_backstop(tmp_path: Path, figures) -> None:
    """A stop() stuck in C code that never releases the GIL: SIGALRM ends it 1 s past the bound; the pid file
    stays but is unlocked, so it blocks no later start."""
    import fcntl

    result = run_case(tmp_path, "native", daemon=False)
    bound = TIMEOUT + GRACE + BACKSTOP
    figures.record(
        "stop() in native code holding the GIL (catastrophic regex), --shutdown-timeout 1",
        f"gone after {result['elapsed']:.2f} s by SIGALRM (status {result['status']}), pid file left unlocked",
        f"<= {bound:g} s (timeout + grace + {BACKSTOP:g} s backstop), pid file not locked",
        result["elapsed"] <= bound and result["status"] == -14,
    )
    assert result["status"] == -14, result  # killed by SIGALRM's default action
    assert result["elapsed"] <= bound + SLACK, result
    assert result["pidfile_left"]
    with open(tmp_path / "hang.pid") as pidfile:
        fcntl.flock(pidfile, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if the dead server still held it
