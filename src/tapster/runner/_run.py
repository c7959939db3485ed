"""The whole run of one server process, in the order docs/architecture.md gives ("The flow of one run").

log -> pid file -> daemonize -> chroot/chdir/umask -> loop: privileged_start, drop privileges, start -> ready ->
wait for a signal -> stop -> save state -> remove the pid file -> "Server Shut Down."

Any failure before "ready" is logged with its traceback, reported to the launcher (or raised to the CLI in the
foreground) as one line, and leaves no pid file behind.
"""

from __future__ import annotations

import functools
import logging
import os
import signal

from tapster.errors import StartupError, TapsterError
from tapster.log import LogDestination, capture_stdio, install
from tapster.log._setup import give_followed_files_to
from tapster.runner._config import RunConfig
from tapster.runner._daemon import StartupPipe, daemonize
from tapster.runner._debug import break_now, post_mortem, start_spewing
from tapster.runner._drain import Draining
from tapster.runner._guard import ShutdownGuard
from tapster.runner._pid1 import announce as announce_init
from tapster.runner._pidfile import NoPidFile, PidFile, PidFileLocked
from tapster.runner._preload import preload
from tapster.runner._privileges import (
    Identity,
    check_can_switch,
    describe_user,
    drop_privileges,
    enter_chroot,
    may_create_files_in,
    resolve_identity,
)
from tapster.runner._proctitle import set_process_title
from tapster.runner._profile import run_profiled
from tapster.runner._reactors import check_reactor
from tapster.runner._sdnotify import SystemdNotifier
from tapster.runner._sdsession import SystemdSession
from tapster.runner._serve import Hooks, Outcome, run_loop
from tapster.service import Application, Service

logger = logging.getLogger("tapster")


def run(config: RunConfig, root: Service) -> int:
    """Run ``root`` as configured and return the exit status of this process.

    Raises:
        TapsterError: a failure before the service was ready (in the launching process).
    """
    check_reactor(config.reactor)
    identity = _identity(config, root)
    if identity is not None:
        check_can_switch(identity)
        _check_log_directory(config, identity)
    log = config.log
    if not config.nodaemon and log.logfile is None and log.logger_factory is None and not log.syslog:
        raise StartupError("a daemon has no standard output: give --logfile PATH, --syslog, or -n")
    _apply_umask(config)  # before the log and pid files are created: they follow it (docs/running.md)
    destination = install(config.log)
    if identity is not None and identity.uid != os.geteuid():
        try:
            destination.give_to(identity.uid, identity.gid)  # so it can be reopened after the switch
        except TapsterError:
            destination.close()
            raise
    pidfile = PidFile(config.pidfile, display=config.pidfile_display) if config.pidfile else NoPidFile()
    try:
        stale = pidfile.acquire()
    except PidFileLocked as exc:
        destination.close()
        if not config.nodaemon:  # a second start of a daemon is a mistake to report, not a setup to suggest
            raise
        raise StartupError(  # two servers run by hand in one directory (the trial's case)
            f"{exc}; to run a second server here, give each its own --pidfile (--pidfile= for none)"
        ) from None
    except TapsterError:
        destination.close()
        raise
    notifier = SystemdNotifier.from_environment()
    pipe: StartupPipe | None = None
    if not config.nodaemon:
        try:
            pipe = daemonize()
        except BaseException:
            pidfile.close_without_unlock()
            destination.close()
            raise
        if pipe is None:  # the launcher: the daemon has started
            pidfile.close_without_unlock()
            return 0
        capture_stdio()
    logger.info("Log opened.")  # in the daemon: a syslog line carries the pid of the process that logs
    announce_init(logger)  # as a container's PID 1: -n was implied (runner/_pid1.py)
    if config.workers is not None:  # a master and N worker processes (docs/workers.md)
        from tapster.runner._master_run import run_master

        return run_master(
            config, root, process=(destination, pidfile, stale), launcher=pipe, notifier=notifier
        )
    return _serve(config, root, destination, pidfile, stale, pipe, identity, notifier)


def _serve(
    config: RunConfig,
    root: Service,
    destination: LogDestination,
    pidfile: PidFile | NoPidFile,
    stale: int | None,
    pipe: StartupPipe | None,
    identity: Identity | None,
    notifier: SystemdNotifier,
) -> int:
    ready = False
    systemd = SystemdSession(notifier, root.name or "tapster")

    def forced_cleanup() -> None:  # the guard's thread, on a forced exit; the main thread is stuck or busy
        _release(pidfile)
        logger.error("Server Shut Down (forced, exit status 1).")

    guard = ShutdownGuard(
        config.shutdown_timeout, root, forced_cleanup, destination.handler.flush, config.drain_delay
    )
    draining = Draining(
        config.drain_delay
    )  # readiness ends at the stop signal: --status's /readyz subscribes
    draining.subscribe(systemd.draining)

    def on_ready() -> None:
        nonlocal ready
        ready = True
        if pipe is not None:
            pipe.ready()
        systemd.ready()

    try:
        guard.install()  # from here a SIGTERM is a stop request, never the default "die with the pid file"
        if stale is not None:
            logger.info("Removing stale pid file left by PID %d (%s).", stale, config.pidfile_display)
        pidfile.write(os.getpid())
        if not config.originalname:  # before the chroot: it may need ctypes and ldconfig
            set_process_title(f"tapster: {root.name or 'tapster'}")
        if config.chroot or identity is not None:
            preload(config)  # the jail, or the user we switch to, may not reach the standard library
        _process_setup(config)
        loop_hooks = Hooks(
            starting=systemd.starting,
            ready=on_ready,
            rotate=destination.rotate,
            reopen=systemd.reloading(destination.reopen, "reopening the log"),
            drop_privileges=functools.partial(_switch_user, identity, config.euid),
            draining=draining.begin,
            stopping=systemd.stopping,
            answer=pidfile.answer,
            guard=guard,
            extra_signals={signal.SIGUSR2: break_now} if config.debug else {},
        )
        outcome = _run_loop_instrumented(config, root, loop_hooks)
        ready = True  # the loop ended normally, even if a signal came during start-up: "Server Shut Down."
        logger.info("Main loop terminated.")
        if not config.no_save:
            _save(root)
        return int(outcome)
    except BaseException as exc:
        if not ready:
            reason = str(exc) if isinstance(exc, TapsterError) else f"{type(exc).__name__}: {exc}"
            detailed = config.traceback or not config.nodaemon  # the terminal gets one line, a log file all
            logger.error("Failed to start: %s", reason, exc_info=exc if detailed else None)
            systemd.failed(reason)
            if config.debug and not isinstance(exc, KeyboardInterrupt):
                post_mortem((exc.__cause__ or exc).__traceback__)
            if pipe is not None:
                # The launcher exits once it hears: nothing may be left behind by then.
                with guard.finishing():
                    _release(pidfile)
                pipe.failed(reason)
                return int(Outcome.UNCLEAN)
        raise
    finally:
        with guard.finishing():  # never at once with a forced exit from the guard's thread
            _release(pidfile)
            if ready:
                logger.info("Server Shut Down.")
            destination.close()


def _switch_user(identity: Identity | None, euid_only: bool) -> None:
    """Between privileged_start and start: become ``identity`` (nothing to do without --uid/--gid)."""
    if identity is not None:
        if identity.uid != os.geteuid():
            give_followed_files_to(identity.uid, identity.gid)  # services' own log files, opened just now
        drop_privileges(identity, euid_only=euid_only)


def _release(pidfile: PidFile | NoPidFile) -> None:
    try:
        pidfile.release()
    except TapsterError as exc:  # e.g. root-owned directory after dropping privileges
        logger.warning("%s", exc)


def _run_loop_instrumented(config: RunConfig, root: Service, hooks: Hooks) -> Outcome:
    """The serving loop, under the profiler and the spewer when asked for."""
    stop_spewing = start_spewing() if config.spew else None
    try:
        if config.profile:
            return run_profiled(
                config.profile, config.profiler, config.savestats, lambda: run_loop(config, root, hooks)
            )
        return run_loop(config, root, hooks)
    finally:
        if stop_spewing is not None:
            stop_spewing()


def _save(root: Service) -> None:
    """Save the tree as NAME-shutdown.tap in the run directory; a failure is a warning, not a lost shutdown."""
    from tapster.persist import StateNotSaved, save_state, state_file_name  # pickle & co. only when saving

    path = state_file_name(root)
    try:
        save_state(root, path)
    except StateNotSaved as exc:
        logger.warning("%s", exc)
    else:
        logger.info("Saved application state to %s.", path)


def _process_setup(config: RunConfig) -> None:
    """chroot, chdir to the run directory: after the pid and log files are open, before the loop."""
    if config.chroot:
        enter_chroot(config.chroot)
    try:
        os.chdir(config.rundir)
    except OSError as exc:
        raise StartupError(f"cannot change to run directory {config.rundir}: {exc.strerror}") from exc


def _check_log_directory(config: RunConfig, identity: Identity) -> None:
    """Refuse a log file the server could not rotate or reopen once it runs as ``identity``.

    Rotation creates a file beside the log and renames the old one; both need write permission on the
    directory, which a root-owned ``/var/log`` does not give ``nobody``. Failing at the start says so once,
    instead of every rotation failing later (and size rotation is on by default).
    """
    log = config.log
    if log.logfile is None or log.logger_factory is not None or log.syslog or identity.uid == os.geteuid():
        return
    directory = os.path.dirname(log.logfile)
    if not may_create_files_in(identity, directory):
        raise StartupError(
            f"{describe_user(identity)} could not rotate or reopen the log file {log.logfile}: it cannot "
            f"create files in {directory}; give the log a directory that user may write (for instance "
            "--logfile /var/log/NAME/tapster.log with chown USER /var/log/NAME) or use --syslog"
        )


def _apply_umask(config: RunConfig) -> None:
    """--umask, or 077 for a daemon (twistd's default), set before any file of the run is created."""
    if config.umask is not None:
        os.umask(config.umask)
    elif not config.nodaemon:
        os.umask(0o077)


def _identity(config: RunConfig, root: Service) -> Identity | None:
    uid: str | int | None = config.uid
    gid: str | int | None = config.gid
    if uid is None and gid is None and isinstance(root, Application):
        uid, gid = root.uid, root.gid
    return resolve_identity(uid, gid)
