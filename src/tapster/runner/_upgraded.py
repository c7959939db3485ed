"""In-place upgrade, the new image's side: ``python -m tapster.runner._upgraded (check|run) ARGS``.

``check`` runs in a separate process before the master execs (runner/_upgrade.py): it parses the command line
and loads the application with the code installed now, and compares the tree's listeners with the ones the
master holds (``TAPSTER_LISTENER_NAMES``); exit 0, or one line on stderr and exit 1.

``run`` is what the master execs into, keeping its pid: it sets up the log and takes the pid file over as a
start would (the old image's locked descriptor is closed only just before, so no other start can take it in
between), and runs the master with the listeners and workers the old image handed over (``TAPSTER_UPGRADE``),
rolling the workers onto new ones at once. It does not daemonize: it already is what it was.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from tapster.errors import TapsterError

logger = logging.getLogger("tapster")


def _load(argv: list[str]) -> tuple[Any, Any]:
    from tapster.runner._appload import load_root
    from tapster.runner._options import ServerOptions

    options = ServerOptions("tapster")
    options.parse_options(argv)
    return options.run_config(), load_root(options)


def check(argv: list[str]) -> int:
    """Load the application as a new master would; 0, or 1 with the reason on stderr."""
    from tapster.runner._listeners import held_listeners

    try:
        _, root = _load(argv)
        held_listeners(root, set(json.loads(os.environ.get("TAPSTER_LISTENER_NAMES", "[]"))), "upgrade")
    except TapsterError as exc:
        print(f"tapster: {exc}", file=sys.stderr)
        return 1
    except BaseException as exc:  # whatever the new code raises is the reason the upgrade stops
        print(f"tapster: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def run(argv: list[str]) -> int:
    """Be the master again, with what the old image handed over; the exit status."""
    from tapster.log import capture_stdio, install
    from tapster.runner._master_run import run_master
    from tapster.runner._pidfile import NoPidFile, PidFile
    from tapster.runner._run import _apply_umask
    from tapster.runner._sdnotify import SystemdNotifier
    from tapster.runner._upgrade import HANDOFF

    state = json.loads(os.environ.pop(HANDOFF))
    config, root = _load(argv)
    _apply_umask(config)
    destination = install(config.log)
    if not config.nodaemon:
        capture_stdio()
    pidfile = PidFile(config.pidfile, display=config.pidfile_display) if config.pidfile else NoPidFile()
    inherited = state.get("pidfile_fd")
    if isinstance(inherited, int):
        os.close(inherited)  # the old image's lock; ours is taken the next moment
    pidfile.acquire()
    logger.info(
        "Upgraded in place: pid %d runs the new code; %d listener(s) and %d worker(s) handed over.",
        os.getpid(),
        len(state["listeners"]),
        len(state["workers"]),
    )
    return run_master(
        config,
        root,
        process=(destination, pidfile, None),
        launcher=None,
        notifier=SystemdNotifier(state.get("notify_socket")),
        handoff=state,
    )


def main() -> None:
    mode, argv = sys.argv[1], sys.argv[2:]
    if mode == "check":
        sys.exit(check(argv))
    try:
        status = run(argv)
    except TapsterError as exc:
        logger.error("The upgraded master failed: %s", exc)
        print(f"tapster: {exc}", file=sys.stderr)
        status = 1
    sys.exit(status)


if __name__ == "__main__":
    main()
