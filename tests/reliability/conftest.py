"""The reliability suite: real processes under faults and hostile input (issue: "Trustworthy under faults").

Every test here measures the promise it checks and records the figure with the ``figures`` fixture, so that
``python bench/reliability.py`` can run the long versions (``TAPSTER_RELIABILITY_LONG=1``: more load, more cases,
longer runs) and write the table in docs/reliability.md from what was measured, never from what was hoped.

In CI (the default, short versions) the whole directory stays under three minutes on two cores.
"""

from __future__ import annotations

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


class Figures:
    """Records what a test measured as a row of docs/reliability.md: case, figure, goal, and whether it held."""

    def __init__(self, test: str) -> None:
        self.test = test
        self._out = os.environ.get("TAPSTER_RELIABILITY_RESULTS")

    def record(self, case: str, figure: str, goal: str, held: bool) -> None:
        if self._out:
            row = {
                "test": self.test,
                "case": case,
                "figure": figure,
                "goal": goal,
                "held": held,
                "long": LONG,
            }
            with open(self._out, "a", encoding="utf-8") as out:
                out.write(json.dumps(row) + "\n")


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
