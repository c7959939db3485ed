"""Log rotation while a service logs as fast as it can: no line lost, duplicated, reordered or garbled.

A daemon runs numbered.tac, which logs ``n 0``, ``n 1``, ... in a tight loop (tens of thousands of lines a
second) while the test rotates the file under it: SIGUSR1, a rename followed by ``tapster ctl reopen``, tapster's
own size rotation, and the real ``logrotate`` in its ``create`` mode (postrotate ``tapster ctl reopen``) and its
``copytruncate`` mode. The test drives: it rotates a set number of times, each once the file has grown, then tells
the logger to finish (after at least ``LINES`` lines); so a fast or a slow machine both see every rotation.
Afterwards every file is read back, oldest first, and the numbers must run 0..N-1 once each.

``copytruncate`` cannot keep that promise (the lines written between logrotate's copy and its truncate are in
neither file): there the figure is the number of lines lost, recorded as measured, and the test checks what
tapster does promise: its writes go through ``O_APPEND``, so after the truncate the file restarts at offset 0
with no hole of NUL bytes where the old offset was.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import pid_alive, run_tapster
from reliability.conftest import Figures, scale

LINES = scale(100_000, 2_000_000)
"""The fewest lines logged per run: about a second's worth in CI, half a minute's worth in the long run."""

NUMBERED_TAC = textwrap.dedent(
    """
    import asyncio, logging, os, time
    from tapster import Application, Service

    AT_LEAST = int(os.environ["NUMBERED_AT_LEAST"])
    ENOUGH = os.environ["NUMBERED_ENOUGH"]
    DONE = os.environ["NUMBERED_DONE"]
    log = logging.getLogger("numbered")


    class Numbered(Service):
        '''Logs numbered lines as fast as the loop allows until AT_LEAST are logged and the ENOUGH file exists.

        Then it writes the count and the time taken to the DONE file.
        '''

        transient = ("_task",)

        async def start(self):
            await super().start()
            self._task = asyncio.get_running_loop().create_task(self._run())

        async def _run(self):
            info = log.info
            began = time.monotonic()
            number = 0
            while True:
                info("n %d", number)
                number += 1
                if number % 256 == 0:
                    if number >= AT_LEAST and os.path.exists(ENOUGH):
                        break
                    await asyncio.sleep(0)  # let the loop run the signal handlers (rotate, reopen, stop)
            elapsed = time.monotonic() - began
            with open(DONE + ".tmp", "w") as out:
                out.write(f"{number} {elapsed:.6f}")
            os.rename(DONE + ".tmp", DONE)

        async def stop(self):
            self._task.cancel()
            await super().stop()


    application = Application("numbered")
    Numbered().set_parent(application)
    """
)

NUMBERED = re.compile(rb"\] n (\d+)")
LOG_LINE = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4} \[[^\]]*\] \S.*")
GROWTH = scale(64 * 1024, 512 * 1024)
"""Bytes the log grows between two rotations the test triggers."""


def logrotate() -> str | None:
    return shutil.which("logrotate") or shutil.which("logrotate", path="/usr/sbin:/sbin")


@dataclass
class Run:
    """One daemon logging numbered lines in ``directory``."""

    directory: Path
    pid: int
    stopped: bool = False

    @property
    def log(self) -> Path:
        return self.directory / "tapster.log"

    @property
    def done(self) -> Path:
        return self.directory / "done"

    def alive(self) -> None:
        if not pid_alive(self.pid):
            pytest.fail(f"the daemon died; log:\n{self.log.read_text(errors='replace')[-3000:]}")

    def finish(self, timeout: float = 600) -> None:
        """Tell the logger to stop once it has logged LINES lines, and wait until it has."""
        (self.directory / "enough").touch()
        deadline = time.monotonic() + timeout
        while not self.done.exists():
            self.alive()
            if time.monotonic() > deadline:
                pytest.fail(f"the logger did not finish {LINES} lines within {timeout}s")
            time.sleep(0.01)

    @property
    def count(self) -> int:
        return int(self.done.read_text().split()[0])

    def rate(self) -> float:
        count, elapsed = self.done.read_text().split()
        return int(count) / max(float(elapsed), 1e-9)

    def stop(self) -> None:
        stopped = run_tapster(["ctl", "stop", "--timeout", "60"], cwd=self.directory, timeout=90)
        assert stopped.returncode == 0, stopped.stderr
        self.stopped = True


@pytest.fixture
def start_numbered(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """Start the numbered-lines daemon (extra tapster options as arguments); killed at the end if still up."""
    runs: list[Run] = []
    (tmp_path / "numbered.tac").write_text(NUMBERED_TAC)

    def start(*options: str) -> Run:
        directory = tmp_path / f"run{len(runs)}"
        directory.mkdir(mode=0o700)
        env = {
            "NUMBERED_AT_LEAST": str(LINES),
            "NUMBERED_ENOUGH": str(directory / "enough"),
            "NUMBERED_DONE": str(directory / "done"),
        }
        started = run_tapster(["-y", str(tmp_path / "numbered.tac"), *options], cwd=directory, env=env)
        assert started.returncode == 0, started.stderr
        run = Run(directory, int((directory / "tapster.pid").read_text()))
        runs.append(run)
        return run

    yield start
    for run in runs:
        if not run.stopped and pid_alive(run.pid):  # a stopped daemon's pid may belong to anyone by now
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.pid, signal.SIGKILL)


def wait_growth(path: Path, run: Run, size: int = GROWTH, timeout: float = 120) -> None:
    """Wait until ``path`` holds ``size`` bytes (the logger never stops before the test says so)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size >= size:
                return
        run.alive()
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not reach {size} bytes within {timeout}s")
        time.sleep(0.001)


def wait_replaced(path: Path, inode: int, run: Run, timeout: float = 60) -> None:
    """Wait until a file other than ``inode`` is at ``path`` (the daemon opened its new log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_ino != inode:
                return
        run.alive()
        time.sleep(0.001)
    pytest.fail(f"{path} was not replaced within {timeout}s")


def numbered_files(log: Path) -> list[Path]:
    """``log`` and its rotated copies ``log.1`` (newest) ... ``log.K`` (oldest), oldest first."""
    rotated = [p for p in log.parent.iterdir() if p.name.startswith(log.name + ".")]
    rotated.sort(key=lambda p: int(p.name.rsplit(".", 1)[1]), reverse=True)
    return [*rotated, log]


@dataclass
class Account:
    """What the files hold, compared with the N lines logged."""

    files: int
    lost: int
    duplicated: int
    reordered: int
    garbled: int
    """Lines that are not whole log lines, not counting a cut last line (``cut``)."""
    cut: int
    """Files whose last line has no newline: cut short, as a copy made while a line is being written is."""
    nul_bytes: int
    gaps: list[int]
    """The length of each run of missing numbers."""

    @property
    def perfect(self) -> bool:
        return not (
            self.lost or self.duplicated or self.reordered or self.garbled or self.cut or self.nul_bytes
        )

    def describe(self) -> str:
        return (
            f"{self.lost} lost, {self.duplicated} duplicated, {self.reordered} reordered, "
            f"{self.garbled + self.cut} garbled, {self.nul_bytes} NUL bytes"
        )


def account(files: list[Path], count: int) -> Account:
    """Read ``files`` in order and count how the numbered lines in them differ from 0..count-1, once each."""
    seen = bytearray(count)
    duplicated = reordered = garbled = cut = nul_bytes = 0
    last = -1
    for path in files:
        data = path.read_bytes()
        nul_bytes += data.count(b"\0")
        lines = data.split(b"\n")
        if lines[
            -1
        ]:  # no newline at the end: the line was cut, and its number may be cut too ("n 12" of "n 123")
            cut += 1
        for line in lines[:-1]:
            if not line:
                continue
            match = NUMBERED.search(line)
            if not LOG_LINE.fullmatch(line) or (match and match.end() != len(line)):
                garbled += 1
                continue
            if match is None:
                continue  # tapster's own lines ("Log opened.", "Log rotated (SIGUSR1).", ...)
            number = int(match.group(1))
            if number >= count:
                garbled += 1
                continue
            if seen[number]:
                duplicated += 1
            seen[number] = 1
            if number < last:
                reordered += 1
            last = number
    gaps = [len(run) for run in bytes(seen).split(b"\x01") if run]
    return Account(len(files), count - sum(seen), duplicated, reordered, garbled, cut, nul_bytes, gaps)


def record(figures: Figures, case: str, run: Run, rotations: int, result: Account) -> None:
    figures.record(
        f"{case}: {run.count:,} lines at {run.rate():,.0f} lines/s, {rotations} rotations",
        result.describe(),
        "0 lost, 0 duplicated, 0 reordered, 0 garbled, 0 NUL bytes",
        result.perfect,
    )


def test_sigusr1_rotation_under_load(start_numbered: Callable[..., Run], figures: Figures) -> None:
    """SIGUSR1 rotations while lines pour in: every line is in exactly one file, in order."""
    run = start_numbered("--log-max-size", "0")
    rotations = scale(20, 200)
    for _ in range(rotations):
        wait_growth(run.log, run)
        inode = run.log.stat().st_ino
        os.kill(run.pid, signal.SIGUSR1)
        wait_replaced(run.log, inode, run)
    run.finish()
    run.stop()
    result = account(numbered_files(run.log), run.count)
    record(figures, "SIGUSR1 rotation", run, rotations, result)
    assert result.perfect, result


def test_rename_and_ctl_reopen_under_load(start_numbered: Callable[..., Run], figures: Figures) -> None:
    """The file renamed away, then `tapster ctl reopen`: lines go to the old file until the reopen, none lost."""
    run = start_numbered("--log-max-size", "0")
    moved: list[Path] = []
    for _ in range(scale(5, 40)):
        wait_growth(run.log, run)
        inode = run.log.stat().st_ino
        aside = run.directory / f"moved.{len(moved):05d}"
        run.log.rename(aside)
        moved.append(aside)
        reopened = run_tapster(["ctl", "reopen"], cwd=run.directory)
        assert reopened.returncode == 0, reopened.stderr
        wait_replaced(run.log, inode, run)
    run.finish()
    run.stop()
    result = account([*moved, run.log], run.count)
    record(figures, "rename + `tapster ctl reopen`", run, len(moved), result)
    assert result.perfect, result


def test_size_rotation_under_load(start_numbered: Callable[..., Run], figures: Figures) -> None:
    """tapster's own size rotation (--log-max-size) keeps every line, and no file passes the limit."""
    limit = scale(256 * 1024, 1024 * 1024)
    run = start_numbered("--log-max-size", str(limit))
    run.finish()
    run.stop()
    files = numbered_files(run.log)
    result = account(files, run.count)
    oversized = [p.name for p in files if p.stat().st_size > limit]
    record(figures, f"size rotation (--log-max-size {limit})", run, len(files) - 1, result)
    assert len(files) >= 3, [p.name for p in files]
    assert not oversized, oversized
    assert result.perfect, result


needs_logrotate = pytest.mark.skipif(
    logrotate() is None,
    reason="logrotate is not installed (apt-get install logrotate; .ci/run does it as root)",
)


def run_logrotate(run: Run, stanza: str, rotations: int) -> None:
    """Run the real logrotate, forced, ``rotations`` times, each once the log has grown."""
    binary = logrotate()
    assert binary is not None
    conf = run.directory / "logrotate.conf"
    # Keep every rotated file, but say no more than that: logrotate looks for each of the `rotate` old names.
    body = f"rotate {rotations + 1}\nmissingok\n{stanza}"
    conf.write_text(f"{run.log} {{\n{textwrap.indent(body, '    ')}}}\n")
    conf.chmod(0o644)
    for _ in range(rotations):
        wait_growth(run.log, run)
        done = subprocess.run(
            [binary, "-f", "-s", str(run.directory / "logrotate.state"), str(conf)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    run.finish()


@needs_logrotate
def test_logrotate_create_with_ctl_reopen(start_numbered: Callable[..., Run], figures: Figures) -> None:
    """logrotate's create mode, postrotate `tapster ctl reopen`: no line lost or reordered."""
    run = start_numbered("--log-max-size", "0")
    reopen = f"{sys.executable} -m tapster ctl reopen --pidfile {run.directory / 'tapster.pid'} >/dev/null"
    rotations = scale(5, 40)
    run_logrotate(run, f"create 0600\npostrotate\n    {reopen}\nendscript\n", rotations)
    run.stop()
    result = account(numbered_files(run.log), run.count)
    record(figures, "logrotate `create` + postrotate `tapster ctl reopen`", run, rotations, result)
    assert result.perfect, result


def appends(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open with O_APPEND (from /proc/PID/fdinfo)."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) == str(path):
                flags = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text().split("flags:")[1].split()[0]
                return bool(int(flags, 8) & os.O_APPEND)
    pytest.fail(f"pid {pid} does not have {path} open")


@needs_logrotate
def test_logrotate_copytruncate(start_numbered: Callable[..., Run], figures: Figures) -> None:
    """logrotate's copytruncate loses only the lines of its copy-to-truncate window, and leaves no NUL hole."""
    run = start_numbered("--log-max-size", "0")
    o_append = appends(run.pid, run.log)
    rotations = scale(8, 80)
    run_logrotate(run, "copytruncate\n", rotations)
    run.stop()
    files = numbered_files(run.log)
    result = account(files, run.count)
    sparse = [p.name for p in files if p.stat().st_blocks * 512 < p.stat().st_size - 4096]
    # Lines logged after logrotate's copy and before its truncate are in neither file: one run of missing
    # numbers per rotation at most. Any other loss (a second gap, a scattered line) would be tapster's fault.
    # A copy may also end in half a line: logrotate read the file while that line was being written, and the
    # truncate took the rest (the line is then one of the lost ones). The live file never ends that way.
    # The writes must use O_APPEND: at the old offset, the first write after the truncate leaves a hole of NULs.
    live_cut = run.log.read_bytes()[-1:] not in (b"", b"\n")
    intact = o_append and not (
        result.duplicated or result.reordered or result.garbled or result.nul_bytes or sparse or live_cut
    )
    worst = max(result.gaps, default=0)
    figures.record(
        f"logrotate `copytruncate`: {run.count:,} lines at {run.rate():,.0f} lines/s, {rotations} rotations",
        f"{result.lost:,} lost in {len(result.gaps)} gaps (at most {worst:,} lines per rotation); "
        f"{result.cut} copies ending in a cut line; {result.duplicated} duplicated, {result.reordered} "
        f"reordered, {result.garbled} garbled, {result.nul_bytes} NUL bytes; O_APPEND: {o_append}",
        "loss only in copytruncate's copy-to-truncate window (<= 1 gap and <= 1 cut line per rotation; "
        "documented); 0 duplicated, reordered, garbled, NUL bytes",
        intact and len(result.gaps) <= rotations and result.cut <= rotations,
    )
    assert o_append, "the log file is not opened with O_APPEND: a copytruncate leaves a hole of NUL bytes"
    assert not sparse, f"sparse files (a write at the old offset after the truncate): {sparse}"
    assert intact, (result, f"live file ends in a cut line: {live_cut}")
    assert len(result.gaps) <= rotations and result.cut <= rotations, result
