"""Clients that misbehave: leaving without QUIT, sending bytes that are not UTF-8 or a line longer than the
reader's limit, going quiet. Each gets a reply or a quiet close, never a traceback in the log; a quiet control
connection whose transfer is still running is not cut by the idle timeout."""

from __future__ import annotations

import signal
import socket
import struct
import time
from pathlib import Path

from ftp_support import login, start_ftp_tac

from conftest import TapsterProcess


def reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def served(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "big.bin").write_bytes(b"x" * (16 * 1024 * 1024))
    return root


def test_bad_bytes_and_long_lines_get_replies_not_tracebacks(
    tapster: type[TapsterProcess], tmp_path: Path
) -> None:
    """Invalid UTF-8: 501 and the session goes on (NOOP: 200). A 100 KiB line: 500 and the connection closes.
    A client that just disconnects: a quiet close. No traceback anywhere in the log."""
    process, port = start_ftp_tac(tapster, tmp_path, served(tmp_path), ["anonymous"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert reply(sock).startswith(b"220")
        sock.sendall(b"USER \xff\xfe\r\n")
        assert reply(sock).startswith(b"501")
        sock.sendall(b"NOOP\r\n")
        assert reply(sock).startswith(b"200")
        sock.sendall(b"A" * 100 * 1024 + b"\r\n")
        assert reply(sock).startswith(b"500")
        assert sock.recv(1) == b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert reply(sock).startswith(b"220")
        sock.sendall(b"USER anonymous\r\n")
        assert reply(sock).startswith(b"331")
    login(port, "anonymous", "x").quit()  # the server is still serving
    process.signal(signal.SIGTERM)
    status, out, err = process.finish()
    assert status == 0
    assert "Traceback" not in out + err and "dispatcher caught exception" not in out, out


def test_idle_timeout_closes_quiet_sessions_but_not_transfers(
    tapster: type[TapsterProcess], tmp_path: Path
) -> None:
    """idle_timeout=1: a session that says nothing is told 421 and closed; a session whose download is held
    by its client for longer than that keeps its control connection, gets the whole file and may go on."""
    _, port = start_ftp_tac(tapster, tmp_path, served(tmp_path), ["anonymous"], idle_timeout=1.0)
    quiet = login(port, "anonymous", "x")
    busy = login(port, "anonymous", "x")
    busy.voidcmd("TYPE I")
    data = busy.transfercmd("RETR big.bin")
    data.settimeout(10)
    started = time.monotonic()
    assert quiet.getline().startswith("421")
    assert time.monotonic() - started < 6
    time.sleep(2.5)  # the download is held (nothing read) for longer than two idle periods
    size = 0
    while chunk := data.recv(1 << 20):
        size += len(chunk)
    data.close()
    assert size == 16 * 1024 * 1024
    assert busy.getline().startswith("226")
    assert busy.voidcmd("NOOP").startswith("200")


def test_clients_that_reset_mid_conversation_leave_no_traceback(
    tapster: type[TapsterProcess], tmp_path: Path
) -> None:
    """200 clients send a burst of commands and reset the connection at once (SO_LINGER 0), while the server is
    still answering: every session ends quietly, the server goes on serving."""
    process, port = start_ftp_tac(tapster, tmp_path, served(tmp_path), ["anonymous"])
    burst = b"USER anonymous\r\nPASS x\r\n" + b"PWD\r\nSYST\r\nNOOP\r\n" * 50
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(burst)
    login(port, "anonymous", "x").quit()
    for number in range(1, 202):  # every session ended before the stop (log contexts number the connections)
        ended = r"(closing connection from|reset before it was served)"
        process.wait_for(rf"\[FTPServer,{number},[^\]]*\] {ended}", timeout=30)
    process.signal(signal.SIGTERM)
    status, out, err = process.finish()
    assert status == 0
    assert "Traceback" not in out + err and "dispatcher caught exception" not in out, out
    assert "draining" not in out  # none was left open for the stop


def test_a_reset_data_connection_is_426_and_the_session_goes_on(
    tapster: type[TapsterProcess], tmp_path: Path
) -> None:
    """A download and an upload whose data connection the client resets mid-way: each is answered 426, the
    session goes on (NOOP, a full download), and the log has a line for each, not a traceback."""
    process, port = start_ftp_tac(tapster, tmp_path, served(tmp_path), ["memory:alice:secret"])
    client = login(port)
    client.voidcmd("TYPE I")
    for command, move in (
        ("RETR big.bin", lambda s: s.recv(1000)),
        ("STOR up.bin", lambda s: s.sendall(b"x" * 10**5)),
    ):
        data = client.transfercmd(command)
        move(data)
        data.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        data.close()  # a reset, not an end
        assert client.getline().startswith("426")
        assert client.voidcmd("NOOP").startswith("200")
    size = [0]
    client.retrbinary("RETR big.bin", lambda chunk: size.__setitem__(0, size[0] + len(chunk)))
    assert size[0] == 16 * 1024 * 1024
    client.quit()
    process.signal(signal.SIGTERM)
    status, out, err = process.finish()
    assert status == 0 and out.count("data connection lost mid-transfer") == 2
    assert "Traceback" not in out + err, out
