"""Helpers for the plugin tests: write plugin modules and project folders, run with extra import paths."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path
from typing import Any

PLUGIN = """\
import os

from tapster.options import Options
from tapster.service import Service

if os.environ.get("PLUGIN_MARKERS"):  # lets a test see whether this module was imported
    with open(os.path.join(os.environ["PLUGIN_MARKERS"], {stem!r}), "a") as marker:
        marker.write("imported\\n")
{extra}

class _Options(Options):
    parameters = [("greeting", "g", "hi", "What to say.")]


class _Maker:
    tapname = {tapname!r}
    description = {description!r}
    options = _Options

    def make_service(self, options):
        return Service()


{variable} = _Maker()
"""


def plugin_folder(root: Path) -> Path:
    """``root/tapster/plugins``, created."""
    folder = root / "tapster" / "plugins"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_plugin(
    folder: Path,
    stem: str,
    tapname: str,
    description: str = "A test plugin.",
    *,
    extra: str = "",
    variable: str = "maker",
) -> Path:
    """A plugin module ``stem.py`` in ``folder`` with one ServiceMaker; ``extra`` runs at import."""
    path = folder / f"{stem}.py"
    source = PLUGIN.format(
        stem=stem, tapname=tapname, description=description, extra=textwrap.dedent(extra), variable=variable
    )
    path.write_text(source)
    return path


def python_path(*folders: Path) -> dict[str, str]:
    """An environment update putting ``folders`` first on the child's ``sys.path``."""
    old = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([*map(str, folders), *([old] if old else [])])}


def builtin_names() -> set[str]:
    """The tapnames of tapster's own plugins, which every listing includes."""
    from tapster._plugin_discovery import BUILTIN_FOLDER, scan_folder

    return {candidate.name for candidate in scan_folder(BUILTIN_FOLDER)}


def plugin_rows(help_text: str) -> list[str]:
    """The rows after the ``Plugins`` heading of ``tapster --help``, spaces collapsed, built-in plugins left out."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Plugins"))
    builtins = builtin_names()
    group_headings = re.compile(r"^ \S")  # " Built in:", " From plugin folders ...": not rows
    rows = [
        " ".join(line.split())
        for line in lines[start + 1 :]
        if line.strip() and not group_headings.match(line)
    ]
    return [row for row in rows if row.split()[0] not in builtins]


def cache_entries(path: Path) -> dict[str, Any]:
    """The entries of a plugin cache file (its second line; the first is the header)."""
    entries: dict[str, Any] = json.loads(path.read_text().split("\n")[1])
    return entries


def cache_header(path: Path) -> dict[str, Any]:
    """The header of a plugin cache file (its first line)."""
    header: dict[str, Any] = json.loads(path.read_text().split("\n")[0])
    return header
