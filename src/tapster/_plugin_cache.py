"""The plugin cache: one JSON file per folder, so listing plugins imports no module that has not changed.

A folder of plugin modules keeps ``.tapster-plugins.json`` beside them; a folder holding installed distributions
keeps one for their entry points. Each entry is keyed by what identifies the source (a file name; a distribution
name, version and entry point name) and is ``[size, mtime_ns, [[attr, tapname, description], ...]]``: the *stamp*
(file size and modification time in nanoseconds), then the plugins. An entry whose stamp no longer matches is
ignored and rebuilt by importing the module again. Lists rather than objects, and no indentation, because
``tapster --help`` reads the whole file on every run: with 1,000 plugins this layout parses in half the time.

Only successful imports are stored. A module that failed is tried again on every run, so installing its missing
dependency is enough to make the plugin appear (twistd's ``dropin.cache`` keeps such a plugin hidden until the
cache file is deleted by hand).

The file is written atomically (a temporary file in the same folder, then ``os.replace``) and only when something
changed. A folder that cannot be written to simply has no cache; a cache that cannot be read or parsed is
treated as empty. Neither is ever an error.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

CACHE_NAME = ".tapster-plugins.json"
_FORMAT = 2  # bump when the layout changes; older files are then ignored and rewritten

MODULES = "modules"  # section: plugin module file name -> plugins
ENTRY_POINTS = "entry_points"  # section: "dist version entry-point-name" -> plugins

Stamp = list[int]  # [size, mtime_ns]; a list because that is what JSON gives back
PluginRecord = list[str]  # [attr, tapname, description]; attr is "" for an object entry point


def stamp_of(stat: os.stat_result) -> Stamp:
    """The stamp of a file: what must stay the same for its cache entry to be trusted."""
    return [stat.st_size, stat.st_mtime_ns]


class FolderCache:
    """The cache file of one folder: read once, changed in memory, written back by :meth:`save` if changed."""

    def __init__(self, folder: str, *, enabled: bool = True) -> None:
        """Read ``folder``'s cache file, if any; ``enabled=False`` makes a cache that neither reads nor writes."""
        self.path = os.path.join(folder, CACHE_NAME)
        self.enabled = enabled
        self._sections: dict[str, dict[str, Any]] = {MODULES: {}, ENTRY_POINTS: {}}
        self._dirty = False
        if enabled:
            self._load()

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                data = json.loads(handle.read())
        except (OSError, ValueError):
            return
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            self._dirty = True  # rewrite it in the current format
            return
        for name in self._sections:
            section = data.get(name)
            if isinstance(section, dict):
                self._sections[name] = section

    def lookup(self, section: str, key: str, stamp: Stamp) -> list[PluginRecord] | None:
        """The cached plugins of ``key`` if its stamp still matches, else None (also for a malformed entry)."""
        entry = self._sections[section].get(key)
        if type(entry) is not list or len(entry) != 3:
            return None
        size, mtime, plugins = entry
        if size != stamp[0] or mtime != stamp[1] or type(plugins) is not list:
            return None
        for record in plugins:  # written out rather than all(...): --help runs this once per cached plugin
            if (
                type(record) is not list
                or len(record) != 3
                or type(record[0]) is not str
                or type(record[1]) is not str
                or type(record[2]) is not str
            ):
                return None
        return plugins

    def store(self, section: str, key: str, stamp: Stamp, plugins: list[PluginRecord]) -> None:
        """Remember the plugins ``key`` provides (possibly none) as of ``stamp``."""
        entry = [stamp[0], stamp[1], plugins]
        if self._sections[section].get(key) != entry:
            self._sections[section][key] = entry
            self._dirty = True

    def forget(self, section: str, key: str) -> None:
        """Drop ``key``: it failed, so it must be imported again next time."""
        if self._sections[section].pop(key, None) is not None:
            self._dirty = True

    def keep_only(self, section: str, keys: set[str]) -> None:
        """Drop the entries of files or distributions that are gone."""
        stale = [key for key in self._sections[section] if key not in keys]
        for key in stale:
            del self._sections[section][key]
        self._dirty = self._dirty or bool(stale)

    def save(self) -> None:
        """Write the cache if it changed; any failure to write only means there is no cache."""
        if not self.enabled or not self._dirty:
            return
        self._dirty = False
        data = {"format": _FORMAT, **{name: section for name, section in self._sections.items() if section}}
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(data, handle, separators=(",", ":"), sort_keys=True)
            os.replace(temporary, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
