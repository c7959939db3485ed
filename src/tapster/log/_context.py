"""The log context: which service and connection a log line belongs to (twistd's ``[system]`` field).

A :class:`contextvars.ContextVar` carries it, so a line logged anywhere inside a connection's callbacks or its
handler task is tagged without the service passing anything down. ``-`` means no particular context, as in twistd.

The value is usually a string. A stream server stores a :class:`ConnectionContext` instead: the protocol factory
runs before the peer address is known, and asyncio copies the context for the connection's later callbacks at that
moment, so the object is filled in by ``connection_made`` and rendered only when a line is formatted.
"""

from __future__ import annotations

import contextvars
import logging

__all__ = ["DEFAULT_CONTEXT", "ConnectionContext", "log_context", "record_context"]

DEFAULT_CONTEXT = "-"


class ConnectionContext:
    """``label,number,peer`` for one accepted connection, e.g. ``PoetryProtocol,3,127.0.0.1``."""

    __slots__ = ("label", "number", "peer")  # one a connection: see _Connection, which extends it

    def __init__(self, label: str, number: int, peer: str | None = None) -> None:
        self.label = label
        self.number = number
        self.peer = peer

    def __str__(self) -> str:
        if self.peer is None:
            return f"{self.label},{self.number}"
        return f"{self.label},{self.number},{self.peer}"


log_context: contextvars.ContextVar[str | ConnectionContext] = contextvars.ContextVar(
    "tapster_log_context", default=DEFAULT_CONTEXT
)


def record_context(record: logging.LogRecord) -> str:
    """The context of ``record``: an explicit ``extra={"context": ...}`` wins, else the current context."""
    explicit = record.__dict__.get("context")
    if isinstance(explicit, str) and explicit:
        return explicit
    return str(log_context.get())
