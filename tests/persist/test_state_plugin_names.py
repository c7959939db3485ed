"""`tapster -f` errors name a plugin's file, never the private module name it is loaded under (real processes).

The states are written by a child process that loads the example fastpoetry plugin the way tapster does and
saves the tree with save_state, so these tests do not depend on which runs save at shutdown.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLES, run_tapster

SAVE = """
import sys
from tapster.plugin import build_application, discover_plugins, make_options
from tapster.persist import save_state

maker = discover_plugins([sys.argv[1]], entry_points=False, use_cache=False).load("fastpoetry")
options = make_options(maker)
options.parse_options(["--port", "0", "--poem", sys.argv[1] + "/poetry/ecstasy.txt"])
save_state(build_application(maker, options), sys.argv[2])
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the examples project with the fastpoetry plugin, and a saved state of it (state.tap)."""
    root = tmp_path / "project"
    (root / "tapster" / "plugins").mkdir(parents=True)
    shutil.copy(EXAMPLES / "tapster" / "plugins" / "fastpoetry_plugin.py", root / "tapster" / "plugins")
    shutil.copytree(EXAMPLES / "poetry", root / "poetry")
    state = root / "state.tap"
    subprocess.run([sys.executable, "-c", SAVE, str(root), str(state)], check=True, timeout=60)
    assert b"_tapster_plugin_" in state.read_bytes().split(b"\n")[1]  # the private name is in the file
    return root


def _error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert "_tapster_plugin_" not in lines[0]
    return lines[0]


def test_state_loaded_from_another_directory_names_the_plugin_file(project: Path, tmp_path: Path) -> None:
    """-f from a directory without the plugin: the line names fastpoetry_plugin.py and says where to run."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    state = shutil.copy(project / "state.tap", elsewhere / "state.tap")
    for extra in ([], ["--trust-state-file"]):
        line = _error(run_tapster(["-n", "-o", "--pidfile=", *extra, "-f", str(state)], cwd=elsewhere))
        assert line.startswith(f"tapster: saved state {state} needs code that cannot be found: ")
        assert "the plugin file fastpoetry_plugin.py" in line
        assert "run tapster from the project root that holds tapster/plugins/fastpoetry_plugin.py" in line


def test_state_naming_a_class_the_plugin_file_lost_names_the_file(project: Path) -> None:
    """The plugin file changed since the save (its class renamed): the line names the class and the file."""
    plugin = project / "tapster" / "plugins" / "fastpoetry_plugin.py"
    plugin.write_text(plugin.read_text().replace("PoetryService", "RenamedService"))
    line = _error(run_tapster(["-n", "-o", "--pidfile=", "-f", "state.tap"], cwd=project))
    assert "PoetryService" in line and f"plugin file {plugin}" in line


def test_refused_plugin_global_is_named_by_its_file(project: Path) -> None:
    """A state whose header omits the plugin module is refused, naming the class and the plugin file."""
    state = project / "state.tap"
    header, modules, body = state.read_bytes().split(b"\n", 2)
    kept = [name for name in modules.split()[1:] if not name.startswith(b"_tapster_plugin_")]
    state.write_bytes(b"\n".join([header, b"modules: " + b" ".join(kept), body]))
    line = _error(run_tapster(["-n", "-o", "--pidfile=", "-f", "state.tap"], cwd=project))
    assert line.startswith("tapster: refusing to load state.tap: it names ")
    assert "(plugin file fastpoetry_plugin.py)" in line
