"""echo: seed 000's plugin, ported: an HTTP echo at /echo, and a manhole with the echo service in it.

    cd examples
    tapster -n echo --port 8080 --service-port 8081 --auth memory:admin:secret
    curl -d hello http://127.0.0.1:8080/echo           # -> hello
    telnet 127.0.0.1 8081                              # Username: admin, Password: secret
    >>> service
    <EchoService 'echo': 1 request(s)>

Add ``--ssh-port 8022`` for an SSH manhole as well (``ssh -p 8022 admin@127.0.0.1``). Without ``--auth`` the
manhole is not started: nobody could log in. The HTTP side needs aiohttp (``pip install 'tapster[web]'``), which
is imported only when the service starts, so listing plugins never needs it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tapster import MultiService, Service
from tapster.auth import AuthOptions
from tapster.errors import StartupError
from tapster.services import StreamServer, lingering_close

logger = logging.getLogger(__name__)


class EchoService(Service):
    """The application object: answers with what it was sent, and counts requests (something live to inspect)."""

    def __init__(self) -> None:
        self.name = "echo"
        self.requests = 0

    async def echo(self, body: bytes) -> bytes:
        self.requests += 1
        return body

    def __repr__(self) -> str:
        return f"<EchoService {self.name!r}: {self.requests} request(s)>"


class EchoWeb(MultiService):
    """Serves ``echo`` over HTTP at ``/echo`` (POST echoes the body, GET the query string), with aiohttp."""

    transient = ("_web",)

    def __init__(self, port: int | str, echo: EchoService) -> None:
        super().__init__()
        self.name = "http"
        self.echo = echo
        self._web: Any = None
        StreamServer(port, self._protocol, name="EchoHTTP").set_parent(self)

    def _protocol(self) -> Any:
        return _request_handler_class()(self._web, loop=asyncio.get_running_loop())

    async def start(self) -> None:
        try:
            from aiohttp import web  # the `web` extra; imported only when the server starts
        except ModuleNotFoundError as exc:  # say which extra installs it, in the one line the user sees
            raise StartupError(
                f"the echo plugin's HTTP server needs aiohttp: {exc} (pip install 'tapster[web]')"
            ) from exc

        self._web = web.Server(self._handle)
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        if self._web is not None:
            await self._web.shutdown(1.0)
            self._web = None

    async def _handle(self, request: Any) -> Any:
        connection = request.protocol
        connection.active += 1
        try:
            response = await self._respond(request)
        finally:
            connection.active -= 1
        if connection.stopping:  # the server began to stop during this request: it is the last one
            response.force_close()
        return response

    async def _respond(self, request: Any) -> Any:
        from aiohttp import web

        if request.path != "/echo":
            return web.Response(status=404, text="not found: try /echo\n")
        body = await request.read() if request.can_read_body else request.query_string.encode()
        return web.Response(body=await self.echo.echo(body))


_handler_class: Any = None


def _request_handler_class() -> Any:
    """aiohttp's RequestHandler with tapster's drain hook (made on first use: aiohttp is imported only then).

    At stop, tapster calls ``stop_requested()`` on each open connection. A request in progress is finished (its
    body still read, its response sent with ``Connection: close``, see ``EchoWeb._handle``), and then aiohttp
    closes the connection. An idle keep-alive connection is closed at once, with a lingering close so the client
    reads end-of-file rather than a reset. (aiohttp's own ``close()`` alone would drop the rest of a request body
    still arriving.) The subclass has no ``__slots__``, so tapster can track its connections.
    """
    global _handler_class
    if _handler_class is None:
        from aiohttp.web_protocol import RequestHandler

        class DrainingRequestHandler(RequestHandler):
            active = 0  # requests being answered on this connection
            stopping = False

            def stop_requested(self) -> None:
                self.stopping = True
                if not self.active and self.transport is not None:
                    self.close()  # idle: stop waiting for a next request
                    lingering_close(self.transport)

        _handler_class = DrainingRequestHandler
    return _handler_class


class Notice(Service):
    """Logs a message when the server starts (make_service runs before logging is set up)."""

    def __init__(self, message: str) -> None:
        self.message = message

    async def start(self) -> None:
        await super().start()
        logger.warning("%s", self.message)


class EchoOptions(AuthOptions):
    description = "Sample Echo service: HTTP at /echo, and a manhole to look inside it."
    parameters = [
        ("port", "p", 8080, "HTTP port (the echo is at /echo).", int),
        ("service-port", "s", 8081, "Manhole telnet port, on 127.0.0.1 (0: pick a free port).", int),
        ("ssh-port", None, None, "Also serve the manhole over SSH on this port, on 127.0.0.1.", int),
        ("host-key", None, "echo_host_key", "SSH host key file (created if missing)."),
    ]


class EchoServiceMaker:
    tapname = "echo"
    description = "Sample Echo service"
    options = EchoOptions

    def make_service(self, options: Any) -> Service:
        srv = EchoService()
        svc = MultiService()
        srv.set_parent(svc)
        EchoWeb(options["port"], srv).set_parent(svc)
        if options["checkers"]:
            from tapster.manhole import ManholeService

            ManholeService(
                {"service": srv},
                telnet=options["service-port"],
                ssh=options["ssh-port"],
                checkers=options["checkers"],
                host_key=options["host-key"],
            ).set_parent(svc)
        else:
            Notice("echo: no --auth given, so no manhole (see --help-auth)").set_parent(svc)
        return svc


serviceMaker = EchoServiceMaker()
