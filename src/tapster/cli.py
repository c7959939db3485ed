"""The ``tapster`` command: the only place that prints usage, maps exceptions to exit statuses and exits."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from tapster import runner
from tapster.errors import ExitStatus, HelpRequested, TapsterError, UsageError


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the console script; never returns."""
    try:
        status = run_command(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # ``tapster --help | head``: the reader left, which is its right; no traceback, and nothing more to say.
        # stdout goes to /dev/null so the interpreter's own flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 128 + signal.SIGPIPE  # what a shell reports for a writer ended by the closed pipe
    sys.exit(status)


def run_command(argv: Sequence[str]) -> int:
    """Run one ``tapster`` command line and return its exit status; errors become one line on stderr."""
    parsed: dict[str, bool] = {"traceback": False}  # --traceback as parsed, once the options got that far
    try:
        return _dispatch(list(argv), parsed)
    except HelpRequested as request:
        print(request.text)
        return ExitStatus.OK
    except UsageError as exc:
        prog = exc.prog or "tapster"
        print(f"{prog}: error: {_one_line(str(exc))}", file=sys.stderr)
        if exc.usage:
            print(exc.usage, file=sys.stderr)
        return ExitStatus.USAGE
    except TapsterError as exc:
        if parsed["traceback"]:
            import traceback

            traceback.print_exception(exc)
        print(f"tapster: {_one_line(str(exc))}", file=sys.stderr)
        return int(exc.exit_status)
    except KeyboardInterrupt:
        return 130


def _one_line(message: str) -> str:
    """An error is one line: a line break or control character in it came from the input it echoes (a plugin
    name, a damaged file), and is shown escaped so it cannot split the line or forge another one."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def _dispatch(argv: list[str], parsed: dict[str, bool]) -> int:
    if argv[:1] == ["ctl"]:
        return _ctl(argv[1:])
    if argv[:1] == ["mktap"]:
        return _mktap(argv[1:])
    as_init = os.getpid() == 1  # a container without --init (docs/deploy.md)
    if as_init:
        status = runner.serve_as_init()  # forks: the parent stays PID 1, an init, until the server exits
        if status is not None:
            return status
    options = runner.ServerOptions("tapster")
    try:
        options.parse_options(argv)
    except UsageError as exc:
        if not argv and str(exc).startswith("nothing to run"):
            # a bare ``tapster`` is someone finding out what it does: the help and the plugins, then the error
            print(options.format_help(), file=sys.stderr)
            raise UsageError(str(exc), prog=exc.prog) from None  # the help said it all: no usage line again
        raise
    finally:  # a plugin that fails to load while parsing: --traceback before its name counts
        parsed["traceback"] = bool(options["traceback"])
    if as_init:
        options["nodaemon"] = True  # a container's log is its standard output; said in the log
    config = options.run_config()
    from tapster.endpoints import claim_systemd_sockets

    claim_systemd_sockets()  # before the app's code runs or the process forks: LISTEN_PID is this pid
    return runner.run(config, runner.load_root(options))


def _ctl(argv: list[str]) -> int:
    options = runner.CtlOptions("tapster ctl")
    options.parse_options(argv)
    status, message = runner.run_ctl(options)
    answer = options.subcommand == "status" or status == ExitStatus.OK  # a status is an answer, not an error
    print(message, file=sys.stdout if answer else sys.stderr)
    return status


def _mktap(argv: list[str]) -> int:
    options = runner.MktapOptions("tapster mktap")
    options.parse_options(argv)
    print(runner.run_mktap(options))
    return ExitStatus.OK
