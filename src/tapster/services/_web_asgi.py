"""ASGI applications served by aiohttp's HTTP server: the ``http`` scope and the ``lifespan`` protocol.

aiohttp parses HTTP; this module turns each aiohttp request into one ASGI ``http`` call. (``aiohttp-asgi``
exists, but it keeps only the last of repeated response headers, so two ``Set-Cookie`` lines lose one; it never
tells an app the client left; and a failed lifespan start-up only logs. Those are the parts a server must get
right, so the bridge is ours: it is short.) WebSocket scopes are not offered: an ASGI app behind
``tapster web`` serves HTTP only.

What the bridge promises:

- the scope follows the ASGI HTTP spec 2.3: ``path`` decoded, ``raw_path`` and ``query_string`` as received,
  header names lower-case in arrival order, ``client``/``server`` from the socket, ``state`` a copy of what
  the lifespan start-up left;
- the request body is handed over as it arrives (``more_body`` until the end); after it, ``receive()`` waits
  and answers ``http.disconnect`` once the response is complete or the client has gone;
- a response is sent when its first body message comes (with a ``Content-Length`` computed when that message
  is also the last), repeated headers are all sent; once the client has gone, ``send()`` drops what it is
  given instead of raising, so an app (and a WSGI thread behind a2wsgi) runs to its end instead of hanging;
- the body an app sends in answer to ``HEAD`` is dropped (the headers, ``Content-Length`` included, stay);
- an app that fails before starting its response gives ``500``; one that fails after is logged and its
  connection closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

from tapster.errors import StartupError

__all__ = ["ASGIApp", "ASGIBridge", "Lifespan"]

logger = logging.getLogger("tapster.web")

Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Any
]
Decorate = Callable[[web.StreamResponse], None]


def _address(value: Any) -> list[Any] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return [str(value[0]), int(value[1])]
    if isinstance(value, str) and value:
        return [value, None]
    return None


class _Exchange:
    """One request and its response, between aiohttp and the app."""

    __slots__ = ("body_done", "decorate", "finished", "gone", "headers", "request", "response", "status")

    def __init__(self, request: BaseRequest, decorate: Decorate) -> None:
        self.request = request
        self.decorate = decorate
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.response: web.StreamResponse | None = None
        self.body_done = False
        self.gone = False
        self.finished = asyncio.Event()

    async def receive(self) -> Message:
        content = self.request.content
        if not self.body_done:
            chunk = await content.readany()
            self.body_done = content.at_eof()
            return {"type": "http.request", "body": chunk, "more_body": not self.body_done}
        await self.finished.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            if self.status:
                raise RuntimeError("ASGI app sent http.response.start twice")
            self.status = int(message["status"])
            self.headers = [
                (bytes(name).decode("latin-1"), bytes(value).decode("latin-1"))
                for name, value in message.get("headers", ())
            ]
        elif kind == "http.response.body":
            if not self.status:
                raise RuntimeError("ASGI app sent http.response.body before http.response.start")
            if self.finished.is_set():
                return
            body = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            try:
                await self._write(body, more)
            except (ConnectionError, RuntimeError):
                # The client has gone (aiohttp raises ClientConnectionResetError, a ConnectionError, or a
                # RuntimeError for a closed writer): drop the rest, as a server does with a reader that left.
                self.gone = True
                self.finished.set()
        else:
            raise RuntimeError(f"ASGI app sent an unknown message type {kind!r}")

    async def _write(self, body: bytes, more: bool) -> None:
        response = self.response
        if response is None:
            response = self.response = web.StreamResponse(status=self.status)
            has_length = False
            for name, value in self.headers:
                response.headers.add(name, value)
                has_length = has_length or name.lower() == "content-length"
            if not more and not has_length:
                response.content_length = len(body)
            self.decorate(response)
            await response.prepare(self.request)
        if body and self.request.method != "HEAD":  # a HEAD answer has the headers of a GET and no body
            await response.write(body)
        if not more:
            await response.write_eof()
            self.finished.set()


class ASGIBridge:
    """An aiohttp low-level request handler that runs an ASGI app for each request."""

    def __init__(self, app: ASGIApp, decorate: Decorate, state: dict[str, Any] | None = None) -> None:
        self.app = app
        self.decorate = decorate
        self.state = state if state is not None else {}

    def scope(self, request: BaseRequest) -> dict[str, Any]:
        raw_path, _, query = request.raw_path.partition("?")
        transport = request.transport
        version = request.version
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": f"{version.major}.{version.minor}",
            "method": request.method,
            "scheme": "https" if request.secure else "http",
            "path": request.path,
            "raw_path": raw_path.encode("utf-8", "surrogateescape"),
            "query_string": query.encode("utf-8", "surrogateescape"),
            "root_path": "",
            "headers": [(name.lower(), value) for name, value in request.raw_headers],
            "client": _address(transport.get_extra_info("peername")) if transport else None,
            "server": _address(transport.get_extra_info("sockname")) if transport else None,
            "state": dict(self.state),
        }

    async def __call__(self, request: BaseRequest) -> web.StreamResponse:
        exchange = _Exchange(request, self.decorate)
        try:
            await self.app(self.scope(request), exchange.receive, exchange.send)
        except Exception:
            exchange.finished.set()
            if exchange.response is not None:
                raise  # aiohttp logs it and closes the connection: the response is cut short
            logger.exception("ASGI app %r raised on %s %s", self.app, request.method, request.path)
            response = web.Response(status=500, text="500 Internal Server Error\n")
            self.decorate(response)
            return response
        exchange.finished.set()
        if exchange.response is None:
            if exchange.status:  # started, but no body message: an empty body
                await exchange._write(b"", False)
            else:
                logger.error(
                    "ASGI app %r returned without a response to %s %s", self.app, request.method, request.path
                )
                response = web.Response(status=500, text="500 Internal Server Error\n")
                self.decorate(response)
                return response
        assert exchange.response is not None
        if not exchange.gone and not exchange.response.prepared:
            await exchange.response.prepare(request)
        return exchange.response


class Lifespan:
    """The ASGI ``lifespan`` protocol: start-up before the first request, shut-down after the last.

    An app that raises before asking for the first lifespan message does not speak the protocol (many apps
    ``assert scope["type"] == "http"``): that is logged and the server runs without it. ``lifespan.startup.failed``,
    or an exception after the app read ``lifespan.startup``, fails the start with one line.
    """

    def __init__(self, app: ASGIApp, label: str) -> None:
        self.app = app
        self.label = label
        self.state: dict[str, Any] = {}
        self.supported = False
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._asked = False
        self._task: asyncio.Task[Any] | None = None

    async def _receive(self) -> Message:
        self._asked = True
        return await self._to_app.get()

    async def _send(self, message: Message) -> None:
        await self._from_app.put(message)

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        await self.app(scope, self._receive, self._send)

    async def _answer(self) -> Message | None:
        """The app's next message, or None when the app returned (or raised) first."""
        assert self._task is not None
        reply = asyncio.ensure_future(self._from_app.get())
        await asyncio.wait({reply, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if reply.done():
            return reply.result()
        reply.cancel()
        return None

    async def startup(self) -> None:
        """Run the app's start-up.

        Raises:
            StartupError: the app reported ``lifespan.startup.failed`` or raised after reading the start-up.
        """
        self._task = asyncio.ensure_future(self._run())
        await self._to_app.put({"type": "lifespan.startup"})
        message = await self._answer()
        if message is not None:
            kind = message.get("type")
            if kind == "lifespan.startup.complete":
                self.supported = True
                return
            if kind == "lifespan.startup.failed":
                reason = str(message.get("message") or "no reason given")
                raise StartupError(f"{self.label}: ASGI lifespan start-up failed: {reason}")
            raise StartupError(f"{self.label}: ASGI app answered lifespan.startup with {kind!r}")
        error = self._task.exception()
        if error is not None and self._asked:
            raise StartupError(
                f"{self.label}: ASGI lifespan start-up raised {type(error).__name__}: {error}"
            ) from error
        logger.info("%s: the ASGI app does not use the lifespan protocol; running without it", self.label)

    async def shutdown(self) -> None:
        """Run the app's shut-down (after the last request); a failure is logged, the stop goes on."""
        if not self.supported or self._task is None:
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        message = await self._answer()
        kind = message.get("type") if message is not None else None
        if kind == "lifespan.shutdown.failed":
            logger.error(
                "%s: ASGI lifespan shut-down failed: %s", self.label, message and message.get("message")
            )
        elif kind != "lifespan.shutdown.complete":
            error = self._task.exception() if self._task.done() else None
            logger.error("%s: ASGI lifespan shut-down did not complete (%s)", self.label, error or kind)
        if not self._task.done():
            await asyncio.wait({self._task}, timeout=1.0)
            self._task.cancel()
