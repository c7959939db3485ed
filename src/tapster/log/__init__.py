"""Log destinations and formats, and capture of a daemon's stdout, stderr and warnings into the log.

Lines are twistd's text or JSON, written to stdout, a rotating file, syslog or a handler of your own. Services
only log (``logging.getLogger(__name__)``), tagging lines with :data:`log_context` where it helps; the runner
calls :func:`install` once and owns the destination. Importing this package costs only standard modules that
``logging`` already loads; JSON and syslog support are imported when first used.
"""

from __future__ import annotations

from tapster.log._capture import StreamToLogger, capture_stdio
from tapster.log._context import DEFAULT_CONTEXT, log_context
from tapster.log._format import JsonFormatter, TextFormatter
from tapster.log._rotate import RotatingFileHandler
from tapster.log._setup import LogConfig, LogDestination, follow_log_commands, install

__all__ = [
    "DEFAULT_CONTEXT",
    "JsonFormatter",
    "LogConfig",
    "LogDestination",
    "RotatingFileHandler",
    "StreamToLogger",
    "TextFormatter",
    "capture_stdio",
    "follow_log_commands",
    "install",
    "log_context",
]
