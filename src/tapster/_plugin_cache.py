"""The plugin cache: one JSON file per folder, so listing plugins imports no module that has not changed.

A folder of plugin modules keeps ``.tapster-plugins.json`` beside them; a folder holding installed distributions
keeps one for their entry points. Each entry is keyed by what identifies the source (a file name; a distribution
name, version and entry point name) and is ``[size, mtime_ns, [[attr, tapname, description], ...]]``: the *stamp*
(file size and modification time in nanoseconds), then the plugins. An entry whose stamp no longer matches is
ignored and rebuilt by importing the module again. Lists rather than objects, and no indentation, because
``tapster --help`` may read the whole file: with 1,000 plugins this layout parses in half the time of indented
objects.

The file is two lines of JSON. The second holds the entries. The first, the *header*, is all that a warm
``tapster --help`` parses:

- ``snapshot``: every plugin module file of the folder with its stamp (``name:size:mtime_ns``, ``/``-separated;
  for a folder of distributions, every entry point), written only when every one of them is cached. A string
  compares in one step, where 1,000 entries would each be parsed and checked; if the folder still gives the same
  string, every entry is known valid at once.
- ``token``: the length and CRC-32 of the second line. A header is trusted only beside the entries it was written
  with (an entry edited by hand voids the whole file), and a listing built from the folder names by it the
  entries it was built from.
- ``listing``: in the first plugin folder only, the rendered plugin listing of ``tapster --help`` and the key
  that says what it was built from (the tokens of every folder and entry point it used, or the snapshot of one
  that has no cache; the versions of the code that rendered it); see :func:`tapster.plugin.cached_listing`.

Only successful imports are stored. A module that failed is tried again on every run, so installing its missing
dependency is enough to make the plugin appear (twistd's ``dropin.cache`` keeps such a plugin hidden until the
cache file is deleted by hand); a folder with such a module has no snapshot.

The file is written atomically (a temporary file in the same folder, then ``os.replace``), so a header always
describes the entries beside it, and only when something changed. A folder that cannot be written to simply has
no cache; a cache that cannot be read or parsed is treated as empty. Neither is ever an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from typing import Any

CACHE_NAME = ".tapster-plugins.json"
_FORMAT = 3  # bump when the layout changes; older files are then ignored and rewritten

MODULES = "modules"  # section: plugin module file name -> plugins
ENTRY_POINTS = "entry_points"  # section: "dist version entry-point-name" -> plugins

Stamp = list[int]  # [size, mtime_ns]; a list because that is what JSON gives back
PluginRecord = list[str]  # [attr, tapname, description]; attr is "" for an object entry point
Header = dict[str, Any]  # the first line of a cache file


def read_header(folder: str) -> Header | None:
    """The header of ``folder``'s cache file (its first line), without parsing the entries; None if unusable."""
    try:
        with open(os.path.join(folder, CACHE_NAME), "rb") as handle:
            return _header(handle.readline(), handle.read())
    except OSError:
        return None


def _header(head: bytes, body: bytes) -> Header | None:
    """The parsed header, if it is of this format and its token is that of ``body`` (the rest of the file)."""
    try:
        header = json.loads(head)
    except ValueError:
        return None
    if type(header) is not dict or header.get("format") != _FORMAT or header.get("token") != _token(body):
        return None
    return header


def header_token(header: Header | None, snapshot: str) -> str | None:
    """The header's token if its snapshot is ``snapshot`` (the folder as it is now), else None."""
    if header is None or not snapshot or header.get("snapshot") != snapshot:
        return None
    token: str = header["token"]
    return token


def stored_listing(header: Header | None, key: list[Any]) -> str | None:
    """The listing the header holds, if it was stored under ``key``."""
    listing = header.get("listing") if header is not None else None
    if type(listing) is not list or len(listing) != 2 or listing[0] != key or type(listing[1]) is not str:
        return None
    text: str = listing[1]
    return text


class FolderCache:
    """The cache file of one folder: read once, changed in memory, written back by :meth:`save` if changed."""

    def __init__(self, folder: str, *, enabled: bool = True) -> None:
        """Read ``folder``'s cache file, if any; ``enabled=False`` makes a cache that neither reads nor writes."""
        self.path = os.path.join(folder, CACHE_NAME)
        self.enabled = enabled
        self._sections: dict[str, dict[str, Any]] = {MODULES: {}, ENTRY_POINTS: {}}
        self._snapshot = ""
        self._listing: list[Any] | None = None
        self._token: str | None = None  # the token of the file as last read or written
        self._dirty = False
        if enabled:
            self._load()

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                head, body = handle.readline(), handle.read()
        except OSError:
            return
        header = _header(head, body)
        try:
            data = json.loads(body) if header is not None else None
        except ValueError:
            data = None
        if header is None or type(data) is not dict:
            self._dirty = True  # garbage, another format, or entries not those the header was written with
            return
        for name in self._sections:
            section = data.get(name)
            if isinstance(section, dict):
                self._sections[name] = section
        snapshot, listing = header.get("snapshot"), header.get("listing")
        self._snapshot = snapshot if type(snapshot) is str else ""
        self._token = header["token"]
        self._listing = listing if type(listing) is list and len(listing) == 2 else None

    @property
    def token(self) -> str | None:
        """The token of the entries and snapshot on disk, if they are what this object holds; else None."""
        return None if self._dirty or not self.enabled or not self._snapshot else self._token

    def lookup(self, section: str, key: str, stamp: Stamp) -> list[PluginRecord] | None:
        """The cached plugins of ``key`` if its stamp still matches, else None (also for a malformed entry)."""
        entry = self._sections[section].get(key)
        if type(entry) is not list or len(entry) != 3:
            return None
        size, mtime, plugins = entry
        if size != stamp[0] or mtime != stamp[1] or type(plugins) is not list:
            return None
        if not all(
            type(record) is list and len(record) == 3 and all(type(x) is str for x in record)
            for record in plugins
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
            self._snapshot = ""  # not every file is cached any more
            self._dirty = True

    def keep_only(self, section: str, keys: set[str]) -> None:
        """Drop the entries of files or distributions that are gone."""
        stale = [key for key in self._sections[section] if key not in keys]
        for key in stale:
            del self._sections[section][key]
        self._dirty = self._dirty or bool(stale)

    def set_snapshot(self, snapshot: str) -> None:
        """Record the folder's module files as scanned (``""``: not every one is cached, so no snapshot)."""
        if snapshot != self._snapshot:
            self._snapshot = snapshot
            self._dirty = True

    def set_listing(self, key: list[Any], text: str) -> None:
        """Store a rendered listing under ``key`` (written by the next :meth:`save`; the token stays)."""
        if self._listing != [key, text]:
            self._listing = [key, text]
            self._dirty = True

    def save(self) -> None:
        """Write the cache if it changed; any failure to write only means there is no cache."""
        if not self.enabled or not self._dirty:
            return
        sections = {name: section for name, section in self._sections.items() if section}
        body = json.dumps(sections, separators=(",", ":"), sort_keys=True) + "\n"
        token = _token(body.encode())
        header: dict[str, Any] = {"format": _FORMAT, "snapshot": self._snapshot, "token": token}
        if self._listing is not None:
            header["listing"] = self._listing
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(header, separators=(",", ":")) + "\n" + body)
            os.replace(temporary, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            return
        self._dirty = False
        self._token = token


def _token(body: bytes) -> str:
    """The entries' checksum: a header is trusted only beside the entries it was written with, and a listing
    built from a folder names the entries it was built from by it (equal snapshots, equal entries)."""
    return f"{len(body)}-{zlib.crc32(body):08x}"
