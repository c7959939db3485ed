"""The built-in ``ftp`` plugin: an FTP server over one directory (the ``ftp`` extra: aioftp).

    tapster -n ftp --root . --auth anonymous
    tapster -n ftp --root /srv/ftp --auth file:/etc/tapster/ftp-users --listen tcp:2121 --passive-ports 50000-50100

Importing this module imports only tapster's core and the standard library (plugin discovery imports it to list
it); aioftp is imported when the server starts.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from tapster.auth import AuthOptions
from tapster.errors import TapsterError, UsageError
from tapster.service import Service

__all__ = ["FTPOptions", "FTPPlugin", "ftp"]


def _passive_ports(spec: str) -> tuple[int, int]:
    """``FIRST-LAST`` (or one port) within 1024-65535."""
    first, dash, last = spec.partition("-")
    try:
        low, high = int(first), int(last if dash else first)
    except ValueError:
        raise ValueError(f"expected FIRST-LAST, e.g. 50000-50100, got {spec!r}") from None
    if not 1024 <= low <= high <= 65535:
        raise ValueError(f"expected FIRST-LAST with 1024 <= FIRST <= LAST <= 65535, got {spec!r}")
    return low, high


def _ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"expected an IPv4 address, got {text!r}") from None


class FTPOptions(AuthOptions):
    """``tapster ftp`` options."""

    description = "An FTP server over one directory: --auth logins, anonymous read-only, passive mode."
    parameters = [
        ("root", "r", None, "The directory served: every user sees it as / and cannot leave it."),
        (
            "passive-ports",
            None,
            None,
            "FIRST-LAST: the ports passive data connections use (default: any free port).",
            _passive_ports,
        ),
        (
            "passive-address",
            None,
            None,
            "The IPv4 address PASV answers give, for a server behind NAT (default: the one connected to).",
            _ipv4,
        ),
    ]
    long_description = (
        "At least one --auth is required (--help-auth lists the checker types). --auth anonymous lets the\n"
        "users anonymous and ftp in with any password, read-only; password logins may read and write.\n"
        "Examples:\n"
        "  tapster -n ftp --root . --auth anonymous\n"
        "  tapster -n ftp --root /srv/ftp --auth file:users.txt --listen tcp:2121 --passive-ports 50000-50100"
    )

    def __init__(self, prog: str = "tapster") -> None:
        super().__init__(prog)
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Endpoint to listen on (repeatable; tcp:, tcp6:, systemd:); default tcp:2121:interface=127.0.0.1."""
        from tapster.services._ftp import check_ftp_endpoint

        try:
            check_ftp_endpoint(endpoint)
        except (TapsterError, ValueError) as exc:
            raise UsageError(f"--listen: {exc}") from None
        self["listen"].append(endpoint)

    def post_options(self) -> None:
        from tapster.services._ftp import DEFAULT_FTP_LISTEN

        if not self["root"]:
            raise UsageError("give --root DIR, the directory to serve")
        if not os.path.isdir(self["root"]):
            raise UsageError(f"--root {self['root']!r}: not a directory")
        self["root"] = os.path.abspath(self["root"])
        checkers = self["checkers"]
        if not checkers:
            raise UsageError(
                "no --auth given: nobody could log in (see --help-auth; --auth anonymous gives read-only access)"
            )
        if not any(c.accepts_passwords or c.accepts_anyone for c in checkers):
            raise UsageError("FTP logins need a password checker or anonymous: SSH keys work over SSH only")
        if not self["listen"]:
            self["listen"] = [DEFAULT_FTP_LISTEN]


class FTPPlugin:
    """Makes the FTP server a ``tapster`` subcommand."""

    tapname = "ftp"
    description = "An FTP server over one directory (on aioftp); anonymous read-only, --auth logins."
    options = FTPOptions

    def make_service(self, options: Any) -> Service:
        from tapster.services import FTPServer

        return FTPServer(
            options["root"],
            options["listen"],
            checkers=options["checkers"],
            passive_ports=options["passive-ports"],
            passive_address=options["passive-address"],
        )


ftp = FTPPlugin()
