"""The web server's access log: one line per request in the combined log format (Apache's and nginx's).

``host ident user [time] "request line" status bytes "referer" "user-agent"``, the format log analysers read.
Everything the client chose (request line, referer, user agent) is escaped as Apache does (``"`` and ``\\`` with
a backslash, other control and non-ASCII characters as ``\\xNN``), so a client cannot forge a line or a field.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Final

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

__all__ = ["ACCESS_LOGGER", "CombinedLogFormat", "ServerLog", "escape"]

ACCESS_LOGGER: Final = "tapster.web.access"
"""The logger access lines go to when they go to the main log."""

_LINE: Final = '%s - - [%s] "%s" %d %s "%s" "%s"'

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def escape(text: str) -> str:
    """``text`` with quotes, backslashes, control and non-ASCII characters escaped (a field a client chose)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    out: list[str] = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif " " <= char <= "~":
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogateescape"))
    return "".join(out)


def _timestamp(now: float) -> str:
    """``07/Dec/2026:12:08:37 +0000``: English month names whatever the locale, local time with its offset.

    The text changes once a second and a busy server logs thousands of lines in that second: the last one
    made is kept for its second."""
    global _last_stamp
    second = int(now)
    if second != _last_stamp[0]:
        _last_stamp = (second, _format_timestamp(second))
    return _last_stamp[1]


_last_stamp: tuple[int, str] = (-1, "")


def _format_timestamp(now: float) -> str:
    local = time.localtime(now)
    offset = local.tm_gmtoff // 60
    sign = "+" if offset >= 0 else "-"
    hours, minutes = divmod(abs(offset), 60)
    return (
        f"{local.tm_mday:02d}/{_MONTHS[local.tm_mon - 1]}/{local.tm_year}:"
        f"{local.tm_hour:02d}:{local.tm_min:02d}:{local.tm_sec:02d} {sign}{hours:02d}{minutes:02d}"
    )


class CombinedLogFormat(AbstractAccessLogger):
    """aiohttp's access-log hook, writing the combined log format to the logger it is given.

    The record is made and handed to the logger's handlers directly: ``Logger.info`` would first walk the
    stack to find the calling line (``findCaller``), which for a line per request is a tenth of the cost of
    logging it, and which says nothing here (it is always this method).
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        version = request.version
        line = escape(f"{request.method} {request.raw_path} HTTP/{version.major}.{version.minor}")
        size = response.content_length if request.method != "HEAD" and response.status != 304 else None
        headers = request.headers
        args = (
            request.remote or "-",
            _timestamp(_now()),
            line,
            response.status,
            size if size else "-",  # a chunked body's size is not known here: "-"
            escape(headers.get("Referer", "-")),
            escape(headers.get("User-Agent", "-")),
        )
        record = _records.make(logger, args)
        if logger.filters or logger.disabled:
            logger.handle(record)
        else:
            logger.callHandlers(record)  # what handle() does when there is nothing to filter

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


_now = time.time


class _AccessRecords:
    """Makes the access records: a copy of one made the standard way, with its own time, arguments, thread and
    task.

    ``LogRecord.__init__`` works out, per record, what is the same for every access line: the file and
    function names, the process's id and name. Copying those from a first record
    costs a third as much, and the record is the same one: every standard attribute is there for any handler
    or formatter. A program that installs its own record factory gets its records made by it, as always.
    """

    def __init__(self) -> None:
        self._templates: dict[str, dict[str, object]] = {}
        os.register_at_fork(after_in_child=self._templates.clear)  # a worker has its own pid

    def make(self, logger: logging.Logger, args: tuple[object, ...]) -> logging.LogRecord:
        if logging.getLogRecordFactory() is not logging.LogRecord:
            return logger.makeRecord(logger.name, logging.INFO, __file__, 0, _LINE, args, None, "log")
        template = self._templates.get(logger.name)
        if template is None:
            first = logger.makeRecord(logger.name, logging.INFO, __file__, 0, _LINE, (), None, "log")
            template = self._templates[logger.name] = dict(first.__dict__)
        record = _new_record(logging.LogRecord)
        fields = record.__dict__
        fields.update(template)
        ns = time.time_ns()
        created = ns / 1e9
        fields["created"] = created
        fields["msecs"] = float((ns % 1_000_000_000) // 1_000_000)
        fields["relativeCreated"] = (
            (ns - _LOGGING_STARTED) / 1e6  # Python 3.13+: nanoseconds
            if isinstance(_LOGGING_STARTED, int)
            else (created - _LOGGING_STARTED) * 1000
        )
        fields["args"] = args
        # What is per thread and per task is the caller's, as LogRecord has it.
        if template["thread"] is not None:
            fields["thread"] = threading.get_ident()
            fields["threadName"] = threading.current_thread().name
        if "taskName" in template:  # Python 3.12+
            fields["taskName"] = _task_name()
        return record


def _task_name() -> str | None:
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop in this thread
        return None
    return None if task is None else task.get_name()


_new_record = logging.LogRecord.__new__
_LOGGING_STARTED: float | int = getattr(logging, "_startTime", time.time())
"""What ``relativeCreated`` counts from: seconds before Python 3.13, nanoseconds since."""
_records = _AccessRecords()


class ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger aiohttp's server reports errors to: a malformed request from a client is one warning line
    (a client's bad bytes are not the server's error, and a traceback per bad request would flood the log);
    everything else keeps its traceback."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.getLogger(name), {})

    def exception(self, msg: object, *args: object, exc_info: object = True, **kwargs: object) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else None
        if isinstance(error, HttpProcessingError):
            text = str(msg) % args if args else str(msg)
            self.logger.warning("%s: bad request: %s", text, error.message or error)
            return
        self.logger.error(msg, *args, exc_info=exc_info, **kwargs)  # type: ignore[arg-type]
