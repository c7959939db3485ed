"""The built-in ``web`` plugin: static files, a WSGI app or an ASGI app over HTTP (the ``web`` extra).

    tapster -n web --path .
    tapster -n web --wsgi app:application --threads 20
    tapster -n web --asgi app:app --listen tcp:8000 --listen unix:/run/app.sock

Importing this module imports only tapster's core and the standard library (plugin discovery imports it to list
it); aiohttp is imported when the server starts.
"""

from __future__ import annotations

import os
import re
from typing import Any

from tapster.errors import TapsterError, UsageError
from tapster.options import Options
from tapster.service import Service

__all__ = ["WebOptions", "WebPlugin", "web"]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _header(spec: str) -> tuple[str, str]:
    """``NAME:VALUE`` checked against HTTP's grammar, so no option can split a response."""
    name, colon, value = spec.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not _TOKEN.fullmatch(name):
        raise UsageError(
            f"--add-header {spec!r}: expected NAME:VALUE with a header name such as X-Frame-Options"
        )
    if any(char in value for char in "\r\n\0"):
        raise UsageError(f"--add-header {spec!r}: a header value cannot hold a line break or NUL")
    return name, value


def _app(option: str, spec: str) -> Any:
    """The object ``MODULE:ATTR`` names, imported now (from the launch directory) so a mistake is a usage error."""
    from tapster._resolve import NameNotResolved, resolve_name

    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise UsageError(f"--{option} {spec!r}: expected MODULE:APP, e.g. app:application")
    try:
        target = resolve_name(spec)
    except NameNotResolved as exc:
        raise UsageError(f"--{option} {spec!r}: {exc}") from None
    if not callable(target):
        raise UsageError(f"--{option} {spec!r} is a {type(target).__name__}, not an application")
    return target


class WebOptions(Options):
    """``tapster web`` options."""

    description = "An HTTP server: static files (--path), a WSGI app (--wsgi) or an ASGI app (--asgi)."
    parameters = [
        ("path", None, None, "Serve the files under this directory."),
        ("wsgi", None, None, "MODULE:APP, a WSGI application, run on a pool of --threads threads."),
        ("asgi", None, None, "MODULE:APP, an ASGI application (HTTP and the lifespan protocol)."),
        ("threads", None, 10, "Threads running the WSGI application.", _positive_int),
        (
            "access-log",
            None,
            "-",
            "Where the access log (combined log format) goes: - for the main log, off, or a file.",
        ),
    ]
    flags = [("no-listings", None, "Answer 403 for a directory without an index file instead of listing it.")]
    long_description = (
        "Give exactly one of --path, --wsgi or --asgi. Examples:\n"
        "  tapster -n web --path .\n"
        "  tapster -n web --wsgi app:application --threads 20 --listen tcp:8000:interface=127.0.0.1"
    )

    def __init__(self, prog: str = "tapster") -> None:
        super().__init__(prog)
        self["listen"] = []
        self["add-header"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Endpoint to listen on (repeatable; tcp:, tcp6:, ssl:, unix:, systemd:); default tcp:8080."""
        from tapster.endpoints import parse_server

        try:
            parsed = parse_server(endpoint)
        except TapsterError as exc:
            raise UsageError(f"--listen: {exc}") from None
        if parsed.is_datagram:
            raise UsageError(f"--listen {endpoint!r}: HTTP needs a stream endpoint, not udp")
        self["listen"].append(endpoint)

    def opt_add_header(self, spec: str) -> None:
        """NAME:VALUE, a header set on every response (repeatable)."""
        self["add-header"].append(_header(spec))

    def post_options(self) -> None:
        given = [option for option in ("path", "wsgi", "asgi") if self[option]]
        if len(given) != 1:
            what = "none" if not given else " and ".join(f"--{option}" for option in given)
            raise UsageError(
                f"give exactly one of --path DIR, --wsgi MODULE:APP, --asgi MODULE:APP (got {what})"
            )
        if self["path"]:
            if not os.path.isdir(self["path"]):
                raise UsageError(f"--path {self['path']!r}: not a directory")
            self["path"] = os.path.abspath(self["path"])
        for option in ("wsgi", "asgi"):
            if self[option]:
                self[option] = _app(option, self[option])
        access = self["access-log"]
        if access == "off":
            self["access-log"] = None
        elif access != "-":
            self["access-log"] = os.path.abspath(access)
        if not self["listen"]:
            self["listen"] = ["tcp:8080"]


class WebPlugin:
    """Makes the web server a ``tapster`` subcommand."""

    tapname = "web"
    description = "An HTTP server for static files, a WSGI app or an ASGI app (on aiohttp)."
    options = WebOptions

    def make_service(self, options: Any) -> Service:
        from tapster.services import WebServer

        return WebServer(
            options["listen"],
            path=options["path"],
            wsgi=options["wsgi"],
            asgi=options["asgi"],
            threads=options["threads"],
            headers=options["add-header"],
            access_log=options["access-log"],
            listings=not options["no-listings"],
        )


web = WebPlugin()
