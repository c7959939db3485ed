"""systemd readiness: READY=1 once the listeners accept, STOPPING=1 at the stop signal, on a real socket."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from conftest import EXAMPLES, connect


def test_ready_and_stopping_reach_notify_socket(tapster, tmp_path: Path) -> None:
    """With NOTIFY_SOCKET set, tapster sends READY=1 (with MAINPID) after start and STOPPING=1 on SIGTERM."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify"))
        listener.settimeout(15)
        proc = tapster(
            ["-n", "-y", str(EXAMPLES / "echo.tac"), "--pidfile="],
            env={"ECHO_PORT": "0", "NOTIFY_SOCKET": str(tmp_path / "notify")},
        )
        ready = listener.recv(4096).decode().splitlines()
        assert "READY=1" in ready and f"MAINPID={proc.proc.pid}" in ready
        with connect(proc.port("Echo")):  # ready means the port accepts
            pass
        proc.signal(signal.SIGTERM)
        assert "STOPPING=1" in listener.recv(4096).decode().splitlines()
        assert proc.finish()[0] == 0


def test_abstract_notify_socket(tapster) -> None:
    """An '@' address is an abstract socket, as systemd documents."""
    name = f"tapster-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        listener.settimeout(15)
        proc = tapster(
            ["-n", "-y", str(EXAMPLES / "echo.tac"), "--pidfile="],
            env={"ECHO_PORT": "0", "NOTIFY_SOCKET": "@" + name},
        )
        assert "READY=1" in listener.recv(4096).decode().splitlines()
        proc.signal(signal.SIGTERM)
        assert proc.finish()[0] == 0
