"""systemd's notify protocol, received on a real AF_UNIX datagram socket from real tapster processes.

STATUS= at start, READY=1 once the listeners accept, RELOADING=1 ... READY=1 around SIGHUP, STOPPING=1 at the
stop signal, WATCHDOG=1 from the event loop (and not from a blocked one), EXTEND_TIMEOUT_USEC= during a slow
start; NOTIFY_SOCKET and WATCHDOG_* are taken out of the environment children see.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import connect
from support.sdnotify import Message, NotifyReceiver
from tapster.runner._sdnotify import status_field, watchdog_usec_for

PROBE = Path(__file__).resolve().parent / "sd_probe.tac"
# Runs the tapster command with WATCHDOG_PID set to its own pid, as systemd does (exec keeps the pid).
OWN_WATCHDOG_PID = ["sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh"]


@pytest.fixture
def receiver() -> Iterator[NotifyReceiver]:
    notify = NotifyReceiver()
    yield notify
    notify.close()


def start_probe(tapster, notify: NotifyReceiver, *args: str, env: dict[str, str] | None = None, prefix=()):
    return tapster(
        ["-n", "-y", str(PROBE), "--pidfile=", *args],
        env={"NOTIFY_SOCKET": notify.address, **(env or {})},
        prefix=prefix,
    )


def probe_report(proc) -> dict[str, object]:
    report: dict[str, object] = json.loads(proc.wait_for(r"^probe (\{.*\})$").group(1))
    return report


def test_lifecycle_status_ready_stopping(tapster, receiver: NotifyReceiver) -> None:
    """starting -> READY=1 (serving, MAINPID) once the port accepts -> STOPPING=1 at SIGTERM; env cleaned."""
    proc = start_probe(tapster, receiver, env={"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"})
    starting = receiver.wait_field("STATUS", "starting probe")
    ready = receiver.wait_field("READY", "1", after=starting)
    assert ready.fields["STATUS"] == "serving probe"
    assert ready.fields["MAINPID"] == str(proc.proc.pid)
    assert probe_report(proc)["child"] == {"env": [], "fds": []}  # NOTIFY_SOCKET, WATCHDOG_* were unset
    with connect(proc.port("Probe")) as conn:  # ready means the port accepts
        conn.sendall(b"x")
        assert conn.recv(10) == b"x"
    proc.signal(signal.SIGTERM)
    stopping = receiver.wait_field("STOPPING", "1", after=ready)
    assert stopping.fields["STATUS"] == "stopping probe"
    assert proc.finish()[0] == 0
    assert [m.fields.get("READY") for m in receiver.messages].count("1") == 1


def test_abstract_notify_socket(tapster) -> None:
    """An '@' address is an abstract socket, as systemd documents."""
    notify = NotifyReceiver(abstract=True)
    try:
        proc = start_probe(tapster, notify)
        notify.wait_field("READY", "1")
        proc.signal(signal.SIGTERM)
        notify.wait_field("STOPPING", "1")
        assert proc.finish()[0] == 0
    finally:
        notify.close()


def test_sighup_is_a_reload_for_notify_reload(tapster, receiver: NotifyReceiver, tmp_path: Path) -> None:
    """SIGHUP (systemd's default ReloadSignal=) sends RELOADING=1 with MONOTONIC_USEC=now, reopens the log,
    then READY=1."""
    log = tmp_path / "tapster.log"
    proc = start_probe(tapster, receiver, "--logfile", str(log))
    ready = receiver.wait_field("READY", "1")
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    proc.signal(signal.SIGHUP)
    reloading = receiver.wait_field("RELOADING", "1", after=ready)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= int(reloading.fields["MONOTONIC_USEC"]) <= after
    assert reloading.fields["STATUS"] == "reopening the log (probe)"
    again = receiver.wait_field("READY", "1", after=reloading)
    assert again.fields["STATUS"] == "serving probe"
    proc.signal(signal.SIGTERM)
    receiver.wait_field("STOPPING", "1", after=again)
    assert proc.finish()[0] == 0
    assert "Log file reopened (SIGHUP)." in log.read_text()


def test_failed_start_says_why(tapster, receiver: NotifyReceiver) -> None:
    """A start that fails leaves its one-line reason as the last STATUS= (what `systemctl status` shows)."""
    description = "systemd:domain=INET:index=0"
    proc = start_probe(tapster, receiver, env={"PROBE_ENDPOINTS": description})
    assert proc.finish()[0] == 1
    failed = receiver.wait_field(
        "STATUS",
        f"failed to start: cannot listen on {description}: no socket passed by "
        "systemd at index 0 (LISTEN_FDS is not set)",
    )
    assert failed.seq == len(receiver.messages) - 1
    assert receiver.with_field("READY") == []


def extend_seconds(message: Message) -> int:
    """The seconds a slow start had taken when it sent this EXTEND_TIMEOUT_USEC= (its status says)."""
    assert message.fields["EXTEND_TIMEOUT_USEC"] == "5000000"
    found = re.fullmatch(r"starting probe \((\d+) s\)", message.fields["STATUS"])
    assert found, message
    return int(found.group(1))


def test_slow_start_extends_the_timeout_and_sighup_waits(tapster, receiver: NotifyReceiver) -> None:
    """A start() that awaits 3 s sends EXTEND_TIMEOUT_USEC= each second; a SIGHUP then is no reload (no
    RELOADING=1, no early READY=1), and none are sent after READY=1."""
    proc = start_probe(tapster, receiver, env={"PROBE_SLOW_START": "3"})
    probe_report(proc)  # the start is under way
    first = receiver.wait_field("EXTEND_TIMEOUT_USEC")
    proc.signal(signal.SIGHUP)
    ready = receiver.wait_field("READY", "1", after=first)
    seconds = [extend_seconds(m) for m in receiver.with_field("EXTEND_TIMEOUT_USEC")]
    assert len(seconds) >= 2 and seconds == sorted(seconds)  # one each second while the loop turns...
    assert (
        seconds[0] < 3
    )  # ...from the first second, not only once the start is over (as when blocked, below)
    assert receiver.with_field("RELOADING") == []
    proc.signal(signal.SIGTERM)
    receiver.wait_field("STOPPING", "1", after=ready)
    assert proc.finish()[0] == 0
    assert all(m.seq < ready.seq for m in receiver.with_field("EXTEND_TIMEOUT_USEC"))
    assert [m.fields.get("READY") for m in receiver.messages].count("1") == 1


def test_blocked_start_does_not_extend(tapster, receiver: NotifyReceiver) -> None:
    """A start() that blocks the loop for 3 s sends no EXTEND_TIMEOUT_USEC= while blocked: any that comes is
    sent after the block (its status says 3 s or more), so systemd's start timeout still runs out on a hang."""
    proc = start_probe(tapster, receiver, env={"PROBE_BLOCK_START": "3"})
    proc.wait_for("^start unblocked$")
    ready = receiver.wait_field("READY", "1")
    assert all(extend_seconds(m) >= 3 for m in receiver.with_field("EXTEND_TIMEOUT_USEC"))
    proc.signal(signal.SIGTERM)
    receiver.wait_field("STOPPING", "1", after=ready)
    assert proc.finish()[0] == 0


def pings(notify: NotifyReceiver) -> list[Message]:
    return notify.with_field("WATCHDOG")


def test_watchdog_pings_from_the_loop_and_stop_while_it_is_blocked(tapster, receiver: NotifyReceiver) -> None:
    """WATCHDOG_USEC=200000 and WATCHDOG_PID=our pid: WATCHDOG=1 every 0.1 s; a handler blocking the loop for
    2 s leaves a gap of about 2 s with no ping (systemd would restart us), and the pings resume after."""
    proc = start_probe(tapster, receiver, env={"WATCHDOG_USEC": "200000"}, prefix=OWN_WATCHDOG_PID)
    proc.wait_for(r"systemd watchdog: WATCHDOG=1 every 0\.1 s\.")
    ready = receiver.wait_field("READY", "1")
    third = receiver.wait_for(lambda m: len(pings(receiver)) >= 3 and m.seq > ready.seq, "3 pings")
    with connect(proc.port("Probe")) as conn:
        conn.sendall(b"block 2")
        proc.wait_for("^blocking the loop for 2.0 s$")
        proc.wait_for("^unblocked$")
        assert conn.recv(10) == b"block 2"
    unblocked = time.monotonic()
    receiver.wait_for(lambda m: "WATCHDOG" in m.fields and m.at > unblocked, "a ping after the block")
    times = [m.at for m in pings(receiver) if m.seq >= third.seq]  # the block may start right after the third
    gaps = [(later - earlier, earlier) for earlier, later in itertools.pairwise(times)]
    longest, since = max(gaps)
    assert longest >= 1.5, gaps
    assert since < unblocked  # the gap is the block, not some later pause
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("200000", None, True),  # WATCHDOG_PID unset: the watchdog is ours
        ("200000", "1", False),  # meant for another process
        ("0", None, False),
        ("soon", None, False),
    ],
)
def test_watchdog_only_when_meant_for_us(
    tapster, receiver: NotifyReceiver, usec: str, pid: str | None, expected: bool
) -> None:
    """Pings only with a positive WATCHDOG_USEC and WATCHDOG_PID unset or ours; else none in 1 s (10 periods)."""
    env = {"WATCHDOG_USEC": usec, **({"WATCHDOG_PID": pid} if pid else {})}
    proc = start_probe(tapster, receiver, env=env)
    ready = receiver.wait_field("READY", "1")
    if expected:
        receiver.wait_for(lambda m: len(pings(receiver)) >= 3, "3 pings")
    else:
        deadline = ready.at + 1.0
        while time.monotonic() < deadline:
            assert pings(receiver) == []
            time.sleep(0.05)
        assert pings(receiver) == []
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def test_status_field_is_one_line() -> None:
    """A name with a line break cannot forge a second field."""
    assert status_field("serving a\nREADY=1") == "STATUS=serving a READY=1"


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [("30000000", None, 30000000), ("30000000", "42", 30000000), ("30000000", "43", None), ("", None, None)],
)
def test_watchdog_usec_for(usec: str, pid: str | None, expected: int | None) -> None:
    assert watchdog_usec_for(usec, pid, 42) == expected
