"""Exceptions raised by tapster, and the exit statuses the CLI maps them to.

Library code raises; only :mod:`tapster.cli` prints and exits. Every error carries a message that names the
offending value (a file, an endpoint string, a user name), so the CLI can print it as one line. Each class also
derives from the built-in exception a caller would naturally catch (``ValueError`` for bad input, ``OSError`` for
a failed bind), so code that knows nothing of tapster still handles them sensibly.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "AppLoadError",
    "EndpointError",
    "ExitStatus",
    "HelpRequested",
    "ListenError",
    "PluginError",
    "ServiceTreeError",
    "ShutdownTimeout",
    "StartupError",
    "TapsterError",
    "UsageError",
]


class ExitStatus(enum.IntEnum):
    """Process exit statuses: what a supervisor or a shell script sees."""

    OK = 0
    FAILURE = 1  # the server could not start, or a command failed
    USAGE = 2  # the command line was wrong
    NOT_RUNNING = 3  # LSB status code for `tapster ctl status`


class TapsterError(Exception):
    """Base of every error tapster raises on purpose; ``str(err)`` is the one line shown to the user."""

    exit_status: ExitStatus = ExitStatus.FAILURE


class UsageError(TapsterError, ValueError):
    """The command line is wrong. ``prog`` and ``usage`` let the CLI print the usage line after the message."""

    exit_status = ExitStatus.USAGE

    def __init__(self, message: str, *, prog: str | None = None, usage: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog
        self.usage = usage


class HelpRequested(TapsterError):
    """``--help`` (or a similar option) was given: the CLI prints ``text`` and exits 0."""

    exit_status = ExitStatus.OK

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class EndpointError(TapsterError, ValueError):
    """An endpoint description string is malformed; the message names the whole string and the fault."""


class ListenError(TapsterError, OSError):
    """A listener could not be bound (port in use, permission denied); the message names the endpoint."""

    def __init__(self, message: str, *args: Any) -> None:
        TapsterError.__init__(self, message)
        self.args = (message, *args)

    def __str__(self) -> str:
        return str(self.args[0])


class AppLoadError(TapsterError, RuntimeError):
    """An application file or saved state could not be loaded; the message names the file."""


class PluginError(TapsterError, RuntimeError):
    """A plugin could not be found or loaded; the message names it."""


class StartupError(TapsterError, RuntimeError):
    """The process could not be set up (pid file, log file, user, chroot, reactor): the message says which."""


class ShutdownTimeout(TapsterError, TimeoutError):
    """Stopping the service tree took longer than the shutdown timeout."""


class ServiceTreeError(TapsterError, RuntimeError):
    """The service tree was wired wrongly: a second parent, or two children with one name."""
