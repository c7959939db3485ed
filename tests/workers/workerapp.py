"""Helpers for the --workers tests: an application file that says which process and version answered."""

from __future__ import annotations

import re
import socket
from pathlib import Path

APP = """\
import os
import time

from tapster import Application, Service
from tapster.services import StreamServer

VERSION = "{version}"


async def handle(reader, writer):
    while True:
        line = await reader.readline()
        if not line:
            break
        words = line.decode().split()
        if words[:1] == ["sleep"]:
            import asyncio
            import logging

            logging.getLogger("app").info("sleeping %s s", words[1])
            await asyncio.sleep(float(words[1]))
        if words[:1] == ["block"]:
            time.sleep(float(words[1]))
        writer.write(f"{{VERSION}} {{os.getpid()}} {{' '.join(words)}}\\n".encode())
        await writer.drain()
    writer.close()


class Failing(Service):
    async def start(self):
        if os.path.exists("{fail_marker}"):
            raise RuntimeError("the marker file says fail")
        if os.path.exists("{hang_marker}"):
            import asyncio

            await asyncio.sleep(3600)
        await super().start()


application = Application("wtest")
Failing().set_parent(application)
StreamServer(f"tcp:{{os.environ['PORT']}}:interface=127.0.0.1", handle, name="Echo").set_parent(application)
{extra}
"""


def write_app(path: Path, version: str = "v1", *, extra: str = "") -> Path:
    """Write the test application (its start fails while ``PATH.fail`` exists, never ends while ``PATH.hang`` does)."""
    path.write_text(
        APP.format(version=version, fail_marker=f"{path}.fail", hang_marker=f"{path}.hang", extra=extra)
    )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ask(port: int, words: str = "hello", timeout: float = 10) -> tuple[str, int]:
    """One request on a new connection: (version, pid) of the worker that answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(words.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed before the answer (got {data!r})")
            data += chunk
    version, pid, *_ = data.decode().split()
    return version, int(pid)


def ready_pids(lines: list[str]) -> dict[int, int]:
    """Worker number -> pid of the last 'worker N ready (pid P)' line seen."""
    pids: dict[int, int] = {}
    for line in lines:
        if match := re.search(r"\] worker (\d+) ready \(pid (\d+)\)", line):
            pids[int(match[1])] = int(match[2])
    return pids
