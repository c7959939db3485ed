"""Static files under one directory: index files, directory listings, and aiohttp's FileResponse for the rest.

FileResponse does the parts HTTP is particular about (byte ranges, ``ETag`` and ``Last-Modified`` with their
``304 Not Modified`` answers, ``sendfile``, the MIME type from the name). This module decides which file a path
names, and refuses every path that would leave the directory:

- the path is split on ``/`` *before* percent-decoding, so ``%2f`` can never make a separator, and a segment that
  decodes to ``..``, or holds a ``/``, a backslash or a NUL, is refused (``404``: nothing is said about what lies
  outside);
- the file found is resolved with :func:`os.path.realpath` and must lie inside the directory's own real path, so
  a symbolic link may point anywhere inside the directory but never out of it;
- only regular files and directories are served (a FIFO would block a worker thread, a device is no web page).

Limit: the check and FileResponse's ``open`` are two steps. Someone who can write inside the directory could
swap a checked file for a link out of it in between; serve only directories that untrusted users cannot write.
"""

from __future__ import annotations

import html
import os
import stat
from collections.abc import Sequence
from urllib.parse import quote, unquote

from aiohttp import web
from aiohttp.web_request import BaseRequest

__all__ = ["INDEX_FILES", "StaticFiles"]

INDEX_FILES = ("index.html", "index.htm")
"""What a directory request serves when the directory has it; a listing otherwise."""

_REFUSED_IN_SEGMENT = ("/", "\\", "\0")


class StaticFiles:
    """Serves ``GET`` and ``HEAD`` for the files under ``root`` (see the module's docstring for the rules).

    Args:
        root: the directory; its real path is taken at once.
        index_files: the names tried, in order, for a directory.
        listings: whether a directory without an index file is listed (``403`` otherwise).
    """

    def __init__(self, root: str, index_files: Sequence[str] = INDEX_FILES, listings: bool = True) -> None:
        self.root = os.path.realpath(root)
        self.index_files = tuple(index_files)
        self.listings = listings

    def resolve(self, raw_path: str) -> str | None:
        """The real path of the file or directory ``raw_path`` (still percent-encoded) names, or None if it
        names nothing inside the root."""
        path = raw_path.partition("?")[0].partition("#")[0]
        parts: list[str] = []
        for segment in path.split("/"):
            name = unquote(segment, errors="surrogateescape")
            if name in ("", "."):
                continue
            if name == ".." or any(bad in name for bad in _REFUSED_IN_SEGMENT):
                return None
            parts.append(name)
        real = os.path.realpath(os.path.join(self.root, *parts))
        return real if self._inside(real) else None

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root.rstrip("/") + "/")

    async def __call__(self, request: BaseRequest) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        real = self.resolve(request.raw_path)
        if real is None:
            raise web.HTTPNotFound()
        try:
            mode = os.stat(real).st_mode
        except OSError:
            raise web.HTTPNotFound() from None
        if stat.S_ISREG(mode):
            return web.FileResponse(real)
        if not stat.S_ISDIR(mode):
            raise web.HTTPNotFound()
        path, _, query = request.raw_path.partition("?")
        if not path.endswith("/"):  # relative links in the page must resolve inside the directory
            raise web.HTTPMovedPermanently(path + "/" + ("?" + query if query else ""))
        for index in self.index_files:
            candidate = os.path.join(real, index)
            if os.path.isfile(candidate) and self._inside(os.path.realpath(candidate)):
                return web.FileResponse(os.path.realpath(candidate))
        if not self.listings:
            raise web.HTTPForbidden()
        return web.Response(text=self._listing(real, request.path), content_type="text/html")

    def _listing(self, directory: str, shown: str) -> str:
        """An HTML page listing ``directory``: names escaped for HTML, links percent-encoded."""
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError:
            raise web.HTTPForbidden() from None
        title = html.escape(f"Index of {shown}")
        rows = [] if os.path.realpath(directory) == self.root else ['<li><a href="../">../</a></li>']
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                continue
            name = entry.name + ("/" if is_dir else "")
            link = quote(entry.name, errors="surrogateescape") + ("/" if is_dir else "")
            shown_name = html.escape(name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
            rows.append(f'<li><a href="{html.escape(link)}">{shown_name}</a></li>')
        return (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
            f"<body><h1>{title}</h1>\n<ul>\n" + "\n".join(rows) + "\n</ul></body></html>\n"
        )
