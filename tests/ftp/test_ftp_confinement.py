"""No way out of the FTP root: `..` above it, absolute paths, and symlinks pointing out are all refused, for
reading, writing, listing and changing directory; the files outside are never touched."""

from __future__ import annotations

import ftplib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from ftp_support import fetch, login, start_ftp_tac, store

from conftest import TapsterProcess


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """``root`` (served) beside ``secret`` (not served), with links from inside the root to both."""
    root, secret = tmp_path / "root", tmp_path / "secret"
    (root / "sub").mkdir(parents=True)
    secret.mkdir()
    (root / "inside.txt").write_bytes(b"inside\n")
    (secret / "key.txt").write_bytes(b"do not serve\n")
    os.symlink(secret, root / "out")  # a directory link leading out
    os.symlink(secret / "key.txt", root / "key-link")  # a file link leading out
    os.symlink("/etc/passwd", root / "passwd")
    os.symlink("../inside.txt", root / "sub" / "ok-link")  # a link that stays inside: allowed
    return root, secret


def refused(action: Callable[[], object]) -> str:
    with pytest.raises(ftplib.error_perm) as caught:
        action()
    reply = str(caught.value)
    assert reply.startswith("550"), reply
    return reply


def test_traversal_is_refused(
    tapster: type[TapsterProcess], tmp_path: Path, layout: tuple[Path, Path]
) -> None:
    """`CWD ..` and `CDUP` at the root, `RETR ../x`, `RETR /etc/passwd`, `RETR sub/../../secret/key.txt`: 550."""
    root, _ = layout
    _, port = start_ftp_tac(tapster, tmp_path, root, ["memory:alice:secret"])
    client = login(port)
    refused(lambda: client.cwd(".."))
    refused(lambda: client.sendcmd("CDUP"))
    assert client.pwd() == "/"
    refused(lambda: fetch(client, "../secret/key.txt"))
    refused(lambda: fetch(client, "/etc/passwd"))
    refused(lambda: fetch(client, "sub/../../secret/key.txt"))
    refused(lambda: fetch(client, "/../secret/key.txt"))
    refused(lambda: client.cwd("/.."))
    refused(lambda: store(client, "../escaped.txt", b"x"))
    refused(lambda: client.mkd("../escaped"))
    client.cwd("sub")
    refused(lambda: client.cwd("../.."))
    assert fetch(client, "../inside.txt") == b"inside\n"  # `..` that stays inside is fine
    client.cwd("/")
    assert fetch(client, "/inside.txt") == b"inside\n"  # an absolute path means the root's
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "escaped").exists()


def test_symlinks_out_of_the_root_are_invisible_and_unusable(
    tapster: type[TapsterProcess], tmp_path: Path, layout: tuple[Path, Path]
) -> None:
    """A link leading out is not listed and cannot be read, entered, listed, written through or renamed into;
    a link that stays inside works."""
    root, secret = layout
    _, port = start_ftp_tac(tapster, tmp_path, root, ["memory:alice:secret"])
    client = login(port)
    assert sorted(client.nlst()) == ["inside.txt", "sub"]
    listing: list[str] = []
    client.retrlines("LIST", listing.append)
    assert not any(name in line for line in listing for name in ("out", "key-link", "passwd")), listing
    refused(lambda: fetch(client, "key-link"))
    refused(lambda: fetch(client, "passwd"))
    refused(lambda: fetch(client, "out/key.txt"))
    refused(lambda: client.cwd("out"))
    refused(lambda: client.nlst("out"))
    refused(lambda: store(client, "out/planted.txt", b"x"))
    refused(lambda: store(client, "key-link", b"overwritten"))
    refused(lambda: client.mkd("out/newdir"))
    refused(lambda: client.rename("inside.txt", "out/stolen.txt"))
    refused(lambda: client.delete("key-link"))
    assert fetch(client, "sub/ok-link") == b"inside\n"
    assert sorted(p.name for p in secret.iterdir()) == ["key.txt"]
    assert (secret / "key.txt").read_bytes() == b"do not serve\n"
    assert (root / "inside.txt").exists()
