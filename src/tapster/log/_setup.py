"""The runner's entry to logging: turn a :class:`LogConfig` into the one handler on the root logger.

The runner calls :func:`install` once, before daemonizing, and keeps the returned :class:`LogDestination` to
rotate (``SIGUSR1``), reopen (``SIGHUP``) and close it. Services never touch handlers; they log with
``logging.getLogger(__name__)`` and their lines end up here.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Final, TextIO

from tapster._record import Record
from tapster._safefile import open_regular
from tapster.errors import StartupError
from tapster.log._capture import StreamToLogger
from tapster.log._format import JsonFormatter, TextFormatter
from tapster.log._rotate import RotatingFileHandler
from tapster.log._stream import StreamHandler

__all__ = ["LogConfig", "LogDestination", "install"]


class LogConfig(Record):
    """Where and how the process logs; built once from the command line, immutable, compared by value.

    Which destination is used: ``logger_factory`` if given, else syslog if ``syslog``, else the file
    ``logfile``, else stdout. ``format`` applies to the file and to stdout (and to a custom handler that has
    no formatter of its own); syslog lines have their own shape.

    Attributes:
        logfile: ``None``: stdout; otherwise the path of the log file (the command line's ``-`` and an empty
            ``-n --logfile=`` become ``None`` where they are parsed, in runner/_options.py).
        max_bytes: rotate the file before it would grow past this many bytes; ``None`` or 0: never by size.
        keep: how many rotated files to keep; ``None`` keeps all.
        daily: also rotate at local midnight, naming old files by date.
        syslog: log to the local syslog daemon instead of a file.
        prefix: the program name in syslog lines.
        format: ``"text"`` (twistd's lines) or ``"json"`` (one object per line); checked by the option's
            coercer, not again here.
        logger_factory: ``"module.attr"`` or ``"module:attr"``, a callable that takes no argument and
            returns a :class:`logging.Handler` to use instead of all of the above.
        level: the root logger's level.
    """

    __slots__ = (
        "daily",
        "format",
        "keep",
        "level",
        "logfile",
        "logger_factory",
        "max_bytes",
        "prefix",
        "syslog",
    )

    logfile: Final[str | None]
    max_bytes: Final[int | None]
    keep: Final[int | None]
    daily: Final[bool]
    syslog: Final[bool]
    prefix: Final[str]
    format: Final[str]
    logger_factory: Final[str | None]
    level: Final[int]

    def __init__(
        self,
        logfile: str | None,
        max_bytes: int | None = 1_000_000,
        keep: int | None = None,
        daily: bool = False,
        syslog: bool = False,
        prefix: str = "tapster",
        format: str = "text",
        logger_factory: str | None = None,
        level: int = logging.INFO,
    ) -> None:
        self.logfile = logfile
        self.max_bytes = max_bytes
        self.keep = keep
        self.daily = daily
        self.syslog = syslog
        self.prefix = prefix
        self.format = format
        self.logger_factory = logger_factory
        self.level = level


_companions: weakref.WeakSet[RotatingFileHandler] = weakref.WeakSet()


def follow_log_commands(handler: RotatingFileHandler) -> None:
    """Have ``SIGUSR1`` (rotate) and ``SIGHUP`` (reopen) reach ``handler`` too, as they reach the log file.

    For a service's own log files (the web server's ``--access-log FILE``): logrotate moves them with the main
    log and sends one signal, and a file left open after the move would fill the rotated copy for ever.
    Held weakly; a closed handler is skipped.
    """
    _companions.add(handler)


def give_followed_files_to(uid: int, gid: int) -> None:
    """Make the files of :func:`follow_log_commands` ``uid``'s before the runner drops to that user.

    They are opened by services in ``privileged_start`` (as root, after :meth:`LogDestination.give_to` ran),
    and a reopen after the switch must still be allowed to open them. The same checks as for the log file.

    Raises:
        StartupError: a file cannot be opened or its owner changed.
    """
    for handler in list(_companions):
        _give(handler.path, uid, gid)


def _give(path: str, uid: int, gid: int) -> None:
    """Change the owner of the log file at ``path``, opened with the checks of any log file (no link, a regular
    file with one link), so nothing planted meanwhile is handed over."""
    try:
        fd = open_regular(path, os.O_RDONLY, what="log file")
        try:
            os.fchown(fd, uid, gid)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StartupError(f"cannot hand the log file {path} to uid {uid}: {exc}") from exc


class LogDestination:
    """The handler :func:`install` put on the root logger, and what the runner may do with it.

    Attributes:
        handler: the handler on the root logger.
        description: what the destination is, for the runner's messages: the file's path, ``stdout``,
            ``syslog (prefix NAME)`` or the custom factory's name.
    """

    def __init__(self, handler: logging.Handler, description: str) -> None:
        self.handler = handler
        self.description = description

    def __repr__(self) -> str:
        return f"<LogDestination {self.description}>"

    def rotate(self) -> bool:
        """Rotate a log file now; returns ``False`` (and does nothing) for other destinations.

        Raises:
            OSError: the file could not be rotated; logging goes on to the current file.
        """
        return self._each_file(RotatingFileHandler.rotate)

    def reopen(self) -> bool:
        """Reopen a log file at its path (after logrotate moved it); returns ``False`` for other destinations.

        Raises:
            OSError: the file could not be opened; logging goes on to the current file.
        """
        return self._each_file(RotatingFileHandler.reopen)

    def _each_file(self, command: Callable[[RotatingFileHandler], None]) -> bool:
        """Run ``command`` on the log file and on every file of :func:`follow_log_commands`; False if there
        were none. One that fails does not keep the others from their turn; the first error is raised after."""
        files = [self.handler] if isinstance(self.handler, RotatingFileHandler) else []
        files += [handler for handler in list(_companions) if handler is not self.handler]
        failed: OSError | None = None
        for handler in files:
            try:
                command(handler)
            except OSError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed
        return bool(files)

    def give_to(self, uid: int, gid: int) -> None:
        """Make a log file ``uid``'s before the runner switches to that user, so the server can reopen it.

        The file is opened again by its path with the same checks as any log file (no link, a regular file with
        one link), so nothing planted meanwhile is handed over. Other destinations are left alone.

        Raises:
            StartupError: the file cannot be opened or its owner changed.
        """
        if isinstance(self.handler, RotatingFileHandler):
            _give(self.handler.path, uid, gid)

    def close(self) -> None:
        """Take the handler off the root logger, flush and close it. Safe to call twice."""
        logging.getLogger().removeHandler(self.handler)
        with _installed_lock:
            if self in _installed:
                _installed.remove(self)
        self.handler.flush()
        self.handler.close()


_installed: list[LogDestination] = []
_installed_lock = threading.Lock()


def install(config: LogConfig, *, stream: TextIO | None = None) -> LogDestination:
    """Make ``config``'s destination the process's log; logs nothing itself.

    The new handler is added to the root logger before the handlers of an earlier :func:`install` are removed
    and closed, so no line falls between the two. Handlers put on the root logger by anything else are left
    alone. The root logger's level is set to ``config.level``. Log records keep all their fields
    (thread, process, ...), so a handler an application adds itself can show them with ``%(process)d``.

    Args:
        config: the destination and its options.
        stream: where stdout logging writes, instead of :data:`sys.stdout`.

    Raises:
        StartupError: the file cannot be opened, syslog is not there, or the custom
            handler factory cannot be loaded or does not return a handler. Earlier logging stays as it was.
    """
    handler, description = _make_handler(config, stream)
    if handler.formatter is None:
        handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(config.level)
    destination = LogDestination(handler, description)
    with _installed_lock:
        previous = list(_installed)
        _installed.append(destination)
    for old in previous:
        old.close()
    # logging.logThreads/logProcesses stay on: switching them off is ~8% faster, but a handler an application
    # adds itself with %(process)d would then fail on every record.
    return destination


def _make_handler(config: LogConfig, stream: TextIO | None) -> tuple[logging.Handler, str]:
    if config.logger_factory is not None:
        return _from_factory(config.logger_factory), config.logger_factory
    if config.syslog:
        from tapster.log._syslog import make_syslog_handler  # imports logging.handlers: only when used

        return make_syslog_handler(config.prefix), f"syslog (prefix {config.prefix})"
    if config.logfile is not None and os.path.abspath(config.logfile) == os.devnull:
        # twistd's way to keep no log: nothing is opened (a device is never opened as a log file), every line
        # is dropped before it is formatted
        return logging.NullHandler(), f"{os.devnull} (no log kept)"
    if config.logfile is not None:
        try:
            handler = RotatingFileHandler(
                config.logfile, max_bytes=config.max_bytes, keep=config.keep, daily=config.daily
            )
        except StartupError as exc:
            if _is_device(config.logfile):  # /dev/stdout in a container: refused, '-' is the way
                raise StartupError(f"{exc} (log to standard output with '-')") from None
            raise
        if config.format == "json":
            handler.setFormatter(JsonFormatter())
        return handler, handler.path
    if stream is None:
        stream = sys.stdout
        if isinstance(stream, StreamToLogger):
            # stdout is being captured into the log: writing the log there would feed it back into itself.
            stream = stream.fallback or sys.__stdout__
    return StreamHandler(stream), "stdout"


def _is_device(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode  # followed: /dev/stdout is a link to a terminal, a pipe or a socket
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _from_factory(spec: str) -> logging.Handler:
    factory = _load(spec)
    try:
        handler = factory()
    except StartupError:
        raise
    except Exception as exc:
        raise StartupError(f"log handler factory {spec!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(handler, logging.Handler):
        raise StartupError(
            f"log handler factory {spec!r} returned a {type(handler).__name__}, not a logging.Handler"
        )
    return handler


def _load(spec: str) -> Callable[[], object]:
    """Resolve ``module:attr.sub`` or ``module.attr`` to a callable (tapster's one resolver, _resolve.py)."""
    from tapster._resolve import NameNotResolved, resolve_name

    if ":" not in spec and "." not in spec:
        raise StartupError(f"bad log handler factory {spec!r}: expected 'module.attr' or 'module:attr'")
    try:
        obj: object = resolve_name(spec)
    except NameNotResolved as exc:
        what = "cannot import" if str(exc).startswith("cannot import") else "cannot load"
        if str(exc).startswith("not found"):
            raise StartupError(f"log handler factory {spec!r} {exc}") from None
        raise StartupError(f"{what} log handler factory {spec!r}: {exc}") from None
    if not callable(obj):
        raise StartupError(f"log handler factory {spec!r} is a {type(obj).__name__}, not callable")
    return obj
