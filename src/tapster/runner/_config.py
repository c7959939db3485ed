"""RunConfig: everything the command line decided, built once and passed down unchanged."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from tapster._record import Record

# LogConfig is imported when needed: `tapster ctl` and `tapster --help` never load logging.
if TYPE_CHECKING:
    from tapster.log._setup import LogConfig


class RunConfig(Record):
    """How to run the process. Paths are already absolute (resolved against the launch directory).

    Immutable, like a frozen dataclass, but a :class:`~tapster._record.Record`: this module is imported on every
    start, and a dataclass this size costs about a millisecond to create.
    """

    __slots__ = (
        "argv",
        "chroot",
        "debug",
        "drain_delay",
        "euid",
        "gid",
        "health_timeout",
        "launch_dir",
        "log",
        "no_save",
        "nodaemon",
        "originalname",
        "pidfile",
        "pidfile_display",
        "profile",
        "profiler",
        "reactor",
        "rundir",
        "savestats",
        "shutdown_timeout",
        "spew",
        "status",
        "traceback",
        "uid",
        "umask",
        "worker_boot_timeout",
        "worker_heartbeat_timeout",
        "workers",
    )

    nodaemon: Final[bool]
    no_save: Final[bool]
    log: Final[LogConfig]
    pidfile: Final[str | None]
    pidfile_display: Final[str]
    uid: Final[str | None]
    gid: Final[str | None]
    euid: Final[bool]
    chroot: Final[str | None]
    rundir: Final[str]
    umask: Final[int | None]
    reactor: Final[str]
    shutdown_timeout: Final[float]
    drain_delay: Final[float]
    traceback: Final[bool]
    debug: Final[bool]
    profile: Final[str | None]
    profiler: Final[str]
    savestats: Final[bool]
    spew: Final[bool]
    originalname: Final[bool]
    workers: Final[int | None]
    worker_boot_timeout: Final[float]
    worker_heartbeat_timeout: Final[float]
    status: Final[str | None]
    health_timeout: Final[float]
    argv: Final[tuple[str, ...]]
    launch_dir: Final[str | None]

    def __init__(
        self,
        *,
        nodaemon: bool = True,
        no_save: bool = True,
        log: LogConfig | None = None,
        pidfile: str | None = None,
        pidfile_display: str = "tapster.pid",
        uid: str | None = None,
        gid: str | None = None,
        euid: bool = False,
        chroot: str | None = None,
        rundir: str = ".",
        umask: int | None = None,
        reactor: str = "asyncio",
        shutdown_timeout: float = 10.0,
        drain_delay: float = 0.0,
        traceback: bool = False,
        debug: bool = False,
        profile: str | None = None,
        profiler: str = "cprofile",
        savestats: bool = False,
        spew: bool = False,
        originalname: bool = False,
        workers: int | None = None,
        worker_boot_timeout: float = 60.0,
        worker_heartbeat_timeout: float = 10.0,
        status: str | None = None,
        health_timeout: float = 5.0,
        argv: tuple[str, ...] = (),
        launch_dir: str | None = None,
    ) -> None:
        self.nodaemon = nodaemon
        self.no_save = no_save
        if log is None:
            from tapster.log._setup import LogConfig

            log = LogConfig(logfile=None)
        self.log = log  # where and how to log: the log package's own record, not a copy
        self.pidfile = pidfile
        self.pidfile_display = pidfile_display
        self.uid = uid
        self.gid = gid
        self.euid = euid
        self.chroot = chroot
        self.rundir = rundir
        self.umask = umask
        self.reactor = reactor
        self.shutdown_timeout = shutdown_timeout
        self.drain_delay = drain_delay  # SIGTERM: keep serving this long before the stop (docs/deploy.md)
        self.traceback = traceback
        self.debug = debug
        self.profile = profile
        self.profiler = profiler
        self.savestats = savestats
        self.spew = spew
        self.originalname = originalname
        self.workers = workers  # None: one process serves; N: a master and N workers (runner/_master.py)
        self.worker_boot_timeout = worker_boot_timeout
        self.worker_heartbeat_timeout = worker_heartbeat_timeout
        self.status = status  # --status: the endpoint of /healthz, /readyz, /metrics (runner/_status.py)
        self.health_timeout = health_timeout
        self.argv = argv  # the command line as given: a master starts each worker with it
        self.launch_dir = launch_dir  # where it was given, which its relative paths mean
