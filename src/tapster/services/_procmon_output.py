"""A child's stdout or stderr into the log, one record per line: ``[name] line``.

Lines are split on ``\\n`` as bytes arrive; a line longer than ``MAX_LINE`` bytes is logged in pieces of at most
that size, each marked as cut (nothing is dropped, and one runaway line cannot make the monitor buffer without
bound); what is left without a newline when the pipe ends is logged as a last line. Bytes that are not UTF-8 are
shown as ``\\xNN`` escapes.
"""

from __future__ import annotations

import asyncio
import logging

__all__ = ["MAX_LINE", "OutputLines"]

logger = logging.getLogger("tapster.services.procmon")

MAX_LINE = 16 * 1024
_CUT = " [line continues]"


def _decode(data: bytes | bytearray) -> str:
    return data.decode("utf-8", "backslashreplace")


def _utf8_boundary(data: bytes | bytearray, end: int) -> int:
    """``end`` moved back so it does not split a UTF-8 sequence (at most 3 bytes back)."""
    for back in range(4):
        if end - back <= 0:
            return end
        if data[end - back] & 0xC0 != 0x80:
            return end - back
    return end


class OutputLines(asyncio.Protocol):
    """Reads one pipe of one child and logs its lines; ``done`` is set when the pipe has ended."""

    def __init__(self, name: str, stream: str) -> None:
        self.name = name
        self.stream = stream
        self.buffer = bytearray()
        self.done = asyncio.Event()
        self.transport: asyncio.ReadTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def _emit(self, line: str) -> None:
        logger.info("[%s] %s", self.name, line, extra={"stream": self.stream})

    def _emit_bounded(self, data: bytes | bytearray, start: int, end: int) -> None:
        """Log ``data[start:end]`` (one line, without its newline) in pieces of at most ``MAX_LINE`` bytes."""
        while end - start > MAX_LINE:
            cut = _utf8_boundary(data, start + MAX_LINE)
            self._emit(_decode(data[start:cut]) + _CUT)
            start = cut
        self._emit(_decode(data[start:end]))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        start = 0
        while (newline := buffer.find(b"\n", start)) != -1:
            self._emit_bounded(buffer, start, newline)
            start = newline + 1
        while len(buffer) - start > MAX_LINE:  # no newline yet: log what the bound allows, keep the rest
            cut = _utf8_boundary(buffer, start + MAX_LINE)
            self._emit(_decode(buffer[start:cut]) + _CUT)
            start = cut
        del buffer[:start]

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.buffer:
            self._emit_bounded(self.buffer, 0, len(self.buffer))
            self.buffer.clear()
        self.done.set()

    def close(self) -> None:
        """Stop reading (the child and everything in its group are gone, yet something kept the pipe open)."""
        if self.transport is not None:
            self.transport.close()
