"""The built-in ``portforward`` plugin: forward each connection on one endpoint to another, any kind both ways.

tapster -n portforward --listen tcp:8000 --dest tcp:example.com:80
tapster -n portforward --listen unix:/run/app.sock --dest tcp:host=127.0.0.1:port=8080
"""

from __future__ import annotations

from typing import Any

from tapster.errors import TapsterError, UsageError
from tapster.options import Options
from tapster.runner._options import seconds
from tapster.service import Service

__all__ = ["PortForwardOptions", "PortForwardPlugin", "portforward"]


class PortForwardOptions(Options):
    """``tapster portforward`` options."""

    description = "Forward every connection on --listen to a new connection to --dest."
    parameters = [
        ("listen", None, None, "Server endpoint to accept on: tcp:PORT, unix:PATH, ssl:..., systemd:..."),
        ("dest", None, None, "Client endpoint to connect to: tcp:HOST:PORT, unix:path=PATH, tls:..."),
        (
            "drain-timeout",
            None,
            None,
            "Seconds open connections get to end at stop (default: the --shutdown-timeout).",
            seconds,
        ),
    ]
    flags = [
        (
            "no-splice",
            None,
            "Copy the bytes through the process instead of moving them in the kernel with splice(2).",
        )
    ]
    long_description = (
        "Back-pressure both ways (a slow reader slows the sender, the forwarder does not buffer), half-close "
        "passed on.\nExample: tapster -n portforward --listen tcp:8000 --dest tcp:example.com:80"
    )

    def post_options(self) -> None:
        from tapster.endpoints import parse_client, parse_server

        if not self["listen"] or not self["dest"]:
            raise UsageError("give both --listen ENDPOINT and --dest ENDPOINT")
        try:
            listen = parse_server(self["listen"])
        except TapsterError as exc:
            raise UsageError(f"--listen: {exc}") from None
        if listen.is_datagram:
            raise UsageError(f"--listen {self['listen']!r}: forwarding needs a stream endpoint, not udp")
        try:
            parse_client(self["dest"])
        except TapsterError as exc:
            raise UsageError(f"--dest: {exc}") from None


class PortForwardPlugin:
    """Makes the port forwarder a ``tapster`` subcommand."""

    tapname = "portforward"
    description = "Forward connections from one endpoint to another (unix to tcp, ...)."
    options = PortForwardOptions

    def make_service(self, options: Any) -> Service:
        from tapster.services import PortForward

        return PortForward(
            options["listen"],
            options["dest"],
            drain_timeout=options["drain-timeout"],
            splice=not options["no-splice"],
        )


portforward = PortForwardPlugin()
