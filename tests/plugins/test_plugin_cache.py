"""The plugin cache: warm listings import nothing, changes and failures are noticed, writes are safe."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _plugin_helpers import cache_entries, cache_header, plugin_folder, plugin_rows, python_path, write_plugin

from conftest import run_tapster
from tapster._plugin_cache import CACHE_NAME, MODULES, FolderCache


def listing(cwd: Path, markers: Path, env: dict[str, str] | None = None) -> list[str]:
    """`tapster --help` in ``cwd``, with plugin modules reporting their import into ``markers``."""
    result = run_tapster(["--help"], cwd=cwd, env={"PLUGIN_MARKERS": str(markers), **(env or {})})
    assert result.returncode == 0, result.stderr
    return plugin_rows(result.stdout)


def imported(markers: Path) -> list[str]:
    """Which plugin modules were imported since the last call, once per import (and forget them)."""
    names = []
    for path in markers.iterdir():
        names += [path.name] * len(path.read_text().splitlines())
        path.unlink()
    return sorted(names)


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    folder = tmp_path / "markers"
    folder.mkdir()
    return folder


def test_warm_help_imports_no_unchanged_plugin_module(tmp_path: Path, markers: Path) -> None:
    """The first --help imports each module and writes the cache; the next imports none and prints the listing
    stored then."""
    project = tmp_path / "project"
    folder = plugin_folder(project)
    write_plugin(folder, "alpha_plugin", "alpha", "First plugin.")
    write_plugin(folder, "beta_plugin", "beta", "Second plugin.")
    cold = listing(project, markers)
    assert imported(markers) == ["alpha_plugin", "beta_plugin"]
    assert (folder / CACHE_NAME).is_file()
    warm = listing(project, markers)
    assert imported(markers) == []
    assert warm == cold == ["alpha First plugin.", "beta Second plugin."]
    # A warm run prints the listing stored in the first folder's cache: a marker put into it shows.
    cache = folder / CACHE_NAME
    head, rest = cache.read_text().split("\n", 1)
    cache.write_text(head.replace("First plugin.", "First plugin (stored).") + "\n" + rest)
    assert listing(project, markers) == ["alpha First plugin (stored).", "beta Second plugin."]
    assert imported(markers) == []


def test_changed_module_is_imported_again(tmp_path: Path, markers: Path) -> None:
    """A module whose size or mtime changed is re-imported, and only that one."""
    project = tmp_path / "project"
    folder = plugin_folder(project)
    write_plugin(folder, "alpha_plugin", "alpha", "First plugin.")
    beta = write_plugin(folder, "beta_plugin", "beta", "Second plugin.")
    listing(project, markers)
    imported(markers)
    write_plugin(folder, "beta_plugin", "beta", "Second plugin, improved.")
    assert listing(project, markers)[1] == "beta Second plugin, improved."
    assert imported(markers) == ["beta_plugin"]
    stat = beta.stat()
    os.utime(beta, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # same size, new mtime
    listing(project, markers)
    assert imported(markers) == ["beta_plugin"]


def test_new_and_removed_modules(tmp_path: Path, markers: Path) -> None:
    """A new file is imported and listed; a deleted one disappears from the listing and the cache."""
    project = tmp_path / "project"
    folder = plugin_folder(project)
    old = write_plugin(folder, "old_plugin", "old")
    listing(project, markers)
    old.unlink()
    write_plugin(folder, "new_plugin", "new")
    assert [row.split()[0] for row in listing(project, markers)] == ["new"]
    cached = cache_entries(folder / CACHE_NAME)[MODULES]
    assert sorted(cached) == ["new_plugin.py"]


def help_text(cwd: Path, markers: Path) -> str:
    """The whole output of `tapster --help` in ``cwd``."""
    result = run_tapster(["--help"], cwd=cwd, env={"PLUGIN_MARKERS": str(markers)})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_every_change_to_a_folder_is_seen_by_the_next_help(tmp_path: Path, markers: Path) -> None:
    """The stored listing is used only while every module file has the name, size and mtime it was built from."""
    project = tmp_path / "project"
    folder = plugin_folder(project)
    alpha = write_plugin(folder, "alpha_plugin", "alpha", "First plugin.")
    write_plugin(folder, "beta_plugin", "beta", "Second plugin.")
    bytecode = {"PYTHONDONTWRITEBYTECODE": ""}  # written, so that a stale .pyc would show
    listing(project, markers, bytecode)
    listing(project, markers, bytecode)
    assert (folder / "__pycache__").is_dir()
    # an edit that keeps the size and the mtime's second (only the nanoseconds differ), which Python's own
    # bytecode cache cannot tell apart: the plugin's .pyc is checked against the source's hash instead
    before = alpha.stat()
    write_plugin(folder, "alpha_plugin", "alpha", "Fir5t plugin.")
    assert alpha.stat().st_size == before.st_size
    os.utime(alpha, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    assert int(alpha.stat().st_mtime) == int(before.st_mtime)
    assert listing(project, markers, bytecode) == ["alpha Fir5t plugin.", "beta Second plugin."]
    # a file renamed away from a plugin name and back: the same files and stamps, but not in between
    hidden = folder / "alpha-plugin.py.off"
    alpha.rename(hidden)
    assert listing(project, markers) == ["beta Second plugin."]
    hidden.rename(alpha)
    assert listing(project, markers) == ["alpha Fir5t plugin.", "beta Second plugin."]
    # renamed, keeping its place among the files and its stamp: shown where a shadowed row names the file
    twin = write_plugin(folder, "beta_twin_plugin", "beta", "Second plugin.")
    assert f"[{twin}]" in help_text(project, markers)
    renamed = twin.rename(folder / "beta_twin2_plugin.py")
    assert f"[{renamed}]" in help_text(project, markers)
    renamed.unlink()
    # added and removed
    write_plugin(folder, "gamma_plugin", "gamma", "Third plugin.")
    assert listing(project, markers) == ["alpha Fir5t plugin.", "beta Second plugin.", "gamma Third plugin."]
    (folder / "beta_plugin.py").unlink()
    assert listing(project, markers) == ["alpha Fir5t plugin.", "gamma Third plugin."]
    imported(markers)
    assert listing(project, markers) == ["alpha Fir5t plugin.", "gamma Third plugin."]
    assert imported(markers) == []


def test_a_plugin_folder_that_appears_is_listed(tmp_path: Path, markers: Path) -> None:
    """A listing stored without a project folder is not used once the working directory has one."""
    project = tmp_path / "project"
    project.mkdir()
    assert listing(project, markers) == []
    assert listing(project, markers) == []
    write_plugin(plugin_folder(project), "alpha_plugin", "alpha", "First plugin.")
    assert listing(project, markers) == ["alpha First plugin."]


def test_failure_is_never_cached(tmp_path: Path, markers: Path) -> None:
    """A plugin failing on a missing dependency appears once the dependency exists; nobody deletes the cache."""
    project = tmp_path / "project"
    folder = plugin_folder(project)
    write_plugin(folder, "good_plugin", "good")
    write_plugin(folder, "needy_plugin", "needy", "Needs a library.", extra="import tapster_test_late_dep\n")
    deps = tmp_path / "deps"
    deps.mkdir()
    env = python_path(deps)
    rows = listing(project, markers, env)
    assert rows[1].split(None, 1) == [
        "needy_plugin",
        "(failed to load: ModuleNotFoundError: No module named 'tapster_test_late_dep')",
    ]
    rows_again = listing(project, markers, env)
    assert rows_again == rows
    assert imported(markers) == ["good_plugin", "needy_plugin", "needy_plugin"]  # the failure is retried
    (deps / "tapster_test_late_dep.py").write_text("")
    assert listing(project, markers, env) == ["good A test plugin.", "needy Needs a library."]
    assert imported(markers) == ["needy_plugin"]
    listing(project, markers, env)
    assert imported(markers) == []


def test_plugin_that_breaks_after_being_cached_reports_and_leaves_the_cache(
    tmp_path: Path, markers: Path
) -> None:
    """Running a cached plugin whose dependency vanished fails with its error (exit 1) and drops its entry."""
    project = tmp_path / "project"
    folder = plugin_folder(project)
    deps = tmp_path / "deps"
    deps.mkdir()
    (deps / "tapster_test_fragile_dep.py").write_text("")
    write_plugin(folder, "fragile_plugin", "fragile", extra="import tapster_test_fragile_dep\n")
    env = python_path(deps)
    listing(project, markers, env)
    (deps / "tapster_test_fragile_dep.py").unlink()
    result = run_tapster(["-n", "fragile"], cwd=project, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith(
        "tapster: plugin fragile failed to load: ModuleNotFoundError: No module named 'tapster_test_fragile_dep'"
    )
    assert "fragile_plugin.py" not in cache_entries(folder / CACHE_NAME).get(MODULES, {})
    assert "failed to load" in listing(project, markers, env)[0]


def test_unwritable_folder_means_no_cache_and_no_error(tmp_path: Path, markers: Path) -> None:
    """When the cache cannot be written, --help still lists everything (importing each time), silently."""
    project = tmp_path / "project"
    folder = plugin_folder(project)
    write_plugin(folder, "alpha_plugin", "alpha")
    (folder / CACHE_NAME).mkdir()  # a directory where the file should go: unwritable even for root
    for _ in range(2):
        result = run_tapster(["--help"], cwd=project, env={"PLUGIN_MARKERS": str(markers)})
        assert result.returncode == 0 and result.stderr == ""
        assert plugin_rows(result.stdout) == ["alpha A test plugin."]
        assert imported(markers) == ["alpha_plugin"]
    assert sorted(path.name for path in folder.iterdir() if path.name != "__pycache__") == [
        CACHE_NAME,
        "alpha_plugin.py",
    ]


def test_a_later_folder_without_cache_is_covered_by_the_stored_listing(tmp_path: Path, markers: Path) -> None:
    """A plugin folder after the first whose cache cannot be written (tapster's own in a system-wide install) is
    keyed by its snapshot: warm runs import nothing from it, and an edit to it is still seen."""
    project = tmp_path / "project"
    write_plugin(plugin_folder(project), "alpha_plugin", "alpha", "First plugin.")
    shared = plugin_folder(tmp_path / "shared")
    beta = write_plugin(shared, "beta_plugin", "beta", "Second plugin.")
    (shared / CACHE_NAME).mkdir()  # unwritable even for root
    env = python_path(tmp_path / "shared")
    assert listing(project, markers, env) == ["alpha First plugin.", "beta Second plugin."]
    assert imported(markers) == ["alpha_plugin", "beta_plugin"]
    assert listing(project, markers, env) == ["alpha First plugin.", "beta Second plugin."]
    assert imported(markers) == []
    before = beta.stat()
    write_plugin(shared, "beta_plugin", "beta", "Second plugin, edited.")
    os.utime(beta, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    assert listing(project, markers, env) == ["alpha First plugin.", "beta Second plugin, edited."]
    assert imported(markers) == ["beta_plugin"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to a read-only folder")
def test_read_only_folder_means_no_cache(tmp_path: Path, markers: Path) -> None:
    """A read-only plugin folder (a system install) works, without a cache."""
    project = tmp_path / "project"
    folder = plugin_folder(project)
    write_plugin(folder, "alpha_plugin", "alpha")
    folder.chmod(0o555)
    try:
        assert listing(project, markers) == ["alpha A test plugin."]
        assert not (folder / CACHE_NAME).exists()
    finally:
        folder.chmod(0o755)


def test_corrupt_or_foreign_cache_is_ignored_and_rewritten(tmp_path: Path, markers: Path) -> None:
    """Garbage, another format, or a wrong entry in the cache only means the module is imported again."""
    project = tmp_path / "project"
    folder = plugin_folder(project)
    write_plugin(folder, "alpha_plugin", "alpha")
    cache = folder / CACHE_NAME
    older = json.dumps({"format": 2, MODULES: {"alpha_plugin.py": [0, 0, []]}})
    for content in ["{not json", json.dumps({"format": 999}), json.dumps([1, 2]), older, "{}\n{}\n"]:
        cache.write_text(content)
        assert listing(project, markers) == ["alpha A test plugin."]
        assert imported(markers) == ["alpha_plugin"]
        assert cache_header(cache)["format"] == 3
    listing(project, markers)
    assert imported(markers) == []
    # entries edited by hand beside their header, malformed or well-formed: the header no longer vouches for them
    for record in (["maker", 3, "A test plugin."], ["maker", "alpha", "Forged."]):
        head, body, _ = cache.read_text().split("\n")
        data = json.loads(body)
        data[MODULES]["alpha_plugin.py"][2] = [record]
        cache.write_text(f"{head}\n{json.dumps(data)}\n")
        assert listing(project, markers) == ["alpha A test plugin."]
        assert imported(markers) == ["alpha_plugin"]


def test_y_and_version_never_scan_plugins(tmp_path: Path, markers: Path) -> None:
    """Startup: -y FILE (even a failing one) and --version import no plugin and write no cache."""
    folder = plugin_folder(tmp_path)
    write_plugin(folder, "alpha_plugin", "alpha")
    for args in (["-n", "-y", "missing.tac"], ["--version"], ["-n", "-y", "missing.tac", "--pidfile="]):
        run_tapster(args, cwd=tmp_path, env={"PLUGIN_MARKERS": str(markers)})
    assert imported(markers) == []
    assert not (folder / CACHE_NAME).exists()


def test_running_a_plugin_imports_only_that_module(tmp_path: Path, markers: Path) -> None:
    """`tapster NAME --help` with a warm cache imports the chosen plugin's module and no other."""
    folder = plugin_folder(tmp_path)
    write_plugin(folder, "alpha_plugin", "alpha")
    write_plugin(folder, "beta_plugin", "beta")
    listing(tmp_path, markers)
    imported(markers)
    result = run_tapster(["beta", "--help"], cwd=tmp_path, env={"PLUGIN_MARKERS": str(markers)})
    assert result.returncode == 0 and "--greeting=GREETING" in result.stdout
    assert imported(markers) == ["beta_plugin"]


# -- the cache object --------------------------------------------------------------------------------------------


def test_cache_round_trip_and_atomic_write(tmp_path: Path) -> None:
    """Stored entries come back only with the same stamp; saving leaves no temporary file behind."""
    cache = FolderCache(str(tmp_path))
    record = ["maker", "x", "X."]
    cache.store(MODULES, "x.py", [10, 20], [record])
    cache.save()
    assert sorted(path.name for path in tmp_path.iterdir()) == [CACHE_NAME]
    again = FolderCache(str(tmp_path))
    assert again.lookup(MODULES, "x.py", [10, 20]) == [record]
    assert again.lookup(MODULES, "x.py", [10, 21]) is None
    assert again.lookup(MODULES, "y.py", [10, 20]) is None


def test_cache_is_written_only_when_it_changed(tmp_path: Path) -> None:
    """A warm run that changes nothing does not rewrite the file."""
    cache = FolderCache(str(tmp_path))
    cache.store(MODULES, "x.py", [1, 2], [])
    cache.save()
    path = tmp_path / CACHE_NAME
    os.utime(path, ns=(0, 0))
    again = FolderCache(str(tmp_path))
    again.store(MODULES, "x.py", [1, 2], [])
    again.keep_only(MODULES, {"x.py"})
    again.save()
    assert path.stat().st_mtime_ns == 0


def test_disabled_cache_neither_reads_nor_writes(tmp_path: Path) -> None:
    """use_cache=False: no file is read or created."""
    written = FolderCache(str(tmp_path))
    written.store(MODULES, "x.py", [1, 2], [])
    written.save()
    cache = FolderCache(str(tmp_path), enabled=False)
    assert cache.lookup(MODULES, "x.py", [1, 2]) is None
    cache.store(MODULES, "y.py", [1, 2], [])
    cache.save()
    assert "y.py" not in (tmp_path / CACHE_NAME).read_text()
