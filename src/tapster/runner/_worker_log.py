"""The master's side of a worker's log: its output lines become records in the master's one log.

A worker writes each log record as :data:`~tapster.runner._worker.RECORD_MARK` and JSON on its standard
output (``RecordsToMaster``); anything else there (a ``print``, a C library's message, a traceback written
before logging was set up) is a plain line. Either becomes a record of the master's log with the context
``worker N: CONTEXT``, so every line says which worker wrote it and rotation, reopening and syslog stay the
master's alone. The record keeps the worker's time, level and logger name.
"""

from __future__ import annotations

import json
import logging

from tapster.log._service_files import file_for_worker_record
from tapster.runner._worker import RECORD_MARK

__all__ = ["OutputRelay"]

_MAX_LINE = 256 * 1024  # a line this long without its end is logged as it is rather than held forever


class OutputRelay:
    """Feed it what a worker wrote; it logs each complete line."""

    def __init__(self, number: int) -> None:
        self.number = number
        self._partial = b""

    def feed(self, data: bytes) -> None:
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            self._line(line)
        if len(self._partial) > _MAX_LINE:
            self.close()

    def close(self) -> None:
        """Log what is left of an unfinished line (the worker has exited)."""
        rest, self._partial = self._partial, b""
        if rest:
            self._line(rest)

    def _line(self, line: bytes) -> None:
        printed, mark, record = line.partition(RECORD_MARK)
        if printed.strip():
            self._emit({"message": printed.decode("utf-8", "replace").rstrip("\r"), "context": "output"})
        if mark:
            try:
                entry = json.loads(record)
            except ValueError:
                entry = {"message": record.decode("utf-8", "replace")}
            if not isinstance(entry, dict):
                entry = {"message": str(entry)}
            self._emit(entry)

    def _emit(self, entry: dict[str, object]) -> None:
        if "file" in entry:
            handler = file_for_worker_record(entry["file"])
            if handler is not None:  # a line of a service's own file (an access log): written there, bare
                handler.handle(logging.makeLogRecord({"msg": str(entry.get("message", "")), "args": None}))
                return
        level = entry.get("level")
        level = level if isinstance(level, int) else logging.INFO
        name = entry.get("logger")
        created = entry.get("time")
        record = logging.LogRecord(
            name if isinstance(name, str) else "tapster.worker",
            level,
            "",
            0,
            "%s",
            (str(entry.get("message", "")),),
            None,
        )
        if isinstance(created, float):
            record.created = created
            record.msecs = (created - int(created)) * 1000
        record.context = f"worker {self.number}: {entry.get('context') or '-'}"
        logging.getLogger().handle(record)
