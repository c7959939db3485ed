"""The deployment examples in examples/deploy/ say what they mean: each number agrees with the command line in it.

The Kubernetes manifest is parsed (PyYAML), not grepped; the systemd template goes through
``systemd-analyze verify``; each command line goes through tapster's own option parser.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO
from tapster.errors import UsageError
from tapster.runner import ServerOptions
from tapster.runner._guard import GRACE

DEPLOY = REPO / "examples" / "deploy"


def options_of(args: Sequence[str]) -> dict[str, str]:
    """``--name value`` pairs of a tapster command line (flags map to "")."""
    found: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" in arg:
            name, _, value = arg.partition("=")
            found[name] = value
        elif arg.startswith("-") and i + 1 < len(args) and not args[i + 1].startswith("-") and arg != "-n":
            found[arg] = args[i + 1]
            i += 1
        else:
            found[arg] = ""
        i += 1
    return found


def status_port(endpoint: str) -> int:
    match = re.fullmatch(r"tcp:(\d+)(:.*)?", endpoint)
    assert match, f"--status {endpoint!r} is not a tcp endpoint with a port"
    return int(match.group(1))


def parses(args: Sequence[str]) -> ServerOptions:
    """The command line as tapster itself reads it; skipped where --status is not an option of this tapster yet."""
    options = ServerOptions("tapster")
    try:
        options.parse_options(list(args))
    except UsageError as exc:
        if "--status" in args and "status" in str(exc):
            pytest.skip(f"this tapster has no --status yet (issue 12, item 1): {exc}")
        raise
    return options


# -- Kubernetes ----------------------------------------------------------------------------------------------


def manifest() -> list[dict[str, Any]]:
    with (DEPLOY / "kubernetes.yaml").open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def container() -> tuple[dict[str, Any], dict[str, Any]]:
    (deployment,) = [doc for doc in manifest() if doc["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (app,) = pod["containers"]
    return pod, app


def test_the_probes_ask_the_status_port_on_the_right_paths() -> None:
    _, app = container()
    assert app["command"] == ["tapster"]
    opts = options_of(app["args"])
    port = status_port(opts["--status"])
    named = {p["name"]: p["containerPort"] for p in app["ports"]}
    assert named["status"] == port
    assert app["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert app["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert app["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        target = app[probe]["httpGet"]["port"]
        assert named.get(target, target) == port, probe
    # the kubelet probes the pod's address, not its loopback
    assert "interface=0.0.0.0" in opts["--status"] or "interface=::" in opts["--status"]
    env = {e["name"]: e["value"] for e in app["env"]}
    assert named["app"] == int(env["APP_PORT"])


def test_the_grace_period_outlasts_drain_and_stop() -> None:
    pod, app = container()
    opts = options_of(app["args"])
    drain, stop = float(opts["--drain-delay"]), float(opts["--shutdown-timeout"])
    assert pod["terminationGracePeriodSeconds"] > drain + stop + GRACE
    readiness = app["readinessProbe"]
    # the pod fails readiness (and leaves the endpoints) well before its listeners close
    assert drain > readiness["periodSeconds"] * readiness["failureThreshold"]
    assert app["livenessProbe"]["timeoutSeconds"] > float(opts["--health-timeout"])
    assert "lifecycle" not in app  # no preStop sleep: --drain-delay does it
    assert app["resources"]["requests"] and app["resources"]["limits"]["memory"]


def test_the_manifests_command_line_is_one_tapster_accepts() -> None:
    _, app = container()
    options = parses(app["args"])
    assert options["drain-delay"] == 10 and options["shutdown-timeout"] == 20
    assert options["nodaemon"] and options["log-format"] == "json"


def test_the_dockerfile_runs_as_a_non_root_user_with_json_logs_and_a_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim$", text, re.M)
    assert re.search(r"^USER app$", text, re.M)
    cmd = _json_instruction(text, "CMD")
    opts = options_of(cmd)
    assert "-n" in cmd and opts["--log-format"] == "json"
    port = status_port(opts["--status"])
    health = _json_instruction(text, r"HEALTHCHECK [^\n]*\\\n\s*CMD")
    assert f"http://127.0.0.1:{port}/healthz" in health[-1]
    # docker stop's default 10 s covers tapster's whole bound
    assert float(opts.get("--drain-delay", "0")) + float(opts["--shutdown-timeout"]) + GRACE < 10
    parses(cmd)


def test_the_manifest_runs_as_the_images_user() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    uid = int(re.search(r"useradd [^\n]*--uid (\d+)", text).group(1))  # type: ignore[union-attr]
    gid = int(re.search(r"groupadd [^\n]*--gid (\d+)", text).group(1))  # type: ignore[union-attr]
    pod, app = container()
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": gid}
    assert app["args"][-1] == "/srv/app/app.tac" and "/srv/app/app.tac" in text
    assert uid != 0


def _json_instruction(text: str, keyword: str) -> list[str]:
    match = re.search(rf"^{keyword} (\[.*?\])$", text, re.M | re.S)
    assert match, keyword
    value: list[str] = yaml.safe_load(match.group(1).replace("\\\n", " "))  # JSON is YAML
    return value


# -- systemd ---------------------------------------------------------------------------------------------------


def unit_exec_start(instance: str) -> list[str]:
    text = (DEPLOY / "app@.service").read_text().replace("%i", instance)
    match = re.search(r"^ExecStart=(.*?[^\\])$", text, re.M | re.S)
    assert match
    return shlex.split(match.group(1).replace("\\\n", " "))


def test_the_template_puts_the_instance_in_port_pid_and_log_paths() -> None:
    argv = unit_exec_start("8001")
    opts = options_of(argv[1:])
    assert opts["--pidfile"] == "/run/app/8001/tapster.pid"
    assert opts["--logfile"] == "/var/log/app/8001.log"
    assert status_port(opts["--status"]) == 18001
    text = (DEPLOY / "app@.service").read_text()
    assert "Environment=APP_PORT=%i" in text and "RuntimeDirectory=app/%i" in text
    stop = float(re.search(r"^TimeoutStopSec=(\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert stop > float(opts["--drain-delay"]) + float(opts["--shutdown-timeout"]) + GRACE
    parses(argv[1:])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_template(tmp_path: Path) -> None:
    """systemd's own parser, on an instance whose ExecStart points at this tapster."""
    tapster = Path(sys.executable).with_name("tapster")
    text = (DEPLOY / "app@.service").read_text().replace("/opt/app/venv/bin/tapster", str(tapster))
    unit = tmp_path / "app@8001.service"
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in result.stderr.splitlines() if "app@8001.service" in line]
    assert result.returncode == 0 and not problems, result.stderr
