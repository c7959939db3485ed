"""Plugins: a ServiceMaker makes a service a ``tapster`` subcommand (``tapster PLUGIN [plugin options]``).

A plugin is any object with a ``tapname`` (the command name), a ``description`` (one line for the listing), an
``options`` class (a :class:`~tapster.options.Options` subclass parsing the words after the name) and
``make_service(options)`` returning the :class:`~tapster.service.Service` to run. No base class or registration
is needed; the variable holding it may have any name.

tapster finds plugins in, in this order (the first plugin of a name wins; later ones are listed as shadowed):

1. every ``tapster/plugins/`` folder on ``sys.path`` that has no ``__init__.py`` (the ``tapster`` command puts
   the working directory first, as ``python -m`` does, so a project root's folder is found); then tapster's own
   built-in plugins, which live in such a folder inside the installed package;
2. the ``tapster.plugins`` entry-point group of installed distributions: ``name = "module:object"`` names one
   ServiceMaker, ``name = "module"`` offers every ServiceMaker in the module.

Discovery reads a cache (``.tapster-plugins.json`` in each folder) and imports only modules that are new or have
changed since it was written, or that failed last time; see :mod:`tapster._plugin_cache`.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from tapster import _plugin_discovery, _plugin_entry_points
from tapster._plugin_cache import FolderCache, stored_listing
from tapster._plugin_discovery import (
    GROUP,
    Candidate,
    discover,
    ignored_folders_note,
    import_plugin_module,
    is_service_maker,
    listing_sources,
    plugin_folders,
    searched_note,
)
from tapster._version import __version__
from tapster.errors import PluginError, TapsterError

if TYPE_CHECKING:
    from tapster.options import Options
    from tapster.service import Application, Service

__all__ = [
    "GROUP",
    "PluginInfo",
    "Plugins",
    "ServiceMaker",
    "build_application",
    "discover_plugins",
    "import_plugin_module",
    "is_service_maker",
    "make_options",
]


class ServiceMaker(Protocol):
    """What a plugin provides; any object with these members is one (twistd's IServiceMaker and IPlugin).

    A class with plain class attributes satisfies it::

        class PoetryServiceMaker:
            tapname = "fastpoetry"
            description = "A fast poetry service."
            options = PoetryOptions

            def make_service(self, options):
                ...

        service_maker = PoetryServiceMaker()
    """

    @property
    def tapname(self) -> str:
        """The subcommand name: one word, not starting with ``-``."""

    @property
    def description(self) -> str:
        """One line shown by ``tapster --help`` and above the plugin's own help."""

    @property
    def options(self) -> Callable[[], Options]:
        """The Options subclass (or a factory of Options) that parses the words after the tapname."""

    def make_service(self, options: Any, /) -> Service:
        """Build the service to run from the parsed options. Do not start anything here: tapster starts it."""


class PluginInfo(NamedTuple):
    """One row of the plugin listing.

    Attributes:
        name: the tapname; for a module that failed to load, the module (or entry point) name.
        description: the plugin's description; empty for a failure.
        origin: where it was found: a file path, or the entry point and its distribution.
        error: why its module failed to load (``ImportError: ...``), or None.
        shadowed_by: the origin of the plugin that won this name, when this one is hidden by it.
        alias: another name that runs it (for a failed ``x_plugin.py``: ``x``), or None.
    """

    name: str
    description: str
    origin: str
    error: str | None = None
    shadowed_by: str | None = None
    alias: str | None = None

    @property
    def runnable(self) -> bool:
        """Whether ``tapster NAME`` selects this entry (a failed one selects it to report its error)."""
        return self.shadowed_by is None


_new_info = tuple.__new__


class Plugins:
    """The plugins discovery found, with shadowing worked out; loading one imports only its module."""

    def __init__(
        self,
        candidates: Sequence[Candidate],
        reserved: Mapping[str, str] | None = None,
        *,
        searched: Sequence[str] | None = None,
        entry_points: bool = True,
    ) -> None:
        """Work out which candidate owns each name: the first found, unless ``reserved`` claims it first.

        Args:
            candidates: in discovery order.
            reserved: names that are not plugins (``{"ctl": "the tapster ctl command"}``), with what owns them.
            searched: the ``sys.path`` entries discovery searched, named by :meth:`explain_unknown`.
            entry_points: whether discovery read the entry points too (also for :meth:`explain_unknown`).
        """
        self._searched = list(searched) if searched is not None else None
        self._entry_points = entry_points
        self._loaders: dict[str, Callable[[], Any] | None] = {}
        self._errors: dict[str, str] = {}
        owners: dict[str, str] = dict(reserved or {})
        infos: list[PluginInfo] = []
        for candidate in candidates:  # plugins that loaded claim their names first, in discovery order
            if candidate.error is not None:
                continue
            winner = owners.get(candidate.name)
            if winner is None:
                owners[candidate.name] = candidate.origin
                self._loaders[candidate.name] = candidate.load
            # tuple.__new__ rather than PluginInfo(...): a NamedTuple's __new__ is Python code, run per plugin
            infos.append(
                _new_info(
                    PluginInfo, (candidate.name, candidate.description, candidate.origin, None, winner, None)
                )
            )
        for candidate in candidates:
            if candidate.error is None:
                continue
            winner = owners.get(candidate.name)
            if winner is None:
                owners[candidate.name] = candidate.origin
                self._errors[candidate.name] = f"{candidate.error} ({candidate.origin})"
            alias = candidate.alias if winner is None and candidate.alias not in owners else None
            if alias is not None:  # `tapster x` reports the failure of x_plugin.py, unless x is taken
                owners[alias] = candidate.origin
                self._errors[alias] = self._errors[candidate.name]
            info = PluginInfo(candidate.name, "", candidate.origin, candidate.error, winner, alias)
            infos.append(info)
        self._infos = sorted(infos, key=itemgetter(0))  # by name; stable: discovery order within a name

    def __iter__(self) -> Iterator[PluginInfo]:
        """Every row of the listing, sorted by name: plugins, shadowed plugins and failures."""
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._loaders or name in self._errors

    def names(self) -> list[str]:
        """The names ``tapster NAME`` accepts, sorted (failed modules included, to report their error)."""
        return sorted({*self._loaders, *self._errors})

    def runnable(self) -> list[PluginInfo]:
        """The rows ``tapster NAME`` can select: the winner of each name and each failure nothing shadows."""
        return [info for info in self._infos if info.runnable]

    def suggest(self, name: str) -> str | None:
        """The known name closest to a mistyped one, or None."""
        import difflib

        close = difflib.get_close_matches(name, self.names(), n=1)
        return close[0] if close else None

    def explain_unknown(self, name: str) -> str:
        """Sentences for a name no plugin has: the closest name, the plugins found, where tapster looked.

        ``tapster NAME`` run from the wrong directory is the usual cause, so the working directory's missing
        ``tapster/plugins/`` folder is named, and so is any folder skipped for holding an ``__init__.py``. The
        folders are worked out again here, so listing plugins pays nothing for this.
        """
        hint = self.suggest(name)
        names = self.names()
        text = f"Did you mean {hint}? " if hint else ""
        text += f"Plugins found: {', '.join(names)}." if names else "No plugins found."
        if self._searched is not None:
            text += " " + searched_note(self._searched, entry_points=self._entry_points)
            text += ignored_folders_note(self._searched)
        return text

    def load(self, name: str) -> ServiceMaker:
        """Import the plugin ``name`` and return its ServiceMaker.

        Raises:
            PluginError: no plugin has that name, or its module failed to load (the message has the error).
        """
        if name in self._errors:
            raise PluginError(f"plugin {name} failed to load: {self._errors[name]}")
        if name not in self._loaders:
            raise PluginError(f"unknown plugin {name!r}. {self.explain_unknown(name)}")
        loader = self._loaders[name]
        if loader is None:
            raise PluginError(f"plugin {name} cannot be loaded")
        maker: ServiceMaker = loader()
        return maker


def discover_plugins(
    path: Sequence[str] | None = None,
    *,
    entry_points: bool = True,
    use_cache: bool = True,
    reserved: Mapping[str, str] | None = None,
) -> Plugins:
    """Find every plugin: ``tapster/plugins/`` folders under ``path``, the built-in ones, then entry points.

    Args:
        path: the folders to search, in order; default ``sys.path`` (an empty entry means the working directory).
        entry_points: also read the ``tapster.plugins`` entry points of the distributions on ``path``.
        use_cache: read and write the ``.tapster-plugins.json`` caches; False imports every plugin module.
        reserved: names that belong to something else and shadow any plugin of that name.

    Never raises for a broken plugin: a module that fails to import becomes a listing row with its error.
    """
    searched = list(sys.path if path is None else path)
    return _discover(searched, entry_points=entry_points, use_cache=use_cache, reserved=reserved)


def _discover(
    searched: list[str],
    *,
    entry_points: bool,
    use_cache: bool,
    reserved: Mapping[str, str] | None,
    sources: list[Any] | None = None,
) -> Plugins:
    # Discovery builds a few objects per plugin and keeps nearly all of them: with 1,000 plugins the collector
    # would run a dozen times over them for nothing (~1 ms of a 30 ms `tapster --help`).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return Plugins(
            discover(searched, entry_points=entry_points, use_cache=use_cache, sources=sources),
            reserved,
            searched=searched,
            entry_points=entry_points,
        )
    finally:
        if collecting:
            gc.enable()


def cached_listing(render: Callable[[Plugins], str], *, reserved: Mapping[str, str] | None = None) -> str:
    """``render(discover_plugins(reserved=reserved))``, from the cache when nothing it was built from changed.

    ``tapster --help`` prints every plugin. When every plugin folder still matches its cache's snapshot and the
    entry points their cache (:func:`~tapster._plugin_discovery.listing_sources`: one ``stat()`` per module file,
    as discovery does), the text rendered last time is printed again: no entry is parsed and no row is built. It
    is stored in the first plugin folder's cache, keyed by the tokens of every cache it was read from, the
    reserved names, and the version and files of the code that rendered it, so an edit to any of them renders it
    anew. A listing with a failed module is never stored: the module is tried again on every run.
    """
    searched = list(sys.path)
    code = _code_stamps(render)
    found = listing_sources(searched)
    if code is not None and found is not None:
        text = stored_listing(found[1], [code, dict(reserved or {}), found[0]])
        if text is not None:
            return text
    folders = plugin_folders(searched)
    sources: list[Any] = []
    text = render(_discover(searched, entry_points=True, use_cache=True, reserved=reserved, sources=sources))
    if folders and code is not None and None not in sources:
        cache = FolderCache(folders[0])
        cache.set_listing([code, dict(reserved or {}), sources], text)
        cache.save()
    return text


def _code_stamps(render: Callable[[Plugins], str]) -> list[Any] | None:
    """The version and the files of the code a stored listing depends on: rendering, shadowing, discovery, entry
    points (the cache's own layout has its format number)."""
    stamps: list[Any] = [__version__]
    for file in (
        getattr(sys.modules.get(render.__module__), "__file__", None),
        __file__,
        _plugin_discovery.__file__,
        _plugin_entry_points.__file__,
    ):
        try:
            info = os.stat(file) if file else None
        except OSError:
            info = None
        if info is None:
            return None
        stamps += [file, info.st_size, info.st_mtime_ns]
    return stamps


def build_application(maker: ServiceMaker, options: Options) -> Application:
    """``Application(maker.tapname)`` with ``maker.make_service(options)`` as its only child.

    Raises:
        PluginError: ``make_service`` raised (other than a TapsterError, which propagates) or returned something
            that is not a Service.
    """
    from tapster._extras import install_hint
    from tapster.service import Application, Service

    try:
        service = maker.make_service(options)
    except TapsterError:
        raise
    except Exception as exc:
        raise PluginError(
            f"plugin {maker.tapname}: make_service failed: {type(exc).__name__}: {exc}{install_hint(exc)}"
        ) from exc
    if not isinstance(service, Service):
        raise PluginError(
            f"plugin {maker.tapname}: make_service returned a {type(service).__qualname__}, not a tapster Service"
        )
    application = Application(maker.tapname)
    service.set_parent(application)
    return application


def make_options(maker: ServiceMaker) -> Options:
    """A fresh instance of the plugin's options, showing the plugin's description in its help if it has none.

    Raises:
        PluginError: ``options`` does not give an Options instance.
    """
    from tapster._extras import install_hint
    from tapster.options import Options

    try:
        options = maker.options()
    except Exception as exc:
        raise PluginError(
            f"plugin {maker.tapname}: cannot create its options: {type(exc).__name__}: {exc}{install_hint(exc)}"
        ) from exc
    if not isinstance(options, Options):
        raise PluginError(
            f"plugin {maker.tapname}: options must be a tapster.Options subclass, not {maker.options!r}"
        )
    if not options.description:
        vars(options)["description"] = maker.description
    return options
