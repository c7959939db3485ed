"""A service's own log file (the web server's ``--access-log FILE``), in one process and under ``--workers``.

In a single process the service opens the file itself: a :class:`RotatingFileHandler` that follows ``ctl
rotate``/``ctl reopen`` with the main log (:func:`follow_log_commands`). Under ``--workers`` that would give each
worker its own handle on the file: each rotating it by size on its own count (one renaming the file away under
the others) and none following the master's signals, so after logrotate moved the file every worker went on
filling the moved copy. So in a worker the service's logger writes nothing itself: its records go to the master
with the rest of the worker's log, stamped with the file's path, and the master, which opened the files of its
own tree before starting any worker, writes them there. Rotation and reopening are then the master's alone, as
for the main log.

The master writes only to the files its own tree names: a path a worker sends is looked up, never opened, so a
worker (which runs as the unprivileged user) cannot make the master (root) write anywhere else.
"""

from __future__ import annotations

import logging

from tapster.log._rotate import RotatingFileHandler
from tapster.log._setup import follow_log_commands

__all__ = [
    "STAMP",
    "close_files_for_workers",
    "file_for_worker_record",
    "open_files_for_workers",
    "send_service_files_to_master",
    "service_file_logger",
]

_to_master = False
_for_workers: dict[str, RotatingFileHandler] = {}

STAMP = "service_file"
"""The record attribute naming the file a worker's record belongs in."""


def send_service_files_to_master() -> None:
    """Called once by a worker before it builds its tree: service files become records for the master."""
    global _to_master
    _to_master = True


class _Stamp(logging.Filter):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def filter(self, record: logging.LogRecord) -> bool:
        setattr(record, STAMP, self.path)
        return True


def _bare_lines(handler: RotatingFileHandler) -> RotatingFileHandler:
    handler.setFormatter(logging.Formatter("%(message)s"))
    follow_log_commands(handler)  # SIGUSR1/SIGHUP (tapster ctl rotate/reopen, logrotate) rotate it too
    return handler


def service_file_logger(path: str, name: str) -> tuple[logging.Logger, RotatingFileHandler | None]:
    """The logger ``name`` writing bare lines to the file at ``path`` (an absolute path), and the handler the
    caller closes when it opened one: None in a worker, whose lines the master writes.

    Raises:
        StartupError: the file cannot be opened or was refused (see RotatingFileHandler).
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.filters[:] = []
    if _to_master:
        logger.handlers[:] = []
        logger.propagate = True  # to the worker's root handler, which sends records to the master
        logger.addFilter(_Stamp(path))
        return logger, None
    handler = _bare_lines(RotatingFileHandler(path))
    logger.handlers[:] = [handler]
    logger.propagate = False
    return logger, handler


def open_files_for_workers(paths: list[str]) -> None:
    """In the master, before any worker starts: open the service files its tree names.

    Raises:
        StartupError: a file cannot be opened or was refused (see RotatingFileHandler).
    """
    for path in paths:
        if path not in _for_workers:
            _for_workers[path] = _bare_lines(RotatingFileHandler(path))


def file_for_worker_record(path: object) -> RotatingFileHandler | None:
    """The master's handler for a worker record stamped with ``path``; None for a path the tree does not name."""
    return _for_workers.get(path) if isinstance(path, str) else None


def close_files_for_workers() -> None:
    for handler in _for_workers.values():
        handler.close()
    _for_workers.clear()
