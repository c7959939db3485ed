"""--status ENDPOINT: /healthz, /readyz and /metrics on a listener of its own, beside (not in) the service tree.

aiohttp's low-level server is the protocol factory of one StreamServer, as for the web plugin (services/_web.py),
so any tapster endpoint serves it. It starts before the tree (a port in use fails the start with nothing else
started) and stops after it (so /readyz answers 503 through the whole stop). aiohttp and prometheus_client are
imported in :meth:`StatusServer.start`, never when the runner imports this module. docs/status.md has the
contract.

A request cannot make the process hold much: lines and header fields are capped, a connection that has not sent
a whole request head within REQUEST_TIMEOUT is closed (aiohttp's keep-alive timer covers the time between
requests), the handlers never read a body, and a response is at most the metrics text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from typing import Any, Protocol

from tapster._endpoint_inherited import InheritedServerEndpoint
from tapster.endpoints import ServerEndpoint
from tapster.errors import StartupError, TapsterError
from tapster.runner._state import ServerState, service_states
from tapster.service import Service

__all__ = ["StatusServer", "StatusView", "TreeView"]

logger = logging.getLogger("tapster.status")

REQUEST_TIMEOUT = 10.0
"""Seconds a new connection has to send its first whole request head."""

KEEPALIVE_TIMEOUT = 15.0
"""Seconds an idle keep-alive connection is kept (a scraper every 15 s keeps its one connection)."""

MAX_LINE = 4096
MAX_FIELD = 4096
MAX_HEADERS = 32

_PATHS = ("/healthz", "/readyz", "/metrics")


def _import_extras() -> Any:
    """aiohttp.web, with prometheus_client imported too; either missing names the ``metrics`` extra (which has both)."""
    import importlib

    from tapster._extras import MissingExtraError, extra_for

    try:
        web = importlib.import_module("aiohttp.web")
        importlib.import_module("prometheus_client")
    except ImportError as exc:
        if extra_for(exc) is None:
            raise
        raise MissingExtraError(
            f"--status needs {exc.name}: {exc} (pip install 'tapster[metrics]')", name=exc.name
        ) from exc
    return web


class StatusView(Protocol):
    """What the status server reports on: a single process's tree, or a ``--workers`` master's workers."""

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether /readyz answers 200, and its JSON body."""

    def trouble(self) -> str | None:
        """Why /healthz should fail besides the loop's lag (None: nothing)."""

    def collector(self, lag: Any, logs: Any) -> Any:
        """The prometheus_client collector of tapster's metrics, read at each scrape."""


class TreeView:
    """A single serving process: its phase and its service tree (docs/status.md)."""

    def __init__(self, root: Service, state: ServerState) -> None:
        self.root = root
        self.state = state

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        state = self.state
        services = [{"service": path, "state": what} for path, what in service_states(self.root, state)]
        body = {"ready": state.ready, "phase": state.phase, "draining": state.draining, "services": services}
        return state.ready, body

    def trouble(self) -> str | None:
        return None

    def collector(self, lag: Any, logs: Any) -> Any:
        from tapster.runner._status_metrics import TapsterCollector

        return TapsterCollector(self.root, self.state, lag, logs)


class _HeldEndpoint(InheritedServerEndpoint):
    """Listens on a copy of a socket the master holds (its owner: closing this never removes a unix file)."""

    __slots__ = ("sock",)

    def __init__(self, original: ServerEndpoint, sock: socket.socket) -> None:
        super().__init__(original, "status")
        self.sock = sock

    def _socket(self, kind: socket.SocketKind) -> socket.socket:
        return socket.socket(fileno=os.dup(self.sock.fileno()))


class StatusServer:
    """The status listener of one serving process; built before the loop logs anything, so logs are counted."""

    def __init__(
        self, endpoint: str, health_timeout: float, view: StatusView, sock: socket.socket | None = None
    ) -> None:
        from tapster.runner._status_metrics import LogCounter

        self.endpoint = endpoint
        self.sock = sock  # bound by a --workers master (and kept across an upgrade); None: bound here
        self.health_timeout = health_timeout
        self.view = view
        self.logs = LogCounter()
        logging.getLogger().addHandler(self.logs)
        self._listener: Any = None
        self._http: Any = None
        self._lag: Any = None
        self._collectors: list[Any] = []
        self._process: Any = None
        self._deadlines: dict[Any, asyncio.TimerHandle] = {}

    async def start(self) -> None:
        """Listen (before the tree starts); raises ListenError (one line) if the endpoint cannot be bound."""
        web = _import_extras()
        from tapster.runner._status_metrics import LoopLag
        from tapster.services._stream_server import StreamServer
        from tapster.services._web_access import ServerLog

        loop = asyncio.get_running_loop()
        self._lag = LoopLag(loop, min(1.0, self.health_timeout / 4))
        self._http = web.Server(
            self._handle,
            logger=ServerLog("tapster.status"),
            access_log=None,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
        )
        listener = StreamServer(self.endpoint, self._protocol, name="status", drain_timeout=1.0)
        if self.sock is not None:
            listener.endpoint = _HeldEndpoint(listener.endpoint, self.sock)
        try:
            await listener.privileged_start()
            await listener.start()
        except TapsterError as exc:  # a port in use: say which option's
            raise StartupError(f"--status: {exc}") from exc
        self._listener = listener
        self._lag.start()
        self._register()

    def _register(self) -> None:
        from prometheus_client import CollectorRegistry, ProcessCollector

        from tapster.metrics import registry

        assert self._lag is not None
        # The process metrics read /proc, and counting open fds lists /proc/self/fd: ~15 ms at 10,000 fds, in
        # the kernel. They are collected in a thread, from a registry of their own, so a scrape never holds the
        # loop for that; everything else is read on the loop, where the tree and the counters live.
        self._process = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self._process)
        collector = self.view.collector(self._lag, self.logs)
        registry().register(collector)  # type: ignore[arg-type]
        self._collectors = [collector]

    async def stop(self) -> None:
        """Close the listener and its connections (after the tree has stopped); safe to call at any point."""
        logging.getLogger().removeHandler(self.logs)
        if self._lag is not None:
            self._lag.stop()
        for handle in self._deadlines.values():
            handle.cancel()
        self._deadlines.clear()
        if self._collectors:
            from tapster.metrics import registry

            for collector in self._collectors:
                registry().unregister(collector)
            self._collectors = []
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stop()
        if self._http is not None:
            await self._http.shutdown(0.5)
            self._http = None

    def _protocol(self) -> asyncio.BaseProtocol:
        protocol: asyncio.BaseProtocol = self._http()
        loop = asyncio.get_running_loop()
        self._deadlines[protocol] = loop.call_later(REQUEST_TIMEOUT, self._expire, protocol)
        return protocol

    def _expire(self, protocol: Any) -> None:
        """No whole request head within REQUEST_TIMEOUT of connecting (a slow or silent client): hang up."""
        self._deadlines.pop(protocol, None)
        transport = getattr(protocol, "transport", None)
        if transport is not None:
            transport.abort()

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        handle = self._deadlines.pop(request.protocol, None)
        if handle is not None:
            handle.cancel()
        path = request.path
        if path not in _PATHS:
            return web.Response(status=404, text="not found: try /healthz, /readyz or /metrics\n")
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"}, text="method not allowed\n")
        if path == "/healthz":
            return self._healthz(web)
        if path == "/readyz":
            return self._readyz(web)
        return await self._metrics(web)

    def _healthz(self, web: Any) -> Any:
        assert self._lag is not None
        lag = self._lag.lag()
        if lag > self.health_timeout:
            return web.Response(status=503, text=f"event loop lagging: {lag:.3f} s\n")
        trouble = self.view.trouble()
        if trouble is not None:
            return web.Response(status=503, text=f"{trouble}\n")
        return web.Response(text="ok\n")

    def _readyz(self, web: Any) -> Any:
        ready, body = self.view.readiness()
        return web.Response(
            status=200 if ready else 503, text=json.dumps(body) + "\n", content_type="application/json"
        )

    async def _metrics(self, web: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from tapster.metrics import registry

        process = asyncio.get_running_loop().run_in_executor(None, generate_latest, self._process)
        ours = generate_latest(registry())
        response = web.Response(body=await process + ours)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
