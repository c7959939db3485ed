"""Logging to the local syslog daemon, the way twistd's ``--syslog`` does.

Each line reaches syslog as ``PREFIX[PID]: [context] message``: the prefix is the program name syslog shows
(twistd's ``--prefix``), and the pid is taken when the line is sent, so it is the daemon's pid even though the
handler was made before the runner forked. A message of several lines (a traceback) is sent as one syslog
message per line, each with the same head, as twistd does; syslog daemons mangle embedded newlines.
"""

from __future__ import annotations

import logging
import logging.handlers
import os

from tapster.errors import StartupError
from tapster.log._context import record_context
from tapster.log._dropped import DroppedLines, describe
from tapster.log._format import message_with_details

__all__ = ["LOG_DAEMON", "SYSLOG_SOCKET", "make_syslog_handler"]

LOG_DAEMON = logging.handlers.SysLogHandler.LOG_DAEMON

SYSLOG_SOCKET = "/dev/log"
"""Where the local syslog daemon listens (journald and rsyslog both provide it)."""


class _SyslogFormatter(logging.Formatter):
    """Render a record as its syslog lines, ``PREFIX[PID]: [context] line``, joined by newlines."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        lines = message_with_details(self, record).split("\n")
        while len(lines) > 1 and not lines[-1]:
            lines.pop()
        head = f"{self.prefix}[{os.getpid()}]: [{record_context(record)}] "
        return "\n".join(head + line for line in lines)


class _SyslogHandler(logging.handlers.SysLogHandler):
    """The stdlib handler, sending each line of a formatted record as its own syslog message."""

    def __init__(self, address: str, facility: int) -> None:
        super().__init__(address=address, facility=facility)
        self._dropped = DroppedLines(f"syslog socket {address}")

    def emit(self, record: logging.LogRecord) -> None:
        """Send the record's lines; while the socket fails, drop and count them as a log file does."""
        dropped = self._dropped
        if not dropped.may_write():
            dropped.drop()
            return
        try:
            messages = self._messages(record)
            notice = dropped.notice()
            if notice is not None:
                note = logging.makeLogRecord(
                    {"name": "tapster", "levelno": logging.WARNING, "levelname": "WARNING", "msg": notice}
                )
                messages = self._messages(note) + messages
        except Exception:
            self.handleError(record)  # a bad record (format arguments): logging's report names the call
            return
        try:
            for message in messages:
                self._send(message)
        except OSError as exc:
            dropped.failed(describe(exc))
            return
        if dropped.failing:
            dropped.recovered()

    def _messages(self, record: logging.LogRecord) -> list[bytes]:
        priority = self.encodePriority(self.facility, self.mapPriority(record.levelname))
        tail = "\000" if self.append_nul else ""
        return [
            f"<{priority}>{line}{tail}".encode("utf-8", "backslashreplace")
            for line in self.format(record).split("\n")
        ]

    def _send(self, data: bytes) -> None:
        # ``socket`` and ``_connect_unixsocket`` are the stdlib handler's, missing from typeshed's stub.
        try:
            self.socket.send(data)  # type: ignore[attr-defined]
        except OSError:
            # The syslog daemon restarted and made a new socket: connect to it once more, as the stdlib does.
            self.socket.close()  # type: ignore[attr-defined]
            self._connect_unixsocket(self.address)  # type: ignore[attr-defined]
            self.socket.send(data)  # type: ignore[attr-defined]


def make_syslog_handler(
    prefix: str = "tapster", facility: int = LOG_DAEMON, *, address: str | None = None
) -> logging.Handler:
    """A handler that sends records to the local syslog daemon over its unix socket.

    Args:
        prefix: the program name in each syslog line (twistd's ``--prefix``).
        facility: the syslog facility, one of ``SysLogHandler.LOG_*`` (``LOG_DAEMON`` by default).
        address: the syslog socket; :data:`SYSLOG_SOCKET` (``/dev/log``) by default. Tests point it elsewhere.

    Raises:
        StartupError: there is no socket at the address, or it does not accept a connection.
    """
    path = SYSLOG_SOCKET if address is None else address
    if not os.path.exists(path):
        raise StartupError(f"no syslog socket at {path}: is a syslog daemon running?")
    try:
        handler = _SyslogHandler(address=path, facility=facility)
    except OSError as exc:
        raise StartupError(f"cannot connect to the syslog socket at {path}: {exc.strerror or exc}") from exc
    # The stdlib ignores a failed connect at creation (and then fails on every record), leaving socktype
    # unset: connect again here, where the error can still stop the start.
    if getattr(handler, "socktype", None) is None:
        try:
            handler._connect_unixsocket(path)  # type: ignore[attr-defined]
        except OSError as exc:
            handler.close()
            raise StartupError(
                f"cannot connect to the syslog socket at {path}: {exc.strerror or exc}"
            ) from exc
    handler.setFormatter(_SyslogFormatter(prefix))
    return handler
