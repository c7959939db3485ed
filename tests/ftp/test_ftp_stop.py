"""Stopping an FTP server: an idle session is told 421 at once; a download in flight at SIGTERM runs to its end,
then 421; one whose client stops reading is cut at --shutdown-timeout and the process still exits promptly."""

from __future__ import annotations

import ftplib
import hashlib
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from ftp_support import LOOPBACK, login, start_ftp_tac

from conftest import TapsterProcess, pid_alive
from support import wait_until

SIZE = 32 * 1024 * 1024  # far more than loopback's socket buffers hold, so the transfer is still running


def big_root(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(1024 * 1024) * (SIZE // (1024 * 1024))
    (root / "big.bin").write_bytes(data)
    return root, hashlib.sha256(data).hexdigest()


def start_download(client: ftplib.FTP) -> tuple[socket.socket, bytes]:
    """RETR big.bin with the data connection read only once: the server is left in mid-transfer."""
    client.voidcmd("TYPE I")
    data = client.transfercmd("RETR big.bin")
    data.settimeout(30)
    return data, data.recv(65536)


def test_a_download_in_flight_finishes_then_421(tapster: type[TapsterProcess], tmp_path: Path) -> None:
    """SIGTERM during a 32 MB download: the idle session gets 421 at once, the download completes intact
    (226), then its session gets 421; exit status 0 and nothing aborted."""
    root, digest = big_root(tmp_path)
    # a generous deadline: on a loaded machine the download must not be cut by the default 10 s
    process, port = start_ftp_tac(
        tapster, tmp_path, root, ["memory:alice:secret"], global_options=("--shutdown-timeout", "60")
    )
    idle, busy = login(port), login(port)
    data, first = start_download(busy)
    process.signal(signal.SIGTERM)
    assert idle.getline().startswith("421")
    received = hashlib.sha256(first)
    size = len(first)
    while chunk := data.recv(1 << 20):
        received.update(chunk)
        size += len(chunk)
    data.close()
    assert size == SIZE and received.hexdigest() == digest
    assert busy.getline().startswith("226")
    assert busy.getline().startswith("421")
    status, out, _ = process.finish()
    assert status == 0, out
    assert "aborted" not in out and "Server Shut Down." in out


@pytest.mark.parametrize("bound", ["--shutdown-timeout", "drain_timeout"])
def test_a_stalled_download_is_cut_at_the_deadline(
    tapster: type[TapsterProcess], tmp_path: Path, bound: str
) -> None:
    """A client that stops reading mid-download: with `tapster --shutdown-timeout 1 ftp` (or a tac's
    FTPServer(drain_timeout=1)) the process is gone within a few seconds of SIGTERM, the log names the cut
    connection, and the client got less than the file."""
    root, _ = big_root(tmp_path)
    if bound == "drain_timeout":
        process, port = start_ftp_tac(tapster, tmp_path, root, ["memory:alice:secret"], drain_timeout=1.0)
        expected, expected_status = "aborted 1 connection(s) still open after 1.0 s", 0
    else:
        global_options = ["-n", "-o", "--pidfile=", "--shutdown-timeout", "1"]
        ftp_options = ["--root", str(root), "--auth", "memory:alice:secret", "--listen", LOOPBACK]
        process = tapster([*global_options, "ftp", *ftp_options])
        port = process.port("FTPServer")
        # a stop the runner had to cut exits 1 (docs/running.md, "The shutdown sequence")
        expected, expected_status = "aborted 1 connection(s) still open at the shutdown deadline", 1
    client = login(port)
    data, first = start_download(client)
    started = time.monotonic()
    process.signal(signal.SIGTERM)
    wait_until(lambda: not pid_alive(process.proc.pid), timeout=10, what="tapster exits")
    elapsed = time.monotonic() - started
    status, out, _ = process.finish()
    assert elapsed < 6, f"took {elapsed:.1f} s"
    assert status == expected_status, out
    assert expected in out
    if (
        bound == "drain_timeout"
    ):  # the data connection is aborted too, not left to flush into a stalled client
        assert "data connections still sending after 1.0 s: cut" in out
    size = len(first)
    while chunk := data.recv(1 << 20):
        size += len(chunk)
    assert size < SIZE
