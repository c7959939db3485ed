"""The reliability suite: real processes under faults and hostile input (issue: "Trustworthy under faults").

Every test here measures the promise it checks and records the figure with the ``figures`` fixture, so that
``python bench/reliability.py`` can run the long versions (``TAPSTER_RELIABILITY_LONG=1``: more load, more cases,
longer runs) and write the table in docs/reliability.md from what was measured, never from what was hoped.

In CI (the default, short versions) the whole directory stays under three minutes on two cores.

This folder is a package (``__init__.py``), so pytest imports this file as ``reliability.conftest`` and the name
``conftest`` stays tests/conftest.py's: test modules here import the root helpers with ``from conftest import
run_tapster`` and this file's with ``from reliability.conftest import scale``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

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
    """Fill the filesystem holding ``directory`` to the last byte (one file: on a full tmpfs even creating a second
    file fails), in shrinking writes so that the last partial block is taken too."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
