"""--status with --workers: the master serves /healthz, /readyz and /metrics about its workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

from workerapp import free_port, ready_pids, write_app

from conftest import run_tapster
from status_http import get, metrics, value, wait_status


def _launch(tapster, tmp_path: Path, *extra: str, status: str = "tcp:0:interface=127.0.0.1"):
    app = write_app(tmp_path / "app.tac")
    return tapster(
        ["-n", "--pidfile", "t.pid", "--workers", "2", "--status", status, *extra, "-y", str(app)],
        env={"PORT": str(free_port())},
    )


def _start(tapster, tmp_path: Path, *extra: str):
    """Two workers, --status on a free loopback port; the process and that port."""
    proc = _launch(tapster, tmp_path, *extra)
    return proc, proc.port("status")


def _pids(proc) -> dict[int, int]:
    """The pids of the workers that said ready, from the log (read up to both lines)."""
    for number in (1, 2):
        proc.wait_for(rf"\] worker {number} ready \(pid \d+\)")
    return ready_pids(proc.lines)


def test_readyz_lists_workers_and_follows_a_killed_one(tapster, tmp_path: Path) -> None:
    """200 with both workers; a SIGKILLed worker takes it to 503 (or straight to a restart), then 200 again."""
    proc, port = _start(tapster, tmp_path)
    body = json.loads(wait_status(port, "/readyz", 200))
    assert body["ready"] is True and body["phase"] == "running" and body["draining"] is False
    pids = _pids(proc)
    assert [(w["worker"], w["pid"], w["state"], w["restarts"]) for w in body["workers"]] == [
        (1, pids[1], "ready", 0),
        (2, pids[2], "ready", 0),
    ]
    assert get(port, "/healthz")[:2] == (200, b"ok\n")
    families = metrics(port)
    assert value(families["tapster_worker_state"], worker="1", state="ready") == 1
    assert value(families["tapster_worker_state"], worker="1", state="booting") == 0
    assert value(families["tapster_worker_restarts"], worker="1") == 0
    assert value(families["tapster_workers_ready"]) == 2
    assert value(families["tapster_ready"]) == 1
    assert families["process_resident_memory_bytes"][0].value > 0
    assert "tapster_listener_connections_open" not in families  # the workers' listeners are not reported

    os.kill(pids[1], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while True:  # 503 while the slot is refilled (it may be too short to catch), then 200 with a restart
        code, raw, _ = get(port, "/readyz")
        body = json.loads(raw)
        if code == 503:
            assert body["ready"] is False
            assert body["workers"][0]["state"] in ("replacing", "booting")
        elif body["workers"][0]["restarts"] == 1:
            break
        assert time.monotonic() < deadline, body
        time.sleep(0.01)
    first = body["workers"][0]
    assert first["state"] == "ready" and first["pid"] != pids[1]
    assert body["workers"][1] == {"worker": 2, "pid": pids[2], "state": "ready", "restarts": 0}
    families = metrics(port)
    assert value(families["tapster_worker_restarts"], worker="1") == 1
    assert value(families["tapster_worker_restarts"], worker="2") == 0
    assert value(families["tapster_worker_state"], worker="1", state="ready") == 1
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def test_status_port_in_use_starts_no_worker(tmp_path: Path) -> None:
    """The master binds --status before any worker: a port in use is one line, exit 1, no worker started."""
    app = write_app(tmp_path / "app.tac")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_tapster(
            ["-n", "--pidfile=", "--workers", "2", "--status", str(port), "-y", str(app)],
            cwd=tmp_path,
            env={"PORT": str(free_port())},
        )
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert errors == [
        f"tapster: --status: cannot listen on tcp:{port}:interface=127.0.0.1: address already in use"
    ], result.stderr
    assert "worker 1 started" not in result.stdout and "Starting 2 worker" not in result.stdout


def test_drain_delay_turns_readyz_off(tapster, tmp_path: Path) -> None:
    """SIGTERM with --drain-delay: /readyz answers 503 (draining) while the workers still serve."""
    proc, port = _start(tapster, tmp_path, "--drain-delay", "3")
    wait_status(port, "/readyz", 200)
    proc.signal(signal.SIGTERM)
    body = json.loads(wait_status(port, "/readyz", 503, timeout=5))
    assert body["draining"] is True and body["phase"] == "running"
    assert [w["state"] for w in body["workers"]] == ["ready", "ready"]  # still serving through the delay
    assert value(metrics(port)["tapster_draining"]) == 1
    proc.wait_for("Stopping 2 worker")
    assert proc.finish()[0] == 0


def _unix_get(path: Path, target: str) -> tuple[int, bytes]:
    """One HTTP/1.0 request on a unix socket: (status, body)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(f"GET {target} HTTP/1.0\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_status_listener_survives_an_upgrade(tapster, tmp_path: Path) -> None:
    """ctl upgrade re-executes the master: the new image serves the same status socket (port 0: same port)."""
    proc, port = _start(tapster, tmp_path)
    wait_status(port, "/readyz", 200)
    pids = _pids(proc)
    result = run_tapster(["ctl", "upgrade", "--pidfile", "t.pid"], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert get(port, "/healthz")[:2] == (200, b"ok\n")
    body = json.loads(wait_status(port, "/readyz", 200))
    assert {w["pid"] for w in body["workers"]}.isdisjoint(pids.values())  # the new workers
    assert value(metrics(port)["tapster_master_commands"], command="upgrade", outcome="ok") == 1
    proc.wait_for("Upgrade done")
    starts = [line for line in proc.lines if "status starting on" in line]
    assert len(starts) == 2 and all(line.endswith(f" on {port}") for line in starts), starts  # the same port
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def test_unix_status_socket_survives_an_upgrade_and_is_removed_at_the_end(tapster, tmp_path: Path) -> None:
    """A unix socket file is handed over too (a second bind would find it in use), and removed at the stop."""
    path = tmp_path / "status.sock"
    proc = _launch(tapster, tmp_path, status=f"unix:{path}")
    _pids(proc)
    assert _unix_get(path, "/readyz")[0] == 200
    result = run_tapster(["ctl", "upgrade", "--pidfile", "t.pid"], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _unix_get(path, "/healthz") == (200, b"ok\n")
    assert "goes on without it" not in "\n".join(proc.lines)
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0
    assert not path.exists()


def test_healthz_fails_while_a_worker_is_hung(tapster, tmp_path: Path) -> None:
    """A stopped worker (SIGSTOP) misses its beats: /healthz names it until the master has replaced it."""
    proc, port = _start(tapster, tmp_path, "--worker-heartbeat-timeout", "4")
    wait_status(port, "/readyz", 200)
    pids = _pids(proc)
    os.kill(pids[2], signal.SIGSTOP)
    late = wait_status(
        port, "/healthz", 503, timeout=4
    )  # two beats missed (1 s each), well before the kill at 4 s
    assert late.decode().startswith(f"worker 2 (pid {pids[2]}) is late"), late
    proc.wait_for(rf"worker 2 \(pid {pids[2]}\): its event loop sent no heartbeat")
    assert wait_status(port, "/healthz", 200) == b"ok\n"
    body = json.loads(wait_status(port, "/readyz", 200))
    assert body["workers"][1]["restarts"] == 1
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0
