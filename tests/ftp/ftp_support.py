"""Helpers for the FTP tests: a tapster process serving a directory (from a tac file, so the tests can use a small
failure delay and their own throttle numbers), ftplib sessions, free passive ports."""

from __future__ import annotations

import ftplib
import io
import random
import socket
from pathlib import Path

from conftest import TapsterProcess

LOOPBACK = "tcp:0:interface=127.0.0.1"

TAC = """\
from tapster import Application
from tapster.auth import parse_auth, ThrottleLimits
from tapster.services import FTPServer

application = Application("ftp")
FTPServer(
    {root!r},
    {listen!r},
    checkers=[parse_auth(spec) for spec in {auth!r}],
    passive_ports={passive_ports!r},
    failure_delay=0.02,
    throttle=ThrottleLimits(**{throttle!r}),
    drain_timeout={drain_timeout!r},
    idle_timeout={idle_timeout!r},
).set_parent(application)
"""


def start_ftp_tac(
    tapster: type[TapsterProcess],
    directory: Path,
    root: Path,
    auth: list[str],
    *,
    passive_ports: tuple[int, int] | None = None,
    throttle: dict[str, float] | None = None,
    drain_timeout: float | None = None,
    idle_timeout: float | None = 300.0,
    loop: str = "asyncio",
    listen: str = LOOPBACK,
    global_options: tuple[str, ...] = (),
) -> tuple[TapsterProcess, int]:
    """An FTPServer built in ``directory/ftp.tac``, run with ``tapster -n -y``; the process and its port."""
    tac = directory / "ftp.tac"
    tac.write_text(
        TAC.format(
            root=str(root),
            listen=listen,
            auth=auth,
            passive_ports=passive_ports,
            throttle=throttle or {},
            drain_timeout=drain_timeout,
            idle_timeout=idle_timeout,
        )
    )
    process = tapster(
        ["-n", "-o", "--pidfile=", *global_options, "--reactor", loop, "-y", str(tac)], cwd=directory
    )
    return process, process.port("FTPServer")


def login(port: int, user: str = "alice", password: str = "secret", host: str = "127.0.0.1") -> ftplib.FTP:
    """A logged-in ftplib session (passive mode, ftplib's default)."""
    client = ftplib.FTP()
    client.connect(host, port, timeout=15)
    client.login(user, password)
    return client


def fetch(client: ftplib.FTP, path: str) -> bytes:
    data = io.BytesIO()
    client.retrbinary(f"RETR {path}", data.write)
    return data.getvalue()


def store(client: ftplib.FTP, path: str, data: bytes) -> str:
    return client.storbinary(f"STOR {path}", io.BytesIO(data))


def free_port_range(count: int) -> tuple[int, int]:
    """``count`` consecutive loopback ports that were free a moment ago (for --passive-ports)."""
    for _ in range(100):
        first = random.randrange(20000, 60000 - count)
        held: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return first, first + count - 1
    raise AssertionError("no free port range found")
