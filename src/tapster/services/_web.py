"""WebServer: aiohttp's HTTP server on any tapster endpoints, serving static files, a WSGI app or an ASGI app.

aiohttp is imported when the server starts, never when this module is (the core must not pay for it); a missing
aiohttp is one line naming the ``web`` extra. aiohttp's low-level server is used as a plain protocol factory,
so each endpoint listens through tapster's own code (tcp, tcp6, ssl, unix, systemd), with tapster's per
connection log context and its start-up rules (bind in ``privileged_start``, accept in ``start``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Any, ClassVar

from tapster.service import MultiService
from tapster.services._stream_server import StreamServer

__all__ = ["DEFAULT_KEEPALIVE", "WebServer"]

logger = logging.getLogger("tapster.web")

DEFAULT_KEEPALIVE = 75.0
"""Seconds an idle keep-alive connection is kept (nginx's default; aiohttp's own is an hour)."""


class _Listener(StreamServer):
    """One endpoint of a WebServer: a StreamServer whose log lines carry the web server's label."""

    def __init__(self, endpoint: str | int, factory: Any, label: str) -> None:
        super().__init__(endpoint, factory)
        self._label = label

    @property
    def label(self) -> str:
        return self._label


class WebServer(MultiService):
    """An HTTP server for static files (``path``), a WSGI app (``wsgi``) or an ASGI app (``asgi``).

    Stopping is graceful: the listeners close first; idle keep-alive connections are closed at once; requests in
    flight run to their end (within ``drain_timeout`` if given, else until the runner's ``--shutdown-timeout``
    cancels the stop, when what is left is closed); then the ASGI app's lifespan shut-down runs and the WSGI
    thread pool is released.

    Args:
        listen: one endpoint or a list of them (``"tcp:8080"``, ``"unix:/run/web.sock"``, ``"systemd:..."``).
        path: a directory to serve (index files, listings, ranges, conditional requests; see _web_static).
        wsgi: a WSGI application object, run on a pool of ``threads`` threads by a2wsgi.
        asgi: an ASGI application object, with the lifespan protocol.
        threads: the WSGI thread pool's size.
        headers: ``(name, value)`` pairs set on every response.
        access_log: ``"-"`` for the main log (logger ``tapster.web.access``), ``None`` for none, or a file.
        listings: list a directory that has no index file (``403`` otherwise).
        drain_timeout: seconds in-flight requests get at stop; None: the runner's shutdown timeout.
        keepalive_timeout: seconds an idle keep-alive connection is kept open.
        name: the service name, and the label of its log lines.
    """

    transient: ClassVar[tuple[str, ...]] = ("_http", "_content", "_access_handler")

    def __init__(
        self,
        listen: str | int | Sequence[str | int] = "tcp:8080",
        *,
        path: str | None = None,
        wsgi: Any = None,
        asgi: Any = None,
        threads: int = 10,
        headers: Sequence[tuple[str, str]] = (),
        access_log: str | None = "-",
        listings: bool = True,
        drain_timeout: float | None = None,
        keepalive_timeout: float = DEFAULT_KEEPALIVE,
        name: str = "WebServer",
    ) -> None:
        super().__init__()
        given = [
            what for what, value in (("path", path), ("wsgi", wsgi), ("asgi", asgi)) if value is not None
        ]
        if len(given) != 1:
            raise ValueError(f"WebServer needs exactly one of path, wsgi or asgi; got {given or 'none'}")
        if threads < 1:
            raise ValueError(f"WebServer threads must be at least 1, got {threads}")
        self.name = name
        self.path = path
        self.wsgi = wsgi
        self.asgi = asgi
        self.threads = threads
        self.headers = tuple(headers)
        # a file is named now, so a later chdir (the runner's --rundir, a chroot) does not move it
        self.access_log = access_log if access_log in (None, "-") else os.path.abspath(str(access_log))
        self.listings = listings
        self.drain_timeout = drain_timeout
        self.keepalive_timeout = keepalive_timeout
        self._http: Any = None
        self._content: Any = None
        self._access_handler: logging.Handler | None = None
        endpoints = [listen] if isinstance(listen, str | int) else list(listen)
        if not endpoints:
            raise ValueError("WebServer needs at least one endpoint to listen on")
        for endpoint in endpoints:
            _Listener(endpoint, self._protocol, name).set_parent(self)

    @property
    def listeners(self) -> list[StreamServer]:
        return [child for child in self if isinstance(child, StreamServer)]

    @property
    def port(self) -> int:
        """The TCP port of the first listener (for tests that listen on port 0)."""
        return self.listeners[0].port

    def _protocol(self) -> asyncio.BaseProtocol:
        protocol: asyncio.BaseProtocol = self._http()
        return protocol

    def _access_logger(self) -> logging.Logger | None:
        from tapster.log._service_files import service_file_logger
        from tapster.services._web_access import ACCESS_LOGGER

        if self.access_log is None:
            return None
        if self.access_log == "-":
            return logging.getLogger(ACCESS_LOGGER)
        access, self._access_handler = service_file_logger(self.access_log, f"{ACCESS_LOGGER}.{id(self)}")
        return access

    def service_log_files(self) -> list[str]:
        """The log files of this service's own (``--access-log FILE``): under ``--workers`` the master opens and
        writes them (tapster/log/_service_files.py)."""
        return [] if self.access_log in (None, "-") else [str(self.access_log)]

    async def privileged_start(self) -> None:
        if self._http is None:
            self._build()
        await super().privileged_start()

    def _build(self) -> None:
        from tapster._extras import import_extra

        web = import_extra("aiohttp.web", "tapster's web server")
        if self.wsgi is not None:
            import_extra("a2wsgi", "tapster's WSGI server")
        from tapster.services._web_access import CombinedLogFormat, ServerLog
        from tapster.services._web_handler import build_content

        self._content = build_content(
            label=self.name or "WebServer",
            path=self.path,
            wsgi=self.wsgi,
            asgi=self.asgi,
            threads=self.threads,
            headers=self.headers,
            listings=self.listings,
        )
        access = self._access_logger()
        options: dict[str, Any] = {"keepalive_timeout": self.keepalive_timeout}
        if access is None:
            options["access_log"] = None
        else:
            options.update(access_log=access, access_log_class=CombinedLogFormat)
        self._http = web.Server(self._content.handler, logger=ServerLog("tapster.web"), **options)

    async def start(self) -> None:
        if self._http is None:
            self._build()
        await self._content.startup()  # the lifespan start-up, before any request is accepted
        try:
            await super().start()
        except BaseException:
            await self._content.shutdown()
            raise

    async def stop(self) -> None:
        if not self.running:
            return
        await super().stop()  # the listeners close: nothing new arrives
        http, content = self._http, self._content
        try:
            await self._drain(http)
        finally:
            self._http = None
            try:
                await content.shutdown()
            finally:
                if self._access_handler is not None:
                    self._access_handler.close()
                    self._access_handler = None

    async def _drain(self, http: Any) -> None:
        """Close idle keep-alive connections now; let requests in flight finish, then close theirs."""
        busy = len(http.connections)
        if busy:
            logger.info("%s: stopping; draining %d open connection(s)", self.name, busy)
        http.pre_shutdown()  # idle connections close now, busy ones after their response
        try:
            await http.shutdown(self.drain_timeout)
        except asyncio.CancelledError:
            left = http.connections
            # aiohttp keeps each connection's task private; cancelled and awaited here, a request cut off at
            # the deadline ends in its own code (finally blocks run) rather than as a destroyed pending task.
            tasks = [
                task for conn in left if (task := getattr(conn, "_task_handler", None)) and not task.done()
            ]
            for connection in left:
                connection.force_close()
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=1.0)
            if left:
                logger.warning(
                    "%s: closed %d connection(s) still busy at the shutdown deadline", self.name, len(left)
                )
            raise
