"""A full disk under the log does not slow serving, and leaves a clean log behind (issue 9, point 5).

Two daemons serve the same echo protocol, which logs one line per request: one logs to a healthy disk, the other
to a 2 MiB tmpfs that is then filled. Their request rates are measured in short rounds in alternation, and the
best round of each compared (so that a busy machine weighs on both alike). Then space is freed: the second log
must hold only whole lines, no ``[stderr]`` traceback fragments (a daemon captures its stderr into the log), and
one line counting the dropped lines.
Before the fix every failed write cost a traceback through the captured stderr: this test measured 0.00x
(40 vs 16,271 requests a second).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reliability.conftest import LONG, Figures, fill, root_only, scale
from support import wait_for_match

ECHO_LOGGING = '''
"""echo, logging one line per request."""
import asyncio
import logging

from tapster import Application
from tapster.services import StreamServer

log = logging.getLogger("echo")


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        log.info("echoing %d bytes", len(data))
        self.transport.write(data)


application = Application("echo")
StreamServer("tcp:0:interface=127.0.0.1", Echo).set_parent(application)
'''

TAPSTER = [sys.executable, "-m", "tapster"]
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4} \[[^\]]*\] \S")
CLIENTS = 4


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as gone. (tests/conftest.py's helpers are not importable from
    this folder: its own conftest.py shadows the name.)"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Daemon:
    def __init__(self, directory: Path, tac: Path, *args: str) -> None:
        self.log = directory / "echo.log"
        self.pidfile = directory / "echo.pid"
        done = subprocess.run(
            [*TAPSTER, "--pidfile", str(self.pidfile), "--logfile", str(self.log), *args, "-y", str(tac)],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        self.pid = int(self.pidfile.read_text())
        self.port = int(wait_for_match(self.log, r"Echo starting on (\d+)").group(1))

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while pid_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid_alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon.pid, signal.SIGKILL)


def ping_pong(port: int, seconds: float) -> tuple[int, float]:
    """Ping-pong from CLIENTS connections for ``seconds``: (requests answered, seconds it took)."""
    counts = [0] * CLIENTS
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while time.monotonic() < deadline:
                sock.sendall(b"0123456789abcdef")
                got = 0
                while got < 16:
                    chunk = sock.recv(16 - got)
                    assert chunk, "connection closed"
                    got += len(chunk)
                counts[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts), time.monotonic() - started


@root_only
def test_full_disk_does_not_slow_serving_and_leaves_a_clean_log(
    tmp_path: Path, small_tmpfs: Path, figures: Figures, daemons: list[Daemon]
) -> None:
    tac = tmp_path / "echo_logging.tac"
    tac.write_text(ECHO_LOGGING)
    healthy_dir = tmp_path / "healthy"
    full_dir = small_tmpfs / "full"
    healthy_dir.mkdir()
    full_dir.mkdir()
    healthy = Daemon(healthy_dir, tac, "--log-max-size", "0")
    daemons.append(healthy)
    full = Daemon(full_dir, tac, "--log-max-size", "0")
    daemons.append(full)
    fill(small_tmpfs)

    rounds = 6
    phase = scale(4, 20) / rounds
    answered = {"healthy": 0, "full": 0}
    best = {"healthy": 0.0, "full": 0.0}
    for _ in range(
        rounds
    ):  # short rounds in alternation; the best of each: a busy machine weighs on both alike
        for name, daemon in (("healthy", healthy), ("full", full)):
            count, seconds = ping_pong(daemon.port, phase)
            answered[name] += count
            best[name] = max(best[name], count / seconds)
    ratio = best["full"] / best["healthy"]
    # The fault this guards against made serving 40-60x slower. The 0.9x goal is held by the long run
    # (bench/reliability.py, a quiet machine); the CI run, sharing two CPUs with other tests, asserts 0.5x, which
    # still catches that fault and does not fail on a neighbour's load.
    floor = 0.9 if LONG else 0.5
    figures.record(
        f"echo with one log line per request, log on a full tmpfs vs a healthy disk (best of {rounds} rounds)",
        f"{ratio:.2f}x ({best['full']:.0f} vs {best['healthy']:.0f} req/s)",
        f">= {floor}x",
        ratio >= floor,
    )
    assert full.log.stat().st_size < 4096  # nothing got through while the disk was full

    for filler in small_tmpfs.glob("filler*"):
        filler.unlink()
    # Lines are retried at most once a second: keep asking until the count of dropped lines is in the log.
    deadline = time.monotonic() + 20
    with socket.create_connection(("127.0.0.1", full.port), timeout=10) as sock:
        while "dropped" not in full.log.read_text() and time.monotonic() < deadline:
            sock.sendall(b"ping")
            sock.recv(16)
            time.sleep(0.05)
    full.stop()
    healthy.stop()

    text = full.log.read_text()
    lines = text.split("\n")
    assert lines.pop() == "", "the log ends in the middle of a line"
    bad = [line for line in lines if not LINE.match(line)]
    stderr_lines = [
        line for line in lines if "[stderr]" in line or "Traceback" in line or "Logging error" in line
    ]
    notices = [
        m for line in lines if (m := re.search(r"\] (\d+) log lines? (?:was|were) dropped from", line))
    ]
    dropped = int(notices[0].group(1)) if notices else 0
    figures.record(
        "log after the disk filled up during serving, then was freed",
        f"{len(bad)} glued or cut lines, {len(stderr_lines)} [stderr]/traceback lines, "
        f"{len(notices)} line reporting {dropped} dropped lines",
        "0, 0, one line with the count",
        not bad and not stderr_lines and len(notices) == 1 and dropped > 0,
    )
    assert not bad, bad[:5]
    assert not stderr_lines, stderr_lines[:5]
    assert len(notices) == 1, text
    # Every request of the full phases is in the log or counted (the log's last page took a few lines more).
    assert dropped + sum("echoing" in line for line in lines) >= answered["full"]
    assert "Server Shut Down." in lines[-1]
    assert ratio >= floor, best
