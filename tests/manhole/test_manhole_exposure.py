"""Who can reach a manhole: anonymous access off loopback is refused (unless allowed), and warnings reach both
the terminal and the log. Nothing here binds off loopback: the refusal comes before any bind, and the warnings
given with the override are tested through the decision function and check_exposure(), which binds nothing."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from tapster import Application
from tapster.auth import AnonymousChecker, InMemoryChecker
from tapster.endpoints import parse_server
from tapster.errors import StartupError
from tapster.manhole import ManholeService
from tapster.manhole._service import exposure

OFF_LOOPBACK = [
    "tcp:0:interface=0.0.0.0",
    "tcp:0",
    "tcp6:0",
    "tcp:0:interface=10.1.2.3",
    "tcp6:0:interface=\\:\\:",
]
LOCAL = [
    "tcp:0:interface=127.0.0.1",
    "tcp6:0:interface=\\:\\:1",
    "unix:/tmp/x.sock",
    "tcp:0:interface=127.9.9.9",
]


@pytest.mark.parametrize("endpoint", OFF_LOOPBACK)
def test_anonymous_off_loopback_is_refused(endpoint: str):
    """anonymous on an address others can reach: a refusal naming the endpoint and the override."""
    refusal, warnings = exposure(
        [("ssh", parse_server(endpoint))], anonymous=True, allow_remote_anonymous=False
    )
    assert refusal is not None and "--allow-remote-anonymous" in refusal and endpoint in refusal
    assert warnings == []


@pytest.mark.parametrize("endpoint", OFF_LOOPBACK)
def test_anonymous_off_loopback_with_the_override_is_a_warning(endpoint: str):
    """With allow_remote_anonymous it starts, with a warning that anyone may run code."""
    refusal, warnings = exposure(
        [("ssh", parse_server(endpoint))], anonymous=True, allow_remote_anonymous=True
    )
    assert refusal is None
    assert len(warnings) == 1 and "lets anyone in" in warnings[0]


@pytest.mark.parametrize("endpoint", LOCAL)
def test_local_endpoints_need_no_warning(endpoint: str):
    """Loopback and unix sockets: no refusal, no warning, even for anonymous telnet."""
    listeners = [("ssh", parse_server(endpoint)), ("telnet", parse_server(endpoint))]
    assert exposure(listeners, anonymous=True, allow_remote_anonymous=False) == (None, [])


def test_password_telnet_off_loopback_is_only_warned_about():
    """Telnet with passwords off loopback starts, with the clear-text warning; SSH gets none."""
    listeners = [("ssh", parse_server("tcp:0")), ("telnet", parse_server("tcp:0"))]
    refusal, warnings = exposure(listeners, anonymous=False, allow_remote_anonymous=False)
    assert refusal is None
    assert len(warnings) == 1 and "clear text" in warnings[0]


def test_warnings_go_to_the_terminal_and_the_log(capsys, caplog):
    """The override's warning is printed on stderr when the service is made and logged when it starts
    (check_exposure is the first thing privileged_start does, before binding; called alone here)."""
    manhole = ManholeService(
        ssh="tcp:0:interface=0.0.0.0", checkers=[AnonymousChecker()], allow_remote_anonymous=True
    )
    assert "tapster: warning: manhole on tcp:0:interface=0.0.0.0 lets anyone in" in capsys.readouterr().err
    with caplog.at_level(logging.WARNING):
        manhole.check_exposure()
    assert "lets anyone in (anonymous, allowed by --allow-remote-anonymous)" in caplog.text


def test_refusal_comes_before_binding(tmp_path: Path):
    """privileged_start refuses before any listener is bound: nothing is listening afterwards."""
    app = Application("x")
    manhole = ManholeService(
        ssh="tcp:0:interface=0.0.0.0", checkers=[AnonymousChecker()], host_key=tmp_path / "k"
    )
    manhole.set_parent(app)
    with pytest.raises(StartupError, match="--allow-remote-anonymous"):
        asyncio.run(app.privileged_start())
    assert manhole.ssh is not None and manhole.ssh.server is None


def test_cli_refuses_anonymous_off_loopback(tmp_path: Path):
    """`tapster manhole --ssh tcp:0:interface=0.0.0.0 --auth anonymous`: one line, exit 1, nothing bound."""
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "tapster", "-n", "--pidfile=", "manhole", "--ssh",
         "tcp:0:interface=0.0.0.0", "--auth", "anonymous"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--allow-remote-anonymous" in lines[0], done.stderr
    assert "starting on" not in done.stdout
    assert "--allow-remote-anonymous" in done.stdout  # and the log says why it did not start


def test_password_manhole_off_loopback_is_not_refused():
    """Only anonymous access is refused: a password manhole on 0.0.0.0 is the operator's choice."""
    manhole = ManholeService(ssh="tcp:0:interface=0.0.0.0", checkers=[InMemoryChecker({"a": "b"})])
    manhole.check_exposure()
