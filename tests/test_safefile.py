"""tapster._safefile: the opens a root process makes never follow a planted link or open a non-regular file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tapster._safefile import UnsafeFileError, check_private, create_exclusive, open_regular

ME = frozenset({os.geteuid()})


def test_opens_and_creates_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    fd = open_regular(str(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(fd, b"hi\n")
    os.close(fd)
    assert path.read_bytes() == b"hi\n"


def test_refuses_a_symbolic_link_and_leaves_its_target_alone(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("precious")
    link = tmp_path / "x.pid"
    link.symlink_to(target)
    with pytest.raises(UnsafeFileError, match=r"x\.pid: it is a symbolic link"):
        open_regular(str(link), os.O_RDWR | os.O_CREAT | os.O_TRUNC, what="pid file")
    assert target.read_text() == "precious"


def test_refuses_a_dangling_symbolic_link_without_creating_its_target(tmp_path: Path) -> None:
    link = tmp_path / "x.log"
    link.symlink_to(tmp_path / "created-by-the-attacker")
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        open_regular(str(link), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    assert not (tmp_path / "created-by-the-attacker").exists()


def test_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeFileError, match="a FIFO, not a regular file"):
        open_regular(str(fifo), os.O_RDONLY)


def test_refuses_a_directory_and_a_device(tmp_path: Path) -> None:
    with pytest.raises(UnsafeFileError, match="a directory, not a regular file"):
        open_regular(str(tmp_path), os.O_RDONLY)
    with pytest.raises(UnsafeFileError, match="a device, not a regular file"):
        open_regular("/dev/null", os.O_WRONLY)


def test_refuses_a_hard_link(tmp_path: Path) -> None:
    original = tmp_path / "original"
    original.write_text("x")
    os.link(original, tmp_path / "alias")
    with pytest.raises(UnsafeFileError, match="2 hard links"):
        open_regular(str(tmp_path / "alias"), os.O_RDONLY)


def test_create_exclusive_refuses_what_is_already_there(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    with pytest.raises(UnsafeFileError, match="a regular file appeared"):
        create_exclusive(str(tmp_path / "taken"), os.O_WRONLY)
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UnsafeFileError, match="a symbolic link"):
        create_exclusive(str(tmp_path / "link"), os.O_WRONLY)
    assert not (tmp_path / "nowhere").exists()


def test_check_private(tmp_path: Path) -> None:
    path = tmp_path / "state.tap"
    path.write_text("x")
    path.chmod(0o600)
    tmp_path.chmod(0o755)
    check_private(str(path), os.stat(path), what="saved state", trusted_uids=ME)
    path.chmod(0o620)
    with pytest.raises(UnsafeFileError, match="writable by its group"):
        check_private(str(path), os.stat(path), what="saved state", trusted_uids=ME)
    path.chmod(0o600)
    tmp_path.chmod(0o777)
    with pytest.raises(UnsafeFileError, match="writable by others"):
        check_private(str(path), os.stat(path), what="saved state", trusted_uids=ME)
    tmp_path.chmod(0o777 | stat.S_ISVTX)  # sticky, like /tmp: only the file's owner may replace it
    check_private(str(path), os.stat(path), what="saved state", trusted_uids=ME)
    with pytest.raises(UnsafeFileError, match="owned by uid"):
        check_private(str(path), os.stat(path), what="saved state", trusted_uids=frozenset({12345}))
    tmp_path.chmod(0o755)


@pytest.mark.skipif(os.geteuid() != 0, reason="planting as another user needs root")
def test_link_the_kernel_refuses_first_is_still_named_as_a_link(tmp_path: Path) -> None:
    """In a sticky directory, protected_symlinks answers EACCES before O_NOFOLLOW can: the message is the same."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    target = tmp_path / "target"
    target.write_text("precious")
    link = shared / "x.pid"
    link.symlink_to(target)
    os.lchown(link, 65534, 65534)
    with pytest.raises(UnsafeFileError, match=r"x\.pid: it is a symbolic link"):
        open_regular(str(link), os.O_RDWR | os.O_CREAT, what="pid file")
    assert target.read_text() == "precious"
    fifo = shared / "x.fifo"
    os.mkfifo(fifo)
    os.chown(fifo, 65534, 65534)
    with pytest.raises(UnsafeFileError, match=r"x\.fifo: a FIFO, not a regular file"):
        open_regular(str(fifo), os.O_RDWR | os.O_CREAT, what="pid file")
