"""--status ENDPOINT in a real tapster process: /healthz, /readyz, /metrics, bad requests, and bad options."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, cast

import pytest

from conftest import TapsterProcess, connect, run_tapster
from status_http import get, metrics, value, wait_status
from support import wait_until

APP = Path(__file__).with_name("status_app.py")


def start(
    tapster: type[TapsterProcess], *extra: str, env: dict[str, str] | None = None
) -> tuple[TapsterProcess, int]:
    """Run the app with --status on a free loopback port; return the process and the status port."""
    process = tapster(["-n", "-o", "--pidfile=", "--status", "tcp:0", *extra, "-y", str(APP)], env=env)
    return process, process.port("status")


def start_ready(tapster: type[TapsterProcess], *extra: str) -> tuple[TapsterProcess, int]:
    """As start(), once the whole tree has started (/readyz answers 200)."""
    process, port = start(tapster, *extra)
    wait_status(port, "/readyz", 200)
    return process, port


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_endpoints_answer_and_metrics_parse(tapster: type[TapsterProcess], loop: str) -> None:
    """/healthz and /readyz answer 200 on a started tree; prometheus_client's parser reads /metrics."""
    process, port = start_ready(tapster, "--reactor", loop)
    echo = process.port("echo")
    assert get(port, "/healthz")[:2] == (200, b"ok\n")
    code, body, headers = get(port, "/readyz")
    assert code == 200
    assert headers["Content-Type"].startswith("application/json")
    ready = json.loads(body)
    assert ready["ready"] is True
    assert {"service": "statusapp/echo", "state": "running"} in ready["services"]
    assert {"service": "statusapp/gated", "state": "running"} in ready["services"]
    clients = [connect(echo) for _ in range(3)]
    for client in clients:
        client.sendall(b"x")
        assert client.recv(1) == b"x"
    clients[0].close()
    for _ in range(100):  # the close reaches the server's loop asynchronously
        families = metrics(port)
        if value(families["tapster_listener_connections_open"], service="statusapp/echo") == 2:
            break
        time.sleep(0.05)
    assert value(families["tapster_listener_connections_open"], service="statusapp/echo") == 2
    assert value(families["tapster_listener_connections_accepted"], service="statusapp/echo") == 3
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds"):
        assert families[name][0].value > 0
    assert "process_cpu_seconds" in families
    assert value(families["tapster_ready"]) == 1
    assert value(families["tapster_service_state"], service="statusapp/echo", state="running") == 1
    assert value(families["tapster_service_state"], service="statusapp/echo", state="stopping") == 0
    assert value(families["tapster_log_records"], level="INFO") >= 3
    assert (
        value(families["myapp_jobs_done"]) == 3
    )  # a service's own metric, through tapster.metrics.registry()
    assert "tapster_drain_started_timestamp_seconds" not in families
    for client in clients[1:]:
        client.close()
    process.signal(signal.SIGTERM)
    assert process.finish()[0] == 0


def test_unknown_paths_and_methods(tapster: type[TapsterProcess]) -> None:
    """Unknown paths answer 404; methods other than GET and HEAD answer 405 with Allow; HEAD has no body."""
    _, port = start_ready(tapster)
    for path in ("/", "/healthz/", "/metricsx", "/../etc/passwd"):
        assert get(port, path)[0] == 404, path
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        code, _, headers = get(port, "/healthz", method=method)
        assert code == 405, method
        assert headers["Allow"] == "GET, HEAD"
    code, body, headers = get(port, "/metrics", method="HEAD")
    assert (code, body) == (200, b"")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl(tapster: type[TapsterProcess]) -> None:
    """curl, what probes and people use: --fail succeeds on /healthz and /readyz, fails on a 404."""
    _, port = start_ready(tapster)
    base = f"http://127.0.0.1:{port}"
    for path in ("/healthz", "/readyz", "/metrics"):
        done = subprocess.run(["curl", "-sS", "--fail", base + path], capture_output=True, timeout=30)
        assert done.returncode == 0, (path, done.stderr)
    assert b"tapster_ready 1.0" in done.stdout
    missing = subprocess.run(["curl", "-sS", "--fail", base + "/nope"], capture_output=True, timeout=30)
    assert missing.returncode == 22  # curl's "HTTP error" with --fail


def test_readiness_follows_start_and_stop(tapster: type[TapsterProcess], tmp_path: Path) -> None:
    """/readyz: 503 while a slow start() runs, 200 once the tree has started, 503 during a slow stop()."""
    gates = tmp_path / "gates"
    gates.mkdir()
    process, port = start(tapster, env={"STATUS_GATES": str(gates)})
    process.port("blocker")  # the services before the gated one have started
    code, body, _ = get(port, "/readyz")
    assert code == 503
    starting = json.loads(body)
    assert starting["phase"] == "starting"
    assert {"service": "statusapp", "state": "starting"} in starting["services"]
    assert {"service": "statusapp/echo", "state": "running"} in starting["services"]
    assert {"service": "statusapp/gated", "state": "starting"} in starting["services"]
    assert {"service": "statusapp/jobs", "state": "starting"} in starting["services"]
    assert get(port, "/healthz")[0] == 200  # alive, just not ready
    (gates / "start").touch()
    json.loads(wait_status(port, "/readyz", 200))
    process.signal(signal.SIGTERM)
    wait_status(port, "/readyz", 503)

    def readyz() -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(get(port, "/readyz")[1]))

    # the echo listener's stop takes a few loop turns (it lets the last accepted connections be tracked):
    # wait for it to end, while the gated service is still held in its stop()
    echo_stopped = {"service": "statusapp/echo", "state": "stopped"}
    wait_until(lambda: echo_stopped in readyz()["services"], 10, "the echo listener stopped")
    stopping = readyz()
    assert stopping["phase"] == "stopping"
    assert {"service": "statusapp/gated", "state": "stopping"} in stopping["services"]
    families = metrics(port)
    assert value(families["tapster_ready"]) == 0
    assert value(families["tapster_phase"], phase="stopping") == 1
    assert families["tapster_stop_started_timestamp_seconds"][0].value > 0
    (gates / "stop").touch()
    assert process.finish()[0] == 0


def test_blocked_loop_fails_healthz(tapster: type[TapsterProcess]) -> None:
    """A handler that blocks the loop past --health-timeout: /healthz fails during the block, 200 after."""
    process, port = start_ready(tapster, "--health-timeout", "0.5")
    blocker = connect(process.port("blocker"), timeout=30)
    blocker.sendall(b"3")
    process.wait_for("blocking the loop for 3.0 s")
    failed = False
    try:
        code, _, _ = get(port, "/healthz", timeout=1.0)
        failed = code == 503
    except OSError:  # no answer within the probe's timeout: the loop is blocked
        failed = True
    assert failed
    assert blocker.recv(10) == b"done\n"
    wait_status(port, "/healthz", 200, timeout=5)
    blocker.close()


def test_port_in_use_is_one_line_and_nothing_starts(tapster: type[TapsterProcess], tmp_path: Path) -> None:
    """A --status port in use: one line on stderr, exit 1, and no service of the tree started."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_tapster(["-n", "-o", "--pidfile=", "--status", str(port), "-y", str(APP)], cwd=tmp_path)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"tapster: --status: cannot listen on tcp:{port}:interface=127.0.0.1")
    assert "Traceback" not in done.stderr + done.stdout
    assert "echo starting on" not in done.stdout
    assert "extras imported" not in done.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--status", "udp:9999"], "stream endpoint"),
        (["--status", "tcpp:1"], "tcpp"),
        (["--status", "tcp:0", "--health-timeout", "0"], "health-timeout"),
    ],
)
def test_bad_options_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    """A bad --status or --health-timeout value: a usage error naming it, exit 2."""
    done = run_tapster(["-n", "-o", "--pidfile=", *args, "-y", str(APP)], cwd=tmp_path)
    assert done.returncode == 2, done
    assert (
        needle in done.stderr.splitlines()[0]
    )  # the error line (the usage line follows, as for any usage error)
    assert "Traceback" not in done.stderr


def _listening_addresses(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hexport = local.partition(":")
            if state == "0A" and int(hexport, 16) == port:
                found.add(address)
    return found


def test_bare_port_listens_on_loopback_only(tapster: type[TapsterProcess]) -> None:
    """--status tcp:0 (no interface) binds 127.0.0.1, not every address."""
    _, port = start(tapster)
    assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1 in /proc's byte order


def test_core_does_not_import_extras_without_status(tapster: type[TapsterProcess]) -> None:
    """Without --status, aiohttp and prometheus_client are not imported; with it they are (at its start)."""
    without = tapster(["-n", "-o", "--pidfile=", "-y", str(APP)])
    assert without.wait_for(r"extras imported: (.*)").group(1) == "[]"
    with_status, _ = start(tapster)
    assert "aiohttp" in with_status.wait_for(r"extras imported: (.*)").group(1)


def test_huge_and_slow_requests_are_bounded(tapster: type[TapsterProcess]) -> None:
    """A request line or header past the limits is refused; a client that never finishes its request is cut off."""
    process, port = start_ready(tapster)
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).split(b" ")[1] == b"400"
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(500))
        )
        sock.sendall(b"\r\n")
        assert sock.recv(100).split(b" ")[1] == b"400"
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and nothing more, ever
        began = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server
        assert time.monotonic() - began < 15
    assert get(port, "/healthz")[0] == 200
    process.signal(signal.SIGTERM)
    assert process.finish()[0] == 0


@pytest.mark.parametrize("module", ["prometheus_client", "aiohttp"])
def test_missing_extra_is_one_line_naming_it(tmp_path: Path, module: str) -> None:
    """--status without the metrics extra installed: one line naming the extra to install, exit 1."""
    from test_missing_extras import hidden, one_line

    done = run_tapster(
        ["-n", "-o", "--pidfile=", "--status", "tcp:0", "-y", str(APP)],
        cwd=tmp_path,
        env=hidden(tmp_path, module),
    )
    line = one_line(done, 1)
    assert "--status needs" in line
    assert line.endswith("(pip install 'tapster[metrics]')")


def test_readyz_fails_during_the_drain_delay_while_listeners_serve(tapster: type[TapsterProcess]) -> None:
    """--drain-delay: from SIGTERM /readyz answers 503 (draining) while the echo listener still serves."""
    process, port = start_ready(tapster, "--drain-delay", "30")
    echo = process.port("echo")
    process.signal(signal.SIGTERM)
    process.wait_for("Draining for 30 s")
    code, body, _ = get(port, "/readyz")
    assert code == 503
    answer = json.loads(body)
    assert (answer["phase"], answer["draining"]) == ("running", True)
    with connect(echo) as client:  # still accepting and serving
        client.sendall(b"x")
        assert client.recv(1) == b"x"
    assert metrics(port)["tapster_drain_started_timestamp_seconds"][0].value > 0
    process.signal(signal.SIGTERM)  # a second signal skips the rest of the delay
    assert process.finish()[0] == 0
