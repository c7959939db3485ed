"""The built-in ``socks`` plugin: a SOCKS 4, 4a and 5 proxy (CONNECT, UDP ASSOCIATE) with a destination
allow-list and logins.

tapster -n socks                                     # 127.0.0.1:1080, public destinations only
tapster -n socks --listen tcp:1080 --auth memory:alice:secret --allow public --allow 10.0.0.0/8
"""

from __future__ import annotations

from typing import Any

from tapster.auth import AuthOptions
from tapster.errors import TapsterError, UsageError
from tapster.runner._options import seconds
from tapster.service import Service

__all__ = ["SOCKSOptions", "SOCKSPlugin", "socks"]

_DEFAULT_LISTEN = "tcp:1080:interface=127.0.0.1"  # services._socks.DEFAULT_LISTEN, without importing asyncio


def _timeout(text: str) -> float:
    value = seconds(text)
    if value <= 0:
        raise ValueError(f"expected a number of seconds above 0, got {text!r}")
    return value


class SOCKSOptions(AuthOptions):
    """``tapster socks`` options."""

    description = "A SOCKS 4, 4a and 5 proxy (CONNECT, UDP), refusing private destinations unless --allow'ed."
    parameters = [
        (
            "listen",
            None,
            _DEFAULT_LISTEN,
            "Server endpoint to accept on: tcp:PORT, unix:PATH, ssl:..., systemd:...",
        ),
        (
            "handshake-timeout",
            None,
            10.0,
            "Seconds a client has to send its whole request (and log in).",
            _timeout,
        ),
        ("connect-timeout", None, 30.0, "Seconds to resolve and connect to a destination.", _timeout),
        (
            "drain-timeout",
            None,
            None,
            "Seconds relayed connections get to end at stop (default: the --shutdown-timeout).",
            seconds,
        ),
    ]
    long_description = (
        "Destinations: without --allow, only public addresses (no private, loopback, link-local, multicast,\n"
        "unspecified or reserved ones); hostnames are checked after they are resolved. --allow replaces that\n"
        "list: --allow public --allow 10.0.0.0/8 adds a network to it, --allow 10.0.0.0/8 alone allows only it.\n"
        "--auth (password checkers, --help-auth): SOCKS5 clients log in (RFC 1929); SOCKS4 is then refused.\n"
        "SOCKS5 UDP ASSOCIATE is relayed under the same --allow rules; BIND is not supported.\n"
        "Example: tapster -n socks --auth memory:alice:secret, then curl -x socks5h://alice:secret@127.0.0.1:1080"
    )

    def __init__(self, prog: str = "tapster") -> None:
        super().__init__(prog)
        self["allow"] = []

    def opt_allow(self, network: str) -> None:
        """A destination network (CIDR) to allow, or 'public' (repeatable; default: public)."""
        from tapster.services._socks_policy import parse_network

        self["allow"].append(parse_network(network))

    def post_options(self) -> None:
        from tapster.endpoints import parse_server

        try:
            listen = parse_server(self["listen"])
        except TapsterError as exc:
            raise UsageError(f"--listen: {exc}") from None
        if listen.is_datagram:
            raise UsageError(f"--listen {self['listen']!r}: SOCKS needs a stream endpoint, not udp")
        checkers = self["checkers"]
        if checkers and not any(c.accepts_passwords or c.accepts_anyone for c in checkers):
            raise UsageError("--auth: SOCKS5 logins need a password checker (SSH keys cannot be used)")
        if not self["allow"]:
            self["allow"] = None


class SOCKSPlugin:
    """Makes the SOCKS proxy a ``tapster`` subcommand."""

    tapname = "socks"
    description = "A SOCKS 4/4a/5 proxy with a destination allow-list and SOCKS5 logins."
    options = SOCKSOptions

    def make_service(self, options: Any) -> Service:
        from tapster.services import SOCKSServer

        return SOCKSServer(
            options["listen"],
            allow=options["allow"],
            checkers=options["checkers"],
            handshake_timeout=options["handshake-timeout"],
            connect_timeout=options["connect-timeout"],
            drain_timeout=options["drain-timeout"],
        )


socks = SOCKSPlugin()
