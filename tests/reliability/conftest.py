"""The reliability suite: real processes under faults and hostile input (issue: "Trustworthy under faults").

Every test here measures the promise it checks and records the figure with the ``figures`` fixture, so that
``python bench/reliability.py`` can run the long versions (``TAPSTER_RELIABILITY_LONG=1``: more load, more cases,
longer runs) and write the table in docs/reliability.md from what was measured, never from what was hoped.

In CI (the default, short versions) the whole directory stays under three minutes on two cores.

The helpers of tests/conftest.py (``run_tapster``, ``connect``, ``TapsterProcess``, ...) are re-exported here, so
``from conftest import run_tapster, scale`` works in this directory. That is not a convenience but a necessity:
pytest imports every conftest.py of a folder without ``__init__.py`` under the one module name ``conftest``, so
once this file is loaded, ``import conftest`` anywhere (tests/runner is collected after tests/reliability) finds
this module, and without the re-export the rest of the suite would fail to import.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest


def _root_conftest() -> ModuleType:
    """tests/conftest.py, loaded by path under a private name (pytest's own copy is not reachable by name)."""
    path = Path(__file__).resolve().parent.parent / "conftest.py"
    spec = importlib.util.spec_from_file_location("_tapster_tests_root_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _is_fixture(value: object) -> bool:
    return (
        any(hasattr(value, marker) for marker in ("_fixture_function_marker", "_pytestfixturefunction"))
        or type(value).__name__ == "FixtureFunctionDefinition"
    )


_root = _root_conftest()
# Named here so that readers and type checkers see them; the loop below brings any later addition along too.
EXAMPLES: Path = _root.EXAMPLES
REPO: Path = _root.REPO
TAPSTER: list[str] = _root.TAPSTER
TapsterProcess = _root.TapsterProcess
run_tapster: Callable[..., subprocess.CompletedProcess[str]] = _root.run_tapster
connect: Callable[..., socket.socket] = _root.connect
read_all: Callable[[socket.socket], bytes] = _root.read_all
pid_alive: Callable[[int], bool] = _root.pid_alive
for _name, _value in vars(_root).items():
    # Plain helpers only: fixtures stay defined once, in tests/conftest.py, where pytest registered them.
    if not _name.startswith("_") and not isinstance(_value, ModuleType) and not _is_fixture(_value):
        globals().setdefault(_name, _value)

LONG = os.environ.get("TAPSTER_RELIABILITY_LONG") == "1"
"""True when bench/reliability.py runs the long versions."""


def scale(short: int, long: int) -> int:
    """A count (clients, cases, iterations) for this run: ``short`` in CI, ``long`` under bench/reliability.py."""
    return long if LONG else short


LONG_TIMEOUT = 1800
"""Seconds a long-version test may take (the project's pytest-timeout of 120 s is for the CI versions)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In the long run, give this directory's tests :data:`LONG_TIMEOUT` unless they set their own."""
    if not LONG:
        return
    here = Path(__file__).resolve().parent
    for item in items:
        if here in item.path.resolve().parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(LONG_TIMEOUT))


class Figures:
    """Records what a test measured as a row of docs/reliability.md: case, figure, goal, and whether it held."""

    def __init__(self, test: str) -> None:
        self.test = test
        self._out = os.environ.get("TAPSTER_RELIABILITY_RESULTS")

    def record(self, case: str, figure: str, goal: str, held: bool) -> None:
        """Add a row (only when $TAPSTER_RELIABILITY_RESULTS names a file); call it before asserting ``held``."""
        if self._out:
            row = {
                "test": self.test,
                "case": case,
                "figure": figure,
                "goal": goal,
                "held": held,
                "long": LONG,
            }
            # One write on an O_APPEND descriptor: rows from parallel workers (pytest -n) never interleave.
            fd = os.open(self._out, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, (json.dumps(row) + "\n").encode("utf-8"))
            finally:
                os.close(fd)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    return Figures(request.node.nodeid)


def _is_root() -> bool:
    return os.geteuid() == 0


root_only = pytest.mark.skipif(
    not _is_root(), reason="needs root (mounts a tmpfs, uses another user's files)"
)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for this test (root only): fill it to test a full disk, then it is unmounted."""
    if not _is_root():
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    mountpoint.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def fill(directory: Path) -> None:
    """Fill the filesystem holding ``directory`` until a write fails with ENOSPC."""
    with open(directory / "filler", "wb") as filler:
        block = b"\0" * 65536
        try:
            while True:
                filler.write(block)
                filler.flush()
        except OSError:
            pass
    # A few more bytes may still fit in the last block; take them too.
    with open(directory / "filler2", "wb") as rest:
        try:
            while True:
                rest.write(b"\0")
                rest.flush()
        except OSError:
            pass
