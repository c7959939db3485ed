"""--drain-delay with real processes: after SIGTERM the listeners keep serving for the delay, then the usual stop.

A second SIGTERM during the delay skips the rest of it; the shutdown guard's bound includes the delay; systemd
hears ``STATUS=draining`` at once. With ``--workers``: tests/workers/test_workers_drain.py.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import EXAMPLES, connect, run_tapster
from support.sdnotify import NotifyReceiver

ECHO = str(EXAMPLES / "echo.tac")
ENV = {"ECHO_PORT": "0"}
STUCK_TAC = textwrap.dedent(
    """
    import time
    from tapster import Application, Service

    class Stuck(Service):
        async def start(self):
            print("start blocks", flush=True)
            time.sleep(600)

    application = Application("stuck")
    Stuck().set_parent(application)
    """
)
"""A start() that blocks the loop for ten minutes."""

SLACK = 1.5  # a loaded 2-core machine: process start-up and exit on top of the bound

HANGING_STOP_TAC = textwrap.dedent(
    """
    import time
    from tapster import Application, Service

    class Hang(Service):
        async def stop(self):
            print("stop called", flush=True)
            time.sleep(600)  # blocks the loop: only the guard can end this process

    application = Application("hang")
    Hang().set_parent(application)
    """
)


@pytest.fixture
def receiver() -> Iterator[NotifyReceiver]:
    notify = NotifyReceiver()
    yield notify
    notify.close()


def start_ready(tapster, receiver: NotifyReceiver, *args: str):
    """Start tapster and wait for READY=1: a stop signal before it abandons the start, with no drain."""
    proc = tapster(["-n", "--pidfile=", *args], env={**ENV, "NOTIFY_SOCKET": receiver.address})
    receiver.wait_field("READY", "1")
    return proc


def echo_once(port: int, data: bytes = b"hello\n") -> bytes:
    with connect(port) as conn:
        conn.sendall(data)
        answer = b""
        while len(answer) < len(data):
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer


def test_new_connections_are_served_during_the_delay_then_the_stop_drains(tapster, receiver) -> None:
    proc = start_ready(tapster, receiver, "-y", ECHO, "--drain-delay", "3", "--shutdown-timeout", "5")
    port = proc.port()
    held = connect(port)  # open before the signal: drained by the stop after the delay, as without a delay
    held.sendall(b"before\n")
    assert held.recv(100) == b"before\n"
    signalled = time.monotonic()
    proc.signal(signal.SIGTERM)
    proc.wait_for(r"Draining for 3 s \(--drain-delay\)")
    assert echo_once(port, b"during the delay\n") == b"during the delay\n"  # a new connection, accepted
    held.sendall(b"still here\n")
    assert held.recv(100) == b"still here\n"
    held.settimeout(3 + 5 + 2 + SLACK)
    assert held.recv(100) == b""  # the stop's drain closes it gently: end-of-file, no reset
    held.close()
    status, out, err = proc.finish()
    elapsed = time.monotonic() - signalled
    assert status == 0, out + err
    assert 3 <= elapsed < 3 + 5 + 2 + SLACK
    assert "Server Shut Down." in out and "Traceback" not in out + err


def test_a_second_sigterm_skips_the_rest_of_the_delay(tapster, receiver) -> None:
    proc = start_ready(tapster, receiver, "-y", ECHO, "--drain-delay", "600")
    port = proc.port()
    proc.signal(signal.SIGTERM)
    proc.wait_for(r"Draining for 600 s")
    assert echo_once(port) == b"hello\n"
    skipped = time.monotonic()
    proc.signal(signal.SIGTERM)
    status, out, err = proc.finish(timeout=10 + 2 + SLACK)
    assert status == 0, out + err  # a graceful stop, not the forced exit a second signal means otherwise
    assert time.monotonic() - skipped < 10 + 2 + SLACK
    assert "Received SIGTERM again: skipping the rest of the drain delay." in out
    assert "forcing" not in out


def test_the_exit_is_bounded_by_delay_plus_timeout_plus_grace(tapster, receiver, tmp_path: Path) -> None:
    """A stop() that blocks the loop: the guard still ends the process within delay + timeout + 2 s."""
    (tmp_path / "hang.tac").write_text(HANGING_STOP_TAC)
    proc = start_ready(tapster, receiver, "-y", "hang.tac", "--drain-delay", "2", "--shutdown-timeout", "1")
    signalled = time.monotonic()
    proc.signal(signal.SIGTERM)
    status, out, _ = proc.finish(timeout=2 + 1 + 2 + 5)
    elapsed = time.monotonic() - signalled
    assert status == 1
    assert "stop called" in out  # the delay ended, the stop began
    assert "--drain-delay (2 s)" in out  # the forced exit's line names the whole bound
    assert 2 <= elapsed < 2 + 1 + 2 + SLACK, elapsed


def test_a_third_signal_after_a_skipped_delay_forces_the_exit(tapster, receiver, tmp_path: Path) -> None:
    (tmp_path / "hang.tac").write_text(HANGING_STOP_TAC)
    proc = start_ready(
        tapster, receiver, "-y", "hang.tac", "--drain-delay", "600", "--shutdown-timeout", "600"
    )
    proc.signal(signal.SIGTERM)
    proc.wait_for(r"Draining for 600 s")
    proc.signal(signal.SIGTERM)
    proc.wait_for("stop called")
    proc.signal(signal.SIGTERM)
    status, out, _ = proc.finish(timeout=10)
    assert status == 1
    assert "Received SIGTERM again: forcing shutdown." in out


def test_systemd_hears_draining_at_once_then_stopping(tapster, receiver: NotifyReceiver) -> None:
    proc = start_ready(tapster, receiver, "-y", ECHO, "--drain-delay", "600")
    ready = receiver.wait_field("READY", "1")
    proc.signal(signal.SIGTERM)
    draining = receiver.wait_for(
        lambda m: m.fields.get("STATUS", "").startswith("draining") and m.seq > ready.seq, "STATUS=draining"
    )
    assert draining.fields == {"STOPPING": "1", "STATUS": "draining echo (600 s)"}
    proc.wait_for("Draining for 600 s")
    proc.signal(signal.SIGTERM)
    receiver.wait_for(
        lambda m: m.fields.get("STATUS") == "stopping echo" and m.seq > draining.seq, "STATUS=stopping"
    )
    assert proc.finish()[0] == 0


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "86401", "soon"])
def test_a_bad_delay_is_one_usage_line(tmp_path: Path, value: str) -> None:
    result = run_tapster(["-n", "--drain-delay", value, "-y", "x.tac"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("tapster: error: --drain-delay: expected a number of seconds")
    assert "Traceback" not in result.stderr


def test_a_stop_during_start_up_has_no_delay_in_its_bound(tapster, tmp_path: Path) -> None:
    """Nothing routed traffic to a process that never became ready: the bound is timeout + 2 s, not + delay."""
    (tmp_path / "stuck.tac").write_text(STUCK_TAC)
    proc = tapster(["-n", "--pidfile=", "-y", "stuck.tac", "--drain-delay", "600", "--shutdown-timeout", "1"])
    proc.wait_for("start blocks")
    signalled = time.monotonic()
    proc.signal(signal.SIGTERM)
    status, out, _ = proc.finish(timeout=1 + 2 + 10)
    assert status == 1
    assert time.monotonic() - signalled < 1 + 2 + SLACK
    assert "within --shutdown-timeout (1 s) + 2 s" in out  # no drain delay in the bound


def test_stop_signals_can_only_reach_the_main_thread_of_tapsters_own(tapster, tmp_path: Path) -> None:
    """A stop signal sent to the process goes to any thread that does not block it. Taken by the shutdown guard's
    thread, its Python handler waits for the main thread, and a main thread stuck in a blocking call never runs
    it: the process outlived the bound (seen once in a CI run of the test above). The guard's thread blocks
    SIGTERM and SIGINT, so only the main thread can take them; then the bound holds."""
    (tmp_path / "stuck.tac").write_text(STUCK_TAC)
    proc = tapster(["-n", "--pidfile=", "-y", "stuck.tac", "--shutdown-timeout", "1"])
    proc.wait_for("start blocks")
    pid = proc.proc.pid
    masks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        masks[int(tid)] = int(
            next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16
        )
    stop_bits = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1))
    assert len(masks) >= 2, masks  # the main thread and the guard's
    assert masks.pop(pid) & stop_bits == 0  # the main thread takes them
    assert all(mask & stop_bits == stop_bits for mask in masks.values()), masks
    signalled = time.monotonic()
    proc.signal(signal.SIGTERM)
    status, _, _ = proc.finish(timeout=1 + 2 + 10)
    assert status == 1 and time.monotonic() - signalled < 1 + 2 + SLACK
