"""Capturing a daemon's ``print``s, warnings and stray tracebacks into its log, as twistd does.

A daemon's stdout and stderr lead to ``/dev/null``; without this, whatever a library prints is lost. Only
writes through :data:`sys.stdout` and :data:`sys.stderr` are captured; output written straight to file
descriptors 1 and 2 (C extensions, child processes) still goes wherever those descriptors lead.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
from collections.abc import Iterable
from typing import TextIO, cast

__all__ = ["StreamToLogger", "capture_stdio"]

_MAX_PARTIAL = 64 * 1024  # a "line" this long with no newline yet is logged as it is rather than held forever


class StreamToLogger(io.TextIOBase):
    """A writable text stream that logs each complete line it is given.

    A partial line is held until its newline arrives (``print`` writes the text and the newline separately);
    :meth:`flush` keeps it, :meth:`close` logs it. Each line becomes one record of ``level`` on ``logger``,
    tagged with ``context`` (shown where twistd shows ``[system]``).

    A handler that itself writes to this stream while logging one of its lines (``logging``'s own error report
    goes to ``sys.stderr``) would loop forever; such a nested write, detected per thread, goes to ``fallback``
    instead (the stream this one replaced), or is dropped if there is none.

    Args:
        logger: where lines go.
        level: the level of every line (``INFO`` for stdout, ``ERROR`` for stderr).
        context: the log context of every line.
        fallback: where writes made while this stream is logging go.
        name: what ``.name`` reports, like a real stream's ``<stdout>``.
    """

    encoding = "utf-8"
    errors = "strict"

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        context: str,
        *,
        fallback: TextIO | None = None,
        name: str = "<log>",
    ) -> None:
        super().__init__()
        self.logger = logger
        self.level = level
        self.context = context
        self.fallback = fallback
        self.name = name
        self._extra = {"context": context}
        self._buffer = ""
        self._lock = threading.Lock()
        self._local = threading.local()

    def write(self, text: str) -> int:
        """Buffer ``text`` and log every line it completes; returns ``len(text)`` as a file does."""
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        local = self._local
        if getattr(local, "busy", False):
            self._spill(text)
            return len(text)
        with self._lock:
            if "\n" not in text and len(self._buffer) + len(text) < _MAX_PARTIAL:
                self._buffer += text
                return len(text)
            *lines, rest = (self._buffer + text).split("\n")
            if len(rest) >= _MAX_PARTIAL:
                lines.append(rest)
                rest = ""
            self._buffer = rest
        # Logged outside the lock: a handler in another thread may be writing here while holding its own lock.
        self._log(lines)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:  # type: ignore[override]
        """Write each of ``lines`` (which carry their own newlines, as with a file)."""
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Nothing to push: complete lines are logged at once, and a partial line waits for its end."""

    def close(self) -> None:
        """Log the partial line, if any, and refuse later writes."""
        if self.closed:
            return
        with self._lock:
            rest, self._buffer = self._buffer, ""
        if rest:
            self._log([rest])
        super().close()

    def isatty(self) -> bool:
        """Never a terminal: programs that colour their output for terminals should not do it here."""
        return False

    def fileno(self) -> int:
        """There is no file descriptor behind this stream.

        Raises:
            io.UnsupportedOperation: always, as for :class:`io.StringIO`.
        """
        raise io.UnsupportedOperation("fileno: output is captured into the log")

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def _log(self, lines: list[str]) -> None:
        local = self._local
        local.busy = True
        try:
            for line in lines:
                self.logger.log(self.level, line, extra=self._extra)
        finally:
            local.busy = False

    def _spill(self, text: str) -> None:
        if self.fallback is not None:
            with contextlib.suppress(Exception):  # nowhere left to report it
                self.fallback.write(text)
                self.fallback.flush()


def capture_stdio() -> None:
    """Log what is written to ``sys.stdout`` and ``sys.stderr``, and route :mod:`warnings` through logging.

    stdout lines go to the ``stdout`` logger at INFO with context ``stdout``; stderr lines (uncaught
    tracebacks included) to the ``stderr`` logger at ERROR with context ``stderr``; warnings to
    ``py.warnings`` at WARNING. The replaced streams are kept as each :class:`StreamToLogger`'s ``fallback``.
    Calling it again changes nothing.
    """
    if not isinstance(sys.stdout, StreamToLogger):
        out = StreamToLogger(
            logging.getLogger("stdout"), logging.INFO, "stdout", fallback=sys.stdout, name="<stdout>"
        )
        sys.stdout = cast(TextIO, out)
    if not isinstance(sys.stderr, StreamToLogger):
        err = StreamToLogger(
            logging.getLogger("stderr"), logging.ERROR, "stderr", fallback=sys.stderr, name="<stderr>"
        )
        sys.stderr = cast(TextIO, err)
    logging.captureWarnings(True)
