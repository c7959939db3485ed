"""Finding plugins: ``tapster/plugins/`` folders on ``sys.path``, then ``tapster.plugins`` entry points.

The result is a list of :class:`Candidate`: a name, a description, where it came from, and either a way to load
the ServiceMaker or the error that loading it gave. Whenever the cache vouches for a module, the module is not
imported; the candidate's loader imports it only when that plugin is run.

Plugin modules are loaded by file path under a private module name (``_tapster_plugin_<folder hash>_<stem>``),
so a plugin file never clashes with a real package, ``tapster`` included, and two folders may hold files of the
same name. The name is stable for a given folder, so the module's classes can be found again by name.
"""

from __future__ import annotations

import importlib.util
import os
import re
import stat
import sys
import types
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

from tapster._plugin_bytecode import HashCheckedLoader
from tapster._plugin_cache import (
    ENTRY_POINTS,
    MODULES,
    FolderCache,
    Header,
    PluginRecord,
    header_token,
    read_header,
)
from tapster._plugin_entry_points import EntryPointSpec, find_entry_points, load_entry_point
from tapster.errors import PluginError

GROUP = "tapster.plugins"
_MODULE_PREFIX = "_tapster_plugin_"
BUILTIN_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins")


class Candidate(NamedTuple):  # NamedTuple, not a dataclass: cheaper to create at import, which --help pays
    """One plugin found (or one module that failed to load), before shadowing is worked out."""

    name: str  # the tapname; for a failure, the module or entry point name
    description: str
    origin: str  # the file, or the entry point and its distribution
    load: Callable[[], Any] | None = None  # imports what is needed and returns the ServiceMaker
    error: str | None = None  # "ImportError: ..." when the module failed to load
    alias: str | None = None  # for a failed "x_plugin.py": "x", so `tapster x` shows the error


def is_service_maker(obj: object) -> bool:
    """Whether ``obj`` is a plugin (a ServiceMaker), judged by its members alone.

    It needs str ``tapname`` and ``description`` and callable ``options`` and ``make_service``. Classes and
    modules do not count: a maker class carries all four as class attributes, but only its instance is a plugin.
    """
    if isinstance(obj, type | types.ModuleType):
        return False
    try:
        return (
            isinstance(getattr(obj, "tapname", None), str)
            and isinstance(getattr(obj, "description", None), str)
            and callable(getattr(obj, "options", None))
            and callable(getattr(obj, "make_service", None))
        )
    except Exception:  # a property that raises: not a plugin
        return False


def check_tapname(tapname: str) -> None:
    """Refuse a tapname nobody could type as a command.

    Raises:
        ValueError: it is empty, starts with a dash, or contains whitespace.
    """
    if not tapname or tapname.startswith("-") or any(char.isspace() for char in tapname):
        raise ValueError(f"invalid tapname {tapname!r}: it must be one word that does not start with '-'")


def makers_in(namespace: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(variable name, maker)`` for each distinct ServiceMaker among a module's globals, in definition order."""
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()
    for attr, obj in list(namespace.items()):
        if id(obj) not in seen and is_service_maker(obj):
            seen.add(id(obj))
            found.append((attr, obj))
    return found


def _records(pairs: list[tuple[str, Any]]) -> list[PluginRecord]:
    records = []
    for attr, maker in pairs:
        check_tapname(maker.tapname)
        records.append([attr, maker.tapname, maker.description])
    return records


def describe_error(exc: BaseException) -> str:
    """The one-line form of an import failure: ``ImportError: No module named 'x'``, and for a module a tapster
    extra installs, the command that installs it: ``... (pip install 'tapster[web]')``."""
    from tapster._extras import install_hint

    text = str(exc).strip().splitlines()
    described = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return described + install_hint(exc)


# -- tapster/plugins/ folders ----------------------------------------------------------------------------------


def plugin_folders(path: Sequence[str]) -> list[str]:
    """Every ``tapster/plugins`` folder without ``__init__.py`` under ``path``, then the built-in one, once each."""
    folders: list[str] = []
    seen: set[str] = set()
    candidates = [os.path.join(entry or os.getcwd(), "tapster", "plugins") for entry in path]
    for folder in [*candidates, BUILTIN_FOLDER]:
        if not os.path.isdir(folder) or _ignore_reason(folder) is not None:
            continue
        real = os.path.realpath(folder)
        if real not in seen:
            seen.add(real)
            folders.append(os.path.abspath(folder))
    return folders


class IgnoredFolder(NamedTuple):
    """A ``tapster/plugins`` folder discovery skips, and the sentence saying why and what to do."""

    folder: str
    reason: str


def _ignore_reason(folder: str) -> str | None:
    """Why discovery skips the ``tapster/plugins`` folder ``folder`` (which exists), or None to read it.

    Both ``tapster/`` and ``tapster/plugins/`` must be plain folders. A ``tapster/__init__.py`` in a project root
    makes a package that hides the installed tapster from ``python -m tapster`` and ``import tapster`` run
    there, so its plugins are refused with a message rather than half-working. tapster's own folder (inside the
    real package) is the one exception.
    """
    if os.path.exists(os.path.join(folder, "__init__.py")):
        return "a plugins folder must not have an __init__.py (see docs/plugins.md)"
    if folder == BUILTIN_FOLDER:  # the common case first: no more system calls for the built-in folder
        return None
    init = os.path.join(os.path.dirname(folder), "__init__.py")
    if os.path.exists(init) and os.path.realpath(folder) != os.path.realpath(BUILTIN_FOLDER):
        return (
            f"{init} makes tapster/ a package that hides the installed tapster (python -m tapster fails "
            "there), so these plugins are not read: delete it (tapster/ and tapster/plugins/ must be plain "
            "folders, see docs/plugins.md)"
        )
    return None


def ignored_plugin_folders(path: Sequence[str]) -> list[IgnoredFolder]:
    """The ``tapster/plugins`` folders under ``path`` that discovery skips, each with the reason.

    Adding an ``__init__.py`` is a common packaging reflex; the CLI names these folders so the plugins inside
    do not vanish silently.
    """
    found: list[IgnoredFolder] = []
    seen: set[str] = set()
    for entry in path:
        folder = os.path.abspath(os.path.join(entry or os.getcwd(), "tapster", "plugins"))
        if folder in seen or not os.path.isdir(folder):
            continue
        seen.add(folder)
        reason = _ignore_reason(folder)
        if reason is not None:
            found.append(IgnoredFolder(folder, reason))
    return found


def ignored_folders_note(path: Sequence[str]) -> str:
    """`` Ignored FOLDER: why.`` for each skipped folder (see :func:`ignored_plugin_folders`), or ``""``."""
    return "".join(f" Ignored {item.folder}: {item.reason}." for item in ignored_plugin_folders(path))


def searched_note(path: Sequence[str], *, entry_points: bool) -> str:
    """Where discovery looked, for an unknown plugin name: the folders it read and what the working directory lacks.

    A user who runs ``tapster NAME`` from the wrong directory sees that the project root's folder was not there.
    """
    folders = plugin_folders(path)
    where = ", ".join(folders)
    text = f"Searched the tapster/plugins/ folders on sys.path ({where})"
    text += " and the tapster.plugins entry points" if entry_points else ""
    cwd = os.getcwd()
    on_path = any(os.path.abspath(entry or os.curdir) == cwd for entry in path)
    if on_path and not os.path.isdir(os.path.join(cwd, "tapster", "plugins")):
        text += f"; the working directory {cwd} has no tapster/plugins/ folder (run tapster from your project's root)"
    return text + "."


def module_name(folder: str, stem: str) -> str:
    """The private, stable module name a plugin file is loaded under."""
    return f"{_MODULE_PREFIX}{zlib.crc32(os.path.realpath(folder).encode()):08x}_{stem}"


def _stem_of(name: str) -> str:
    """``x_plugin`` for the private module name ``_tapster_plugin_<hash>_x_plugin``; ``""`` for any other name."""
    return name.removeprefix(_MODULE_PREFIX).partition("_")[2] if name.startswith(_MODULE_PREFIX) else ""


def describe_module(name: str) -> str:
    """How a message names a module: a plugin module by its file (the path once loaded), never by its private
    name, which means nothing to the user; any other module by its name."""
    stem = _stem_of(name)
    if not stem:
        return name
    file = getattr(sys.modules.get(name), "__file__", None)
    return f"plugin file {file}" if file else f"plugin file {stem}.py"


_PRIVATE_NAME = re.compile(rf"'?{_MODULE_PREFIX}[0-9a-f]{{8}}_(\w+)'?")


def without_private_names(text: str) -> str:
    """``text`` with every private plugin module name replaced by its file: for messages written by others
    (pickle's ``Can't get attribute 'X' on <module '_tapster_plugin_...'>``)."""
    return _PRIVATE_NAME.sub(lambda match: describe_module(match.group(0).strip("'")), text)


def import_plugin_file(path: str) -> Any:
    """Import the plugin module at ``path`` (once per process) and return it; its exceptions propagate."""
    folder, file = os.path.split(path)
    name = module_name(folder, file[:-3])
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(name, path, loader=HashCheckedLoader(name, path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_plugin_module(name: str, path: Sequence[str] | None = None) -> Any:
    """Import a plugin module by the private name it was loaded under, e.g. to unpickle a saved state.

    Raises:
        ImportError: no plugin folder under ``path`` (default ``sys.path``; the built-in folder is always
            searched) has that module.
    """
    module = sys.modules.get(name)
    if module is not None:
        return module
    stem = _stem_of(name)
    folders = plugin_folders(sys.path if path is None else path)
    if stem:
        for folder in folders:
            file = os.path.join(folder, f"{stem}.py")
            if module_name(folder, stem) == name and os.path.isfile(file):
                return import_plugin_file(file)
        # The state was saved from another folder (a new release directory, a copied project): the same plugin
        # file under the first plugin folder that has it, as discovery would pick it, stands in for it.
        for folder in folders:
            file = os.path.join(folder, f"{stem}.py")
            if os.path.isfile(file):
                module = import_plugin_file(file)
                sys.modules[name] = module
                return module
        raise ImportError(
            f"it uses the plugin file {stem}.py, and no tapster/plugins/ folder on sys.path has it (searched: "
            f"{', '.join(folders)}); run tapster from the project root that holds tapster/plugins/{stem}.py, "
            "or put that root on PYTHONPATH",
            name=name,
        )
    raise ImportError(f"{name} is not a plugin module name", name=name)


def module_files(folder: str) -> list[tuple[str, int, int]] | None:
    """``(file, size, mtime_ns)`` of each plugin module file in ``folder``, by name; None if it cannot be listed.

    One ``stat()`` per file is what noticing an edit costs (the folder's own mtime changes only when files are
    added, removed or renamed); ``tapster --help`` runs this loop once per plugin file, so it is kept lean.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:  # stat relative to the open folder: no path to build and walk per file (~0.4 us each)
        names = sorted(os.listdir(fd))
        found = []
        for file in names:
            if not file.endswith(".py") or not file[:-3].isidentifier():
                continue
            try:
                info = os.stat(file, dir_fd=fd)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                found.append((file, info.st_size, info.st_mtime_ns))
        return found
    except OSError:
        return None
    finally:
        os.close(fd)


def snapshot_of(files: list[tuple[str, int, int]]) -> str:
    """The folder's files and stamps as one string (the cache header's ``snapshot``): compared in one step."""
    return "/".join([f"{file}:{size}:{mtime}" for file, size, mtime in files])


Sources = list[Any]  # what a listing was built from: [[folder or "entry points", token or detail], ...]


def _source_token(cache_token: str | None, snapshot: str) -> str:
    """How a listing names what it read from a folder: its cache's token, or, for a folder with no cache (one
    that cannot be written, such as tapster's own in a system-wide install), the snapshot itself. The snapshot
    alone determines what importing the modules gives, so a listing built from the same one is the same."""
    return cache_token if cache_token is not None else f"={snapshot}"


def scan_folder(folder: str, *, use_cache: bool = True, sources: Sources | None = None) -> list[Candidate]:
    """The plugins of every module in ``folder``, importing only modules the cache cannot vouch for.

    With ``sources``, appends ``[folder, token]`` (see :func:`_source_token`; ``""`` for a folder without
    modules; None if a module failed, which keeps the listing uncached).
    """
    files = module_files(folder)
    if files is None:
        if sources is not None:
            sources.append([folder, None])
        return []
    cache = FolderCache(folder, enabled=use_cache)
    found: list[Candidate] = []
    present: set[str] = set()
    complete = True
    prefix = os.path.join(folder, "")
    for file, size, mtime in files:
        path = prefix + file
        present.add(file)
        stamp = [size, mtime]
        records = cache.lookup(MODULES, file, stamp)
        if records is None:
            try:
                records = _records(makers_in(vars(import_plugin_file(path))))
            except (Exception, SystemExit) as exc:
                cache.forget(MODULES, file)
                complete = False
                stem = file[:-3]
                alias = stem.removesuffix("_plugin")
                found.append(
                    Candidate(
                        stem, "", path, error=describe_error(exc), alias=alias if alias != stem else None
                    )
                )
                continue
            cache.store(MODULES, file, stamp, records)
        for attr, tapname, description in records:
            load = partial(_load_from_file, path, attr, tapname, use_cache)
            found.append(Candidate(tapname, description, path, load))
    cache.keep_only(MODULES, present)
    snapshot = snapshot_of(files)
    cache.set_snapshot(snapshot if complete else "")
    cache.save()
    if sources is not None:
        token = (_source_token(cache.token, snapshot) if files else "") if complete else None
        sources.append([folder, token])
    return found


def _load_from_file(path: str, attr: str, tapname: str, use_cache: bool) -> Any:
    """Load one plugin the listing knew from the cache, now that it is run."""
    try:
        module = import_plugin_file(path)
    except (Exception, SystemExit) as exc:
        folder, file = os.path.split(path)
        cache = FolderCache(folder, enabled=use_cache)  # it worked once; not any more
        cache.forget(MODULES, file)
        cache.save()
        raise PluginError(f"plugin {tapname} failed to load: {describe_error(exc)} ({path})") from exc
    return _pick(vars(module), attr, tapname, path)


def _pick(namespace: dict[str, Any], attr: str, tapname: str, origin: str) -> Any:
    """The maker named ``tapname``: under ``attr`` if it is still there, else wherever it is now."""
    obj: Any = namespace.get(attr) if attr else None
    if is_service_maker(obj) and obj.tapname == tapname:
        return obj
    for _, maker in makers_in(namespace):
        if maker.tapname == tapname:
            return maker
    raise PluginError(f"plugin {tapname} is no longer defined in {origin}")


# -- entry points ----------------------------------------------------------------------------------------------


def scan_entry_points(
    path: Sequence[str], *, use_cache: bool = True, sources: Sources | None = None
) -> list[Candidate]:
    """The plugins of the ``tapster.plugins`` entry points, each cached by distribution name and version.

    With ``sources``, appends what :func:`listing_sources` gives for them, or None where a cache does not hold
    them all.
    """
    found: list[Candidate] = []
    caches: dict[str, FolderCache] = {}
    present: dict[str, set[str]] = {}
    specs = find_entry_points(GROUP, list(path))
    complete = True
    for spec in specs:
        cache = caches.get(spec.location)
        if cache is None:
            cache = caches[spec.location] = FolderCache(spec.location, enabled=use_cache)
            present[spec.location] = set()
        key = _entry_point_key(spec)
        present[spec.location].add(key)
        records = cache.lookup(ENTRY_POINTS, key, spec.stamp) if spec.stamp != [0, 0] else None
        if records is None:
            try:
                records = _records(_entry_point_makers(spec))
            except (Exception, SystemExit) as exc:
                cache.forget(ENTRY_POINTS, key)
                complete = False
                found.append(Candidate(spec.name, "", spec.origin, error=describe_error(exc)))
                continue
            if spec.stamp == [0, 0]:
                complete = False
            cache.store(ENTRY_POINTS, key, spec.stamp, records)
        for attr, tapname, description in records:
            load = partial(_load_from_entry_point, spec, attr, tapname, use_cache)
            found.append(Candidate(tapname, description, spec.origin, load))
    tokens: dict[str, str | None] = {}
    for location, cache in caches.items():
        snapshot = _entry_points_snapshot(specs, location)
        cache.keep_only(ENTRY_POINTS, present[location])
        cache.set_snapshot(snapshot if complete else "")
        cache.save()
        tokens[location] = _source_token(cache.token, snapshot) if complete else None
    if sources is not None:
        sources.append(_entry_points_source(specs, tokens))
    return found


def _entry_points_snapshot(specs: list[EntryPointSpec], location: str) -> str:
    """A location's entry points with their stamps, as a folder's snapshot lists its files."""
    return "/".join(
        f"{_entry_point_key(spec)}:{spec.stamp[0]}:{spec.stamp[1]}"
        for spec in specs
        if spec.location == location
    )


def _entry_points_source(specs: list[EntryPointSpec], tokens: dict[str, str | None]) -> list[Any] | None:
    """``["entry points", [[name, value, distribution, version], ...], [[location, token], ...]]``, or None."""
    if any(token is None for token in tokens.values()):
        return None
    declared = [[spec.name, spec.value, spec.dist_name, spec.dist_version] for spec in specs]
    return ["entry points", declared, sorted([location, token] for location, token in tokens.items())]


def listing_sources(
    path: Sequence[str], *, entry_points: bool = True
) -> tuple[Sources, Header | None] | None:
    """What discovery would read the listing from, if the caches hold all of it; None if anything changed.

    It lists each folder and stats each module file, as discovery does, but parses only the cache headers: a
    folder still matching its snapshot is known cached in one comparison. The sources equal those discovery
    appends when it reads the same caches, so they key a stored listing; the first folder's header (which holds
    that listing) comes with them.
    """
    sources: Sources = []
    first: Header | None = None
    for folder in plugin_folders(path):
        header = read_header(folder)
        if not sources:
            if header is None:
                return None  # no listing stored there (an unwritable first folder costs only this open)
            first = header
        files = module_files(folder)
        if files is None:
            return None
        snapshot = snapshot_of(files)
        sources.append([folder, _source_token(header_token(header, snapshot), snapshot) if files else ""])
    if entry_points:
        specs = find_entry_points(GROUP, list(path))
        tokens: dict[str, str | None] = {}
        for spec in specs:
            if spec.location not in tokens:
                snapshot = _entry_points_snapshot(specs, spec.location)
                tokens[spec.location] = _source_token(
                    header_token(read_header(spec.location), snapshot), snapshot
                )
        source = _entry_points_source(specs, tokens)
        if source is None:
            return None
        sources.append(source)
    return sources, first


def _entry_point_key(spec: EntryPointSpec) -> str:
    """The cache key: distribution name and version, and the entry point's name."""
    return f"{spec.dist_name} {spec.dist_version} {spec.name}"


def _entry_point_makers(spec: EntryPointSpec) -> list[tuple[str, Any]]:
    """A module entry point offers every maker in it; an object entry point must be a maker itself."""
    obj = load_entry_point(spec.value)
    if isinstance(obj, types.ModuleType):
        return makers_in(vars(obj))
    if not is_service_maker(obj):
        raise TypeError(
            f"{spec.value} is a {type(obj).__qualname__}, not a ServiceMaker "
            "(it needs tapname, description, options and make_service)"
        )
    return [("", obj)]


def _load_from_entry_point(spec: EntryPointSpec, attr: str, tapname: str, use_cache: bool) -> Any:
    """Load one entry-point plugin the listing knew from the cache, now that it is run."""
    try:
        obj = load_entry_point(spec.value)
    except (Exception, SystemExit) as exc:
        cache = FolderCache(spec.location, enabled=use_cache)  # it worked once; not any more
        cache.forget(ENTRY_POINTS, _entry_point_key(spec))
        cache.save()
        raise PluginError(f"plugin {tapname} failed to load: {describe_error(exc)} ({spec.origin})") from exc
    if not attr:
        if is_service_maker(obj) and obj.tapname == tapname:
            return obj
        raise PluginError(f"plugin {tapname} is no longer provided by {spec.origin}")
    return _pick(vars(obj), attr, tapname, spec.origin)


def discover(
    path: Sequence[str], *, entry_points: bool = True, use_cache: bool = True, sources: Sources | None = None
) -> list[Candidate]:
    """Every candidate in discovery order: plugin folders in ``path`` order, the built-in folder, entry points.

    With ``sources``, appends what each folder and the entry points were read from (see :func:`scan_folder`).
    """
    found: list[Candidate] = []
    for folder in plugin_folders(path):
        found += scan_folder(folder, use_cache=use_cache, sources=sources)
    if entry_points:
        found += scan_entry_points(path, use_cache=use_cache, sources=sources)
    return found
