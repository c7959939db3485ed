"""listen_backlog reads back the queue length a listening socket was given (what socket adoption keeps)."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest

from tapster._listen_backlog import listen_backlog


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_tcp_backlog_from_tcp_info(family: socket.AddressFamily) -> None:
    with socket.socket(family) as sock:
        sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
        assert listen_backlog(sock) is None  # bound, not listening
        sock.listen(7)
        assert listen_backlog(sock) == 7
        sock.listen(11)  # what asyncio's second listen() does
        assert listen_backlog(sock) == 11


def test_unix_backlog_from_sock_diag() -> None:
    with tempfile.TemporaryDirectory() as directory, socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(Path(directory) / "s"))
        assert listen_backlog(sock) is None
        sock.listen(9)
        if listen_backlog(sock) is None:
            pytest.skip("this kernel does not report unix socket backlogs (no unix_diag)")
        assert listen_backlog(sock) == 9
        sock.listen(13)
        assert listen_backlog(sock) == 13


def test_other_sockets_have_none() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert listen_backlog(udp) is None
