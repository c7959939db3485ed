"""twistd's runner behaviours tapster adopts (issue 13): empty --logfile, profiler names, which runs save state."""

from __future__ import annotations

import signal
from pathlib import Path

from conftest import EXAMPLES, run_tapster

FASTPOETRY = str(EXAMPLES / "fastpoetry.tac")
PLUGIN_ENV = {"PYTHONPATH": str(EXAMPLES)}


def test_empty_logfile_in_the_foreground_is_stdout(tapster, tmp_path: Path) -> None:
    """`-n --logfile=` logs to stdout, as twistd does; no ./tapster.log is created."""
    proc = tapster(["-n", "--logfile=", "--pidfile=", "-y", FASTPOETRY], env={"FASTPOETRY_PORT": "0"})
    proc.port("PoetryProtocol")
    proc.signal(signal.SIGTERM)
    status, out, err = proc.finish()
    assert status == 0, err
    assert "Server Shut Down." in out
    assert not (tmp_path / "tapster.log").exists()


def test_profiler_names_are_case_insensitive(tapster, tmp_path: Path) -> None:
    """`--profiler=cProfile` is accepted (twistd compares names case-insensitively) and writes a report."""
    proc = tapster(
        ["-n", "--pidfile=", "--profile", "prof.txt", "--profiler", "cProfile", "-y", FASTPOETRY],
        env={"FASTPOETRY_PORT": "0"},
    )
    proc.port("PoetryProtocol")
    proc.signal(signal.SIGTERM)
    status, _, err = proc.finish()
    assert status == 0, err
    assert "function calls" in (tmp_path / "prof.txt").read_text()


def test_plugin_run_saves_no_state_unless_asked(tapster, tmp_path: Path) -> None:
    """A plugin run writes no NAME-shutdown.tap (twistd saves only -f runs); --save asks for one."""
    plain = tapster(["-n", "--pidfile=", "fastpoetry", "--port", "0"], env=PLUGIN_ENV)
    plain.port("PoetryProtocol")
    plain.signal(signal.SIGTERM)
    status, out, err = plain.finish()
    assert status == 0, err
    assert not (tmp_path / "fastpoetry-shutdown.tap").exists()
    assert "Saved application state" not in out
    saving = tapster(["-n", "--pidfile=", "--save", "fastpoetry", "--port", "0"], env=PLUGIN_ENV)
    saving.port("PoetryProtocol")
    saving.signal(signal.SIGTERM)
    status, out, err = saving.finish()
    assert status == 0, err
    assert (tmp_path / "fastpoetry-shutdown.tap").exists(), out


def test_save_and_no_save_together_is_a_usage_error(tmp_path: Path) -> None:
    """--save with -o contradicts itself: exit 2, one line."""
    result = run_tapster(["--save", "-o", "-y", FASTPOETRY], cwd=tmp_path)
    assert result.returncode == 2
    assert "give only one of --save and -o/--no_save" in result.stderr
