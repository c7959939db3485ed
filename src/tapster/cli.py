"""The ``tapster`` command: the only place that prints usage, maps exceptions to exit statuses and exits."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tapster.errors import ExitStatus, HelpRequested, TapsterError, UsageError

if TYPE_CHECKING:
    from tapster.service import Service


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the console script; never returns."""
    sys.exit(run_command(sys.argv[1:] if argv is None else argv))


def run_command(argv: Sequence[str]) -> int:
    """Run one ``tapster`` command line and return its exit status; errors become one line on stderr."""
    show_traceback = "--traceback" in argv
    try:
        return _dispatch(list(argv))
    except HelpRequested as request:
        print(request.text)
        return ExitStatus.OK
    except UsageError as exc:
        prog = exc.prog or "tapster"
        print(f"{prog}: error: {exc}", file=sys.stderr)
        if exc.usage:
            print(exc.usage, file=sys.stderr)
        return ExitStatus.USAGE
    except TapsterError as exc:
        if show_traceback:
            import traceback

            traceback.print_exception(exc)
        print(f"tapster: {exc}", file=sys.stderr)
        return int(exc.exit_status)
    except KeyboardInterrupt:
        return 130


def _dispatch(argv: list[str]) -> int:
    if argv[:1] == ["ctl"]:
        return _ctl(argv[1:])
    from tapster.runner._options import ServerOptions

    options = ServerOptions("tapster")
    options.parse_options(argv)
    config = options.run_config()
    if options["python"]:
        from tapster.runner._appload import load_application_file

        root = load_application_file(options["python"])
    elif options["file"]:
        root = _load_saved_state(options["file"], trust=options["trust-state-file"])
    else:  # a plugin: its options are parsed and its module loaded; a failed one raised PluginError above
        from tapster.plugin import build_application

        assert options.service_maker is not None and options.sub_options is not None
        root = build_application(options.service_maker, options.sub_options)
    from tapster.runner._run import run

    return run(config, root)


def _ctl(argv: list[str]) -> int:
    from tapster.runner._ctl import CtlOptions, run_ctl

    options = CtlOptions("tapster ctl")
    options.parse_options(argv)
    status, message = run_ctl(options)
    answer = options.subcommand == "status" or status == ExitStatus.OK  # a status is an answer, not an error
    print(message, file=sys.stdout if answer else sys.stderr)
    return status


def _load_saved_state(path: str, *, trust: bool) -> Service:
    """Load ``-f FILE``; the working directory joins sys.path so plugin classes saved in it can be found."""
    import os

    from tapster.persist import load_state

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return load_state(path, trust_any_owner=trust)
