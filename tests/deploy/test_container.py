"""examples/deploy/Dockerfile, built and run for real where a container runtime answers (docker or podman).

Skipped with the reason otherwise: no runtime, its daemon not running, the base image not reachable, or a tapster
without ``--status`` (the image's health check asks it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from conftest import REPO
from tapster.runner import ServerOptions

DOCKERFILE = REPO / "examples" / "deploy" / "Dockerfile"
BASE = "python:3.12-slim"


def _runtime() -> tuple[str | None, str]:
    """The first runtime that answers ``info``, or None and why not."""
    reasons = []
    for name in ("docker", "podman"):
        path = shutil.which(name)
        if path is None:
            reasons.append(f"no {name}")
            continue
        try:
            info = subprocess.run([path, "info"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            reasons.append(f"{name} info: {exc}")
            continue
        if info.returncode == 0:
            return path, ""
        last = (info.stderr.strip().splitlines() or ["failed"])[-1]
        reasons.append(f"{name} info: {last}")
    return None, "; ".join(reasons)


def _has_status_option() -> bool:
    return "--status" in ServerOptions("tapster").format_help()


RUNTIME, WHY_NOT = _runtime()
pytestmark = [
    pytest.mark.skipif(RUNTIME is None, reason=f"no container runtime answers: {WHY_NOT}"),
    pytest.mark.skipif(
        not _has_status_option(), reason="the image's HEALTHCHECK needs --status (issue 12, item 1)"
    ),
    pytest.mark.timeout(900),
]


def run(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert RUNTIME is not None
    result = subprocess.run([RUNTIME, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{RUNTIME} {' '.join(args)}: {result.stderr.strip()}")
    return result


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    pulled = run("pull", BASE, timeout=600, check=False)
    if pulled.returncode != 0:
        pytest.skip(f"cannot pull {BASE}: {pulled.stderr.strip()[-200:]}")
    tag = f"tapster-deploy-test:{os.getpid()}"
    run("build", "-f", str(DOCKERFILE), "-t", tag, str(REPO), timeout=900)
    yield tag
    run("rmi", "-f", tag, check=False)


def host_port(container: str, port: int) -> int:
    mapping = run("port", container, f"{port}/tcp").stdout.split()[0]
    return int(mapping.rsplit(":", 1)[1])


def inspect(container: str, template: str) -> str:
    return run("inspect", "--format", template, container).stdout.strip()


def test_the_image_serves_reports_healthy_and_stops_cleanly(image: str) -> None:
    container = run("run", "-d", "-p", "127.0.0.1::8080", "-p", "127.0.0.1::8081", image).stdout.strip()
    try:
        port = host_port(container, 8080)
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                    conn.sendall(b"ping\n")
                    if conn.recv(10) == b"ping\n":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, run("logs", container).stdout
            time.sleep(0.2)
        assert run("exec", container, "id", "-u").stdout.strip() == "10001"  # not root
        pid1 = run("exec", container, "cat", "/proc/1/cmdline").stdout.split("\0")
        assert "tapster" in pid1[0] or "tapster" in " ".join(pid1)
        deadline = time.monotonic() + 60
        while inspect(container, "{{.State.Health.Status}}") != "healthy":
            assert time.monotonic() < deadline, inspect(container, "{{json .State.Health}}")
            time.sleep(0.5)
        stopping = time.monotonic()
        run("stop", "--time", "20", container, timeout=60)
        assert time.monotonic() - stopping < 7 + 2 + 3  # --shutdown-timeout 7 + the 2 s bound, with slack
        assert inspect(container, "{{.State.ExitCode}}") == "0"
        records = [json.loads(line) for line in run("logs", container).stdout.splitlines() if line.strip()]
        text = json.dumps(records)
        assert "-n implied" in text and "Server Shut Down." in text
    finally:
        run("rm", "-f", container, check=False)
