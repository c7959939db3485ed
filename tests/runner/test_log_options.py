"""Log destinations chosen on the command line, end to end: --syslog without a syslog, --logger."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest

from conftest import EXAMPLES, run_tapster
from support import wait_for_text


@pytest.mark.skipif(os.path.exists("/dev/log"), reason="a syslog socket exists here")
def test_syslog_without_a_syslog_daemon_is_one_line(tmp_path: Path) -> None:
    """--syslog on a machine with no /dev/log says so in one line, exit 1, before anything starts."""
    result = run_tapster(["-y", str(EXAMPLES / "echo.tac"), "--syslog"], cwd=tmp_path, env={"ECHO_PORT": "0"})
    assert result.returncode == 1
    assert result.stderr.strip() == "tapster: no syslog socket at /dev/log: is a syslog daemon running?"
    assert not (tmp_path / "tapster.pid").exists()


def test_logger_factory_takes_precedence(tapster, tmp_path: Path) -> None:
    """--logger module.factory installs the handler it returns, instead of stdout or a file."""
    (tmp_path / "mylog.py").write_text(
        textwrap.dedent("""
        import logging

        def make():
            handler = logging.FileHandler("custom.log")
            handler.setFormatter(logging.Formatter("CUSTOM %(levelname)s %(message)s"))
            return handler
    """)
    )
    proc = tapster(
        ["-n", "-y", str(EXAMPLES / "echo.tac"), "--pidfile=", "--logger", "mylog.make"],
        env={"ECHO_PORT": "0", "PYTHONPATH": str(tmp_path)},
    )
    log = tmp_path / "custom.log"
    wait_for_text(log, "starting on", 15)  # readiness: the line in the log
    proc.signal(signal.SIGTERM)
    status, out, _ = proc.finish()
    assert status == 0
    assert "Server Shut Down." not in out  # nothing went to stdout
    assert "CUSTOM INFO Server Shut Down." in log.read_text()


def test_bad_logger_factory_is_one_line(tmp_path: Path) -> None:
    """An unimportable --logger is named in one line, exit 1."""
    result = run_tapster(
        ["-n", "-y", str(EXAMPLES / "echo.tac"), "--logger", "no_such_mod.make"],
        cwd=tmp_path,
        env={"ECHO_PORT": "0"},
    )
    assert result.returncode == 1
    assert "no_such_mod.make" in result.stderr.splitlines()[0]
    assert "Traceback" not in result.stderr
