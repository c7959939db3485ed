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

Small files skip FileResponse. It makes two trips to the loop's thread pool per request (``stat`` and
``open``, then ``close``), and for a 1 KiB file those trips are most of the work: the loop sat idle in ``epoll``
a third of the time waiting for them, and twistd (which opens in the reactor thread) answered as fast. A plain
``GET``/``HEAD`` for a regular file of at most :data:`SMALL_FILE` bytes is read on the loop (open, fstat, one
read, close; from the page cache that is microseconds) and answered with the same headers FileResponse would
send; a file that has not changed for a while is kept in a small cache (:class:`SmallFileCache`), so the next
request for it costs one ``lstat`` and no ``open``. Everything HTTP is particular about still goes to
FileResponse: a request with ``Range`` or a conditional header, and one whose ``Accept-Encoding`` could pick a
pre-compressed ``.gz``/``.br`` sibling that exists. A disk so slow that opening a small file blocks is a disk on
which twistd blocks too.

Between the check and the open, someone who can write inside the directory could swap a checked file, or a
directory in its path, for a link out of it. So files are opened relative to the root, each directory below it
relative to its parent with ``O_NOFOLLOW`` and the file relative to the last (:meth:`StaticFiles._open_inside`):
whatever is swapped meanwhile, what is opened lies inside the root (a swap makes it a 404). FileResponse, which
takes a path and opens it later on its thread pool, is given ``/proc/self/fd/N`` of the file so opened. A test
swaps a directory for a link as fast as it can during requests of each kind. Limit: a request that may get a
pre-compressed sibling, and a chroot without ``/proc``, give FileResponse the path, with the race.
"""

from __future__ import annotations

import asyncio
import errno
import html
import mimetypes
import os
import stat
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import quote, unquote

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["INDEX_FILES", "SMALL_FILE", "StaticFiles"]

SMALL_FILE = 64 * 1024
"""Files up to this size are read on the loop in one ``read`` (see the module's docstring)."""

_NEEDS_FILE_RESPONSE = (
    hdrs.RANGE,
    hdrs.IF_RANGE,
    hdrs.IF_MATCH,
    hdrs.IF_NONE_MATCH,
    hdrs.IF_MODIFIED_SINCE,
    hdrs.IF_UNMODIFIED_SINCE,
)
"""Request headers whose answers (206, 304, 412, 416) FileResponse gets right; we leave them to it."""

_PRECOMPRESSED = (("br", ".br"), ("gzip", ".gz"))
"""FileResponse's pre-compressed siblings: with an ``Accept-Encoding`` naming one, it may serve ``FILE.gz``."""

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)
"""``O_NONBLOCK``: a FIFO swapped in after the check must not block the loop in ``open``."""


def _content_types() -> mimetypes.MimeTypes:
    """The table FileResponse guesses with (its additions, compression suffixes as types): the same answer."""
    try:
        from aiohttp.web_fileresponse import CONTENT_TYPES
    except ImportError:  # aiohttp before 3.10 used the module-level guess
        return mimetypes.MimeTypes()
    return CONTENT_TYPES


_CONTENT_TYPES = _content_types()

_FALLBACK_TYPE = "application/octet-stream"

INDEX_FILES = ("index.html", "index.htm")
"""What a directory request serves when the directory has it; a listing otherwise."""

_REFUSED_IN_SEGMENT = ("/", "\\", "\0")


class _Cached(NamedTuple):
    identity: tuple[int, int, int, int, int]
    body: bytes
    headers: CIMultiDict[str]


_Headers = CIMultiDictProxy[str] | CIMultiDict[str]


class SmallFileCache:
    """The bytes and headers of recently served small files, at most ``limit`` bytes of them, least recently
    used first out.

    An entry is used only while a fresh ``stat`` of the path shows the same file unchanged: device, inode,
    size, and the modification and change times to the nanosecond. Any write, ``chmod``, rename over it or
    truncation changes the change time. That time has a clock tick's resolution, though, so a file changed
    twice within one tick could look unchanged: a file is only kept once it has not changed for
    :data:`SETTLED` seconds (git's answer to the same "racy" timestamps), and a change after that gets a new
    change time.
    """

    SETTLED = 2.0
    MAX_ENTRIES = 4096  # empty files count no bytes: the number of entries has a bound of its own

    def __init__(self, limit: int = 8 << 20) -> None:
        self.limit = limit
        self._entries: OrderedDict[str, _Cached] = OrderedDict()
        self._size = 0

    @staticmethod
    def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def get(self, path: str, st: os.stat_result) -> _Cached | None:
        entry = self._entries.get(path)
        if entry is None:
            return None
        if entry.identity != self._identity(st):
            self._drop(path)
            return None
        self._entries.move_to_end(path)
        return entry

    def put(self, path: str, st: os.stat_result, body: bytes, headers: _Headers) -> None:
        if time.time() - st.st_ctime < self.SETTLED or len(body) > self.limit:
            return
        self._drop(path)
        kept = CIMultiDict((name, headers[name]) for name in _CACHED_HEADERS if name in headers)
        self._entries[path] = _Cached(self._identity(st), body, kept)
        self._size += len(body)
        while self._size > self.limit or len(self._entries) > self.MAX_ENTRIES:
            self._drop(next(iter(self._entries)))

    def _drop(self, path: str) -> None:
        entry = self._entries.pop(path, None)
        if entry is not None:
            self._size -= len(entry.body)


_CACHED_HEADERS = (hdrs.CONTENT_TYPE, hdrs.ETAG, hdrs.LAST_MODIFIED, hdrs.ACCEPT_RANGES)


def _may_pick_sibling(request: BaseRequest, real: str) -> bool:
    """Whether FileResponse might answer with a pre-compressed ``real.gz``/``real.br``: one exists and the client
    accepts its encoding."""
    accept_encoding = request.headers.get(hdrs.ACCEPT_ENCODING, "").lower()
    return bool(accept_encoding) and any(
        coding in accept_encoding and os.path.lexists(real + suffix) for coding, suffix in _PRECOMPRESSED
    )


def _proc_fds() -> bool:
    """Whether ``/proc/self/fd`` is there (not in a chroot without ``/proc``); looked at on each request, since a
    chroot comes after the server is made."""
    return os.path.isdir("/proc/self/fd")


class _HeldFileResponse(web.FileResponse):
    """FileResponse for a file we hold open: it opens ``/proc/self/fd/N``, and the descriptor is closed once the
    response is done (or, if it is never sent, when the response is collected)."""

    def __init__(self, fd: int, content_type: str) -> None:
        super().__init__(f"/proc/self/fd/{fd}", headers={hdrs.CONTENT_TYPE: content_type})
        self._release = weakref.finalize(self, os.close, fd)

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        try:
            writer = await super().prepare(request)
        except asyncio.CancelledError:
            # Cancelled (a shutdown) while the thread pool may still be opening /proc/self/fd/N: closing N now
            # could let it open whatever file takes the number next. The pool's job holds this response, so the
            # finalizer closes N only once that job is done.
            raise
        except BaseException:
            self._release()
            raise
        self._release()
        return writer


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
        self._cache = SmallFileCache()

    def _locate(self, raw_path: str) -> tuple[str, os.stat_result | None] | None:
        """The real path of the file or directory ``raw_path`` (still percent-encoded) names, or None if it
        names nothing inside the root; with its ``lstat`` when that was taken on the way (no link in it).

        The root is a real path already, so only the request's own segments can be links: each is looked at
        with one ``lstat`` (one for ``/file``), and only a path with a link in it pays for ``realpath``, which
        looks at every component from ``/`` again. A name that does not exist is None at once.
        """
        path = raw_path.partition("?")[0].partition("#")[0]
        parts: list[str] = []
        for segment in path.split("/"):
            name = unquote(segment, errors="surrogateescape")
            if name in ("", "."):
                continue
            if name == ".." or any(bad in name for bad in _REFUSED_IN_SEGMENT):
                return None
            parts.append(name)
        here, st = self.root, None
        for part in parts:
            here = os.path.join(here, part)
            try:
                st = os.lstat(here)
            except OSError:
                return None
            if stat.S_ISLNK(st.st_mode):
                try:
                    real = os.path.realpath(os.path.join(self.root, *parts))
                except OSError:  # a link loop (3.13's strict checks), or the path changing under us
                    return None
                return (real, None) if self._inside(real) else None
        return here, st

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root.rstrip("/") + "/")

    async def __call__(self, request: BaseRequest) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        found = self._locate(request.raw_path)
        if found is None:
            raise web.HTTPNotFound()
        real, st = found
        if st is None:
            try:
                st = os.stat(real)
            except OSError:
                raise web.HTTPNotFound() from None
        mode = st.st_mode
        if stat.S_ISREG(mode):
            return self._small_file(request, real, st) or self._file_response(request, real, st)
        if not stat.S_ISDIR(mode):
            raise web.HTTPNotFound()
        path, _, query = request.raw_path.partition("?")
        if not path.endswith("/"):  # relative links in the page must resolve inside the directory
            raise web.HTTPMovedPermanently(path + "/" + ("?" + query if query else ""))
        for index in self.index_files:
            candidate = os.path.realpath(os.path.join(real, index))
            try:
                found_st = os.stat(candidate)
            except OSError:
                continue
            if stat.S_ISREG(found_st.st_mode) and self._inside(candidate):
                return self._small_file(request, candidate, found_st) or self._file_response(
                    request, candidate, found_st
                )
        if not self.listings:
            raise web.HTTPForbidden()
        return web.Response(text=self._listing(real, request.path), content_type="text/html")

    def _file_response(self, request: BaseRequest, real: str, checked: os.stat_result) -> web.StreamResponse:
        """FileResponse for the file at ``real``, given the file already opened inside the root.

        FileResponse takes a path, and opens it later on its thread pool: between our check and its open,
        someone who can write in the directory could swap a part of the path for a link out of it. So the file
        is opened here the safe way (:meth:`_open_inside`) and FileResponse gets ``/proc/self/fd/N`` for it:
        opening that opens the very file we hold, whatever happens to the names meanwhile. Without ``/proc``
        (a chroot without it), and for a request that may pick a pre-compressed sibling, FileResponse gets the
        path as before.
        """
        if not _proc_fds() or _may_pick_sibling(request, real):
            return web.FileResponse(real)
        opened = self._open_checked(real, checked)
        if opened is None:
            return web.FileResponse(real)  # FileResponse gives the 403 or 404 it gives for this
        content_type = _CONTENT_TYPES.guess_type(real)[0] or _FALLBACK_TYPE
        return _HeldFileResponse(opened[0], content_type)

    def _open_checked(self, real: str, checked: os.stat_result) -> tuple[int, os.stat_result] | None:
        """The file at ``real`` opened inside the root (:meth:`_open_inside`), with its ``fstat``; None when it
        cannot be opened for a reason FileResponse answers itself (403, 404).

        Raises:
            HTTPNotFound: a part of the checked path became a link, or the file is not the one checked.
        """
        try:
            fd = self._open_inside(real)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR):  # a part of the checked path became a link since
                raise web.HTTPNotFound() from None
            return None
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise web.HTTPNotFound() from None
        if (st.st_dev, st.st_ino) != (checked.st_dev, checked.st_ino) or not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise web.HTTPNotFound()  # replaced since the check: not the file that was checked
        return fd, st

    def _small_file(self, request: BaseRequest, real: str, checked: os.stat_result) -> web.Response | None:
        """The whole answer for a plain request of a small file, read on the loop; None leaves it to FileResponse."""
        if checked.st_size > SMALL_FILE:
            return None
        headers = request.headers
        if any(name in headers for name in _NEEDS_FILE_RESPONSE):
            return None
        if _may_pick_sibling(request, real):
            return None
        cached = self._cache.get(real, checked)
        if cached is not None:
            return web.Response(body=cached.body, headers=cached.headers)
        opened = self._open_checked(real, checked)
        if opened is None:
            return None
        fd, st = opened
        try:
            if st.st_size > SMALL_FILE:
                return None
            body = os.read(fd, st.st_size + 1)
        except OSError:
            return None
        finally:
            os.close(fd)
        if len(body) != st.st_size:
            return None  # written to while we read: FileResponse sends what the size says
        response = web.Response(body=body)
        response.content_type = _CONTENT_TYPES.guess_type(real)[0] or _FALLBACK_TYPE
        response.etag = f"{st.st_mtime_ns:x}-{st.st_size:x}"
        response.last_modified = st.st_mtime
        response.headers[hdrs.ACCEPT_RANGES] = "bytes"
        self._cache.put(real, st, body, response.headers)
        return response

    def _open_inside(self, real: str) -> int:
        """Open the file at ``real`` (a real path inside the root) without following any link on the way.

        Each directory below the root is opened relative to its parent with ``O_NOFOLLOW``, and the file
        relative to the last one: a directory or the file swapped for a link after the check makes the open
        fail (``ELOOP``/``ENOTDIR``), so what is opened lies inside the root whatever was swapped meanwhile.
        The root itself is opened by its path on every call, so a directory moved into place at the root's
        path (a deploy by ``mv``) is what is served from then on.
        """
        parts = real[len(self.root) :].strip("/").split("/")
        here = os.open(self.root, _DIRECTORY_FLAGS)
        try:
            for part in parts[:-1]:
                below = os.open(part, _DIRECTORY_FLAGS | os.O_NOFOLLOW, dir_fd=here)
                os.close(here)
                here = below
            return os.open(parts[-1], _OPEN_FLAGS, dir_fd=here)
        finally:
            os.close(here)

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
