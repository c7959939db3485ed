"""Rolling reload (tapster ctl reload, SIGUSR2): new code, no refused or lost request, and a safe abort."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import pytest
from workerapp import ask, free_port, ready_pids, write_app

from conftest import run_tapster


class Load:
    """Client threads, each asking on a new connection after another, until stopped; counts every outcome."""

    def __init__(self, port: int, clients: int = 4) -> None:
        self.port = port
        self.answers: list[tuple[str, int]] = []
        self.errors: list[str] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self.sent += 1
            try:
                answer = ask(self.port)
            except OSError as exc:
                with self._lock:
                    self.errors.append(repr(exc))
            else:
                with self._lock:
                    self.answers.append(answer)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def _start(tapster, tmp_path: Path, count: int):
    port = free_port()
    app = write_app(tmp_path / "app.tac")
    proc = tapster(
        ["-n", "--pidfile", "t.pid", "--workers", str(count), "-y", str(app)], env={"PORT": str(port)}
    )
    for number in range(1, count + 1):
        proc.wait_for(rf"\] worker {number} ready \(pid \d+\)")
    return proc, port, app


def _reload(tmp_path: Path) -> tuple[int, str]:
    result = run_tapster(["ctl", "reload", "--pidfile", "t.pid"], cwd=tmp_path, timeout=120)
    return result.returncode, (result.stdout + result.stderr).strip()


@pytest.mark.parametrize("count", [2, 1])
def test_reload_under_load_loses_nothing(tapster, tmp_path: Path, count: int) -> None:
    """Three reloads under continuous load: every request answered, none refused or reset, new code served."""
    proc, port, app = _start(tapster, tmp_path, count)
    first = ready_pids(proc.lines)
    load = Load(port)
    try:
        for version in ("v2", "v3", "v4"):
            write_app(app, version)
            status, said = _reload(tmp_path)
            assert status == 0 and said.startswith("reloaded"), said
            assert all(ask(port)[0] == version for _ in range(20))
    finally:
        load.stop()
    assert load.errors == []
    assert len(load.answers) == load.sent and load.sent > 50
    assert {version for version, _ in load.answers} >= {"v1", "v4"}
    status = run_tapster(["ctl", "status", "--pidfile", "t.pid"], cwd=tmp_path).stdout
    listed = {int(pid) for pid in re.findall(r"worker \d+: pid (\d+), ready", status)}
    assert len(listed) == count and not listed & set(first.values())
    assert {pid for version, pid in load.answers if version == "v4"} <= listed
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def test_reload_with_a_broken_application_keeps_the_old_workers(tapster, tmp_path: Path) -> None:
    """A new worker that fails to start aborts the reload: ctl says why, the old workers go on serving."""
    proc, port, app = _start(tapster, tmp_path, 2)
    old = ready_pids(proc.lines)
    app.write_text("def broken(:\n")
    status, said = _reload(tmp_path)
    assert status == 1
    assert "did not reload: the new worker 1 failed to start: syntax error in" in said
    assert "the old workers keep serving" in said
    proc.wait_for("Reload aborted")
    answers = {ask(port) for _ in range(50)}
    assert {version for version, _ in answers} == {"v1"}
    assert {pid for _, pid in answers} <= set(old.values())
    table = run_tapster(["ctl", "status", "--pidfile", "t.pid"], cwd=tmp_path).stdout
    assert all(f"pid {pid}, ready" in table for pid in old.values())
    write_app(app, "v2")  # fixed: the next reload works
    status, said = _reload(tmp_path)
    assert status == 0, said
    assert ask(port)[0] == "v2"
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def test_reload_of_a_single_process_server_is_refused(tapster, tmp_path: Path) -> None:
    """ctl reload on a server without --workers says it cannot reload, rather than sending SIGUSR2."""
    app = write_app(tmp_path / "app.tac")
    proc = tapster(["-n", "--pidfile", "t.pid", "-y", str(app)], env={"PORT": str(free_port())})
    proc.wait_for("Echo starting on")
    status, said = _reload(tmp_path)
    assert status == 1 and "runs no workers" in said
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def _start_short_timeout(tapster, tmp_path: Path):
    port = free_port()
    app = write_app(tmp_path / "app.tac")
    proc = tapster(
        ["-n", "--pidfile", "t.pid", "--workers", "2", "--shutdown-timeout", "1", "-y", str(app)],
        env={"PORT": str(port)},
    )
    for number in (1, 2):
        proc.wait_for(rf"\] worker {number} ready")
    return proc, port


def test_stop_is_graceful(tapster, tmp_path: Path) -> None:
    """SIGTERM: the master closes its listeners, each worker drains, a request in flight is answered, exit 0."""
    proc, port = _start_short_timeout(tapster, tmp_path)
    result: list[object] = []
    slow = threading.Thread(target=lambda: result.append(ask(port, "sleep 0.5")))
    slow.start()
    proc.wait_for(r"\[worker [12]: Echo,\d+,127\.0\.0\.1\] sleeping 0\.5 s")  # a worker's line, in the log
    proc.signal(signal.SIGTERM)
    status, out, _ = proc.finish(timeout=15)
    slow.join(timeout=5)
    assert result and isinstance(result[0], tuple) and result[0][0] == "v1"
    assert status == 0
    assert "Stopping 2 worker(s)." in out and "Server Shut Down." in out
    assert out.count("stopped: exited with status 0.") == 2


def test_stop_is_bounded_with_a_stuck_worker(tapster, tmp_path: Path) -> None:
    """A worker blocked in a call that never yields is ended in bounded time; the master exits 1, not never."""
    proc, port = _start_short_timeout(tapster, tmp_path)
    stuck = threading.Thread(target=_quietly, args=(port, "block 60"), daemon=True)
    stuck.start()
    time.sleep(0.3)  # the blocking request has reached a worker
    began = time.monotonic()
    proc.signal(signal.SIGTERM)
    status, out, _ = proc.finish(timeout=15)
    took = time.monotonic() - began
    assert took < 1 + 2 + 1.5  # --shutdown-timeout, the worker's guard grace, margin for a loaded machine
    assert status == 1
    assert "Server Shut Down." in out


def _quietly(port: int, words: str) -> object:
    try:
        return ask(port, words, timeout=60)
    except OSError as exc:
        return exc
