"""RunConfig: everything the command line decided, built once and passed down unchanged."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunConfig:
    """How to run the process. Paths are already absolute (resolved against the launch directory)."""

    nodaemon: bool = True
    no_save: bool = True
    logfile: str | None = None  # None: standard output
    log_max_bytes: int | None = 1_000_000
    log_keep: int | None = None
    log_daily: bool = False
    log_format: str = "text"
    logger: str | None = None
    syslog: bool = False
    prefix: str = "tapster"
    pidfile: str | None = None
    pidfile_display: str = "tapster.pid"
    uid: str | None = None
    gid: str | None = None
    euid: bool = False
    chroot: str | None = None
    rundir: str = "."
    umask: int | None = None
    reactor: str = "asyncio"
    shutdown_timeout: float = 10.0
    traceback: bool = False
    debug: bool = False
    profile: str | None = None
    profiler: str = "cprofile"
    savestats: bool = False
    spew: bool = False
    originalname: bool = False
