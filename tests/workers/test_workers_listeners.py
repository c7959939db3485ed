"""Which sockets a master binds and how its workers find them: names, unix and UDP listeners, the log."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from pathlib import Path

import pytest
from workerapp import ask, free_port, write_app

from conftest import run_tapster
from tapster._endpoint_inherited import listener_names


def test_listener_names_are_readable_unique_and_valid() -> None:
    """Names keep the description readable, escape what systemd forbids, number repeats, and digest long ones."""
    names = listener_names(
        ["tcp:8080:interface=127.0.0.1", "tcp:0", "tcp:0", "unix:/run/a b%.sock", "x" * 300]
    )
    assert names[0] == "tcp%3A8080%3Ainterface=127.0.0.1"
    assert names[1] == "tcp%3A0" and names[2] == "tcp%3A0#2"
    assert names[3] == "unix%3A/run/a%20b%25.sock"
    assert names[4].startswith("sha256-") and len(names[4]) <= 255
    assert all(":" not in name and " " not in name and 0 < len(name) <= 255 for name in names)


UDP_AND_UNIX = """
import asyncio
from tapster.services import UDPServer


class Pid(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(f"{{os.getpid()}}".encode(), addr)


UDPServer("udp:{udp}:interface=127.0.0.1", Pid, name="Pid").set_parent(application)
StreamServer("unix:{sock}", handle, name="Local").set_parent(application)
print("printed by a worker")
"""


@pytest.mark.parametrize("upgrade", [False, True])
def test_udp_and_unix_listeners_are_shared(tapster, tmp_path: Path, upgrade: bool) -> None:
    """A UDP socket and a unix socket file, bound once by the master, are served by its workers (also after
    an in-place upgrade handed them to the new master image)."""
    port, udp = free_port(), free_port()
    sock_path = tmp_path / "app.sock"
    app = write_app(tmp_path / "app.tac", extra=UDP_AND_UNIX.format(udp=udp, sock=sock_path))
    proc = tapster(["-n", "--pidfile", "t.pid", "--workers", "2", "-y", str(app)], env={"PORT": str(port)})
    pids = {int(proc.wait_for(rf"\] worker {n} ready \(pid (\d+)\)")[1]) for n in (1, 2)}
    if upgrade:
        result = run_tapster(["ctl", "upgrade", "--pidfile", "t.pid"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        status = run_tapster(["ctl", "status", "--pidfile", "t.pid"], cwd=tmp_path).stdout
        pids = {int(pid) for pid in re.findall(r"worker \d+: pid (\d+), ready", status)}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(b"who", ("127.0.0.1", udp))
        assert int(client.recv(100)) in pids
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(str(sock_path))
        client.sendall(b"hi\n")
        version, pid, _ = client.recv(100).decode().split()
        assert version == "v1" and int(pid) in pids
    assert ask(port)[1] in pids
    proc.wait_for(r"\[worker [12]: output\] printed by a worker")
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0
    assert not sock_path.exists()  # the master removed the socket file it made


def test_worker_records_in_a_json_log(tmp_path: Path) -> None:
    """With --log-format json the master's log holds the workers' records as JSON, context naming the worker."""
    port = free_port()
    app = write_app(tmp_path / "app.tac")
    result = run_tapster(
        [
            "--pidfile",
            "t.pid",
            "--logfile",
            "t.log",
            "--log-format",
            "json",
            "--workers",
            "2",
            "-y",
            str(app),
        ],
        cwd=tmp_path,
        env={"PORT": str(port)},
    )
    assert result.returncode == 0, result.stderr
    ask(port, "sleep 0")
    assert run_tapster(["ctl", "stop", "--pidfile", "t.pid"], cwd=tmp_path).returncode == 0
    records = [json.loads(line) for line in (tmp_path / "t.log").read_text().splitlines()]
    sleeping = [r for r in records if r["message"] == "sleeping 0 s"]
    assert len(sleeping) == 1
    assert sleeping[0]["logger"] == "app" and sleeping[0]["level"] == "INFO"
    assert sleeping[0]["context"].startswith(("worker 1: Echo,", "worker 2: Echo,"))
    assert any(r["context"] == "worker 2: -" and "Echo starting on" in r["message"] for r in records)
    assert os.path.exists(tmp_path / "t.log")
