"""The built-in ``manhole`` plugin: a Python shell over SSH and/or telnet, started next to nothing else.

    tapster -n manhole --ssh 2222 --auth memory:admin:secret
    ssh -p 2222 admin@127.0.0.1

Importing this module imports only tapster's core and the standard library (plugin discovery imports it to list
it); asyncssh and prompt_toolkit are imported when the manhole starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tapster.auth import AuthOptions
from tapster.errors import TapsterError, UsageError
from tapster.service import Service

__all__ = ["ManholeOptions", "ManholePlugin", "manhole"]


def _namespace(spec: str) -> dict[str, Any]:
    """The mapping named by ``MODULE:ATTR`` (ATTR may be dotted), imported now so a mistake is a usage error."""
    from tapster._resolve import NameNotResolved, resolve_name

    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise UsageError(f"--namespace {spec!r}: expected MODULE:ATTR, e.g. myapp.debug:names")
    try:
        target = resolve_name(spec)
    except NameNotResolved as exc:
        raise UsageError(f"--namespace {spec!r}: {exc}") from None
    if not isinstance(target, Mapping):
        raise UsageError(f"--namespace {spec!r} is a {type(target).__name__}, not a dict of names")
    for key in target:
        if not isinstance(key, str) or not key.isidentifier():
            raise UsageError(f"--namespace {spec!r}: {key!r} is not a valid Python name")
    return dict(target)


class ManholeOptions(AuthOptions):
    """``tapster manhole`` options."""

    description = "A Python shell inside this server, over SSH and/or telnet."
    parameters = [
        ("ssh", None, None, "SSH endpoint, or a port (a bare port binds 127.0.0.1 only)."),
        (
            "telnet",
            None,
            None,
            "Telnet endpoint, or a port (127.0.0.1 only). Passwords travel in clear text.",
        ),
        (
            "host-key",
            None,
            "manhole_host_key",
            "SSH host key file; created with mode 0600 if it does not exist.",
        ),
        (
            "namespace",
            None,
            None,
            "MODULE:ATTR, a dict of names to expose in the shell (besides app and reload).",
        ),
    ]
    flags = [
        (
            "allow-remote-anonymous",
            None,
            "Let --auth anonymous serve an address others can reach (refused otherwise): anyone may run code.",
        ),
    ]
    long_description = (
        "At least one --auth is required (--help-auth lists the checker types; --auth anonymous lets anyone in).\n"
        "Example: tapster -n manhole --ssh 2222 --auth memory:admin:secret, then ssh -p 2222 admin@127.0.0.1"
    )

    def post_options(self) -> None:
        from tapster.endpoints import parse_server
        from tapster.manhole._service import manhole_endpoint

        if not self["ssh"] and not self["telnet"]:
            raise UsageError("give --ssh PORT, --telnet PORT, or both")
        for option in ("ssh", "telnet"):
            if self[option]:
                try:
                    parse_server(manhole_endpoint(self[option]))
                except TapsterError as exc:
                    raise UsageError(f"--{option}: {exc}") from None
        checkers = self["checkers"]
        if not checkers:
            raise UsageError(
                "no --auth given: nobody could log in (see --help-auth; --auth anonymous lets anyone in)"
            )
        if self["telnet"] and not any(c.accepts_passwords or c.accepts_anyone for c in checkers):
            raise UsageError("--telnet needs a password checker: SSH keys (sshkey) work over SSH only")
        self["host-key"] = os.path.abspath(self["host-key"])
        self["namespace"] = _namespace(self["namespace"]) if self["namespace"] else {}


class ManholePlugin:
    """Makes the manhole a ``tapster`` subcommand."""

    tapname = "manhole"
    description = "A Python shell inside the server, over SSH and/or telnet."
    options = ManholeOptions

    def make_service(self, options: Any) -> Service:
        from tapster.manhole import ManholeService

        return ManholeService(
            options["namespace"],
            ssh=options["ssh"] or None,
            telnet=options["telnet"] or None,
            checkers=options["checkers"],
            host_key=options["host-key"],
            allow_remote_anonymous=bool(options["allow-remote-anonymous"]),
        )


manhole = ManholePlugin()
