"""A worker process: ``python -m tapster.runner._worker ARGS``, started by a master (runner/_master.py).

It reads the same command line as the master, builds the tree afresh (a reload re-imports the application
file here, in a new process), makes each server endpoint adopt the listening socket the master passed under
its name (``LISTEN_FDS``/``LISTEN_FDNAMES``, ``_endpoint_inherited.py``), and runs the tree as a foreground
server: privileged start, privilege drop, start, serve, drain at SIGTERM within ``--shutdown-timeout``.

What it tells the master goes over the control socket (its fd is in ``TAPSTER_WORKER_CONTROL_FD``), one line
each: ``ready`` once the tree has started, ``failed REASON`` when it could not, and ``beat`` every
``TAPSTER_WORKER_BEAT`` seconds from its event loop, so a loop that stops turning stops the heartbeat. Its log
records go to the master as lines on its standard output (:data:`RECORD_MARK`, then JSON); the master writes
them to the one log, with the worker's number. It has no pid file and saves no state.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import logging
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING

from tapster.errors import ExitStatus, TapsterError, UsageError
from tapster.log._context import record_context
from tapster.log._format import message_with_details
from tapster.log._service_files import STAMP as SERVICE_FILE
from tapster.log._service_files import send_service_files_to_master

if TYPE_CHECKING:
    from tapster.runner._config import RunConfig
    from tapster.service import Service

RECORD_MARK = b"\x1e"
"""Starts a line that is a log record (JSON) rather than something the worker printed."""

_PR_SET_PDEATHSIG = 1

logger = logging.getLogger("tapster")


class WorkerEnvironment:
    """What the master put in the environment (removed from it, so the application's children do not see it)."""

    def __init__(self) -> None:
        if "TAPSTER_WORKER" not in os.environ:
            raise SystemExit(
                "tapster: this is a worker process, started by a master: use tapster --workers N"
            )
        self.number = int(os.environ.pop("TAPSTER_WORKER"))
        self.master_pid = int(os.environ.pop("TAPSTER_MASTER_PID"))
        self.control_fd = int(os.environ.pop("TAPSTER_WORKER_CONTROL_FD"))
        self.beat = float(os.environ.pop("TAPSTER_WORKER_BEAT"))


def die_with_master(master_pid: int) -> None:
    """Ask the kernel for SIGTERM when the master dies, then check it has not died already.

    The parent-death signal is set after the fork, so a master that died before this call would never send
    it: the parent pid, read after setting it, tells (a dead master's children are reparented).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the heartbeat's failing write still ends the worker
        pass
    if os.getppid() != master_pid:
        os._exit(ExitStatus.FAILURE)


class RecordsToMaster(logging.Handler):
    """Writes each record as one line on standard output, which the master reads and logs with our number."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = {
                "time": record.created,
                "level": record.levelno,
                "logger": record.name,
                "context": record_context(record),
                "message": message_with_details(logging.Formatter(), record),
            }
            file = record.__dict__.get(SERVICE_FILE)  # a line of a service's own file (log/_service_files.py)
            if file is not None:
                entry["file"] = file
            data = RECORD_MARK + json.dumps(entry, ensure_ascii=False).encode("utf-8", "replace") + b"\n"
            while data:
                data = data[os.write(1, data) :]
        except OSError:  # the master is gone: the parent-death signal ends us
            pass
        except Exception:
            self.handleError(record)


class ControlChannel:
    """The worker's end of the socket to the master."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        os.set_inheritable(fd, False)

    def send(self, line: str) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(line.replace("\n", " ").encode("utf-8", "replace")[:4000] + b"\n")

    def start_heartbeat(self, interval: float) -> None:
        """Send ``beat`` from the running loop every ``interval`` seconds, never blocking it."""
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)

        def beat() -> None:
            try:
                self.sock.send(b"beat\n")
            except BlockingIOError:  # the master reads later; a missed beat is no harm
                pass
            except OSError:
                return  # the master is gone
            loop.call_later(interval, beat)

        beat()


def main() -> None:
    """Entry point (``python -m tapster.runner._worker ARGS``); never returns."""
    env = WorkerEnvironment()
    die_with_master(env.master_pid)
    from tapster._endpoint_systemd import claim_systemd_sockets

    claim_systemd_sockets()  # LISTEN_PID is this process: the shell that started us exec'ed into python
    control = ControlChannel(env.control_fd)
    send_service_files_to_master()  # a service's own log file is the master's to write (log/_service_files.py)
    handler = RecordsToMaster()
    root_logger = logging.getLogger()
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.INFO)
    try:
        status = _run(env, control)
    except (UsageError, TapsterError) as exc:
        control.send(f"failed {exc}")
        status = ExitStatus.FAILURE
    except BaseException as exc:  # the master must hear why, whatever it was
        logger.error("worker failed", exc_info=exc)
        control.send(f"failed {type(exc).__name__}: {exc}")
        status = ExitStatus.FAILURE
    handler.flush()
    sys.stdout.flush()
    os._exit(int(status))


def _run(env: WorkerEnvironment, control: ControlChannel) -> int:
    from tapster.runner._appload import load_root
    from tapster.runner._listeners import adopt_listeners
    from tapster.runner._options import ServerOptions

    options = ServerOptions("tapster")
    options.parse_options(sys.argv[1:])
    options["drain-delay"] = 0.0  # the master drains (runner/_master.py); its SIGTERM means "stop now"
    options["status"] = None  # the master serves --status (runner/_status_master.py)
    config = options.run_config()
    root = load_root(options)
    from tapster._endpoint_systemd import _passed

    passed = set(_passed.names) if _passed is not None else set()
    adopt_listeners(root, passed)
    return _serve(config, root, env, control)


def _serve(config: RunConfig, root: Service, env: WorkerEnvironment, control: ControlChannel) -> int:
    from tapster._endpoint_systemd import release_passed_sockets
    from tapster.runner._guard import ShutdownGuard
    from tapster.runner._proctitle import set_process_title
    from tapster.runner._run import _identity, _process_setup, _switch_user
    from tapster.runner._serve import Hooks, run_loop

    identity = _identity(config, root)
    guard = ShutdownGuard(config.shutdown_timeout, root, _nothing, _nothing)
    ready = False

    def on_ready() -> None:
        nonlocal ready
        ready = True
        control.send("ready")
        control.start_heartbeat(env.beat)

    def release_when_serving() -> None:
        # The servers listen on copies of their own, closed at their stop: new clients are refused then. Not
        # before the tree has started: a stop during the start-up must not take a socket from a listen to come.
        if ready:
            release_passed_sockets()

    guard.install()
    if not config.originalname:
        set_process_title(f"tapster: {root.name or 'tapster'} worker {env.number}")
    _process_setup(config)
    hooks = Hooks(
        ready=on_ready,
        drop_privileges=functools.partial(_switch_user, identity, config.euid),
        stopping=release_when_serving,
        guard=guard,
    )
    try:
        outcome = run_loop(config, root, hooks)
    except BaseException as exc:
        if ready:
            raise
        raise _FailedStart(exc) from exc
    return int(outcome)


class _FailedStart(TapsterError):
    def __init__(self, exc: BaseException) -> None:
        super().__init__(str(exc) if isinstance(exc, TapsterError) else f"{type(exc).__name__}: {exc}")


def _nothing() -> None:
    pass


if __name__ == "__main__":
    main()
