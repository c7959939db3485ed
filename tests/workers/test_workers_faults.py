"""Worker faults the master handles: a hung loop, a start that never ends, a crash loop; and systemd's view."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

from workerapp import ask, free_port, ready_pids, write_app

from conftest import run_tapster


def _start(tapster, tmp_path: Path, *extra: str, count: int = 2, env: dict[str, str] | None = None):
    port = free_port()
    app = write_app(tmp_path / "app.tac")
    proc = tapster(
        ["-n", "--pidfile", "t.pid", "--workers", str(count), *extra, "-y", str(app)],
        env={"PORT": str(port), **(env or {})},
    )
    for number in range(1, count + 1):
        proc.wait_for(rf"\] worker {number} ready \(pid \d+\)")
    return proc, port, app


def test_hung_worker_is_killed_and_replaced(tapster, tmp_path: Path) -> None:
    """A worker whose loop stops (SIGSTOP) misses its heartbeats: killed after the timeout, then replaced."""
    proc, port, _ = _start(tapster, tmp_path, "--worker-heartbeat-timeout", "0.5")
    before = ready_pids(proc.lines)
    os.kill(before[2], signal.SIGSTOP)
    stopped = time.monotonic()
    proc.wait_for(r"worker 2 \(pid \d+\): its event loop sent no heartbeat for 0.5 s")
    proc.wait_for(rf"\] worker 2 ready \(pid (?!{before[2]}\))\d+\)")
    assert time.monotonic() - stopped < 0.5 + 2
    assert ask(port)[0] == "v1"
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def test_slow_start_is_not_a_hang_but_has_a_bound(tapster, tmp_path: Path) -> None:
    """A start that never ends fails after --worker-boot-timeout (not the heartbeat's), with that reason."""
    app = write_app(tmp_path / "app.tac")
    Path(f"{app}.hang").touch()
    began = time.monotonic()
    result = run_tapster(
        [
            "-n",
            "--pidfile",
            "t.pid",
            "--workers",
            "2",
            "--worker-boot-timeout",
            "1.5",
            "--worker-heartbeat-timeout",
            "0.2",
            "-y",
            str(app),
        ],
        cwd=tmp_path,
        env={"PORT": str(free_port())},
    )
    assert result.returncode == 1
    assert 1.5 <= time.monotonic() - began < 10
    assert "did not start within 1.5 s (--worker-boot-timeout)" in result.stderr


def test_crash_loop_gives_up(tapster, tmp_path: Path) -> None:
    """Workers that keep failing to start are retried with backoff, then the master gives up and exits 1."""
    proc, _, app = _start(tapster, tmp_path)
    pids = ready_pids(proc.lines)
    Path(f"{app}.fail").touch()
    os.kill(pids[1], signal.SIGKILL)
    status, out, _ = proc.finish(timeout=30)
    assert status == 1
    assert "Giving up: workers crash-loop: 5 starts in a row failed" in out
    assert "RuntimeError: the marker file says fail" in out
    starts = re.findall(r"worker 1 started \(pid (\d+)\)", out)
    # the first, then 5 failed replacements (4 when the kill came within a second of its start: that counts)
    assert len(starts) in (5, 6)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids.values())


def test_systemd_notifications(tapster, tmp_path: Path) -> None:
    """READY=1 once all workers are ready, STATUS= counts them, a reload is RELOADING=1 ... READY=1, then STOPPING=1."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify"))
        listener.settimeout(15)
        proc, _, app = _start(tapster, tmp_path, env={"NOTIFY_SOCKET": str(tmp_path / "notify")})

        def until(field: str) -> list[str]:
            while True:
                message = listener.recv(4096).decode().splitlines()
                if field in message or any(line.startswith(field) for line in message):
                    return message

        ready = until("READY=1")
        assert "STATUS=2 workers ready" in ready and f"MAINPID={proc.proc.pid}" in ready
        write_app(app, "v2")
        reload = run_tapster(["ctl", "reload", "--pidfile", "t.pid"], cwd=tmp_path)
        assert reload.returncode == 0
        reloading = until("RELOADING=1")
        usec = int(next(line for line in reloading if line.startswith("MONOTONIC_USEC="))[15:])
        assert abs(usec - time.monotonic_ns() // 1000) < 60_000_000  # CLOCK_MONOTONIC, as systemd checks
        assert "READY=1" in until("READY=1")
        proc.signal(signal.SIGTERM)
        assert "STOPPING=1" in until("STOPPING=1")
        assert proc.finish()[0] == 0


def test_daemon_launcher_waits_for_all_workers(tmp_path: Path) -> None:
    """As a daemon, the launcher exits 0 only when every worker serves; ctl stop stops them all."""
    port = free_port()
    app = write_app(tmp_path / "app.tac")
    result = run_tapster(
        ["--pidfile", "t.pid", "--logfile", "t.log", "--workers", "3", "-y", str(app)],
        cwd=tmp_path,
        env={"PORT": str(port)},
    )
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "t.log").read_text()
    assert len(re.findall(r"\] worker \d ready", log)) == 3
    assert ask(port)[0] == "v1"
    status = run_tapster(["ctl", "status", "--pidfile", "t.pid"], cwd=tmp_path).stdout
    workers = [int(pid) for pid in re.findall(r"worker \d: pid (\d+)", status)]
    assert len(workers) == 3
    stop = run_tapster(["ctl", "stop", "--pidfile", "t.pid"], cwd=tmp_path)
    assert stop.returncode == 0 and stop.stdout.strip() == "stopped"
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert "Server Shut Down." in (tmp_path / "t.log").read_text()


def _messages(listener: socket.socket, until: float) -> list[tuple[float, list[str]]]:
    got = []
    while time.monotonic() < until:
        listener.settimeout(max(0.01, until - time.monotonic()))
        try:
            got.append((time.monotonic(), listener.recv(4096).decode().splitlines()))
        except TimeoutError:
            break
    return got


def test_watchdog_only_while_workers_are_healthy(tapster, tmp_path: Path) -> None:
    """WATCHDOG=1 at half of WATCHDOG_USEC; withheld while a worker's loop is stopped; back once it is replaced."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify"))
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "400000"}
        proc, _, _ = _start(tapster, tmp_path, "--worker-heartbeat-timeout", "3", env=env)
        healthy = _messages(listener, time.monotonic() + 1.0)
        assert sum("WATCHDOG=1" in m for _, m in healthy) >= 3
        old = ready_pids(proc.lines)[1]
        os.kill(old, signal.SIGSTOP)
        stopped = time.monotonic()
        # its beats come every 0.75 s (a quarter of the timeout): overdue 1.6 s after the last one at most
        stalled = _messages(listener, stopped + 2.6)
        assert not [t for t, m in stalled if "WATCHDOG=1" in m and t > stopped + 1.7]
        proc.wait_for(rf"\] worker 1 ready \(pid (?!{old}\))\d+\)", timeout=15)
        back = _messages(listener, time.monotonic() + 1.5)
        assert any("WATCHDOG=1" in m for _, m in back)
        proc.signal(signal.SIGTERM)
        assert proc.finish()[0] == 0


def test_watchdog_for_another_pid_is_not_ours(tapster, tmp_path: Path) -> None:
    """WATCHDOG_PID naming another process: the master sends no WATCHDOG=1 (and no worker does)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify"))
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
        proc, _, _ = _start(tapster, tmp_path, env=env)
        got = _messages(listener, time.monotonic() + 1.0)
        assert got and not any("WATCHDOG=1" in m for _, m in got)
        proc.signal(signal.SIGTERM)
        assert proc.finish()[0] == 0


def test_slow_start_extends_systemd_start_timeout(tapster, tmp_path: Path) -> None:
    """While workers are still starting (within their boot timeout), EXTEND_TIMEOUT_USEC covers that time."""
    app = write_app(tmp_path / "app.tac")
    Path(f"{app}.hang").touch()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify"))
        proc = tapster(
            ["-n", "--pidfile", "t.pid", "--workers", "1", "--worker-boot-timeout", "2", "-y", str(app)],
            env={"PORT": str(free_port()), "NOTIFY_SOCKET": str(tmp_path / "notify")},
        )
        got = _messages(listener, time.monotonic() + 1.5)
        extends = [
            int(line.split("=")[1]) for _, m in got for line in m if line.startswith("EXTEND_TIMEOUT_USEC=")
        ]
        assert extends and all(2_000_000 < usec <= 7_000_000 for usec in extends)
        status, _, err = proc.finish(timeout=15)
        assert status == 1 and "did not start within 2 s" in err


def test_stop_while_workers_start(tapster, tmp_path: Path) -> None:
    """SIGTERM before all workers are ready: the starting workers are stopped, nothing is left, exit 0."""
    app = write_app(tmp_path / "app.tac")
    Path(f"{app}.hang").touch()
    proc = tapster(["-n", "--pidfile=", "--workers", "2", "-y", str(app)], env={"PORT": str(free_port())})
    pids = [int(proc.wait_for(rf"\] worker {n} started \(pid (\d+)\)")[1]) for n in (1, 2)]
    proc.wait_for(r"\[worker [12]: -\] event loop")  # a worker is inside its start
    proc.signal(signal.SIGTERM)
    status, out, _ = proc.finish(timeout=20)
    assert status == 0 and "Stopping during start-up: stopping the workers." in out
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
