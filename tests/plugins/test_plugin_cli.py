"""`tapster PLUGIN [options]` with the real command: listing, per-plugin help, errors, and the examples running."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _plugin_helpers import plugin_folder, plugin_rows, python_path, write_plugin

from conftest import EXAMPLES, TapsterProcess, connect, read_all, run_tapster
from support import wait_gone

POEM = (EXAMPLES / "poetry" / "ecstasy.txt").read_bytes()


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A copy of the examples project root (plugins, myproject, poems), so caches and state files stay out."""
    root = tmp_path / "examples"
    plugins = plugin_folder(root)
    for name in ("fastpoetry_plugin.py", "myproject_plugin.py"):
        shutil.copy(EXAMPLES / "tapster" / "plugins" / name, plugins)
    shutil.copytree(EXAMPLES / "myproject", root / "myproject")
    shutil.copytree(EXAMPLES / "poetry", root / "poetry")
    return root


# -- listing and help ------------------------------------------------------------------------------------------


def test_help_lists_plugins_sorted_after_the_global_options(examples: Path) -> None:
    """tapster --help: the global options first, then each plugin's tapname and description, sorted."""
    write_plugin(plugin_folder(examples), "zzz_first_file", "aaa", "Sorted by name, not by file.")
    result = run_tapster(["--help"], cwd=examples)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.index("--nodaemon") < out.index("Plugins (tapster [options] PLUGIN [plugin options]")
    rows = [row for row in plugin_rows(out) if row.split()[0] in ("aaa", "fastpoetry", "myproject")]
    assert [row.split()[0] for row in rows] == ["aaa", "fastpoetry", "myproject"]
    assert rows[1] == "fastpoetry A fast poetry service."
    raw = [line for line in out.splitlines() if line.startswith(("  fastpoetry ", "  myproject "))]
    assert raw[0].index("A fast") == raw[1].index("Seed 003") > len("  fastpoetry")  # one aligned column


def test_help_groups_built_in_plugins_apart_from_the_projects(examples: Path) -> None:
    """The listing has two groups: tapster's own plugins, then those of plugin folders and packages."""
    out = run_tapster(["--help"], cwd=examples).stdout
    listing = out[out.index("Plugins (tapster") :].splitlines()
    built_in = listing.index(" Built in:")
    project = listing.index(" From plugin folders and installed packages:")
    names = [line.split()[0] for line in listing if line.startswith("  ") and line[2] != " "]
    assert {"manhole", "web", "portforward"} <= set(names)
    assert all(
        built_in < listing.index(f"  {row}") < project for row in _rows_named(listing, "manhole", "web")
    )
    assert all(listing.index(f"  {row}") > project for row in _rows_named(listing, "fastpoetry", "myproject"))


def _rows_named(listing: list[str], *names: str) -> list[str]:
    return [line[2:] for line in listing if line.startswith("  ") and line.split()[0] in names]


def test_bare_tapster_shows_the_help_and_plugins_then_what_is_missing(tmp_path: Path) -> None:
    """Seed 001 runs the command with no arguments to see the plugins: the help, then one line, exit 2."""
    result = run_tapster([], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.rstrip("\n").splitlines()
    assert lines[0].startswith("Usage: tapster [options]") and "--nodaemon" in result.stderr
    assert " Built in:" in lines and any(line.startswith("  manhole ") for line in lines)
    assert " No project plugins found (a NAME_plugin.py beside you: see docs/plugins.md)." in lines
    assert lines[-1].startswith("tapster: error: nothing to run: give -y FILE, -f FILE or a plugin name")
    assert "Traceback" not in result.stderr


def test_bare_tapster_with_a_saved_state_here_runs_it_instead(tmp_path: Path) -> None:
    """As twistd loads twistd.tap: with tapster.tap in the directory, no arguments means run it (no help)."""
    (tmp_path / "tapster.tap").write_bytes(b"not a state file")
    result = run_tapster([], cwd=tmp_path)
    assert result.returncode != 0
    assert "Built in:" not in result.stderr and "tapster.tap" in result.stderr


def test_plugin_help_shows_its_options_defaults_and_description(examples: Path) -> None:
    """tapster fastpoetry --help: its usage, the plugin description and every option with its default."""
    result = run_tapster(["fastpoetry", "--help"], cwd=examples)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("Usage: tapster fastpoetry [options]\n\nA fast poetry service.\n")
    assert "-p, --port=PORT" in out and "[default: 10000]" in out
    assert "--iface=IFACE" in out and "[default: 127.0.0.1]" in out
    assert "--poem=POEM" in out and "poetry/ecstasy.txt]" in out  # the example poem, as an absolute path
    assert "Plugins" not in out


def test_bad_plugin_option_is_a_usage_error_of_the_plugin(examples: Path) -> None:
    """A coercer failure names the plugin and option, prints the plugin's usage, exits 2."""
    result = run_tapster(["-n", "fastpoetry", "--port", "x"], cwd=examples)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "tapster fastpoetry: error: --port: invalid int value 'x'",
        "Usage: tapster fastpoetry [options]",
    ]


def test_post_options_error_exits_2(examples: Path) -> None:
    """A UsageError from the plugin's post_options is reported like any usage error."""
    result = run_tapster(["-n", "fastpoetry", "--poem", "nowhere.txt"], cwd=examples)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == "tapster fastpoetry: error: --poem: no such file: nowhere.txt"


def test_unknown_plugin_suggests_the_closest_name(examples: Path) -> None:
    """A mistyped plugin name: `Unknown command: X. Did you mean Y?`, exit 2."""
    result = run_tapster(["-n", "fastpoety", "--port", "0"], cwd=examples)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith(
        "tapster: error: Unknown command: fastpoety. Did you mean fastpoetry? Plugins found: "
    )
    result = run_tapster(["zzzzzz"], cwd=examples)
    assert result.stderr.splitlines()[0].startswith(
        "tapster: error: Unknown command: zzzzzz. Plugins found: "
    )


def test_positional_application_file_hints_at_y(tmp_path: Path) -> None:
    """A file name where a plugin name goes points at -y."""
    result = run_tapster(["app.tac"], cwd=tmp_path)
    assert result.returncode == 2
    assert "Unknown command: app.tac. To run an application file, use -y app.tac" in result.stderr


def test_global_options_after_the_plugin_name_belong_to_the_plugin(examples: Path) -> None:
    """Plugin options come after the name: a global option there is the plugin's unknown option."""
    result = run_tapster(["fastpoetry", "-n"], cwd=examples)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith("tapster fastpoetry: error: unrecognized option: -n (")


def test_failed_plugin_is_listed_and_running_it_exits_1(examples: Path) -> None:
    """A plugin whose import fails is a listing row with the error; running it prints that error, exit 1."""
    folder = plugin_folder(examples)
    (folder / "broken_plugin.py").write_text("import tapster_no_such_dependency\n")
    result = run_tapster(["--help"], cwd=examples)
    assert result.returncode == 0
    rows = plugin_rows(result.stdout)
    assert rows[0].split() == [
        "broken_plugin",
        "(failed",
        "to",
        "load:",
        "ModuleNotFoundError:",
        "No",
        "module",
        "named",
        "'tapster_no_such_dependency')",
    ]
    assert [row.split()[0] for row in rows[1:]] == ["fastpoetry", "myproject"]
    for name in ("broken", "broken_plugin"):
        result = run_tapster(["-n", name], cwd=examples)
        assert result.returncode == 1
        assert result.stderr == (
            "tapster: plugin broken_plugin failed to load: ModuleNotFoundError: No module named "
            f"'tapster_no_such_dependency' ({folder / 'broken_plugin.py'})\n"
        )


def test_shadowed_plugin_is_marked_in_the_listing(examples: Path, tmp_path: Path) -> None:
    """The same tapname in two folders: the first on the path runs, the listing marks the other."""
    other = tmp_path / "other"
    shadowed = write_plugin(plugin_folder(other), "poetry2", "fastpoetry", "An impostor.")
    result = run_tapster(["--help"], cwd=examples, env=python_path(other))
    text = " ".join(" ".join(plugin_rows(result.stdout)).split())
    winner = examples / "tapster" / "plugins" / "fastpoetry_plugin.py"
    assert "fastpoetry A fast poetry service." in text
    assert f"fastpoetry (shadowed by {winner}) An impostor. [{shadowed}]" in text


def test_make_service_failure_is_one_line(tmp_path: Path) -> None:
    """A make_service that raises: one line naming the plugin, exit 1, no traceback."""
    folder = plugin_folder(tmp_path)
    path = write_plugin(folder, "oops_plugin", "oops")
    path.write_text(path.read_text().replace("return Service()", "raise ValueError('no poem today')"))
    result = run_tapster(["-n", "oops"], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "tapster: plugin oops: make_service failed: ValueError: no poem today\n"


# -- running ---------------------------------------------------------------------------------------------------


def test_fastpoetry_plugin_serves_the_poem_in_the_foreground(
    tapster: type[TapsterProcess], examples: Path
) -> None:
    """tapster -n fastpoetry --port 0 --poem poetry/ecstasy.txt serves the poem and logs like the tac."""
    proc = tapster(
        ["-n", "-o", "--pidfile=", "fastpoetry", "--port", "0", "--poem", "poetry/ecstasy.txt"], cwd=examples
    )
    proc.wait_for(r"\[-\] loaded a poem from: poetry/ecstasy\.txt")
    with connect(proc.port("PoetryProtocol")) as sock:
        assert read_all(sock) == POEM
    proc.wait_for(rf"sending {len(POEM)} bytes of poetry")
    proc.signal(signal.SIGINT)
    status, out, _ = proc.finish()
    assert status == 0 and "Server Shut Down." in out


def test_fastpoetry_from_the_real_examples_folder(tapster: type[TapsterProcess]) -> None:
    """The documented command works as is from examples/ (only the port is changed to a free one)."""
    proc = tapster(
        ["-n", "-o", "--pidfile=", "fastpoetry", "--poem", "poetry/ecstasy.txt", "--port", "0"], cwd=EXAMPLES
    )
    with connect(proc.port("PoetryProtocol")) as sock:
        assert read_all(sock) == POEM
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def test_fastpoetry_from_the_repository_root_with_pythonpath(tapster: type[TapsterProcess]) -> None:
    """PYTHONPATH=examples from the repository root finds the plugin; the poem path is relative to there."""
    proc = tapster(
        ["-n", "-o", "--pidfile=", "fastpoetry", "--poem", "examples/poetry/ecstasy.txt", "--port", "0"],
        cwd=EXAMPLES.parent,
        env=python_path(EXAMPLES),
    )
    with connect(proc.port("PoetryProtocol")) as sock:
        assert read_all(sock) == POEM
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def test_myproject_plugin_imports_the_project_package(tapster: type[TapsterProcess], examples: Path) -> None:
    """Seed 003's layout: the plugin imports myproject from the project root, the working directory."""
    proc = tapster(["-n", "-o", "--pidfile=", "myproject", "-p", "0"], cwd=examples)
    with connect(proc.port("MyFactory")) as sock:
        sock.sendall(b"make my dog happy\r\n")
        assert sock.recv(100) == b"MAKE MY DOG HAPPY\r\n"
        sock.sendall(b"bye\r\n")
        assert read_all(sock) == b""
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def test_console_script_finds_the_project_root_plugins(examples: Path) -> None:
    """The installed `tapster` script (whose sys.path lacks the working directory) still lists them."""
    script = Path(sys.executable).with_name("tapster")
    if not script.exists():
        pytest.skip("no tapster console script next to this interpreter")
    result = subprocess.run(
        [str(script), "myproject", "--help"], cwd=examples, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "Seed 003's example project" in result.stdout


def test_plugin_runs_as_a_daemon_without_n(examples: Path) -> None:
    """Without -n the plugin daemonizes like -y: the launcher returns 0 once it serves; SIGTERM stops it."""
    result = run_tapster(
        ["-o", "--logfile=poetry.log", "--pidfile=poetry.pid", "fastpoetry", "--port", "0"], cwd=examples
    )
    assert result.returncode == 0, result.stderr
    pid = int((examples / "poetry.pid").read_text())
    try:
        log = (examples / "poetry.log").read_text()
        port = int(log.split("PoetryProtocol starting on ")[1].split()[0])
        with connect(port) as sock:
            assert read_all(sock) == POEM
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_gone(pid, 15)


def test_plugins_folder_with_init_is_named_not_silently_skipped(tmp_path: Path) -> None:
    """A tapster/plugins folder holding __init__.py is skipped, and --help and the unknown-name error say why."""
    folder = tmp_path / "tapster" / "plugins"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "counter_plugin.py").write_text("raise RuntimeError('never imported')\n")
    listing = run_tapster(["--help"], cwd=tmp_path)
    assert listing.returncode == 0
    assert f"Ignored {folder}: a plugins folder must not have an __init__.py" in listing.stdout
    unknown = run_tapster(["-n", "counter"], cwd=tmp_path)
    assert unknown.returncode == 2
    assert "Unknown command: counter." in unknown.stderr and "must not have an __init__.py" in unknown.stderr
