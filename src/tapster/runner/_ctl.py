"""``tapster ctl``: status, stop, rotate and reopen for a server found through its pid file (twistd had none)."""

from __future__ import annotations

import os
import pwd
import select
import signal
import stat
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from tapster.errors import ExitStatus, StartupError, UsageError
from tapster.options import Options
from tapster.runner._answers import answer_path, read_answer, wait_for_answer
from tapster.runner._options import seconds
from tapster.runner._pidfile import read_pid_status
from tapster.runner._workers_table import read_workers


class _CtlCommand(Options):
    parameters: ClassVar[Sequence[tuple[Any, ...]]] = (
        ("pidfile", None, "tapster.pid", "The pid file of the server."),
    )


class _StopOptions(_CtlCommand):
    description = "Send SIGTERM and wait until the server has exited."
    parameters = (
        *_CtlCommand.parameters,
        ("timeout", None, 15.0, "Seconds to wait for the server to exit (0 to 86400).", seconds),
    )


class _StatusOptions(_CtlCommand):
    description = (
        "Say whether the server runs: exit 0 running, 3 not running, 1 not running with a stale pid file."
    )


class _AnsweringCommand(_CtlCommand):
    parameters = (
        *_CtlCommand.parameters,
        ("timeout", None, 5.0, "Seconds to wait for the server's answer (0 to 86400).", seconds),
    )


class _RotateOptions(_AnsweringCommand):
    description = "Rotate the server's log file now (SIGUSR1) and say whether it did."


class _ReopenOptions(_AnsweringCommand):
    description = (
        "Reopen the server's log file (SIGHUP), after logrotate moved it away, and say whether it did."
    )


class _ReloadOptions(_CtlCommand):
    description = (
        "Replace the workers of a --workers server one by one with new ones that load the application again "
        "(SIGUSR2), and say whether all were replaced."
    )
    parameters = (
        *_CtlCommand.parameters,
        ("timeout", None, 300.0, "Seconds to wait for the reload to finish (0 to 86400).", seconds),
    )


class _UpgradeOptions(_ReloadOptions):
    description = (
        "Re-execute the master of a --workers server with the code installed now (same pid, same listeners, "
        "SIGURG), then replace its workers one by one; say whether it did."
    )


class CtlOptions(Options):
    """``tapster ctl COMMAND [--pidfile FILE]``."""

    synopsis = "Usage: tapster ctl (status | stop | rotate | reopen | reload | upgrade) [--pidfile FILE]"
    description = "Control a running tapster server through its pid file."
    subcommands = (
        ("status", None, _StatusOptions, "Is the server running? (LSB exit codes 0 / 3 / 1)"),
        ("stop", None, _StopOptions, "Stop the server and wait until it has exited."),
        ("rotate", None, _RotateOptions, "Rotate the log file now (SIGUSR1); waits for the answer."),
        ("reopen", None, _ReopenOptions, "Reopen the log file (SIGHUP); waits for the answer."),
        (
            "reload",
            None,
            _ReloadOptions,
            "Roll the workers onto a fresh load (SIGUSR2); waits for the answer.",
        ),
        ("upgrade", None, _UpgradeOptions, "Re-execute the master in place, then roll the workers (SIGURG)."),
    )

    def post_options(self) -> None:
        if self.subcommand is None:
            raise UsageError("give a command: status, stop, rotate, reopen, reload or upgrade")


def run_ctl(options: CtlOptions) -> tuple[int, str]:
    """Carry out the parsed ctl command; return the exit status and the line to print."""
    sub = options.sub_options
    assert sub is not None and options.subcommand is not None
    shown = sub["pidfile"]
    path = os.path.abspath(shown)
    _check_pid_path(path, shown)
    state, pid = read_pid_status(path)
    command = options.subcommand
    if command == "status":
        if state == "running":
            return ExitStatus.OK, (f"running (pid {pid})" if pid is not None else "running") + _workers(path)
        if state == "stale" and pid is None and _is_empty(path):
            # What a server leaves when it stopped cleanly but could not remove its file (its directory is
            # not writable after --uid): it names no process, so nothing is stale.
            return ExitStatus.NOT_RUNNING, f"not running (pid file {path} is empty: left by a clean stop)"
        if state == "stale":
            return ExitStatus.FAILURE, f"not running, stale pid file {path}"
        return ExitStatus.NOT_RUNNING, f"not running (no pid file {path})"
    if state != "running" or pid is None:
        where = f"no pid file {path}" if state == "absent" else f"no live server holds {path}"
        if command == "stop":
            return ExitStatus.OK, f"not running ({where})"
        return ExitStatus.FAILURE, f"not running ({where})"
    if command in ("rotate", "reopen", "reload", "upgrade"):
        return _log_command(command, pid, path, shown, sub["timeout"])
    return _stop(pid, sub["timeout"], shown)


def _log_command(command: str, pid: int, path: str, shown: str, timeout: float) -> tuple[int, str]:
    """Send SIGUSR1/SIGHUP/SIGUSR2 and report what the server answered in its answer file (runner/_answers.py)."""
    signum = _SIGNALS[command]
    if command in _DONE and read_workers(path) is None:
        return ExitStatus.FAILURE, (
            f"pid {pid} runs no workers: only a server started with --workers N can {command} "
            "(see docs/workers.md)"
        )
    answers = answer_path(path)
    try:
        owner: int | None = os.stat(path).st_uid  # the server's file; an answer file must be the same user's
    except OSError:
        owner = None
    before = read_answer(answers, owner)
    has_answers = os.path.exists(answers)
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return ExitStatus.FAILURE, f"not running (pid {pid} from {shown} has just exited)"
    except PermissionError:
        return ExitStatus.FAILURE, _not_permitted(pid, signum.name, shown)
    if not has_answers:  # a server without an answer file (an older tapster): all we know is that it was sent
        return ExitStatus.OK, f"sent {signum.name} to pid {pid} (it gives no answer: see its log)"
    answer = wait_for_answer(answers, pid, before, timeout, owner)
    if answer is not None and command in _DONE:
        if answer.outcome == "ok":
            return ExitStatus.OK, f"{_DONE[command]} (pid {pid}): {answer.reason}"
        return ExitStatus.FAILURE, f"pid {pid} did not {command}: {answer.reason}"
    done = "rotated" if command == "rotate" else "reopened"
    if answer is None:
        return ExitStatus.FAILURE, (
            f"sent {signum.name} to pid {pid}, but it did not answer within {timeout:g} s (see its log)"
        )
    if answer.outcome == "ok":
        return ExitStatus.OK, f"log {done} (pid {pid})"
    if answer.outcome == "skipped":
        return ExitStatus.OK, f"nothing {done} (pid {pid}): {answer.reason}"
    return ExitStatus.FAILURE, f"pid {pid} could not {command} its log: {answer.reason}"


_SIGNALS = {
    "rotate": signal.SIGUSR1,
    "reopen": signal.SIGHUP,
    "reload": signal.SIGUSR2,
    "upgrade": signal.SIGURG,
}
_DONE = {"reload": "reloaded", "upgrade": "upgraded"}  # the commands of a --workers master


def _stop(pid: int, timeout: float, shown: str) -> tuple[int, str]:
    try:
        watcher = os.pidfd_open(pid)
    except ProcessLookupError:
        return ExitStatus.OK, "stopped"
    except OSError:  # no pidfd support: fall back to watching the process with signal 0
        watcher = None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        if watcher is not None:
            os.close(watcher)
        return ExitStatus.OK, "stopped"
    except PermissionError:
        if watcher is not None:
            os.close(watcher)
        return ExitStatus.FAILURE, _not_permitted(pid, "SIGTERM", shown)
    if _wait_gone(pid, watcher, timeout):
        return ExitStatus.OK, "stopped"
    return ExitStatus.FAILURE, (
        f"pid {pid} is still running {timeout:g} s after SIGTERM (from {shown}); once its --shutdown-timeout "
        f"passes, its log names the services still stopping; run 'tapster ctl stop' again to force it, "
        f"or kill -KILL {pid}"
    )


def _workers(path: str) -> str:
    """The workers of a --workers server, one line each, from PIDFILE.workers; empty for a single process."""
    table = read_workers(path)
    if table is None:
        return ""
    now = time.time()
    lines = [f", {len(table)} worker(s):"]
    for row in table:
        up = f"up {_duration(now - row.since)}" if row.since is not None else "being replaced"
        lines.append(
            f"  worker {row.number}: pid {row.pid or '-'}, {row.state}, {up}, restarts {row.restarts}"
        )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _is_empty(path: str) -> bool:
    try:
        return os.stat(path).st_size == 0
    except OSError:
        return False


def _check_pid_path(path: str, shown: str) -> None:
    """Refuse a pid file path that names something other than a file (a directory reads as a stale file)."""
    try:
        info = os.stat(path)
    except OSError:
        return  # missing: "not running"; unreadable: read_pid_status says why
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise StartupError(f"pid file {shown} is {kind}, not a pid file (give the server's --pidfile)")


def _not_permitted(pid: int, signame: str, shown: str) -> str:
    """The one line for a server another user runs: who owns it, and what would work."""
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        owner = None
    try:
        who = pwd.getpwuid(owner).pw_name if owner is not None else None
    except KeyError:
        who = None
    runs_as = f" (it runs as {who or owner})" if owner is not None else ""
    return (
        f"not permitted to send {signame} to pid {pid} from {shown}{runs_as}: "
        "run tapster ctl as that user or as root"
    )


def _wait_gone(pid: int, watcher: int | None, timeout: float) -> bool:
    """Wait until ``pid`` has exited: a pidfd becomes readable then; without one, probe with signal 0."""
    if watcher is not None:
        try:
            poller = select.poll()
            poller.register(watcher, select.POLLIN)
            return bool(poller.poll(timeout * 1000))
        finally:
            os.close(watcher)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False
