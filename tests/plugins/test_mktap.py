"""`tapster mktap PLUGIN [options]` (seed 002): build a plugin's application, save it, run it later with -f."""

from __future__ import annotations

import os
import shutil
import signal
import stat
from pathlib import Path

import pytest
from _plugin_helpers import plugin_folder, write_plugin

from conftest import EXAMPLES, TapsterProcess, connect, read_all, run_tapster

POEM = (EXAMPLES / "poetry" / "ecstasy.txt").read_bytes()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The examples' fastpoetry plugin and poem in a directory of their own (the .tap files land here)."""
    root = tmp_path / "project"
    shutil.copy(EXAMPLES / "tapster" / "plugins" / "fastpoetry_plugin.py", plugin_folder(root))
    shutil.copytree(EXAMPLES / "poetry", root / "poetry")
    return root


def test_mktap_saves_the_plugin_application_and_f_runs_it(
    tapster: type[TapsterProcess], project: Path
) -> None:
    """The seed's workflow: mktap writes fastpoetry.tap (0600, nothing run), tapster -f serves from it."""
    result = run_tapster(["mktap", "fastpoetry", "--port", "0", "--poem", "poetry/ecstasy.txt"], cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "Saved the fastpoetry application to fastpoetry.tap; run it with: tapster -f fastpoetry.tap\n"
    )
    saved = project / "fastpoetry.tap"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert saved.read_bytes().startswith(b"TAPSTER-STATE 2")
    assert not (project / "tapster.pid").exists() and not (project / "tapster.log").exists()  # not run

    proc = tapster(["-n", "--pidfile=", "-o", "-f", "fastpoetry.tap"], cwd=project)
    with connect(proc.port("PoetryProtocol")) as sock:
        assert read_all(sock) == POEM
    proc.signal(signal.SIGTERM)
    status, out, _ = proc.finish()
    assert status == 0 and "Server Shut Down." in out


def test_mktap_output_replaces_a_planted_link_instead_of_following_it(project: Path) -> None:
    """--output names the file; a symbolic link planted there is replaced, its target left as it was."""
    target = project / "precious"
    target.write_text("keep me\n")
    (project / "out.tap").symlink_to(target)
    result = run_tapster(["mktap", "--output", "out.tap", "fastpoetry", "--port", "0"], cwd=project)
    assert result.returncode == 0, result.stderr
    assert target.read_text() == "keep me\n"
    assert not (project / "out.tap").is_symlink()
    assert (project / "out.tap").read_bytes().startswith(b"TAPSTER-STATE 2")


@pytest.mark.parametrize(
    ("argv", "first_line"),
    [
        (["mktap"], "tapster mktap: error: give the plugin to build: tapster mktap PLUGIN [plugin options]"),
        (["mktap", "-n", "fastpoetry"], "tapster mktap: error: unrecognized option: -n"),
        (
            ["mktap", "fastpoetry", "--port", "x"],
            "tapster mktap fastpoetry: error: --port: invalid int value 'x'",
        ),
        (["mktap", "nosuchplugin"], "tapster mktap: error: Unknown command: nosuchplugin. Plugins found: "),
    ],
)
def test_mktap_bad_command_lines_are_usage_errors(project: Path, argv: list[str], first_line: str) -> None:
    result = run_tapster(argv, cwd=project)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith(first_line)
    assert "Traceback" not in result.stderr
    assert not list(project.glob("*.tap"))


def test_mktap_of_an_application_that_cannot_be_pickled_is_one_line_and_no_file(tmp_path: Path) -> None:
    """A service holding something unpicklable: one line naming it, exit 1, no file and no temporary left."""
    folder = plugin_folder(tmp_path)
    write_plugin(folder, "lambda_plugin", "holdslambda", extra="HELD = lambda: None\n")
    source = (folder / "lambda_plugin.py").read_text()
    (folder / "lambda_plugin.py").write_text(
        source.replace(
            "return Service()", "service = Service()\n        service.held = HELD\n        return service"
        )
    )
    assert "service.held = HELD" in (folder / "lambda_plugin.py").read_text()
    result = run_tapster(["mktap", "holdslambda"], cwd=tmp_path)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("tapster: cannot save state to holdslambda.tap")
    assert [
        name for name in os.listdir(tmp_path) if name.endswith(".tap") or name.startswith(".tapster-state")
    ] == []
