"""Saving the tree at shutdown and loading it again (NAME-shutdown.tap): real files, real sockets."""

from __future__ import annotations

import asyncio
import os
import pickle
import stat
from pathlib import Path

import pytest
import statefixtures

from tapster import Application
from tapster.errors import AppLoadError
from tapster.persist import HEADER, StateNotSaved, load_state, save_state, state_file_name

NO_MODULES = HEADER + b"modules:\n"


async def fetch(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = await reader.read()
    writer.close()
    return data


def test_round_trip_keeps_state_and_the_copy_serves_again(tmp_path: Path) -> None:
    """A started tree saved to disk loads not running, keeps its counter, and serves when started again."""
    path = tmp_path / state_file_name(statefixtures.build())

    async def first_run() -> None:
        app = statefixtures.build()
        await app.privileged_start()
        await app.start()
        listener = app["listener"]
        for expected in (b"1\n", b"2\n"):
            assert await fetch(listener.port) == expected  # type: ignore[attr-defined]
        await app.stop()
        save_state(app, str(path))

    async def second_run() -> None:
        app = load_state(str(path))
        assert isinstance(app, Application) and app.name == "counting"
        assert not app.running and not app["listener"].running
        await app.privileged_start()
        await app.start()
        assert await fetch(app["listener"].port) == b"3\n"  # type: ignore[attr-defined]
        await app.stop()

    asyncio.run(first_run())
    assert path.name == "counting-shutdown.tap"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(HEADER)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    asyncio.run(second_run())


def test_unpicklable_attribute_is_named_and_no_file_is_left(tmp_path: Path) -> None:
    """A live socket in a plain attribute stops the save with its path in the tree; nothing is written."""
    app = Application("broken")
    holder = statefixtures.HoldsSocket()
    holder.set_parent(app)
    path = tmp_path / "broken-shutdown.tap"
    with pytest.raises(StateNotSaved, match=r"broken/holder: attribute 'sock' \(socket\) cannot be saved"):
        save_state(app, str(path))
    holder.sock.close()
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_file(tmp_path: Path) -> None:
    """An earlier good state is not damaged by a later failed save (the write is atomic)."""
    path = tmp_path / "x.tap"
    save_state(statefixtures.build(), str(path))
    before = path.read_bytes()
    app = Application("x")
    holder = statefixtures.HoldsSocket()
    holder.set_parent(app)
    with pytest.raises(StateNotSaved):
        save_state(app, str(path))
    holder.sock.close()
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is not a tapster saved state"),
        (b"\x80\x04K\x01.", "is not a tapster saved state"),
        (b"hello, I am a text file\n", "is not a tapster saved state"),
        (HEADER, "no module list after its header"),
        (HEADER + b"modules: os\xff\n", "its module list is not text"),
        (HEADER + b"modules: a;b\n", "its module list is not module names"),
        (NO_MODULES + b"\x80\x05\x95", "is truncated or damaged"),
        (NO_MODULES + b"\x80\x04K*.", "holds a int, not a tapster Service"),
        # a class reference to a module that does not exist (same length as "statefixtures", so framing holds)
        (
            HEADER
            + b"modules: no_such_modul\n"
            + pickle.dumps(statefixtures.Counter).replace(b"statefixtures", b"no_such_modul"),
            "needs code that cannot be found",
        ),
    ],
)
def test_bad_state_files_are_one_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    """Foreign, truncated or wrong-typed files give an AppLoadError naming the file."""
    path = tmp_path / "bad.tap"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(AppLoadError, match=message) as info:
        load_state(str(path))
    assert str(path) in str(info.value)


def test_truncated_real_state_is_refused(tmp_path: Path) -> None:
    """A real state file cut in half is reported as truncated, not as a traceback."""
    path = tmp_path / "cut.tap"
    save_state(statefixtures.build(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AppLoadError, match="truncated or damaged"):
        load_state(str(path))


def test_missing_state_file(tmp_path: Path) -> None:
    """A missing file is named with the reason."""
    with pytest.raises(AppLoadError, match=r"cannot read saved state .*nope.tap: No such file or directory"):
        load_state(str(tmp_path / "nope.tap"))


def test_file_writable_by_others_is_refused_unless_trusted(tmp_path: Path) -> None:
    """A state file others may write is refused (it is code); trust_any_owner overrides."""
    path = tmp_path / "open.tap"
    save_state(statefixtures.build(), str(path))
    path.chmod(0o666)
    with pytest.raises(AppLoadError, match="writable by others"):
        load_state(str(path))
    assert load_state(str(path), trust_any_owner=True).name == "counting"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_file_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    """A state file owned by another user is refused, naming its owner."""
    path = tmp_path / "theirs.tap"
    save_state(statefixtures.build(), str(path))
    os.chown(path, 65534, 65534)
    with pytest.raises(AppLoadError, match=r"it is owned by uid 65534, not by uid 0; a saved state is code"):
        load_state(str(path))
