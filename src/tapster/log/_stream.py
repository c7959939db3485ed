"""Logging to standard output (``-n``, ``--logfile -``) with the log file's policy when writing fails.

A closed pipe (``tapster -n | head``) or a full disk behind a redirection must not cost a traceback per line on
stderr: lines are dropped and counted, the failure is reported once, and the count is logged when writing works
again (:mod:`tapster.log._dropped`).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from tapster.log._dropped import DroppedLines, describe

__all__ = ["StreamHandler"]


class StreamHandler(logging.StreamHandler[TextIO]):
    """:class:`logging.StreamHandler` that drops and counts lines while its stream cannot be written."""

    def __init__(self, stream: TextIO | None, what: str = "standard output") -> None:
        super().__init__(stream if stream is not None else sys.stderr)  # None: stderr, as the stdlib's
        self._dropped = DroppedLines(what)

    def emit(self, record: logging.LogRecord) -> None:
        dropped = self._dropped
        if not dropped.may_write():
            dropped.drop()
            return
        try:
            text = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)  # a bad record (format arguments): logging's report names the call
            return
        notice = dropped.notice()
        if notice is not None:
            note = logging.makeLogRecord(
                {
                    "name": "tapster",
                    "levelno": logging.WARNING,
                    "levelname": "WARNING",
                    "msg": notice,
                    "created": record.created,
                    "msecs": record.msecs,
                }
            )
            text = self.format(note) + self.terminator + text
        try:
            self.stream.write(text)
            self.flush()
        except OSError as exc:
            dropped.failed(describe(exc))
            return
        if dropped.failing:
            dropped.recovered()
