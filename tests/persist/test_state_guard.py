"""Loading a saved state runs nothing it should not: the file checks and the unpickling allow-list."""

from __future__ import annotations

import builtins
import collections
import datetime
import decimal
import fractions
import functools
import importlib
import ipaddress
import logging
import os
import pathlib
import pickle
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import statefixtures

import tapster.persist
from tapster import Application, Service
from tapster._state_pickle import SAFE_GLOBALS, referenced_modules
from tapster.errors import AppLoadError
from tapster.persist import HEADER, load_state, save_state


def write_state(path: Path, data: bytes, modules: list[str] | None = None, mode: int = 0o600) -> Path:
    """A format-2 state file holding the pickle ``data``; the header lists ``modules`` (default: what it names)."""
    listed = referenced_modules(data) if modules is None else modules
    path.write_bytes(HEADER + b"modules: " + " ".join(listed).encode() + b"\n" + data)
    path.chmod(mode)
    return path


def malicious(marker: Path) -> dict[str, object]:
    """Objects whose unpickling would create ``marker`` (or import code) if the loader let them run."""
    command = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": statefixtures.Reduced(os.system, command),
        "builtins.exec": statefixtures.Reduced(builtins.exec, code),
        "builtins.eval": statefixtures.Reduced(builtins.eval, code),
        "builtins.__import__": statefixtures.Reduced(builtins.__import__, "antigravity"),
        "subprocess.Popen": statefixtures.Reduced(subprocess.Popen, ["touch", str(marker)]),
        "subprocess.run": statefixtures.Reduced(subprocess.run, ["touch", str(marker)]),
        "importlib.import_module": statefixtures.Reduced(importlib.import_module, "antigravity"),
        "logging.FileHandler": statefixtures.Reduced(logging.FileHandler, str(marker)),
        "a recorded module's function": statefixtures.Reduced(statefixtures.touch, str(marker)),
        "a bound method": statefixtures.Reduced(statefixtures.Toucher().touch, str(marker)),
        "a tapster function": statefixtures.Reduced(
            tapster.persist.save_state, Application("x"), str(marker)
        ),
        "getattr of a dunder": statefixtures.Reduced(builtins.getattr, statefixtures.Counter(), "__init__"),
        "getattr of a str method": statefixtures.Reduced(builtins.getattr, "x", "format"),
        "getattr of a class": statefixtures.Reduced(builtins.getattr, statefixtures.Counter, "start"),
        "a memory bomb": statefixtures.Reduced(bytes, 1 << 40),
        "a range to expand": statefixtures.Reduced(list, range(1 << 40)),
    }


EXPECTED = {
    "os.system": "posix.system: the standard library is allowed only for plain values and containers",
    "builtins.exec": "builtins.exec: only plain values and containers are allowed from builtins",
    "builtins.eval": "builtins.eval: only plain values and containers are allowed from builtins",
    "builtins.__import__": "builtins.__import__: only plain values",
    "subprocess.Popen": "subprocess.Popen: the standard library is allowed only",
    "subprocess.run": "subprocess.run: the standard library is allowed only",
    "importlib.import_module": "importlib.import_module: the standard library",
    "logging.FileHandler": "logging.FileHandler: the standard library",
    "a recorded module's function": "calling statefixtures.touch while loading; only classes are built",
    "a bound method": "calling method Toucher.touch while loading",
    "a tapster function": "tapster.persist.save_state: it is a function; only classes are allowed from tapster",
    "getattr of a dunder": "getattr(..., '__init__'): only a method name is allowed",
    "getattr of a str method": "getattr(a str, 'format'): it is not a method of that object",
    "getattr of a class": "getattr(statefixtures.Counter, 'start'): only methods of objects are allowed",
    "a memory bomb": "bytes(1099511627776): building bytes from a size",
    "a range to expand": "builtins.range: only plain values and containers are allowed from builtins",
}


@pytest.mark.parametrize("case", EXPECTED)
def test_malicious_pickle_is_refused_before_it_runs(tmp_path: Path, case: str) -> None:
    """Each way a pickle can run code is refused with one line naming it, and the marker never appears."""
    marker = tmp_path / "marker"
    path = write_state(tmp_path / "evil.tap", pickle.dumps(malicious(marker)[case], protocol=5))
    with pytest.raises(AppLoadError) as info:
        load_state(str(path))
    message = str(info.value)
    assert message.startswith(f"refusing to load {path}: it names "), message
    assert EXPECTED[case] in message
    assert "\n" not in message
    assert not marker.exists()


def test_header_listing_dangerous_modules_does_not_open_them(tmp_path: Path) -> None:
    """The header is written by whoever wrote the file: listing os or builtins in it changes nothing."""
    marker = tmp_path / "marker"
    data = pickle.dumps(statefixtures.Reduced(os.system, f"touch {marker}"), protocol=5)
    path = write_state(tmp_path / "evil.tap", data, ["builtins", "os", "posix", "subprocess", "sys"])
    with pytest.raises(AppLoadError, match=r"posix\.system: the standard library"):
        load_state(str(path))
    assert not marker.exists()


def test_unlisted_module_is_refused_before_it_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module the header does not list is never imported, so its import-time code never runs."""
    marker = tmp_path / "marker"
    (tmp_path / "markermod_xyz.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Counter:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # same length as "statefixtures", so the pickle's framing still holds
    data = pickle.dumps(statefixtures.Counter(), protocol=5).replace(b"statefixtures", b"markermod_xyz")
    path = write_state(tmp_path / "evil.tap", data, ["statefixtures"])
    with pytest.raises(AppLoadError, match="module markermod_xyz is not among those recorded"):
        load_state(str(path))
    assert not marker.exists()
    assert "markermod_xyz" not in sys.modules


def test_class_reexported_from_the_standard_library_is_refused(tmp_path: Path) -> None:
    """A recorded module's name for a stdlib class (statefixtures.ReexportedPopen is subprocess.Popen) is refused."""
    data = b"\x80\x02cstatefixtures\nReexportedPopen\n."
    path = write_state(tmp_path / "evil.tap", data, ["statefixtures"])
    with pytest.raises(
        AppLoadError,
        match=r"statefixtures\.ReexportedPopen: it is defined in subprocess, not in statefixtures",
    ):
        load_state(str(path))


def test_build_never_sets_attributes_on_a_class(tmp_path: Path) -> None:
    """BUILD with slot state would setattr on whatever is on the stack: a class is refused (no monkeypatching)."""
    data = b"\x80\x02cstatefixtures\nCounter\nN}X\x04\x00\x00\x00evilK\x01s\x86b."
    path = write_state(tmp_path / "evil.tap", data, ["statefixtures"])
    with pytest.raises(AppLoadError, match=r"setting attributes on statefixtures\.Counter"):
        load_state(str(path))
    assert not hasattr(statefixtures.Counter, "evil")


def test_unpickling_that_raises_anything_is_one_line(tmp_path: Path) -> None:
    """An exception of any kind from the state's own classes becomes one AppLoadError naming the file."""
    app = Application("boom")
    statefixtures.Exploding().set_parent(app)
    path = tmp_path / "boom.tap"
    save_state(app, str(path))
    with pytest.raises(AppLoadError) as info:
        load_state(str(path))
    assert str(info.value) == f"saved state {path} cannot be loaded: ValueError: this state explodes"


class Rich(Service):
    """A service holding one of each allowed plain value, as a real tree might."""

    def __init__(self) -> None:
        self.name = "rich"
        self.values: dict[str, object] = {
            "ordered": collections.OrderedDict(a=1),
            "deque": collections.deque([1, 2]),
            "default": collections.defaultdict(list, a=[1]),
            "counter": collections.Counter("aab"),
            "when": datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC),
            "day": datetime.date(2026, 12, 7),
            "delta": datetime.timedelta(seconds=5),
            "money": decimal.Decimal("1.10"),
            "ratio": fractions.Fraction(1, 3),
            "id": uuid.UUID(int=5),
            "net": ipaddress.ip_network("10.0.0.0/8"),
            "addr6": ipaddress.ip_address("::1"),
            "path": pathlib.Path("/srv/x"),
            "partial": functools.partial(statefixtures.touch, "/nonexistent/never-called"),
            "handler": statefixtures.touch,
            "bound": statefixtures.Toucher().touch,
            "misc": [
                {1, 2},
                frozenset({3}),
                bytearray(b"x"),
                b"y",
                1 + 2j,
                slice(1, 2),
                None,
                True,
                1.5,
            ],
        }


def test_allowed_values_round_trip(tmp_path: Path) -> None:
    """Plain values, containers, partials, functions and bound methods of recorded modules load back intact."""
    app = Application("rich")
    Rich().set_parent(app)
    path = tmp_path / "rich.tap"
    save_state(app, str(path))
    loaded = load_state(str(path))
    assert isinstance(loaded, Application)
    original = Rich().values
    values = loaded["rich"].values  # type: ignore[attr-defined]
    for key in ("ordered", "deque", "default", "counter", "when", "day", "delta", "money", "ratio", "id"):
        assert values[key] == original[key], key
    for key in ("net", "addr6", "path", "misc", "handler"):
        assert values[key] == original[key], key
    assert values["partial"].func is statefixtures.touch
    assert values["bound"].__func__ is statefixtures.Toucher.touch


def test_every_safe_global_is_a_class() -> None:
    """The safe list holds classes only: nothing on it is a function that could run code when called."""
    for module, name in SAFE_GLOBALS:
        assert isinstance(getattr(importlib.import_module(module), name), type), (module, name)


def test_state_the_allow_list_refuses_warns_at_save_and_loads_with_trust(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A compiled regex pickles through re._compile: saved with a warning, refused, loaded with trust."""
    app = Application("regex")
    holder = statefixtures.Counter()
    holder.pattern = re.compile("a+")  # type: ignore[attr-defined]
    holder.set_parent(app)
    path = tmp_path / "regex.tap"
    with caplog.at_level(logging.WARNING, logger="tapster"):
        save_state(app, str(path))
    assert f"{path} will load only with --trust-state-file: it names re._compile" in caplog.text
    with pytest.raises(AppLoadError, match=r"it names re\._compile: the standard library"):
        load_state(str(path))
    loaded = load_state(str(path), trust_any_owner=True)
    assert loaded["counter"].pattern.pattern == "a+"  # type: ignore[attr-defined]


def test_format_1_needs_trust(tmp_path: Path) -> None:
    """A state saved by an older tapster has no module list: refused with a hint, loaded with trust."""
    path = tmp_path / "old.tap"
    path.write_bytes(b"TAPSTER-STATE 1\n" + pickle.dumps(statefixtures.build(), protocol=5))
    path.chmod(0o600)
    with pytest.raises(AppLoadError, match=r"saved by an older tapster \(TAPSTER-STATE 1\)"):
        load_state(str(path))
    assert load_state(str(path), trust_any_owner=True).name == "counting"


def test_save_writes_the_recorded_modules(tmp_path: Path) -> None:
    path = tmp_path / "c.tap"
    save_state(statefixtures.build(), str(path))
    lines = path.read_bytes().split(b"\n", 2)
    assert lines[0] == b"TAPSTER-STATE 2"
    assert lines[1].split() == [
        b"modules:",
        b"statefixtures",
        b"tapster.endpoints",
        b"tapster.service",
        b"tapster.services._stream_server",
    ]


# --- the file itself ---


def test_save_replaces_a_planted_symlink_instead_of_following_it(tmp_path: Path) -> None:
    """The rename puts a new file in the link's place; the link's target is not written."""
    target = tmp_path / "precious"
    target.write_text("root:secret\n")
    path = tmp_path / "counting-shutdown.tap"
    path.symlink_to(target)
    save_state(statefixtures.build(), str(path))
    assert target.read_text() == "root:secret\n"
    assert not path.is_symlink()
    assert path.read_bytes().startswith(HEADER)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert load_state(str(path)).name == "counting"


def test_save_into_a_dangling_symlink_does_not_create_its_target(tmp_path: Path) -> None:
    path = tmp_path / "x.tap"
    path.symlink_to(tmp_path / "created-by-the-attacker")
    save_state(statefixtures.build(), str(path))
    assert not (tmp_path / "created-by-the-attacker").exists()
    assert path.is_file() and not path.is_symlink()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("symlink", "it is a symbolic link"),
        ("directory", "a directory, not a regular file"),
        ("fifo", "a FIFO, not a regular file"),
        ("hard link", "it has 2 hard links"),
    ],
)
def test_loading_refuses_links_and_non_regular_files(tmp_path: Path, kind: str, message: str) -> None:
    """Refused even with --trust-state-file: these concern which file is opened, not trust in its content."""
    real = tmp_path / "real.tap"
    save_state(statefixtures.build(), str(real))
    path = tmp_path / "x.tap"
    if kind == "symlink":
        path.symlink_to(real)
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        os.link(real, path)
    for trust in (False, True):
        with pytest.raises(AppLoadError) as info:
            load_state(str(path), trust_any_owner=trust)
        assert str(info.value).startswith(f"refusing to load {path}: {message}")


def test_directory_others_may_write_is_refused_unless_sticky(tmp_path: Path) -> None:
    """A 0777 directory lets anyone replace the file: refused; sticky (like /tmp) and ours: loaded."""
    directory = tmp_path / "shared"
    directory.mkdir()
    path = directory / "x.tap"
    save_state(statefixtures.build(), str(path))
    directory.chmod(0o777)
    try:
        with pytest.raises(
            AppLoadError, match=r"its directory .*shared is writable by others \(and not sticky\)"
        ):
            load_state(str(path))
        assert load_state(str(path), trust_any_owner=True).name == "counting"
        directory.chmod(0o1777)
        assert load_state(str(path)).name == "counting"
    finally:
        directory.chmod(0o755)
