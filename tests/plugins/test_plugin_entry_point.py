"""The installable example (examples/entrypoint-plugin): after `pip install`, its plugin appears and runs."""

from __future__ import annotations

import importlib.util
import shutil
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from _plugin_helpers import cache_entries, plugin_rows, python_path

from conftest import EXAMPLES, TapsterProcess, connect, read_all, run_tapster
from tapster._plugin_cache import CACHE_NAME, ENTRY_POINTS


def _can_build_offline() -> bool:
    """Whether this environment can build the example without pip fetching setuptools (build isolation)."""
    try:
        installed = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        return False
    version = tuple(int(part) for part in installed.split(".")[:2] if part.isdigit())
    return version >= (70, 1) or (version >= (61, 0) and importlib.util.find_spec("wheel") is not None)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example distribution, pip-installed into a fresh folder (used through PYTHONPATH)."""
    root = tmp_path_factory.mktemp("entrypoint")
    source = root / "source"
    shutil.copytree(
        EXAMPLES / "entrypoint-plugin", source, ignore=shutil.ignore_patterns("build", "*.egg-info")
    )
    target = root / "site"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    if _can_build_offline():
        command.append("--no-build-isolation")
    result = subprocess.run(
        [*command, "--target", str(target), str(source)], capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        pytest.fail(f"pip install of the example failed:\n{result.stdout}\n{result.stderr}")
    return target


@pytest.fixture
def site(installed: Path, tmp_path: Path) -> Path:
    """A private copy of the installed folder, so a test may change it."""
    copy = tmp_path / "site"
    shutil.copytree(installed, copy)
    return copy


def test_installed_plugin_is_listed_from_its_entry_point(site: Path, tmp_path: Path) -> None:
    """The distribution's tapster.plugins entry point makes `hello` appear in tapster --help."""
    result = run_tapster(["--help"], cwd=tmp_path, env=python_path(site))
    assert result.returncode == 0, result.stderr
    assert "hello Greet each client, then hang up." in plugin_rows(result.stdout)
    cache = cache_entries(site / CACHE_NAME)
    assert list(cache[ENTRY_POINTS]) == ["tapster-hello 0.1.0 hello"]


def test_installed_plugin_runs(tapster: type[TapsterProcess], site: Path, tmp_path: Path) -> None:
    """tapster -n hello --port 0 serves the greeting given on the command line."""
    args = ["-n", "-o", "--pidfile=", "hello", "--port", "0", "-g", "Hi there"]
    proc = tapster(args, cwd=tmp_path, env=python_path(site))
    with connect(proc.port("Greeter")) as sock:
        assert read_all(sock) == b"Hi there\r\n"
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def test_warm_listing_does_not_import_the_installed_plugin(site: Path, tmp_path: Path) -> None:
    """Once cached, --help shows the plugin without importing it (a now-broken module still lists fine)."""
    env = python_path(site)
    run_tapster(["--help"], cwd=tmp_path, env=env)
    module = site / "tapster_hello" / "plugin.py"
    module.write_text("raise RuntimeError('imported!')\n")
    result = run_tapster(["--help"], cwd=tmp_path, env=env)
    assert "hello Greet each client, then hang up." in plugin_rows(result.stdout)
    run = run_tapster(["-n", "hello"], cwd=tmp_path, env=env)
    assert run.returncode == 1
    assert run.stderr.startswith(
        "tapster: plugin hello failed to load: RuntimeError: imported! (entry point hello"
    )
    assert cache_entries(site / CACHE_NAME).get(ENTRY_POINTS, {}) == {}  # retried next time
    result = run_tapster(["--help"], cwd=tmp_path, env=env)
    assert "hello (failed to load: RuntimeError: imported!)" in plugin_rows(result.stdout)


def test_a_new_version_is_read_again(site: Path, tmp_path: Path) -> None:
    """The cache is keyed by distribution name and version: another version is imported and listed anew."""
    env = python_path(site)
    run_tapster(["--help"], cwd=tmp_path, env=env)
    [info] = site.glob("tapster_hello-*.dist-info")
    metadata = info / "METADATA"
    metadata.write_text(metadata.read_text().replace("Version: 0.1.0", "Version: 0.2.0"))
    plugin = site / "tapster_hello" / "plugin.py"
    plugin.write_text(plugin.read_text().replace("Greet each client, then hang up.", "Greets, version 2."))
    result = run_tapster(["--help"], cwd=tmp_path, env=env)
    assert "hello Greets, version 2." in plugin_rows(result.stdout)
    assert list(cache_entries(site / CACHE_NAME)[ENTRY_POINTS]) == ["tapster-hello 0.2.0 hello"]
