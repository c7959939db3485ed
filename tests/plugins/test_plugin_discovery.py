"""Plugin discovery in-process: folders, what counts as a plugin, shadowing, failures, entry points."""

from __future__ import annotations

import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from _plugin_helpers import plugin_folder, write_plugin

from tapster import _plugin_discovery
from tapster._plugin_entry_points import find_entry_points, parse_entry_points
from tapster.errors import PluginError
from tapster.options import Options
from tapster.plugin import (
    Plugins,
    build_application,
    discover_plugins,
    import_plugin_module,
    is_service_maker,
    make_options,
)
from tapster.service import Application, Service


@pytest.fixture(autouse=True)
def no_builtins(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep tapster's own plugins out of these listings (one test puts its own folder there)."""
    monkeypatch.setattr(_plugin_discovery, "BUILTIN_FOLDER", str(tmp_path_factory.mktemp("builtin")))


def discover(*roots: Path, entry_points: bool = False, use_cache: bool = True) -> Plugins:
    return discover_plugins([str(root) for root in roots], entry_points=entry_points, use_cache=use_cache)


def rows(plugins: Plugins) -> list[tuple[str, str | None, str | None]]:
    return [(info.name, info.error and info.error.split(":")[0], info.shadowed_by) for info in plugins]


# -- folders ---------------------------------------------------------------------------------------------------


def test_every_module_in_a_plugins_folder_counts_whatever_its_variable(tmp_path: Path) -> None:
    """Each module in tapster/plugins/ is scanned; the variable holding the maker may have any name."""
    folder = plugin_folder(tmp_path)
    write_plugin(folder, "one_plugin", "one", "First.", variable="serviceMaker")
    write_plugin(folder, "two", "two", "Second.", variable="anything_at_all")
    plugins = discover(tmp_path)
    assert [(info.name, info.description) for info in plugins] == [("one", "First."), ("two", "Second.")]
    assert plugins.names() == ["one", "two"]
    maker = plugins.load("two")
    assert maker.tapname == "two" and is_service_maker(maker)


def test_listing_is_sorted_by_name_not_by_file(tmp_path: Path) -> None:
    """Rows come sorted by tapname, whatever the file names."""
    folder = plugin_folder(tmp_path)
    write_plugin(folder, "a_plugin", "zebra")
    write_plugin(folder, "z_plugin", "aardvark")
    write_plugin(folder, "m_plugin", "mole")
    assert [info.name for info in discover(tmp_path)] == ["aardvark", "mole", "zebra"]


def test_folder_with_init_py_and_odd_files_are_skipped(tmp_path: Path) -> None:
    """A tapster/plugins with __init__.py is a package, not a plugin folder; non-module files are ignored."""
    package_root = tmp_path / "pkg"
    folder = plugin_folder(package_root)
    (folder / "__init__.py").write_text("")
    write_plugin(folder, "hidden", "hidden")
    loose = plugin_folder(tmp_path / "loose")
    write_plugin(loose, "good", "good")
    (loose / "notes.txt").write_text("not python")
    (loose / "my-plugin.py").write_text("raise SystemExit('not an importable name')")
    (loose / ".#good.py").write_text("editor lock file")
    (loose / "folder.py").mkdir()
    plugins = discover(package_root, tmp_path / "loose")
    assert rows(plugins) == [("good", None, None)]


def test_classes_modules_and_half_plugins_do_not_count(tmp_path: Path) -> None:
    """Only instances with all four members count; the class that has them as attributes does not."""
    folder = plugin_folder(tmp_path)
    (folder / "mixed.py").write_text(
        textwrap.dedent(
            """\
            import os
            from tapster.options import Options

            class Maker:
                tapname = "real"
                description = "The one plugin here."
                options = Options
                def make_service(self, options):
                    raise NotImplementedError

            class NoOptions:
                tapname = "half"
                description = "Lacks options."
                def make_service(self, options):
                    raise NotImplementedError

            class NumberName(Maker):
                tapname = 42

            real = Maker()
            same_object_again = real
            half = NoOptions()
            number = NumberName()
            """
        )
    )
    assert rows(discover(tmp_path)) == [("real", None, None)]


def test_two_makers_in_one_module(tmp_path: Path) -> None:
    """A module may hold several plugins; each is listed and loads by its own name."""
    folder = plugin_folder(tmp_path)
    source = (write_plugin(folder, "pair", "first")).read_text()
    (folder / "pair.py").write_text(source + "\nsecond = _Maker()\nsecond.tapname = 'second'\n")
    plugins = discover(tmp_path)
    assert plugins.names() == ["first", "second"]
    assert plugins.load("second").tapname == "second"
    assert plugins.load("first").tapname == "first"


def test_first_found_wins_and_the_other_is_listed_as_shadowed(tmp_path: Path) -> None:
    """Two plugins with one tapname: the first folder on the path wins, the other says who shadows it."""
    first = write_plugin(plugin_folder(tmp_path / "a"), "poetry_a", "poetry", "From a.")
    second = write_plugin(plugin_folder(tmp_path / "b"), "poetry_b", "poetry", "From b.")
    plugins = discover(tmp_path / "a", tmp_path / "b")
    infos = list(plugins)
    assert [(info.description, info.shadowed_by) for info in infos] == [
        ("From a.", None),
        ("From b.", str(first)),
    ]
    assert infos[1].origin == str(second)
    assert plugins.load("poetry").description == "From a."
    assert [info.description for info in plugins.runnable()] == ["From a."]


def test_reserved_name_shadows_a_plugin(tmp_path: Path) -> None:
    """A name the CLI owns (ctl) shadows a plugin that claims it."""
    write_plugin(plugin_folder(tmp_path), "ctl_plugin", "ctl")
    plugins = discover_plugins([str(tmp_path)], entry_points=False, reserved={"ctl": "the ctl command"})
    assert [info.shadowed_by for info in plugins] == ["the ctl command"]
    assert "ctl" not in plugins


def test_a_failing_module_is_listed_with_its_error_and_hides_nothing(tmp_path: Path) -> None:
    """An import error becomes a row `name (ImportError ...)`; the other plugins are still there."""
    folder = plugin_folder(tmp_path)
    write_plugin(folder, "aaa_good", "good")
    (folder / "broken_plugin.py").write_text("import no_such_dependency_for_tapster_tests\n")
    (folder / "syntax.py").write_text("def broken(:\n")
    (folder / "exits.py").write_text("raise SystemExit(3)\n")
    plugins = discover(tmp_path)
    assert rows(plugins) == [
        ("broken_plugin", "ModuleNotFoundError", None),
        ("exits", "SystemExit", None),
        ("good", None, None),
        ("syntax", "SyntaxError", None),
    ]
    broken = next(info for info in plugins if info.name == "broken_plugin")
    assert broken.error == "ModuleNotFoundError: No module named 'no_such_dependency_for_tapster_tests'"
    assert broken.alias == "broken"
    for name in ("broken_plugin", "broken"):
        with pytest.raises(PluginError, match="failed to load: ModuleNotFoundError: No module named"):
            plugins.load(name)
    assert plugins.load("good").tapname == "good"


def test_invalid_tapname_is_a_failure_not_a_plugin(tmp_path: Path) -> None:
    """A tapname nobody could type (spaces, leading dash) makes the module a failure row naming it."""
    write_plugin(plugin_folder(tmp_path), "spaced", "two words")
    [info] = discover(tmp_path)
    assert info.name == "spaced"
    assert (
        info.error
        == "ValueError: invalid tapname 'two words': it must be one word that does not start with '-'"
    )


def test_plugin_modules_get_private_names_and_never_clash(tmp_path: Path) -> None:
    """A plugin file named like a real module (json.py, tapster.py) does not replace or shadow it."""
    folder = plugin_folder(tmp_path)
    write_plugin(folder, "json", "jsonish")
    write_plugin(folder, "tapster", "tapsterish")
    plugins = discover(tmp_path)
    maker = plugins.load("jsonish")
    plugins.load("tapsterish")
    import json

    import tapster

    assert hasattr(json, "dumps") and hasattr(tapster, "Service")
    module_name = type(maker).__module__
    assert module_name.startswith("_tapster_plugin_") and module_name.endswith("_json")
    assert import_plugin_module(module_name) is sys.modules[module_name]


def test_import_plugin_module_finds_a_module_not_yet_loaded(tmp_path: Path) -> None:
    """The private name leads back to the file, e.g. for unpickling a saved state in a fresh process."""
    path = write_plugin(plugin_folder(tmp_path), "saved", "saved")
    name = _plugin_discovery.module_name(str(path.parent), "saved")
    sys.modules.pop(name, None)
    module = import_plugin_module(name, [str(tmp_path)])
    assert module.maker.tapname == "saved"
    # saved from another folder (another hash): the same file name in a folder on the path stands in
    assert import_plugin_module("_tapster_plugin_00000000_saved", [str(tmp_path)]) is module
    with pytest.raises(ImportError, match=r"the plugin file unknown\.py, and no tapster/plugins/ folder"):
        import_plugin_module("_tapster_plugin_00000000_unknown", [str(tmp_path)])


def test_empty_path_entry_means_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'' on the path (python -m, python -c) is the working directory, as for imports."""
    write_plugin(plugin_folder(tmp_path), "here", "here")
    monkeypatch.chdir(tmp_path)
    assert discover_plugins([""], entry_points=False).names() == ["here"]


def test_builtin_folder_is_searched_after_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tapster's own plugins folder is scanned like any other, after the sys.path folders (so they win)."""
    builtin = tmp_path / "builtin"
    builtin.mkdir()
    write_plugin(builtin, "manhole_like", "shared", "built in")
    write_plugin(builtin, "only_builtin", "builtin_only", "built in")
    write_plugin(plugin_folder(tmp_path / "project"), "mine", "shared", "project")
    monkeypatch.setattr(_plugin_discovery, "BUILTIN_FOLDER", str(builtin))
    plugins = discover(tmp_path / "project")
    assert [(info.name, info.description, bool(info.shadowed_by)) for info in plugins] == [
        ("builtin_only", "built in", False),
        ("shared", "project", False),
        ("shared", "built in", True),
    ]


def test_real_builtin_folder_modules_are_all_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every module shipped in src/tapster/plugins shows up (as a plugin or a failure row), none is lost."""
    monkeypatch.undo()
    folder = Path(_plugin_discovery.BUILTIN_FOLDER)
    assert folder.name == "plugins" and not (folder / "__init__.py").exists()
    origins = {info.origin for info in discover_plugins([], entry_points=False)}
    assert origins == {str(path) for path in folder.glob("*.py")}


# -- building the application ----------------------------------------------------------------------------------


class _Options(Options):
    parameters = [("port", "p", 1, "A port.", int)]


class _Maker:
    tapname = "demo"
    description = "Demo plugin."
    options = _Options

    def __init__(self, result: object = None) -> None:
        self.result = result

    def make_service(self, options: Options) -> Service:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result if self.result is not None else Service()  # type: ignore[return-value]


def test_build_application_wraps_the_service_in_an_application_named_by_tapname() -> None:
    """The service from make_service is the only child of Application(tapname)."""
    options = make_options(_Maker())
    options.parse_options(["-p", "7"])
    service = Service()
    app = build_application(_Maker(service), options)
    assert isinstance(app, Application) and app.name == "demo"
    assert list(app) == [service] and service.parent is app


def test_make_options_shows_the_plugin_description_in_its_help() -> None:
    """Options without a description of their own take the plugin's in `tapster PLUGIN --help`."""
    options = make_options(_Maker())
    assert "Demo plugin." in options.format_help()
    assert _Options.description == ""


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (ValueError("bad poem"), "plugin demo: make_service failed: ValueError: bad poem"),
        (42, "plugin demo: make_service returned a int, not a tapster Service"),
    ],
)
def test_build_application_errors_name_the_plugin(result: object, message: str) -> None:
    """A make_service that raises or returns a non-Service gives one PluginError naming the plugin."""
    with pytest.raises(PluginError, match=f"^{message}$"):
        build_application(_Maker(result), _Options())


def test_make_options_rejects_non_options() -> None:
    """An options attribute that does not make a tapster Options is a PluginError."""
    maker = _Maker()
    maker.options = dict  # type: ignore[assignment]
    with pytest.raises(PluginError, match=r"options must be a tapster\.Options subclass"):
        make_options(maker)


# -- entry points ----------------------------------------------------------------------------------------------


def make_dist(
    site: Path, name: str, version: str, entry_points: str, module: str = "", module_source: str = ""
) -> None:
    """A hand-made installed distribution: NAME-VERSION.dist-info with METADATA and entry_points.txt."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nBody.\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    if module:
        (site / f"{module}.py").write_text(textwrap.dedent(module_source))


MAKER_MODULE = """\
from tapster.options import Options
from tapster.service import Service

class Maker:
    description = "From an entry point."
    options = Options
    def __init__(self, tapname):
        self.tapname = tapname
    def make_service(self, options):
        return Service()

alpha = Maker("alpha")
beta = Maker("beta")
"""


def test_entry_points_are_found_and_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`module:object` names one maker; a bare `module` offers every maker in it; others are failures."""
    site = tmp_path / "site"
    make_dist(
        site,
        "demo-dist",
        "1.0",
        """\
        [console_scripts]
        demo = ep_demo:main

        [tapster.plugins]
        one = ep_demo:alpha
        everything = ep_demo
        wrong = ep_demo:Maker
        missing = ep_missing_module_xyz:thing
        """,
        "ep_demo",
        MAKER_MODULE,
    )
    monkeypatch.syspath_prepend(str(site))
    plugins = discover(site, entry_points=True)
    assert rows(plugins) == [
        ("alpha", None, None),
        ("alpha", None, "entry point one = ep_demo:alpha (demo-dist 1.0)"),
        ("beta", None, None),
        ("missing", "ModuleNotFoundError", None),
        ("wrong", "TypeError", None),
    ]
    wrong = next(info for info in plugins if info.name == "wrong")
    assert wrong.error is not None and "ep_demo:Maker is a type, not a ServiceMaker" in wrong.error
    assert plugins.load("beta").tapname == "beta"


def test_first_distribution_of_a_name_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An older copy of a project later on the path is ignored, as importlib.metadata does."""
    make_dist(tmp_path / "new", "same_dist", "2.0", "[tapster.plugins]\nnew = ep_same_new:alpha\n")
    make_dist(tmp_path / "old", "Same.Dist", "1.0", "[tapster.plugins]\nold = ep_same_old:alpha\n")
    specs = find_entry_points("tapster.plugins", [str(tmp_path / "new"), str(tmp_path / "old")])
    assert [(spec.name, spec.dist_name, spec.dist_version) for spec in specs] == [("new", "same_dist", "2.0")]


def test_entry_point_reader_agrees_with_importlib_metadata() -> None:
    """On this interpreter's real sys.path, the fast reader finds exactly what importlib.metadata finds."""
    for group in ("console_scripts", "pytest11", "tapster.plugins"):
        ours = {(spec.name, spec.value) for spec in find_entry_points(group, sys.path)}
        reference = {(ep.name, ep.value) for ep in metadata.entry_points(group=group)}
        assert ours == reference, group


def test_entry_points_file_parsing() -> None:
    """Sections, comments, spaces around '=' and extras are read like importlib.metadata reads them."""
    text = "# comment\n[other]\nx = a:b\n\n[tapster.plugins]\n  one=pkg.mod:obj\ntwo = pkg [extra]\n"
    assert parse_entry_points(text, "tapster.plugins") == [("one", "pkg.mod:obj"), ("two", "pkg [extra]")]
