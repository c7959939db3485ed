"""``AuthOptions``: the ``--auth``, ``--help-auth`` and ``--help-auth-type`` options for any command line."""

from __future__ import annotations

from typing import Any

from tapster.auth._base import Checker
from tapster.auth._spec import format_auth_type, format_auth_types, parse_auth
from tapster.errors import HelpRequested
from tapster.options import Options

__all__ = ["AuthOptions"]


class AuthOptions(Options):
    """Adds ``--auth TYPE:ARGS`` (repeatable), ``--help-auth`` and ``--help-auth-type TYPE`` to an Options class.

    Use it as a base (``class MyOptions(AuthOptions)``) or as a mixin listed before another Options subclass.
    After parsing, ``options["checkers"]`` is the list of checkers in command-line order (empty when no
    ``--auth`` was given; the plugin decides whether that is an error). Each checker is built, and its file
    read, while the option is parsed, so a missing file is a usage error naming it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self["checkers"] = []

    def opt_auth(self, spec: str) -> None:
        """Add a credential checker TYPE:ARGS (repeatable; --help-auth lists the types)."""
        checkers: list[Checker] = self.setdefault("checkers", [])
        checkers.append(parse_auth(spec))

    def opt_help_auth(self) -> None:
        """List the checker types --auth accepts, and exit."""
        raise HelpRequested(format_auth_types())

    def opt_help_auth_type(self, type_: str) -> None:
        """Show the syntax and notes of one --auth checker type, and exit."""
        raise HelpRequested(format_auth_type(type_))
