"""``PIDFILE.workers``: the master's table of its workers, which ``tapster ctl status`` shows.

The master keeps the file open and rewrites it whole on each change (a :class:`~tapster.runner._answers.HeldFile`,
created as root beside the pid file); it ends with a line ``end``, so a reader that catches a rewrite half
done sees no ``end`` and reads again. One line per worker::

    worker NUMBER pid PID since EPOCH_SECONDS restarts COUNT state (booting|ready|stopping|replacing)

``pid -`` and ``since -`` mark a worker being replaced.
"""

from __future__ import annotations

import os
import re
import time

from tapster.runner._answers import read_held

__all__ = ["MAX_BYTES", "WorkerRow", "format_table", "read_workers", "workers_path"]

SUFFIX = ".workers"
MAX_BYTES = 64 * 1024
_ROW = re.compile(r"worker (\d+) pid (\d+|-) since ([0-9.]+|-) restarts (\d+) state (\w+)")


class WorkerRow:
    """One worker as the table has it."""

    __slots__ = ("number", "pid", "restarts", "since", "state")

    def __init__(self, number: int, pid: int | None, since: float | None, restarts: int, state: str) -> None:
        self.number = number
        self.pid = pid
        self.since = since
        self.restarts = restarts
        self.state = state


def workers_path(pidfile: str) -> str:
    """The workers table that belongs to the pid file at ``pidfile``."""
    return pidfile + SUFFIX


def format_table(rows: list[WorkerRow]) -> str:
    lines = [f"workers {len(rows)}"]
    for row in rows:
        pid = "-" if row.pid is None else str(row.pid)
        since = "-" if row.since is None else f"{row.since:.3f}"
        lines.append(f"worker {row.number} pid {pid} since {since} restarts {row.restarts} state {row.state}")
    return "\n".join([*lines, "end"]) + "\n"


def read_workers(pidfile: str, attempts: int = 20) -> list[WorkerRow] | None:
    """The rows of the table beside ``pidfile``; ``None`` if there is none (a single-process server)."""
    path = workers_path(pidfile)
    try:
        owner: int | None = os.stat(pidfile).st_uid
    except OSError:
        owner = None
    for _ in range(attempts):
        text = read_held(path, owner, MAX_BYTES)
        if text is None:
            return None
        lines = text.split("\n")
        if "end" in lines:
            rows = [_ROW.fullmatch(line) for line in lines[1 : lines.index("end")]]
            return [
                WorkerRow(
                    int(m[1]),
                    None if m[2] == "-" else int(m[2]),
                    None if m[3] == "-" else float(m[3]),
                    int(m[4]),
                    m[5],
                )
                for m in rows
                if m is not None
            ]
        time.sleep(0.005)  # a rewrite in progress
    return None
