"""FTPServer in a real tapster process, driven by Python's ftplib: logins (accepted, refused, throttled), anonymous
read-only access, a real user's uploads, downloads, listings, directories and deletes, and the passive ports."""

from __future__ import annotations

import ftplib
import signal
import socket
from pathlib import Path

import pytest
from ftp_support import fetch, free_port_range, login, start_ftp_tac, store

from conftest import TapsterProcess

USERS = ["memory:alice:secret", "anonymous"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    served = tmp_path / "root"
    served.mkdir()
    (served / "hello.txt").write_bytes(b"hello, ftp\n")
    (served / "docs").mkdir()
    (served / "docs" / "readme.txt").write_bytes(b"read me\n")
    return served


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_user_uploads_lists_downloads_and_deletes(
    tapster: type[TapsterProcess], tmp_path: Path, root: Path, loop: str
) -> None:
    """alice (a password login) may do everything inside the root, and the files really change on disk."""
    process, port = start_ftp_tac(tapster, tmp_path, root, USERS, loop=loop)
    client = login(port)
    assert client.pwd() == "/"
    assert sorted(client.nlst()) == ["docs", "hello.txt"]
    listing: list[str] = []
    client.retrlines("LIST", listing.append)
    assert any(line.endswith(" hello.txt") and line.startswith("-") for line in listing), listing
    assert fetch(client, "hello.txt") == b"hello, ftp\n"

    client.mkd("uploads")
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    assert store(client, "uploads/data.bin", payload).startswith("226")
    assert (root / "uploads" / "data.bin").read_bytes() == payload
    client.cwd("uploads")
    assert client.pwd() == "/uploads"
    assert fetch(client, "data.bin") == payload
    client.rename("data.bin", "renamed.bin")
    assert (root / "uploads" / "renamed.bin").exists()
    client.delete("renamed.bin")
    client.cwd("..")
    client.rmd("uploads")
    assert sorted(p.name for p in root.iterdir()) == ["docs", "hello.txt"]
    assert client.quit().startswith("221")
    process.signal(signal.SIGTERM)
    status, out, _ = process.finish()
    assert status == 0 and "FTP login: 'alice' from 127.0.0.1 (read-write)" in out


def test_anonymous_reads_but_cannot_write(tapster: type[TapsterProcess], tmp_path: Path, root: Path) -> None:
    """`anonymous` logs in with any password, reads and lists; STOR, MKD, DELE, RNFR and RMD are refused."""
    _, port = start_ftp_tac(tapster, tmp_path, root, ["anonymous"])
    client = login(port, "anonymous", "me@example.org")
    assert fetch(client, "docs/readme.txt") == b"read me\n"
    assert sorted(client.nlst()) == ["docs", "hello.txt"]
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        store(client, "new.txt", b"x")
    for refused in (
        lambda: client.mkd("new"),
        lambda: client.delete("hello.txt"),
        lambda: client.rename("hello.txt", "moved.txt"),
        lambda: client.rmd("docs"),
    ):
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            refused()
    assert sorted(p.name for p in root.iterdir()) == ["docs", "hello.txt"]
    assert login(port, "ftp", "").pwd() == "/"  # RFC 1635's other anonymous name
    with pytest.raises(ftplib.error_perm, match=r"^530"):  # only anonymous logins on this server
        login(port, "alice", "secret")


def test_wrong_password_is_refused_and_three_close_the_connection(
    tapster: type[TapsterProcess], tmp_path: Path, root: Path
) -> None:
    """A wrong password: 530 (after the tac's 0.02 s failure delay); the third on one connection: 421, closed.
    A password login named `anonymous` is not anonymous when the anonymous checker is off."""
    process, port = start_ftp_tac(tapster, tmp_path, root, ["memory:alice:secret"])
    client = ftplib.FTP()
    client.connect("127.0.0.1", port, timeout=15)
    for _ in range(2):
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            client.login("alice", "wrong")
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        client.login("alice", "wrong")
    assert client.sock.recv(1) == b""  # closed by the server
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        login(port, "anonymous", "me@example.org")
    assert login(port).pwd() == "/"
    process.wait_for(r"login failed for user 'alice' from 127\.0\.0\.1 \(password\)")


def test_the_throttle_refuses_guessing_per_address(
    tapster: type[TapsterProcess], tmp_path: Path, root: Path
) -> None:
    """The Authenticator's throttle holds across connections: with a burst of 2 and no wait, a third attempt from
    127.0.0.1 is refused unchecked, even with the right password, and the log says so."""
    throttle = {"burst": 2, "rate": 0.01, "max_wait": 0.0}
    process, port = start_ftp_tac(tapster, tmp_path, root, ["memory:alice:secret"], throttle=throttle)
    for _ in range(2):
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            login(port, "alice", "guess")
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        login(port, "alice", "secret")
    process.wait_for("too many failed logins: 1 attempt")


def test_passive_ports_stay_in_the_range(tapster: type[TapsterProcess], tmp_path: Path, root: Path) -> None:
    """With a range of two ports, two clients get one each, a third is told 421 (no free port), and a port comes
    back to the range when its client quits."""
    first, last = free_port_range(2)
    _, port = start_ftp_tac(tapster, tmp_path, root, USERS, passive_ports=(first, last))
    one, two = login(port), login(port)
    ports = {one.makepasv()[1], two.makepasv()[1]}
    assert ports == {first, last}
    assert fetch(one, "hello.txt") == b"hello, ftp\n" and fetch(two, "hello.txt") == b"hello, ftp\n"
    three = login(port)
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        three.makepasv()
    one.quit()
    four = login(port)
    for _ in range(100):  # the port returns once the server has ended one's session
        try:
            assert four.makepasv()[1] in ports
            break
        except ftplib.error_temp:
            four = login(port)
    else:
        pytest.fail("the passive port never came back to the range")
    assert fetch(four, "hello.txt") == b"hello, ftp\n"


def test_a_data_port_refuses_other_hosts(tapster: type[TapsterProcess], tmp_path: Path, root: Path) -> None:
    """Another host (127.0.0.2) connecting to a client's passive port is closed at once; the client's own data
    connection then works (no port stealing)."""
    _, port = start_ftp_tac(tapster, tmp_path, root, USERS)
    client = login(port)
    host, data_port = client.makepasv()
    with socket.socket() as thief:
        thief.bind(("127.0.0.2", 0))
        thief.settimeout(10)
        thief.connect((host, data_port))
        assert thief.recv(1024) == b""
    assert fetch(client, "hello.txt") == b"hello, ftp\n"
