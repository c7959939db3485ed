"""The run of a ``--workers N`` master, from the pid file to "Server Shut Down."; runner/_run.py branches here.

Everything before (the log, the pid file, daemonizing) is the single-process run's; then the master, unlike a
single process, binds the tree's listeners itself, as root, and never drops privileges: it starts each new
worker as root so that the worker's own privileged start (host keys, ports through ``systemd:``) and privilege
drop happen as in a single process. It runs no application code after building the tree once.

With ``--status`` the master binds the status listener before it starts any worker and serves /healthz,
/readyz and /metrics about its workers on its own loop (runner/_status_master.py); an upgrade hands its socket
over to the new image with the tree's listeners.

The table of workers for ``tapster ctl status`` is kept in ``PIDFILE.workers`` beside the pid file (a
:class:`~tapster.runner._answers.HeldFile`, like the answer file), and removed at the end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from tapster.errors import StartupError, TapsterError
from tapster.log import LogDestination
from tapster.log._service_files import close_files_for_workers, open_files_for_workers
from tapster.runner._answers import HeldFile
from tapster.runner._config import RunConfig
from tapster.runner._daemon import StartupPipe
from tapster.runner._listeners import BoundListener, bind_endpoint, bind_listeners, handed_over
from tapster.runner._master import Master, MasterHooks, WorkersFailed
from tapster.runner._pidfile import NoPidFile, PidFile
from tapster.runner._proctitle import set_process_title
from tapster.runner._sdnotify import SystemdNotifier
from tapster.runner._workers_table import MAX_BYTES, workers_path
from tapster.service import MultiService, Service

if TYPE_CHECKING:
    from tapster.runner._status import StatusServer
    from tapster.runner._status_master import MasterView

__all__ = ["run_master"]

logger = logging.getLogger("tapster")


def run_master(
    config: RunConfig,
    root: Service,
    *,
    process: tuple[LogDestination, PidFile | NoPidFile, int | None],
    launcher: StartupPipe | None,
    notifier: SystemdNotifier,
    handoff: dict[str, Any] | None = None,
) -> int:
    """Serve ``root`` with ``config.workers`` worker processes; the exit status of the master.

    ``handoff``: after an in-place upgrade (runner/_upgraded.py), the listeners and workers of the old image.

    Raises:
        TapsterError: a failure before all workers were ready, in the foreground (a daemon tells its launcher).
    """
    assert config.workers is not None
    destination, pidfile, stale = process
    pipe = launcher
    name = root.name or "tapster"
    table = HeldFile(workers_path(config.pidfile), max_bytes=MAX_BYTES) if config.pidfile else None
    listeners: list[BoundListener] = []
    ready = handoff is not None  # an upgraded master has been serving all along
    loop = asyncio.new_event_loop()
    status_server: StatusServer | None = None  # --status: /readyz answers 503 through the whole stop
    status_listener: BoundListener | None = None  # its socket, held like the tree's (and kept by an upgrade)
    view: MasterView | None = None

    def on_ready() -> None:
        nonlocal ready
        if not ready and pipe is not None:
            pipe.ready()
        ready = True
        notifier.notify("READY=1", f"STATUS={config.workers} workers ready", f"MAINPID={os.getpid()}")

    def reloading() -> None:
        notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", "STATUS=reloading")

    def answer(command: str, outcome: str, reason: str) -> None:
        if view is not None:
            view.answered(command, outcome)
        pidfile.answer(command, outcome, reason)

    def close_listeners() -> None:
        for listener in listeners:
            listener.close()

    hooks = MasterHooks(
        ready=on_ready,
        status=lambda text: notifier.notify(f"STATUS={text}"),
        reloading=reloading,
        stopping=lambda: notifier.notify("STOPPING=1", "STATUS=shutting down"),
        draining=lambda delay: notifier.notify("STOPPING=1", f"STATUS=draining ({delay:g} s)"),
        answer=answer,
        rotate=destination.rotate,
        reopen=destination.reopen,
        workers_changed=table.rewrite if table is not None else lambda _text: None,
        prepare_exec=lambda: {
            **_prepare_exec(destination, pidfile, notifier),
            "watchdog_interval": watchdog,
            "status_fd": status_listener.sock.fileno() if status_listener is not None else None,
        },
        watchdog=(lambda: notifier.notify("WATCHDOG=1")) if notifier.enabled else None,
        extend_start=(
            (lambda seconds: notifier.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}"))
            if notifier.enabled
            else None
        ),
    )
    # systemd's watchdog settings were read (and removed from the environment) by SystemdNotifier.from_environment;
    # half the interval, as sd_watchdog_enabled(3) advises; None: no watchdog for this process
    usec = notifier.watchdog_usec
    watchdog = (usec / 2_000_000 if usec else None) if handoff is None else handoff.get("watchdog_interval")
    try:
        if stale is not None:
            logger.info("Removing stale pid file left by PID %d (%s).", stale, config.pidfile_display)
        pidfile.write(os.getpid())
        if table is not None:
            table.open()
        if not config.originalname:
            set_process_title(f"tapster: {name} master")
        try:
            os.chdir(config.rundir)
        except OSError as exc:
            raise StartupError(f"cannot change to run directory {config.rundir}: {exc.strerror}") from exc
        if not config.no_save:
            logger.info("With --workers the application state is not saved at shutdown (docs/workers.md).")
        if handoff is None:
            listeners.extend(loop.run_until_complete(bind_listeners(root)))
        else:
            listeners.extend(handed_over(handoff["listeners"]))
        for listener in listeners:
            logger.info("master listening on %s for %d worker(s)", listener.description, config.workers)
        open_files_for_workers(_service_log_files(root))  # the workers send their lines here
        master = Master(
            count=config.workers,
            listeners=[(listener.name, listener.sock) for listener in listeners],
            close_listeners=close_listeners,
            argv=config.argv,
            launch_dir=config.launch_dir or os.getcwd(),
            boot_timeout=config.worker_boot_timeout,
            heartbeat_timeout=config.worker_heartbeat_timeout,
            shutdown_timeout=config.shutdown_timeout,
            hooks=hooks,
            watchdog_interval=watchdog,
            drain_delay=config.drain_delay,
        )
        if config.status is not None:  # before any worker: a port in use fails the start with nothing started
            from tapster.runner._status import StatusServer
            from tapster.runner._status_master import MasterView

            view = MasterView(master)
            try:
                status_listener = loop.run_until_complete(_status_listener(config.status, handoff))
                status_server = StatusServer(config.status, config.health_timeout, view, status_listener.sock)
                loop.run_until_complete(status_server.start())
            except TapsterError as exc:
                status_server = None
                if handoff is None:
                    raise
                logger.error("%s; the upgraded master goes on without it.", exc)  # its workers serve on
        elif handoff is not None and isinstance(handoff.get("status_fd"), int):
            os.close(handoff["status_fd"])
        try:
            status = loop.run_until_complete(master.run(None if handoff is None else handoff["workers"]))
        except WorkersFailed as exc:
            if not ready:
                raise StartupError(str(exc)) from None
            logger.error("%s", exc)
            return 1
        ready = True  # stopped during start-up is a clean stop too
        return status
    except BaseException as exc:
        if not ready:
            reason = str(exc) if isinstance(exc, TapsterError) else f"{type(exc).__name__}: {exc}"
            logger.error(
                "Failed to start: %s", reason, exc_info=None if isinstance(exc, TapsterError) else exc
            )
            if pipe is not None:
                # The launcher exits once it hears: nothing may be left behind by then.
                _leave_nothing(table, pidfile)
                pipe.failed(reason)
                return 1
        raise
    finally:
        close_listeners()
        if status_server is not None:
            loop.run_until_complete(status_server.stop())
        if status_listener is not None:
            status_listener.close()
        loop.close()
        _leave_nothing(table, pidfile)
        if ready:
            logger.info("Server Shut Down.")
        close_files_for_workers()
        destination.close()


def _leave_nothing(table: HeldFile | None, pidfile: PidFile | NoPidFile) -> None:
    """Remove the workers' table and the pid file (each only once: a second call does nothing)."""
    if table is not None:
        table.remove(None)
    try:
        pidfile.release()
    except TapsterError as exc:
        logger.warning("%s", exc)


def _service_log_files(service: Service) -> list[str]:
    """The log files of the services' own in ``service``'s tree (a web server's ``--access-log FILE``)."""
    own = getattr(service, "service_log_files", None)
    files: list[str] = list(own()) if callable(own) else []
    if isinstance(service, MultiService):
        for child in service:
            files += _service_log_files(child)
    return files


async def _status_listener(endpoint: str, handoff: dict[str, Any] | None) -> BoundListener:
    """--status's socket: the old image's after an upgrade, else bound now (before any worker starts).

    Raises:
        StartupError: it cannot be bound (``--status: cannot listen on ...``).
    """
    from tapster.endpoints import parse_server

    fd = handoff.get("status_fd") if handoff is not None else None
    if isinstance(fd, int):
        return handed_over([["status", fd]])[0]
    try:
        return await bind_endpoint(parse_server(endpoint), "status")
    except TapsterError as exc:
        raise StartupError(f"--status: {exc}") from exc


def _prepare_exec(
    destination: LogDestination, pidfile: PidFile | NoPidFile, notifier: SystemdNotifier
) -> dict[str, Any]:
    """Before an upgrade's exec: what the new image needs besides the sockets; the log flushed."""
    destination.handler.flush()
    return {"notify_socket": notifier.address, "pidfile_fd": pidfile.fd}
