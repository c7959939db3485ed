"""ProcessMonitor as a tac file uses it, in this test's own event loop with real children: several programs with
their own environment, directory and user; add and remove while running; named sockets; argument checks."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from conftest import pid_alive
from support import wait_until_async
from tapster.services import ProcessMonitor

T = TypeVar("T")
PY = sys.executable


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await scenario()

    return asyncio.run(main())


def logged(caplog: pytest.LogCaptureFixture, text: str) -> Callable[[], bool]:
    return lambda: any(text in record.getMessage() for record in caplog.records)


def slow_restarts() -> ProcessMonitor:
    """A monitor that restarts nothing during a test (a minute's delay), so each test sees one run."""
    return ProcessMonitor(killtime=1, min_restart_delay=60, max_restart_delay=60)


async def started(monitor: ProcessMonitor) -> None:
    await monitor.privileged_start()
    await monitor.start()


def test_several_programs_with_their_own_env_cwd_and_user(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Each program gets its env (exactly), its directory and its user; its lines carry its own name."""
    caplog.set_level(logging.INFO, "tapster.services.procmon")
    monitor = slow_restarts()
    code = "import os; print(os.environ.get('COLOUR'), os.getcwd(), os.getuid(), 'PATH' in os.environ)"
    monitor.add_process("red", [PY, "-c", code], env={"COLOUR": "red"}, cwd=str(tmp_path))
    # nobody cannot run this venv's python (under /root): a shell says who it is
    monitor.add_process("nobody", ["/bin/sh", "-c", 'echo "$(id -u) $(id -g) $PWD"'], uid="nobody", cwd="/")

    async def scenario() -> None:
        await started(monitor)
        await wait_until_async(logged(caplog, f"[red] red {tmp_path} 0 False"), what="red's line")
        await wait_until_async(logged(caplog, "[nobody] 65534 65534 /"), what="nobody's line")
        await monitor.stop()

    run(scenario)


def test_add_and_remove_while_running(caplog: pytest.LogCaptureFixture) -> None:
    """add_process on a running monitor starts the program; remove_process ends it and does not restart it."""
    caplog.set_level(logging.INFO, "tapster.services.procmon")
    monitor = slow_restarts()

    async def scenario() -> None:
        await started(monitor)
        await monitor.add_process("late", ["/bin/sleep", "300"])
        await wait_until_async(lambda: monitor.pid("late") is not None, what="late started")
        pid = monitor.pid("late")
        assert pid is not None and pid_alive(pid)
        await monitor.remove_process("late")
        assert not pid_alive(pid)
        assert "late" not in monitor.programs
        assert monitor.pid("late") is None
        await monitor.stop()

    run(scenario)
    assert any(
        "[late] pid" in r.getMessage() and "killed by SIGTERM" in r.getMessage() for r in caplog.records
    )


def test_named_sockets_are_passed_in_order(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """``sockets=[(name, endpoint), ...]``: fds 3 and 4 in that order, LISTEN_FDNAMES from the names."""
    caplog.set_level(logging.INFO, "tapster.services.procmon")
    path = tmp_path / "app.sock"
    code = (
        "import os, socket\n"
        "a, b = socket.socket(fileno=3), socket.socket(fileno=4)\n"
        "print(os.environ['LISTEN_FDNAMES'], a.family.name, b.family.name, b.getsockname(), flush=True)\n"
        "conn, _ = a.accept(); conn.sendall(b'from fd 3'); conn.close()\n"
    )
    monitor = slow_restarts()
    monitor.add_process(
        "two",
        [PY, "-c", code],
        sockets=[("web", "tcp:0:interface=127.0.0.1"), ("admin", f"unix:{path}")],
    )

    port = 0

    async def scenario() -> None:
        nonlocal port
        await started(monitor)
        await wait_until_async(logged(caplog, f"[two] web:admin AF_INET AF_UNIX {path}"), what="fd names")
        message = next(r.getMessage() for r in caplog.records if "[two] socket web on" in r.getMessage())
        port = int(message.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.read() == b"from fd 3"
        writer.close()
        await monitor.stop()

    run(scenario)
    assert not path.exists()  # the monitor's unix listener removed its file at stop
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"args": []}, ValueError, "non-empty list"),
        ({"args": "sleep 1"}, ValueError, "non-empty list"),
        ({"args": ["x"], "uid": "no-such-user-here"}, ValueError, "no such user"),
        ({"args": ["x"], "sockets": ["udp:0"]}, ValueError, "plain stream socket"),
        ({"args": ["x"], "sockets": [("a:b", "tcp:0")]}, ValueError, "without ':'"),
    ],
)
def test_add_process_refuses_what_cannot_run(kwargs: dict[str, object], error: type, text: str) -> None:
    """Bad arguments raise at once, naming the program or the value."""
    with pytest.raises(error, match=text):
        ProcessMonitor().add_process("p", **kwargs)  # type: ignore[arg-type]


def test_names_are_unique_and_times_checked() -> None:
    """A second program of one name is refused; negative times and min above max are refused."""
    monitor = ProcessMonitor()
    monitor.add_process("p", ["true"])
    with pytest.raises(KeyError, match="already has a program named 'p'"):
        monitor.add_process("p", ["true"])
    with pytest.raises(KeyError, match="no program named 'q'"):
        monitor.remove_process("q")
    with pytest.raises(ValueError, match="killtime"):
        ProcessMonitor(killtime=-1)
    with pytest.raises(ValueError, match="above max_restart_delay"):
        ProcessMonitor(min_restart_delay=10, max_restart_delay=1)


def test_a_saved_monitor_runs_again(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """A monitor saved in a state file (tapster -f) keeps its programs and settings, and runs them when loaded."""
    from tapster.persist import load_state, save_state
    from tapster.service import Application

    caplog.set_level(logging.INFO, "tapster.services.procmon")
    app = Application("saved")
    monitor = ProcessMonitor(threshold=2, killtime=1, min_restart_delay=60, max_restart_delay=60)
    monitor.add_process("echo", ["/bin/echo", "hello again"], sockets=["tcp:0:interface=127.0.0.1"])
    monitor.set_parent(app)
    state = tmp_path / "saved.tap"
    save_state(app, str(state))
    loaded = load_state(str(state))["ProcessMonitor"]
    assert isinstance(loaded, ProcessMonitor)
    assert (loaded.threshold, loaded.killtime, list(loaded.programs)) == (2, 1, ["echo"])

    async def scenario() -> None:
        await started(loaded)
        await wait_until_async(logged(caplog, "[echo] hello again"), what="the loaded program's line")
        await loaded.stop()

    run(scenario)


@pytest.mark.parametrize("way", ["fast", "wrapper"])
def test_a_program_gets_exactly_its_environment_and_default_signals(
    way: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """env= is the program's whole environment on both ways of starting it: nothing the shell exports (PWD) or
    Python's start adds (LC_CTYPE by C-locale coercion); and no signal is ignored (Python's start ignores
    SIGPIPE and SIGXFSZ, which an exec would carry over). The reporters are env(1) and grep(1), which change
    neither. Found by review."""
    from tapster.services import _procmon_child

    if way == "fast" and _procmon_child._setpriv() is None:
        pytest.skip("util-linux setpriv with --pdeathsig is not installed")
    if way == "wrapper":
        monkeypatch.setattr(_procmon_child, "_fast_launch", lambda *args: None)

    async def output_of(name: str, args: list[str]) -> list[str]:
        child = await _procmon_child.Child.spawn(
            name,
            args,
            env={"ONLY": "this", "PATH": "/usr/bin:/bin"},
            cwd=None,
            uid=None,
            gid=None,
            fds=[],
            fd_names=[],
        )
        async with asyncio.timeout(15):
            await child.exited.wait()
            await asyncio.gather(*(out.done.wait() for out in child.outputs))  # the pipes read to their end
        prefix = f"[{name}] "
        return [
            message[len(prefix) :]
            for message in (record.getMessage() for record in caplog.records)
            if message.startswith(prefix) and "started, pid" not in message and " after " not in message
        ]

    async def scenario() -> tuple[list[str], list[str]]:
        return await output_of("env", ["env"]), await output_of(
            "sig", ["grep", "SigIgn", "/proc/self/status"]
        )

    with caplog.at_level(logging.INFO):
        environment, signals = asyncio.run(scenario())
    assert sorted(environment) == ["ONLY=this", "PATH=/usr/bin:/bin"]
    assert signals == ["SigIgn:\t0000000000000000"]
