"""The global ``tapster`` command line: twistd's options, parsed with tapster's own Options class."""

from __future__ import annotations

import functools
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tapster._version import __version__
from tapster.errors import HelpRequested, StartupError, UsageError
from tapster.options import Options
from tapster.runner._config import RunConfig
from tapster.runner._reactors import reactors_help

if TYPE_CHECKING:
    from tapster.log._setup import LogConfig
    from tapster.plugin import Plugins, ServiceMaker

_RESERVED = {
    "ctl": "the 'tapster ctl' command",
    "mktap": "the 'tapster mktap' command",
}  # words the CLI handles before looking for a plugin


MAX_SECONDS = 86400.0
"""The longest timeout accepted (a day): larger values overflow the timers the shutdown guard relies on."""


def seconds(text: str) -> float:
    """A timeout in seconds: a finite number from 0 to a day. ``nan``, ``inf`` and negatives are usage errors.

    Shared by ``--shutdown-timeout`` and ``tapster ctl stop --timeout``: a timeout that can never pass would
    break the promise that a stop is bounded.
    """
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value <= MAX_SECONDS:  # also false for nan
        raise ValueError(f"expected a number of seconds from 0 to {MAX_SECONDS:g}, got {text!r}")
    return value


MAX_WORKERS = 256
"""The most worker processes --workers accepts: far past any machine's cores, short of a typo's thousands."""


def _workers(text: str) -> int:
    """--workers N: a whole number from 1 to MAX_WORKERS (0 would serve nothing; a fork bomb helps no one)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a number of worker processes, got {text!r}") from None
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"expected a number of worker processes from 1 to {MAX_WORKERS}, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    """A timeout that must pass at some point after 0: the worker boot and heartbeat timeouts."""
    value = seconds(text)
    if value <= 0:
        raise ValueError(f"expected more than 0 seconds, got {text!r}")
    return value


def _status_endpoint(text: str) -> str:
    from tapster.runner._status_endpoint import status_endpoint

    return status_endpoint(text)


def _size(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must not be negative, got {text!r}")
    return value


def _log_format(text: str) -> str:
    if text not in ("text", "json"):
        raise ValueError(f"expected 'text' or 'json', got {text!r}")
    return text


def _umask(text: str) -> int:
    """The --umask coercer; a bad value fails the start (exit 1, a StartupError the parser passes on) like the
    other process settings."""
    from tapster.runner._privileges import parse_umask

    try:
        return parse_umask(text)
    except UsageError as exc:
        raise StartupError(str(exc)) from None


def _plugin_table(rows: list[tuple[str, str]], width: int = 100, *, column: int | None = None) -> list[str]:
    """Two columns, name and text; only long texts are wrapped, and never inside a word or a path."""
    if column is None:
        column = min(max(len(name) for name, _ in rows), 30)
    indent = " " * (column + 4)
    lines: list[str] = []
    for name, text in rows:
        if len(name) > column:
            lines.append(f"  {name}")
            parts = _wrap(text, width - len(indent))
        else:
            parts = _wrap(text, width - len(indent))
            lines.append(f"  {name.ljust(column)}  {parts.pop(0) if parts else ''}".rstrip())
        lines += [indent + part for part in parts]
    return lines


def _render_listing(plugins: Plugins) -> str:
    """Every plugin with its description, sorted, shadowed and failed ones marked: the rows of ``--help``.

    Built-in plugins and the project's (plugin folders, installed packages) are listed apart, so a user sees at a
    glance which plugins come with tapster and which from the code around them.
    """
    from tapster._plugin_discovery import BUILTIN_FOLDER

    groups: dict[bool, list[tuple[str, str]]] = {True: [], False: []}
    for info in plugins:
        note = info.description if info.error is None else f"(failed to load: {info.error})"
        if info.shadowed_by is not None:
            note = f"(shadowed by {info.shadowed_by}) {note} [{info.origin}]"
        groups[os.path.dirname(info.origin) == BUILTIN_FOLDER].append((info.name, note))
    if not groups[True] and not groups[False]:
        return "  none found (see docs/plugins.md)"
    column = min(max(len(name) for name, _ in groups[True] + groups[False]), 30)
    lines = [" Built in:", *_plugin_table(groups[True], column=column)] if groups[True] else []
    if groups[False]:
        lines += [
            " From plugin folders and installed packages:",
            *_plugin_table(groups[False], column=column),
        ]
    else:
        lines.append(" No project plugins found (a NAME_plugin.py beside you: see docs/plugins.md).")
    return "\n".join(lines)


def _wrap(text: str, width: int) -> list[str]:
    if len(text) <= width:
        return [text] if text else []
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)


def _profiler(text: str) -> str:
    """twistd compares profiler names case-insensitively (``--profiler=cProfile`` works there too)."""
    name = text.lower()
    if name not in ("cprofile", "profile"):
        raise ValueError(f"expected 'cprofile' or 'profile', got {text!r}")
    return name


def _ignored_folders_note() -> str:
    """Name plugin folders discovery skips (an __init__.py in them), so their plugins do not vanish silently."""
    from tapster._plugin_discovery import ignored_folders_note

    return ignored_folders_note(sys.path)


class ServerOptions(Options):
    """``tapster [options] (-y FILE | -f FILE | PLUGIN [plugin options])``."""

    synopsis = "Usage: tapster [options] (-y FILE | -f FILE | PLUGIN [plugin options]) | tapster ctl COMMAND"
    description = "Run a tapster application: a tac file (-y), a saved state (-f), or a plugin."
    parameters = (
        ("python", "y", None, "Read an application from a Python file (a .tac file); implies --no_save."),
        (
            "file",
            "f",
            None,
            "Read a saved application state (.tap) written at an earlier shutdown. Default: tapster.tap, when "
            "it exists and no other application is given.",
        ),
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
        ("umask", None, None, "The umask of the process (octal). Daemon default: 077.", _umask),
        ("uid", "u", None, "Switch to this user (name or number) after privileged start."),
        ("gid", "g", None, "Switch to this group (name or number); default: the user's primary group."),
        ("chroot", None, None, "chroot to this directory before starting the services."),
        ("reactor", "r", "asyncio", "The event loop: asyncio or uvloop (see --help-reactors)."),
        (
            "shutdown-timeout",
            None,
            10.0,
            "Seconds to wait for services to stop before cancelling them; 0: no drain, cancel at once. The "
            "process is gone 2 s after that at the latest.",
            seconds,
        ),
        (
            "drain-delay",
            None,
            0.0,
            "Seconds to keep accepting and serving after SIGTERM/SIGINT before the stop begins, so a load "
            "balancer can take the process out first (docs/deploy.md); a second signal ends it early.",
            seconds,
        ),
        (
            "workers",
            None,
            None,
            f"Serve with this many worker processes (1 to {MAX_WORKERS}) under a master that holds the listeners, "
            "replaces dead or hung workers and reloads them one by one (docs/workers.md).",
            _workers,
        ),
        (
            "worker-boot-timeout",
            None,
            60.0,
            "With --workers: seconds a worker may take to start its services before it counts as failed.",
            _positive_seconds,
        ),
        (
            "worker-heartbeat-timeout",
            None,
            10.0,
            "With --workers: seconds without a heartbeat from a started worker's event loop before it is killed "
            "and replaced.",
            _positive_seconds,
        ),
        (
            "status",
            None,
            None,
            "Serve /healthz, /readyz and /metrics on this endpoint (a bare port or tcp:PORT: 127.0.0.1 only; "
            "docs/status.md). Needs the metrics extra.",
            _status_endpoint,
        ),
        (
            "health-timeout",
            None,
            5.0,
            "With --status: /healthz fails once the event loop has been blocked for longer than this.",
            _positive_seconds,
        ),
        ("profile", "p", None, "Profile the whole run and write the profile to this file at shutdown."),
        ("profiler", None, "cprofile", "The profiler for --profile: cprofile or profile.", _profiler),
    )
    flags = (
        ("nodaemon", "n", "Do not daemonize: run in the foreground and log to stdout."),
        (
            "trust-state-file",
            None,
            "Load a -f state file even if another user owns it or others may write it (a .tap file is code).",
        ),
        (
            "debug",
            "b",
            "Run in the debugger: pdb on an unhandled error and on SIGUSR2, asyncio debug mode; implies -n.",
        ),
        ("savestats", None, "With --profile, save raw pstats data instead of a text report."),
        ("spew", None, "Log every Python call and line executed (very slow; for finding hangs)."),
        ("originalname", None, "Do not change the process title to 'tapster: NAME'."),
        ("no_save", "o", "Do not save the application state at shutdown."),
        (
            "save",
            None,
            "Save the state at shutdown for a plugin or -y run too (a tapster extension; -f runs always save).",
        ),
        ("syslog", None, "Log to the system log instead of a file."),
        ("log-daily", None, "Rotate the log file once a day, at midnight."),
        ("euid", None, "With --uid/--gid, switch only the effective ids."),
        ("traceback", None, "Show the full traceback when start-up fails."),
    )

    def opt_version(self) -> None:
        """Print the version and exit."""
        raise HelpRequested(f"tapster {__version__} (python {'.'.join(map(str, sys.version_info[:3]))})")

    def opt_help_reactors(self) -> None:
        """List the event loops and whether each is installed."""
        raise HelpRequested(reactors_help())

    def __init__(self, prog: str = "tapster") -> None:
        super().__init__(prog)
        self.service_maker: ServiceMaker | None = None  # the plugin chosen on the command line, once parsed
        self._plugins: Plugins | None = None
        self._listing = False
        self.argv: tuple[str, ...] = ()

    # -- plugins: discovered only when a positional argument or --help needs them, never for -y or -f --------

    def plugins(self) -> Plugins:
        """Discover the plugins once; the working directory goes first on ``sys.path``, as ``python -m`` does.

        That makes a project root's ``tapster/plugins/`` folder count, and lets its plugins import the project.
        """
        if self._plugins is None:
            from tapster.plugin import discover_plugins
            from tapster.runner._appload import use_launch_directory

            use_launch_directory()  # the one sys.path rule (runner/_appload.py)
            self._plugins = discover_plugins(reserved=_RESERVED)
        return self._plugins

    def get_subcommands(self) -> Sequence[tuple[Any, ...]]:
        """Every plugin name that selects a plugin (a failed one selects its error)."""
        if self._listing:
            return ()  # format_help lists the plugins itself
        return [
            (info.name, info.alias, functools.partial(self._plugin_options, info.name), info.description)
            for info in self.plugins().runnable()
        ]

    def _plugin_options(self, name: str) -> Options:
        from tapster.plugin import make_options

        maker = self.plugins().load(name)  # PluginError (exit 1) for a plugin that failed to load
        self.service_maker = maker
        return make_options(maker)

    def unknown_subcommand(self, name: str, rest: list[str]) -> None:
        """A positional argument that names no plugin: say so, with the closest plugin name."""
        if name.endswith((".py", ".tac")) or os.path.isfile(name):
            raise UsageError(f"Unknown command: {name}. To run an application file, use -y {name}")
        raise UsageError(f"Unknown command: {name}. {self.plugins().explain_unknown(name)}")

    def format_help(self) -> str:
        """The global options, then every plugin with its description, sorted, shadowed and failed ones marked."""
        self._listing = True
        try:
            text = super().format_help()
        finally:
            self._listing = False
        heading = (
            "Plugins (tapster [options] PLUGIN [plugin options]; tapster PLUGIN --help for its options):"
        )
        listing = [self._plugin_listing()]
        if note := _ignored_folders_note():
            listing.append(" " + note)
        return "\n".join([text.rstrip("\n"), "", heading, *listing]) + "\n"

    def _plugin_listing(self) -> str:
        """The plugin rows of the help; printed again from the cache when no plugin changed (1,000 plugins)."""
        if self._plugins is not None:
            return _render_listing(self._plugins)
        from tapster.plugin import cached_listing
        from tapster.runner._appload import use_launch_directory

        use_launch_directory()  # the one sys.path rule (runner/_appload.py), as in plugins()
        return cached_listing(_render_listing, reserved=_RESERVED)

    def _parse_options(self, argv: Sequence[str]) -> None:
        """Parse as Options does; a global option given after the plugin name gets a hint where it belongs."""
        try:
            super().parse_options(argv)
        except UsageError as exc:
            if self.subcommand is None or exc.prog == self.prog:
                raise
            match = re.match(r"unrecognized option: (-\S+)", str(exc))
            if match is None or not self._is_global(match.group(1)):
                raise
            option = match.group(1)
            raise UsageError(
                f"{exc} ({option} is a global option: give it before the plugin name, "
                f"tapster {option} ... {self.subcommand} ...)",
                prog=exc.prog,
                usage=exc.usage,
            ) from None

    def _is_global(self, option: str) -> bool:
        """Whether ``option`` (``-n``, ``--nodaemon``) names one of these global options."""
        from tapster._options_table import _canonical, _table_for

        table = _table_for(type(self))
        if option.startswith("--"):
            return _canonical(option[2:]) in table.by_long
        return option[1:2] in table.by_short

    def post_options(self) -> None:
        sources = [
            flag
            for flag, given in (("-y", self["python"]), ("-f", self["file"]), ("a plugin", self.subcommand))
            if given
        ]
        if len(sources) > 1:
            raise UsageError(f"give only one of -y FILE, -f FILE or a plugin (got {' and '.join(sources)})")
        if not sources:
            if not os.path.exists("tapster.tap"):
                raise UsageError(
                    "nothing to run: give -y FILE, -f FILE or a plugin name, or have a tapster.tap here "
                    "(see tapster --help)"
                )
            self["file"] = "tapster.tap"  # twistd loads twistd.tap when given nothing else
        if self["save"] and self["no_save"]:
            raise UsageError("give only one of --save and -o/--no_save")
        if self["debug"]:
            self["nodaemon"] = True
        if self["workers"] is not None:
            self._check_workers()

    def _check_workers(self) -> None:
        """Refuse what --workers cannot do (yet): each would run in the master, which serves nothing."""
        refused = [
            option
            for option, given in (
                ("--chroot", self["chroot"]),
                ("--debug", self["debug"]),
                ("--profile", self["profile"]),
                ("--spew", self["spew"]),
                ("--save", self["save"]),
            )
            if given
        ]
        if refused:
            raise UsageError(f"{refused[0]} cannot be combined with --workers (see docs/workers.md)")

    def parse_options(self, argv: Sequence[str]) -> None:
        self.argv = tuple(argv)  # a master starts its workers with the same command line
        self._parse_options(argv)

    def _log_config(self, base: str) -> LogConfig:
        """The log settings as the log package takes them; the file's path is made absolute here, once."""
        from tapster.log._setup import LogConfig

        logfile = self["logfile"]
        if logfile == "-" or (not logfile and self["nodaemon"]):  # twistd: an empty name with -n is stdout
            path = None
        else:
            path = os.path.join(base, logfile or "tapster.log")
        return LogConfig(
            logfile=path,
            max_bytes=self._log_max_bytes(),
            keep=self["log-keep"],
            daily=self["log-daily"],
            syslog=self["syslog"],
            prefix=self["prefix"],
            format=self["log-format"],
            logger_factory=self["logger"],
        )

    def _log_max_bytes(self) -> int | None:
        """--log-daily rotates by date instead of size, unless a size is given as well."""
        size: int | None = self["log-max-size"]
        if size is None:
            return None if self["log-daily"] else 1_000_000
        return size or None

    def _rundir(self, base: str) -> str:
        """With --chroot the run directory is a path inside the jail, ``/`` by default (as twistd)."""
        if self["chroot"]:
            return os.path.join("/", "" if self["rundir"] == "." else self["rundir"])
        return os.path.join(base, self["rundir"])

    def run_config(self, launch_dir: str | None = None) -> RunConfig:
        """The RunConfig these options describe, with paths resolved against ``launch_dir`` (default: cwd)."""
        base = launch_dir or os.getcwd()
        pidfile = self["pidfile"] or None
        return RunConfig(
            nodaemon=self["nodaemon"],
            # twistd saves only -f runs; --save asks for it on a plugin or -y run (docs/running.md)
            no_save=self["no_save"] or not (self["file"] or self["save"]),
            log=self._log_config(base),
            pidfile=os.path.join(base, pidfile) if pidfile else None,
            pidfile_display=pidfile or "",
            uid=self["uid"],
            gid=self["gid"],
            euid=self["euid"],
            chroot=os.path.join(base, self["chroot"]) if self["chroot"] else None,
            rundir=self._rundir(base),
            umask=self["umask"],
            reactor=self["reactor"],
            shutdown_timeout=self["shutdown-timeout"],
            drain_delay=self["drain-delay"],
            traceback=self["traceback"],
            debug=self["debug"],
            profile=os.path.join(base, self["profile"]) if self["profile"] else None,
            profiler=self["profiler"],
            savestats=self["savestats"],
            spew=self["spew"],
            originalname=self["originalname"],
            workers=self["workers"],
            worker_boot_timeout=self["worker-boot-timeout"],
            worker_heartbeat_timeout=self["worker-heartbeat-timeout"],
            status=self["status"],
            health_timeout=self["health-timeout"],
            argv=self.argv,
            launch_dir=base,
        )
