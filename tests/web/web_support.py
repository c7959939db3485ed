"""Helpers for the web plugin tests: start `tapster web` on a free loopback port, and talk HTTP to it."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Sequence
from pathlib import Path

from conftest import TapsterProcess

LOOPBACK = "tcp:0:interface=127.0.0.1"


LOOPS = ["asyncio", "uvloop"]


def start_web(
    tapster: type[TapsterProcess], args: Sequence[str], cwd: Path | None = None, loop: str = "asyncio"
) -> tuple[TapsterProcess, int]:
    """`tapster -n -o --pidfile= --reactor LOOP web ARGS --listen LOOPBACK`, and the port it bound."""
    process = tapster(
        ["-n", "-o", "--pidfile=", "--reactor", loop, "web", *args, "--listen", LOOPBACK], cwd=cwd
    )
    return process, process.port("WebServer")


def request(
    port: int,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    """One request on a new connection with http.client, which sends ``path`` exactly as given."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response, data


def raw(port: int, data: bytes) -> bytes:
    """Send raw bytes (an exact request line) and read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """``GET target`` with the target sent byte for byte (no client normalises it); the status and body."""
    answer = raw(port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body
