"""Helpers shared by test modules (tests/runner, tests/log): waiting on conditions, forked children, log handlers.

Waiting is always on a condition with a deadline, never a fixed sleep: the suite runs in parallel on a busy
machine, so a test that sleeps "long enough" is either slow or flaky.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tapster.log import RotatingFileHandler

REPO = Path(__file__).resolve().parent.parent.parent
PERSIST_FIXTURES = str(REPO / "tests" / "persist")

T = TypeVar("T")

__all__ = [
    "PERSIST_FIXTURES",
    "Plain",
    "cpu_seconds",
    "emit",
    "fd_is_open",
    "make_handler",
    "make_state",
    "one_line",
    "run_in_child",
    "run_on_loop",
    "taken_port",
    "wait_for_match",
    "wait_for_text",
    "wait_gone",
    "wait_until",
    "wait_until_async",
]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fd_is_open(fd: int) -> bool:
    """Whether descriptor ``fd`` is open in this process."""
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def run_on_loop(scenario: Callable[[], Awaitable[T]], loop: str = "asyncio", timeout: float = 15) -> T:
    """Run an async scenario on a fresh event loop of the given kind ("asyncio" or "uvloop"), within ``timeout``."""

    async def main() -> T:
        async with asyncio.timeout(timeout):
            return await scenario()

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    return asyncio.run(main())


def wait_until(predicate: Callable[[], object], timeout: float = 15, what: str = "condition") -> None:
    """Poll ``predicate`` every 10 ms until it is true; fail the test naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} not met within {timeout} s")
        time.sleep(0.01)


async def wait_until_async(
    predicate: Callable[[], object], timeout: float = 15, what: str = "condition"
) -> None:
    """``wait_until`` inside a running loop: poll every millisecond without blocking the loop the tests drive."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.001)


def wait_for_match(path: Path, pattern: str, timeout: float = 20) -> re.Match[str]:
    """Wait until the file at ``path`` has a match for ``pattern`` (a daemon writes each log line at once)."""
    content = ""
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text(errors="replace") if path.exists() else ""
        if match := re.search(pattern, content):
            return match
        if time.monotonic() >= deadline:
            pytest.fail(f"{pattern!r} not in {path}:\n{content or '(no file)'}")
        time.sleep(0.01)


def wait_for_text(path: Path, text: str, timeout: float = 10) -> str:
    """Wait until the file at ``path`` contains ``text``; return all the file holds."""
    return wait_for_match(path, re.escape(text), timeout).string


def wait_gone(pid: int, timeout: float = 10) -> None:
    """Wait until ``pid`` has exited (a zombie counts as gone)."""
    from conftest import pid_alive

    wait_until(lambda: not pid_alive(pid), timeout, f"pid {pid} gone")


def run_in_child(func: Callable[[], object], *, user: str | None = None) -> object:
    """Run ``func`` in a forked child; return its result, or the child's exception re-raised here.

    For what changes a whole process for good (switching ids, chroot) without changing the test's own. With
    ``user``, the child becomes that user first (forking keeps the interpreter: ``nobody`` could not exec the
    venv's python under /root, 0700).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            try:
                if user is not None:
                    import pwd

                    entry = pwd.getpwnam(user)
                    os.setgroups([])
                    os.setgid(entry.pw_gid)
                    os.setuid(entry.pw_uid)
                payload: tuple[str, object] = ("ok", func())
            except BaseException as exc:
                payload = ("err", exc)
            with os.fdopen(write_end, "wb") as out:
                try:
                    pickle.dump(payload, out)
                except Exception:  # an exception that does not pickle: send what it said
                    pickle.dump(("err", AssertionError(f"the child failed: {payload[1]!r}")), out)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        data = inp.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "err":
        raise value  # type: ignore[misc]
    return value


def make_state(directory: Path, name: str = "counting.tap") -> str:
    """Save tests/persist/statefixtures.build() as ``name`` in ``directory`` (a -f state file); return the name."""
    script = f"import statefixtures as f, tapster.persist as p; p.save_state(f.build(), {name!r})"
    env = {**os.environ, "PYTHONPATH": PERSIST_FIXTURES}
    subprocess.run([sys.executable, "-c", script], cwd=directory, env=env, check=True)
    return name


class Plain(logging.Formatter):
    """The bare message, so that sizes in the log tests are easy to count."""

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


def make_handler(opened: list[RotatingFileHandler], path: Path, **kwargs: object) -> RotatingFileHandler:
    """A RotatingFileHandler at ``path`` with the Plain format, closed with the test (conftest's ``opened``)."""
    handler = RotatingFileHandler(str(path), **kwargs)  # type: ignore[arg-type]
    handler.setFormatter(Plain())
    opened.append(handler)
    return handler


def emit(handler: logging.Handler, message: str) -> None:
    handler.handle(logging.makeLogRecord({"msg": message, "levelno": logging.INFO, "levelname": "INFO"}))


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A loopback TCP port that another socket listens on while the block runs (for "port in use" tests)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def one_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The single stderr line of a command that failed with ``status`` (the usage line aside, no traceback)."""
    assert result.returncode == status, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("Usage: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed EC key and certificate for localhost and 127.0.0.1 in ``folder``; skips the test without
    a working ``openssl`` command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not available")
    key, cert = folder / "key.pem", folder / "cert.pem"
    command = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {result.stderr.strip()}")
    return key, cert
