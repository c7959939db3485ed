"""tapster as PID 1 of a new pid namespace (``unshare --pid --fork --mount-proc``, as ``docker run`` without --init).

The PID 1 process is tapster's init (runner/_pid1.py): it reaps orphans re-parented to it, forwards the stop
signals to the server it forked, and exits with the server's status; the server runs with ``-n`` implied.
The test sees the namespace from outside: the init's host pid is unshare's child.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]


def _unshare_works() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    try:
        probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if probe.returncode != 0:
        return f"cannot make a pid namespace here: {probe.stderr.strip()}"
    return None


_WHY_NOT = _unshare_works()
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=_WHY_NOT or "")

ORPHAN_TAC = textwrap.dedent(
    """
    import subprocess
    from tapster import Application, Service

    class Orphan(Service):
        async def start(self):
            await super().start()
            # sh exits at once and is reaped here; its background sleep is orphaned: re-parented to PID 1
            subprocess.run(["sh", "-c", "sleep 0.3 & echo $! > orphan.pid; exit 0"], check=True)
            print("orphan left", flush=True)

    application = Application("orphan")
    Orphan().set_parent(application)
    """
)


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def wait_until(condition, what: str, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"not within {timeout} s: {what}")


def init_pid(proc) -> int:  # type: ignore[no-untyped-def]
    """The host pid of the namespace's PID 1 (unshare's only child)."""
    found: list[int] = wait_until(lambda: children(proc.proc.pid), "unshare started its child")
    return found[0]


def test_orphans_are_reaped_and_daemonizing_is_off(tapster, tmp_path: Path) -> None:
    """No -n, no --logfile: as PID 1 that is a foreground run logging to stdout, and orphans never linger."""
    (tmp_path / "orphan.tac").write_text(ORPHAN_TAC)
    proc = tapster(["--pidfile=", "-y", "orphan.tac"], prefix=UNSHARE)
    proc.wait_for(r"Running as PID 1's child: .*-n implied\.")
    init = init_pid(proc)
    assert Path(f"/proc/{init}/cmdline").read_bytes().split(b"\0")[1:3] == [b"-m", b"tapster"]
    proc.wait_for("orphan left")
    (server,) = wait_until(lambda: children(init)[:1], "the server runs under the init")
    # The orphaned sleep was the init's child until it exited; left unreaped it would stay as a zombie child.
    wait_until(lambda: children(init) == [server], "the orphan was reaped", timeout=10)
    assert all(state(child) != "Z" for child in children(init))
    os.kill(init, signal.SIGTERM)
    assert proc.finish(timeout=15)[0] == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_to_pid1_stops_the_server_gracefully(tapster, signum: int) -> None:
    """PID 1 has no default signal actions: without the init's handler this signal would be dropped."""
    proc = tapster(["--pidfile=", "-y", str(EXAMPLES / "echo.tac")], prefix=UNSHARE, env={"ECHO_PORT": "0"})
    proc.port()
    init = init_pid(proc)
    os.kill(init, signum)
    status, out, err = proc.finish(timeout=15)
    assert status == 0, out + err  # the init exits with the server's status
    assert f"Received {signal.Signals(signum).name}, shutting down." in out
    assert out.count("shutting down") == 1  # forwarded once, not twice
    assert "Server Shut Down." in out


def test_the_init_exits_with_the_servers_status(tapster, tmp_path: Path) -> None:
    (tmp_path / "bad.tac").write_text("raise RuntimeError('no good')\n")
    proc = tapster(["--pidfile=", "-y", "bad.tac"], prefix=UNSHARE)
    status, _, err = proc.finish(timeout=15)
    assert status == 1
    assert "no good" in err and "Traceback" not in err


def test_a_sigterm_while_the_application_loads_is_not_lost(tapster, tmp_path: Path) -> None:
    """PID 1 drops a signal it has no handler for; the init's handler passes it on even this early.

    The server has no handler of its own yet either (it is still importing the application), so the default
    action ends it, and the init exits with 128 + SIGTERM, as any process killed while loading would.
    """
    (tmp_path / "slow.tac").write_text(
        "import time\nprint('loading', flush=True)\ntime.sleep(600)\napplication = None\n"
    )
    proc = tapster(["--pidfile=", "-y", "slow.tac"], prefix=UNSHARE)
    proc.wait_for("loading")
    init = init_pid(proc)
    os.kill(init, signal.SIGTERM)
    status, _, _ = proc.finish(timeout=10)
    assert status == 128 + signal.SIGTERM
