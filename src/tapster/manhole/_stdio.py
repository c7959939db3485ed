"""Sending ``print`` to the manhole session that caused it, and everything else where it went before.

While a manhole runs, :data:`sys.stdout` and :data:`sys.stderr` are replaced by proxies that look up the current
session in a :class:`~contextvars.ContextVar`. Code run from a session (and the tasks it starts, which inherit the
context) writes to that session; every other write goes to the stream that was there before, untouched. Swapping
the streams per statement instead would send the server's own output into whichever session happened to be
running a statement, because statements ``await`` and other code runs meanwhile.
"""

from __future__ import annotations

import contextvars
import io
import sys
from typing import Any, Protocol, TextIO

__all__ = ["SessionWriter", "current_writer", "install", "uninstall"]


class SessionWriter(Protocol):
    """Where a session's standard output and error go."""

    @property
    def closed(self) -> bool: ...

    def write(self, text: str) -> None: ...

    def write_error(self, text: str) -> None: ...


current_writer: contextvars.ContextVar[SessionWriter | None] = contextvars.ContextVar(
    "tapster_manhole_writer", default=None
)


class _SessionStream(io.TextIOBase):
    """A text stream that writes to the current session, or to ``fallback`` outside any session."""

    def __init__(self, fallback: TextIO, *, error: bool) -> None:
        super().__init__()
        self.fallback = fallback
        self._error = error

    def _session(self) -> SessionWriter | None:
        writer = current_writer.get()
        return None if writer is None or writer.closed else writer

    def write(self, text: str) -> int:
        writer = self._session()
        if writer is None:
            return self.fallback.write(text)
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if self._error:
            writer.write_error(text)
        else:
            writer.write(text)
        return len(text)

    def flush(self) -> None:
        if self._session() is None:
            self.fallback.flush()

    def isatty(self) -> bool:
        return False if self._session() is not None else self.fallback.isatty()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fallback.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8" if self._session() is not None else str(getattr(self.fallback, "encoding", "utf-8"))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fallback, name)


_installed = 0


def install() -> None:
    """Put the session-aware proxies in place (counted: each call needs one :func:`uninstall`)."""
    global _installed
    _installed += 1
    if _installed == 1:
        if not isinstance(sys.stdout, _SessionStream):
            sys.stdout = _SessionStream(sys.stdout, error=False)
        if not isinstance(sys.stderr, _SessionStream):
            sys.stderr = _SessionStream(sys.stderr, error=True)


def uninstall() -> None:
    """Undo one :func:`install`; the last one restores the previous streams, unless others replaced ours."""
    global _installed
    if _installed == 0:
        return
    _installed -= 1
    if _installed == 0:
        if isinstance(sys.stdout, _SessionStream):
            sys.stdout = sys.stdout.fallback
        if isinstance(sys.stderr, _SessionStream):
            sys.stderr = sys.stderr.fallback
