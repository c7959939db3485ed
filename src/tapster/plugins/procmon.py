"""The built-in ``procmon`` plugin: run one program, log its output, restart it when it ends.

    tapster -n procmon -- python3 worker.py --queue jobs
    tapster -n procmon --listen tcp:8000:interface=127.0.0.1 -- ./server --systemd-socket

Several programs, each with its own user, directory and sockets: a tac file with a ``ProcessMonitor``
(docs/plugins.md). Importing this module imports only tapster's core.
"""

from __future__ import annotations

import math
import os
from typing import Any

from tapster.errors import TapsterError, UsageError
from tapster.options import Options
from tapster.service import Service

__all__ = ["ProcmonOptions", "ProcmonPlugin", "procmon"]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


class ProcmonOptions(Options):
    """``tapster procmon`` options."""

    description = "Run a program, log its output as [name] lines, and restart it when it ends."
    parameters = [
        ("threshold", "t", "1", "A run shorter than this (seconds) doubles the restart delay.", _seconds),
        ("killtime", "k", "5", "Seconds between SIGTERM and SIGKILL when stopping.", _seconds),
        ("min-restart-delay", "m", "1", "First restart delay, and the delay after a long run.", _seconds),
        ("max-restart-delay", "M", "3600", "The restart delay never grows beyond this.", _seconds),
        ("name", None, None, "The label of the program's log lines; default: the command's file name."),
    ]
    synopsis = "Usage: tapster procmon [options] [--] COMMAND [ARGS ...]"
    long_description = (
        "Everything from COMMAND on is the program's own command line (put -- before it when it starts with "
        "-). The program runs in its own process group; stopping sends SIGTERM to the group and SIGKILL after "
        "--killtime. Each --listen socket is bound here and handed to the program as fd 3, 4, ... with "
        "LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID set (systemd's convention).\n"
        "Example: tapster -n procmon --min-restart-delay 0.5 -- python3 worker.py"
    )

    def __init__(self, prog: str = "tapster") -> None:
        super().__init__(prog)
        self["listen"] = []
        self["args"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Endpoint to bind and hand to the program (repeatable; tcp:, tcp6:, unix:, systemd:)."""
        from tapster.endpoints import parse_server

        try:
            parsed = parse_server(endpoint)
        except TapsterError as exc:
            raise UsageError(f"--listen: {exc}") from None
        if parsed.is_datagram or parsed.kind == "ssl":
            raise UsageError(
                f"--listen {endpoint!r}: a program is handed a plain stream socket (tcp, tcp6, unix, systemd)"
            )
        self["listen"].append(endpoint)

    def unknown_subcommand(self, name: str, rest: list[str]) -> None:
        """The first word that is not an option starts the program's command line: the rest is its own."""
        self._args.extend([name, *rest])
        rest.clear()

    def parse_args(self, *args: str) -> None:
        self["args"] = list(args)

    def post_options(self) -> None:
        if not self["args"]:
            raise UsageError("no command given: tapster procmon [options] -- COMMAND [ARGS ...]")
        if self["min-restart-delay"] > self["max-restart-delay"]:
            raise UsageError(
                f"--min-restart-delay {self['min-restart-delay']:g} is above "
                f"--max-restart-delay {self['max-restart-delay']:g}"
            )
        name = self["name"] or os.path.basename(self["args"][0]) or self["args"][0]
        if not name or "\n" in name:
            raise UsageError(f"--name {name!r}: give a one-line label")
        self["name"] = name


class ProcmonPlugin:
    """Makes the process monitor a ``tapster`` subcommand."""

    tapname = "procmon"
    description = "Run a program and restart it when it ends (twistd's procmon)."
    options = ProcmonOptions

    def make_service(self, options: Any) -> Service:
        from tapster.services import ProcessMonitor

        monitor = ProcessMonitor(
            threshold=options["threshold"],
            killtime=options["killtime"],
            min_restart_delay=options["min-restart-delay"],
            max_restart_delay=options["max-restart-delay"],
        )
        monitor.add_process(options["name"], options["args"], sockets=options["listen"])
        return monitor


procmon = ProcmonPlugin()
