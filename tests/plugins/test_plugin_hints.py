"""What `tapster NAME` says when NAME is no plugin, and a project-root tapster/__init__.py (real processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _plugin_helpers import plugin_folder, write_plugin

from conftest import run_tapster

SCRIPT = Path(sys.executable).parent / "tapster"  # the console script: `python -m tapster` cannot run here


def _script(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def _first_line(stderr: str) -> str:
    return stderr.splitlines()[0]


def test_unknown_command_in_the_wrong_directory_names_folders_and_plugins(tmp_path: Path) -> None:
    """Run from a directory without tapster/plugins/: the line names that directory, where tapster looked
    and what it found (the built-in manhole), so the user sees they are in the wrong place."""
    result = run_tapster(["fastpoetry"], cwd=tmp_path)
    assert result.returncode == 2
    line = _first_line(result.stderr)
    assert line.startswith("tapster: error: Unknown command: fastpoetry. Plugins found: ")
    assert "manhole" in line.split("Plugins found: ")[1].split(".")[0]
    assert f"the working directory {tmp_path} has no tapster/plugins/ folder" in line
    assert "Searched the tapster/plugins/ folders on sys.path (" in line
    assert "/tapster/plugins" in line.split("sys.path (")[1].split(")")[0]  # the built-in folder
    assert "tapster.plugins entry points" in line
    assert "Traceback" not in result.stderr


def test_unknown_command_keeps_the_suggestion_and_lists_the_project_folder(tmp_path: Path) -> None:
    """In a project root: did-you-mean first, then the plugins found and the project's folder among those
    searched; nothing about a missing folder."""
    folder = plugin_folder(tmp_path)
    write_plugin(folder, "poetry_plugin", "fastpoetry")
    result = run_tapster(["fastpoety"], cwd=tmp_path)
    assert result.returncode == 2
    line = _first_line(result.stderr)
    assert line.startswith(
        "tapster: error: Unknown command: fastpoety. Did you mean fastpoetry? Plugins found: fastpoetry, "
    )
    assert str(folder) in line
    assert "has no tapster/plugins/ folder" not in line


def test_project_root_tapster_init_is_refused_with_one_clear_line(tmp_path: Path) -> None:
    """tapster/__init__.py in a project root (the docs forbid it; it breaks `python -m tapster`): the plugins
    there are not read (the module is never imported), and --help and `tapster NAME` name the file and say
    what to do."""
    folder = plugin_folder(tmp_path)
    init = tmp_path / "tapster" / "__init__.py"
    init.write_text("")
    (folder / "poetry_plugin.py").write_text("raise RuntimeError('never imported')\n")
    listing = _script(["--help"], tmp_path)
    assert listing.returncode == 0, listing.stderr
    note = [line for line in listing.stdout.splitlines() if "Ignored" in line]
    assert len(note) == 1
    assert f"Ignored {folder}: {init} makes tapster/ a package that hides the installed tapster" in note[0]
    assert "delete it" in note[0]
    assert "never imported" not in listing.stdout + listing.stderr
    unknown = _script(["poetry"], tmp_path)
    assert unknown.returncode == 2
    line = _first_line(unknown.stderr)
    assert line.startswith("tapster: error: Unknown command: poetry.")
    assert f"{init} makes tapster/ a package" in line and "python -m tapster" in line
    assert "Traceback" not in unknown.stderr
    # what the message warns of: python -m tapster there runs the project's empty package instead
    assert run_tapster(["--help"], cwd=tmp_path).returncode != 0


def test_unknown_plugin_error_from_the_library_says_the_same(tmp_path: Path) -> None:
    """Plugins.load (used by tests of plugins) explains an unknown name the same way."""
    from tapster.errors import PluginError
    from tapster.plugin import discover_plugins

    write_plugin(plugin_folder(tmp_path), "poetry_plugin", "fastpoetry")
    plugins = discover_plugins([str(tmp_path)], entry_points=False, use_cache=False)
    try:
        plugins.load("fastpoety")
    except PluginError as exc:
        message = str(exc)
    else:  # pragma: no cover
        raise AssertionError("no error")
    assert message.startswith(
        "unknown plugin 'fastpoety'. Did you mean fastpoetry? Plugins found: fastpoetry"
    )
    assert str(tmp_path / "tapster" / "plugins") in message
    assert "entry points" not in message
