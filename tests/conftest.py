"""Shared fixtures: start real tapster processes and wait for what they say, never for a fixed time."""

from __future__ import annotations

import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
TAPSTER = [sys.executable, "-m", "tapster"]


class TapsterProcess:
    """A running ``tapster`` command whose stdout lines are collected as they come."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        cwd: Path,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
    ) -> None:
        """``prefix`` runs before the tapster command (a wrapper that execs it); ``pass_fds`` are inherited."""
        self.args = [*prefix, *TAPSTER, *args]
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            self.args,
            cwd=cwd,
            env=full_env,
            pass_fds=pass_fds,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 15) -> re.Match[str]:
        """Wait until a stdout line matches ``pattern`` (a regex); fail with everything seen so far."""
        regex = re.compile(pattern)
        for line in self.lines:
            if match := regex.search(line):
                return match
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                line = ""
                if remaining <= 0:
                    pytest.fail(
                        f"no line matching {pattern!r} within {timeout}s; got:\n" + "\n".join(self.lines)
                    )
            if line is None:
                self.proc.wait()
                err = self.proc.stderr.read() if self.proc.stderr else ""
                pytest.fail(
                    f"tapster exited ({self.proc.returncode}) before {pattern!r}; stdout:\n"
                    + "\n".join(self.lines)
                    + f"\nstderr:\n{err}"
                )
            if line:
                self.lines.append(line)
                if match := regex.search(line):
                    return match

    def port(self, label: str = "") -> int:
        """The port from a ``LABEL starting on PORT`` line."""
        return int(self.wait_for(rf"{re.escape(label)}\S* starting on (\d+)").group(1))

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 15) -> tuple[int, str, str]:
        """Wait for exit; return (status, all stdout, stderr)."""
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line:
                self.lines.append(line)
        err = self.proc.stderr.read() if self.proc.stderr else ""
        return self.proc.returncode, "\n".join(self.lines), err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def tapster(tmp_path: Path) -> Iterator[type[TapsterProcess]]:
    """Start tapster processes (cwd: a temp dir by default); any left running are killed at the end."""
    started: list[TapsterProcess] = []

    class Started(TapsterProcess):
        def __init__(
            self,
            args: Sequence[str],
            *,
            cwd: Path | None = None,
            env: dict[str, str] | None = None,
            prefix: Sequence[str] = (),
            pass_fds: Sequence[int] = (),
        ) -> None:
            super().__init__(args, cwd=cwd or tmp_path, env=env, prefix=prefix, pass_fds=pass_fds)
            started.append(self)

    yield Started
    for process in started:
        process.kill()


def run_tapster(
    args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run a tapster command to completion (for commands that return: errors, help, a daemon launch)."""
    return subprocess.run(
        [*TAPSTER, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def connect(port: int, host: str = "127.0.0.1", timeout: float = 10) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as gone (this container's init may never reap daemons)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def opened() -> Iterator[list[Any]]:
    """Log handlers a test opens (support.make_handler), closed at its end."""
    handlers: list[Any] = []
    yield handlers
    for handler in handlers:
        handler.close()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A root-owned 0755 directory under /tmp that every user may enter (pytest's tmp_path sits in 0700 parents).

    For tests that run something as ``nobody`` (an attacker planting a file, a daemon after dropping privileges).
    """
    path = Path(tempfile.mkdtemp(prefix="tapster-shared-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
