"""The global ``tapster`` command line: twistd's options, parsed with tapster's own Options class."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any

from tapster._version import __version__
from tapster.errors import HelpRequested, StartupError, UsageError
from tapster.options import Options
from tapster.runner._config import RunConfig
from tapster.runner._reactors import reactors_help


def _positive_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(f"must not be negative, got {text!r}")
    return value


def _size(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must not be negative, got {text!r}")
    return value


def _log_format(text: str) -> str:
    if text not in ("text", "json"):
        raise ValueError(f"expected 'text' or 'json', got {text!r}")
    return text


def _umask(text: str | None) -> int | None:
    """The --umask value; a bad one fails the start (exit 1) like the other process settings."""
    if text is None:
        return None
    from tapster.runner._privileges import parse_umask

    try:
        return parse_umask(text)
    except UsageError as exc:
        raise StartupError(str(exc)) from None


class ServerOptions(Options):
    """``tapster [options] (-y FILE | -f FILE | PLUGIN [plugin options])``."""

    synopsis = "Usage: tapster [options] (-y FILE | -f FILE | PLUGIN [plugin options]) | tapster ctl COMMAND"
    description = "Run a tapster application: a tac file (-y), a saved state (-f), or a plugin."
    parameters = (
        ("python", "y", None, "Read an application from a Python file (a .tac file); implies --no_save."),
        ("file", "f", None, "Read a saved application state (.tap) written at an earlier shutdown."),
        ("logfile", "l", None, "Log to this file ('-' means stdout). Daemon default: tapster.log."),
        (
            "log-max-size",
            None,
            None,
            "Rotate the log file when it passes this many bytes; 0: never. Default: 1000000, or no size limit "
            "with --log-daily.",
            _size,
        ),
        ("log-keep", None, None, "Keep this many rotated log files (default: all).", _size),
        ("log-format", None, "text", "Log line format: text (twistd's) or json.", _log_format),
        (
            "logger",
            None,
            None,
            "A callable 'module.factory' returning a logging.Handler; overrides the others.",
        ),
        ("prefix", None, "tapster", "The syslog identity, with --syslog."),
        (
            "pidfile",
            None,
            "tapster.pid",
            "Write the process id here and lock it; an empty value disables it.",
        ),
        ("rundir", "d", ".", "Change to this directory before starting the services."),
        ("umask", None, None, "The umask of the process (octal). Daemon default: 077."),
        ("uid", "u", None, "Switch to this user (name or number) after privileged start."),
        ("gid", "g", None, "Switch to this group (name or number); default: the user's primary group."),
        ("chroot", None, None, "chroot to this directory before starting the services."),
        ("reactor", "r", "asyncio", "The event loop: asyncio or uvloop (see --help-reactors)."),
        (
            "shutdown-timeout",
            None,
            10.0,
            "Seconds to wait for services to stop before cancelling them.",
            _positive_float,
        ),
    )
    flags = (
        ("nodaemon", "n", "Do not daemonize: run in the foreground and log to stdout."),
        ("no_save", "o", "Do not save the application state at shutdown."),
        ("syslog", None, "Log to the system log instead of a file."),
        ("log-daily", None, "Rotate the log file once a day, at midnight."),
        ("euid", None, "With --uid/--gid, switch only the effective ids."),
        ("traceback", None, "Show the full traceback when start-up fails."),
    )

    def opt_version(self) -> None:
        """Print the version and exit."""
        raise HelpRequested(f"tapster {__version__} (python {platform.python_version()})")

    def opt_help_reactors(self) -> None:
        """List the event loops and whether each is installed."""
        raise HelpRequested(reactors_help())

    def get_subcommands(self) -> Sequence[tuple[Any, ...]]:
        return ()

    def post_options(self) -> None:
        sources = [
            flag
            for flag, given in (("-y", self["python"]), ("-f", self["file"]), ("a plugin", self.subcommand))
            if given
        ]
        if len(sources) > 1:
            raise UsageError(f"give only one of -y FILE, -f FILE or a plugin (got {' and '.join(sources)})")
        if not sources:
            raise UsageError("nothing to run: give -y FILE, -f FILE or a plugin name (see tapster --help)")

    def _log_max_bytes(self) -> int | None:
        """--log-daily rotates by date instead of size, unless a size is given as well."""
        size: int | None = self["log-max-size"]
        if size is None:
            return None if self["log-daily"] else 1_000_000
        return size or None

    def run_config(self, launch_dir: str | None = None) -> RunConfig:
        """The RunConfig these options describe, with paths resolved against ``launch_dir`` (default: cwd)."""
        base = launch_dir or os.getcwd()
        logfile = self["logfile"]
        if logfile == "-" or (logfile is None and self["nodaemon"]):
            resolved_log: str | None = None
        else:
            resolved_log = os.path.join(base, logfile or "tapster.log")
        pidfile = self["pidfile"] or None
        return RunConfig(
            nodaemon=self["nodaemon"],
            no_save=self["no_save"] or bool(self["python"]),
            logfile=resolved_log,
            log_max_bytes=self._log_max_bytes(),
            log_keep=self["log-keep"],
            log_daily=self["log-daily"],
            log_format=self["log-format"],
            logger=self["logger"],
            syslog=self["syslog"],
            prefix=self["prefix"],
            pidfile=os.path.join(base, pidfile) if pidfile else None,
            pidfile_display=pidfile or "",
            uid=self["uid"],
            gid=self["gid"],
            euid=self["euid"],
            chroot=os.path.join(base, self["chroot"]) if self["chroot"] else None,
            rundir=os.path.join(base, self["rundir"]),
            umask=_umask(self["umask"]),
            reactor=self["reactor"],
            shutdown_timeout=self["shutdown-timeout"],
            traceback=self["traceback"],
        )
