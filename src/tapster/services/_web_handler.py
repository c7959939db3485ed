"""What the web server answers with: static files, a WSGI app (through a2wsgi) or an ASGI app, plus the
operator's extra headers on every response. Imported only when a WebServer starts (it imports aiohttp)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

from tapster.services._web_asgi import ASGIApp, ASGIBridge, Lifespan
from tapster.services._web_static import StaticFiles

__all__ = ["Content", "build_content"]

logger = logging.getLogger("tapster.web")

Handler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]


class Content:
    """The request handler, and what must start before it serves and stop after it has (lifespan, threads)."""

    def __init__(self, handler: Handler, lifespan: Lifespan | None, executor: Any = None) -> None:
        self.handler = handler
        self.lifespan = lifespan
        self.executor = executor

    async def startup(self) -> None:
        if self.lifespan is not None:
            await self.lifespan.startup()

    async def shutdown(self) -> None:
        try:
            if self.lifespan is not None:
                await self.lifespan.shutdown()
        finally:
            if self.executor is not None:
                self.executor.shutdown(wait=False, cancel_futures=True)


def _decorator(headers: Sequence[tuple[str, str]]) -> Callable[[web.StreamResponse], None]:
    def decorate(response: web.StreamResponse) -> None:
        for name, value in headers:
            response.headers[name] = value

    return decorate


def build_content(
    *,
    label: str,
    path: str | None,
    wsgi: Any,
    asgi: Any,
    threads: int,
    headers: Sequence[tuple[str, str]],
    listings: bool = True,
) -> Content:
    """The handler for one of ``path``, ``wsgi`` or ``asgi`` (exactly one is given)."""
    decorate = _decorator(headers)
    lifespan: Lifespan | None = None
    executor = None
    inner: Handler
    if path is not None:
        inner = StaticFiles(path, listings=listings)
    else:
        app: ASGIApp
        if wsgi is not None:
            from a2wsgi import WSGIMiddleware

            middleware = WSGIMiddleware(wsgi, workers=threads)
            executor = middleware.executor
            app = middleware  # type: ignore[assignment]
        else:
            app = asgi
            lifespan = Lifespan(asgi, label)
        state = lifespan.state if lifespan is not None else None
        inner = ASGIBridge(app, decorate, state)

    async def handle(request: BaseRequest) -> web.StreamResponse:
        try:
            response = await inner(request)
        except web.HTTPException as exc:
            response = web.Response(status=exc.status, reason=exc.reason, text=exc.text, headers=exc.headers)
        if not response.prepared:
            decorate(response)
        return response

    return Content(handle, lifespan, executor)
