"""In-place upgrade (tapster ctl upgrade, SIGURG): same pid, same listeners, new code, nothing lost or refused."""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
from pathlib import Path

from test_workers_reload import Load
from workerapp import ask, free_port, ready_pids, write_app

from conftest import pid_alive, run_tapster


def _start(tapster, tmp_path: Path, env: dict[str, str] | None = None):
    port = free_port()
    app = write_app(tmp_path / "app.tac")
    proc = tapster(
        ["-n", "--pidfile", "t.pid", "--workers", "2", "-y", str(app)], env={"PORT": str(port), **(env or {})}
    )
    for number in (1, 2):
        proc.wait_for(rf"\] worker {number} ready \(pid \d+\)")
    return proc, port, app


def _ctl(tmp_path: Path, *command: str) -> tuple[int, str]:
    result = run_tapster(["ctl", *command, "--pidfile", "t.pid"], cwd=tmp_path, timeout=120)
    return result.returncode, (result.stdout + result.stderr).strip()


def _workers(tmp_path: Path) -> set[int]:
    return {int(pid) for pid in re.findall(r"worker \d+: pid (\d+), ready", _ctl(tmp_path, "status")[1])}


def test_upgrade_keeps_the_pid_and_loses_nothing(tapster, tmp_path: Path) -> None:
    """Two upgrades under load: the master re-executes with the same pid and pid file, the workers are new."""
    proc, port, app = _start(tapster, tmp_path)
    master = proc.proc.pid
    first = set(ready_pids(proc.lines).values())
    load = Load(port)
    try:
        for version in ("v2", "v3"):
            write_app(app, version)
            status, said = _ctl(tmp_path, "upgrade")
            assert status == 0 and said.startswith(f"upgraded (pid {master}): 2 worker(s) replaced"), said
            assert all(ask(port)[0] == version for _ in range(20))
    finally:
        load.stop()
    assert load.errors == [] and len(load.answers) == load.sent > 50
    assert (tmp_path / "t.pid").read_text().strip() == str(master)
    assert pid_alive(master) and proc.proc.poll() is None
    workers = _workers(tmp_path)
    assert len(workers) == 2 and not workers & first
    proc.wait_for(rf"Upgraded in place: pid {master} runs the new code; 1 listener\(s\) and 2 worker\(s\)")
    proc.signal(signal.SIGTERM)
    status, out, _ = proc.finish()
    assert status == 0 and out.count("Re-executing the master") == 2


def test_failed_upgrade_changes_nothing(tapster, tmp_path: Path) -> None:
    """New code that does not load: the master does not exec, the same workers serve, ctl says why (exit 1)."""
    proc, port, app = _start(tapster, tmp_path)
    before = _workers(tmp_path)
    app.write_text("def broken(:\n")
    status, said = _ctl(tmp_path, "upgrade")
    assert status == 1
    assert "did not upgrade: syntax error in" in said and "(nothing changed)" in said
    assert _workers(tmp_path) == before
    assert ask(port)[0] == "v1"
    assert not any("Re-executing" in line for line in proc.lines)
    write_app(
        app,
        "v2",
        extra='StreamServer("tcp:0:interface=127.0.0.1", handle, name="New").set_parent(application)',
    )
    status, said = _ctl(tmp_path, "upgrade")
    assert status == 1 and "is not one of the master's listeners" in said
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def test_upgrade_tells_systemd(tapster, tmp_path: Path) -> None:
    """RELOADING=1 before the exec, READY=1 from the new image once its workers are new (MAINPID unchanged),
    and the new image goes on with the watchdog."""
    messages: list[tuple[float, list[str]]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify"))
        listener.settimeout(0.2)

        def receive() -> None:  # all along: a full queue would block the sender (a blocking datagram socket)
            while listener.fileno() >= 0:
                try:
                    messages.append((time.monotonic(), listener.recv(4096).decode().splitlines()))
                except (TimeoutError, OSError):
                    continue

        threading.Thread(target=receive, daemon=True).start()
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "400000"}
        proc, _, _ = _start(tapster, tmp_path, env=env)
        assert _ctl(tmp_path, "upgrade")[0] == 0
        done = time.monotonic()
        proc.wait_for("Upgrade done")
        deadline = done + 5
        while not any("WATCHDOG=1" in m for when, m in list(messages) if when > done + 0.5):
            assert time.monotonic() < deadline, "no WATCHDOG=1 from the upgraded master"
            time.sleep(0.05)
        proc.signal(signal.SIGTERM)
        assert proc.finish()[0] == 0
    fields = [field for _, message in messages for field in message]
    reloading = fields.index("RELOADING=1")
    ready_after = fields.index("READY=1", reloading)
    assert fields.index("READY=1") < reloading  # the first start
    assert f"MAINPID={proc.proc.pid}" in fields[ready_after:]
