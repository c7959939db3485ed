"""Line formats for log records: twistd's text line and one JSON object per line.

Both formatters put the record's context (:func:`~tapster.log._context.record_context`) where twistd puts
its ``[system]`` field, and both are built for a server that logs tens of thousands of lines a second: the
time stamp text is computed once per second, not once per record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from tapster.log._context import record_context

__all__ = ["JsonFormatter", "TextFormatter"]


def _offset(tm: time.struct_time) -> tuple[str, str]:
    """The UTC offset of ``tm`` as ``+HHMM`` (twistd, strftime's ``%z``) and ``+HH:MM`` (ISO 8601)."""
    gmtoff = tm.tm_gmtoff or 0
    sign = "-" if gmtoff < 0 else "+"
    hours, minutes = divmod(abs(gmtoff) // 60, 60)
    return f"{sign}{hours:02d}{minutes:02d}", f"{sign}{hours:02d}:{minutes:02d}"


def message_with_details(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The record's message with its traceback and stack appended on following lines, as the stdlib does.

    The formatted traceback is cached in ``record.exc_text`` so that several handlers format it only once.
    """
    message = record.getMessage()
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    if record.exc_text:
        joint = "" if message.endswith("\n") else "\n"
        message = f"{message}{joint}{record.exc_text}"
    if record.stack_info:
        message = f"{message}\n{formatter.formatStack(record.stack_info)}"
    return message


class TextFormatter(logging.Formatter):
    """twistd's line: ``2026-11-23 07:38:28+0000 [context] message``.

    The time is local time with its numeric UTC offset. There is no level name, exactly as in twistd's log.
    A message of several lines, and the traceback of a record logged with ``exc_info``, continue on lines that
    start with a TAB, so every line that does not start with a TAB starts a record.
    """

    def __init__(self) -> None:
        super().__init__()
        # (whole second, its text); replaced as one tuple so concurrent threads never see a torn pair.
        self._stamp: tuple[int, str] = (-1, "")

    def _time_text(self, created: float) -> str:
        second = int(created)
        cached = self._stamp
        if cached[0] == second:
            return cached[1]
        tm = time.localtime(second)
        text = time.strftime("%Y-%m-%d %H:%M:%S", tm) + _offset(tm)[0]
        self._stamp = (second, text)
        return text

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` as one twistd line, continuation lines indented by a TAB."""
        message = message_with_details(self, record)
        if "\n" in message:
            # A trailing newline (warnings end with one) would only leave an empty TAB line behind.
            message = message.rstrip("\n").replace("\n", "\n\t")
        return f"{self._time_text(record.created)} [{record_context(record)}] {message}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers.

    Keys: ``time`` (ISO 8601, local time with milliseconds and offset: ``2026-11-23T07:38:28.123+00:00``),
    ``level`` (``INFO``, ``ERROR``, ...), ``logger`` (the logger's name), ``context``, ``message``, and
    ``exception`` (the formatted traceback) only when the record carries one. Non-ASCII text is written as
    is (UTF-8 in the file), not as ``\\u`` escapes. The object never contains a raw newline, so one line is
    one record.
    """

    def __init__(self) -> None:
        super().__init__()
        import json  # only a JSON destination pays for importing json

        self._encode: Callable[[Any], str] = json.JSONEncoder(
            ensure_ascii=False, separators=(",", ":")
        ).encode
        # (whole second, "YYYY-MM-DDTHH:MM:SS", "+HH:MM")
        self._stamp: tuple[int, str, str] = (-1, "", "")

    def _time_text(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached = self._stamp
        if cached[0] != second:
            tm = time.localtime(second)
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", tm), _offset(tm)[1])
            self._stamp = cached
        return f"{cached[1]}.{int(record.msecs):03d}{cached[2]}"

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` as one line of JSON."""
        entry: dict[str, str] = {
            "time": self._time_text(record),
            "level": record.levelname,
            "logger": record.name,
            "context": record_context(record),
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        details = record.exc_text or ""
        if record.stack_info:
            stack = self.formatStack(record.stack_info)
            details = f"{details}\n{stack}" if details else stack
        if details:
            entry["exception"] = details
        return self._encode(entry)
