"""Entry points of installed distributions, read without importing :mod:`importlib.metadata`.

``importlib.metadata`` is the reference, but importing it costs more than the rest of ``tapster --help``
(it pulls in :mod:`email`, :mod:`zipfile`, :mod:`csv` and more), and listing plugins has to be fast. The files it
reads for entry points are simple, so this module reads them itself, with the same rules:

- every ``*.dist-info`` and ``*.egg-info`` directory directly in each ``sys.path`` folder, folders in order;
- a project counts once: the first distribution found for a normalized name hides later ones (an older copy in
  a later folder), whether or not it has entry points;
- ``entry_points.txt`` is INI-like: ``[group]`` headers, ``name = module:attr [extras]`` lines, ``#`` comments.

``sys.path`` entries that are not plain folders (zip files, ``.egg`` folders) are handed to
:mod:`importlib.metadata` after all, which is imported only then. A test compares both readers.
"""

from __future__ import annotations

import os
import re
from typing import Any, NamedTuple

_INFO_SUFFIXES = (".dist-info", ".egg-info")
_VALUE = r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?(\[.*\]\s*)?$"


class EntryPointSpec(NamedTuple):
    """One entry point of the group, as declared; loading it is a separate step."""

    name: str
    value: str  # "module:attr" or "module"
    dist_name: str
    dist_version: str
    location: str  # the sys.path folder holding the distribution (where its cache lives)
    stamp: list[int]  # size and mtime_ns of entry_points.txt: a reinstall of the same version changes it

    @property
    def origin(self) -> str:
        """How listings and errors name it."""
        return f"entry point {self.name} = {self.value} ({self.dist_name} {self.dist_version})"


def normalize(name: str) -> str:
    """The project name as importlib.metadata compares it (PEP 503, then dashes to underscores)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def find_entry_points(group: str, path: list[str]) -> list[EntryPointSpec]:
    """Every entry point of ``group`` in the distributions on ``path``, in importlib.metadata's order."""
    found: list[EntryPointSpec] = []
    seen: set[str] = set()
    for entry in path:
        folder = entry or "."
        if os.path.isdir(folder) and not folder.endswith(".egg"):
            found += _from_folder(group, folder, seen)
        elif os.path.exists(folder):
            found += _from_importlib(group, folder, seen)
    return found


def _from_folder(group: str, folder: str, seen: set[str]) -> list[EntryPointSpec]:
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    found: list[EntryPointSpec] = []
    for child in names:
        lower = child.lower()
        if not lower.endswith(_INFO_SUFFIXES):
            continue
        key = normalize(lower.rpartition(".")[0].partition("-")[0])
        if key in seen:
            continue
        seen.add(key)
        info = os.path.join(folder, child)
        try:
            with open(os.path.join(info, "entry_points.txt"), encoding="utf-8") as handle:
                stat = os.fstat(handle.fileno())
                text = handle.read()
        except (OSError, UnicodeDecodeError):
            continue  # no entry points (or an egg-info file, which has none)
        entries = parse_entry_points(text, group)
        if not entries:
            continue
        name, version = _name_and_version(info, child)
        stamp = [stat.st_size, stat.st_mtime_ns]
        found += [EntryPointSpec(ep, value, name, version, folder, stamp) for ep, value in entries]
    return found


def parse_entry_points(text: str, group: str) -> list[tuple[str, str]]:
    """The ``(name, value)`` pairs of ``group`` in the text of an ``entry_points.txt`` file."""
    entries: list[tuple[str, str]] = []
    current: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
        elif current == group:
            name, eq, value = line.partition("=")
            if eq:
                entries.append((name.strip(), value.strip()))
    return entries


def _name_and_version(info: str, child: str) -> tuple[str, str]:
    """Name and version from the metadata headers, falling back to the directory name."""
    stem = child.rpartition(".")[0]
    name, _, version = stem.partition("-")
    version = version.partition("-py")[0]
    metadata = "METADATA" if child.lower().endswith(".dist-info") else "PKG-INFO"
    try:
        with open(os.path.join(info, metadata), encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    break  # end of the headers
                key, _, value = line.partition(":")
                if key == "Name":
                    name = value.strip()
                elif key == "Version":
                    version = value.strip()
    except (OSError, UnicodeDecodeError):
        pass
    return name, version


def _from_importlib(group: str, location: str, seen: set[str]) -> list[EntryPointSpec]:
    """Zip files and eggs on ``sys.path``: let importlib.metadata read them."""
    from importlib import metadata

    found: list[EntryPointSpec] = []
    for dist in metadata.distributions(path=[location]):
        name = dist.metadata["Name"] or ""
        if not name or normalize(name) in seen:
            continue
        seen.add(normalize(name))
        for ep in dist.entry_points.select(group=group):
            found.append(EntryPointSpec(ep.name, ep.value, name, dist.version, location, [0, 0]))
    return found


def load_entry_point(value: str) -> Any:
    """Import the module of ``value`` (``module`` or ``module:attr.attr``) and return the named object.

    ``pkgutil.resolve_name`` resolves it, as for ``--logger`` and ``--namespace`` (tapster/_resolve.py); its
    errors are passed on unchanged, so the plugin listing can name a missing module.

    Raises:
        ValueError: ``value`` is not of that form.
        Exception: whatever importing the module raises; AttributeError for a missing attribute.
    """
    import pkgutil

    if re.match(_VALUE, value) is None:
        raise ValueError(f"malformed entry point value {value!r}")
    return pkgutil.resolve_name(value)
