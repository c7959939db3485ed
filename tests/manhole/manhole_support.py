"""Helpers for the manhole tests: a manhole running in the test's loop, and real SSH and telnet clients."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import asyncssh

from tapster import Application
from tapster.auth import Checker, InMemoryChecker
from tapster.manhole import ManholeService

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")
LOOPBACK = "tcp:0:interface=127.0.0.1"


def plain(data: bytes) -> str:
    """Terminal output without its escape sequences and carriage returns."""
    return ANSI.sub(b"", data).replace(b"\r", b"").decode("utf-8", "replace")


@contextlib.asynccontextmanager
async def running_manhole(
    tmp_path: Path,
    *,
    ssh: bool = True,
    telnet: bool = True,
    checkers: Iterable[Checker] | None = None,
    namespace: dict[str, Any] | None = None,
    failure_delay: float = 0.02,
) -> AsyncIterator[ManholeService]:
    """An application with a manhole on loopback ports chosen by the OS, started, and stopped afterwards."""
    app = Application("testapp")
    manhole = ManholeService(
        namespace or {},
        ssh=LOOPBACK if ssh else None,
        telnet=LOOPBACK if telnet else None,
        checkers=checkers if checkers is not None else [InMemoryChecker({"admin": "secret"})],
        host_key=tmp_path / "host_key",
        failure_delay=failure_delay,
    )
    manhole.set_parent(app)
    await app.privileged_start()
    await app.start()
    try:
        yield manhole
    finally:
        await app.stop()


async def ssh_connect(
    port: int, username: str = "admin", password: str | None = "secret", **kwargs: Any
) -> Any:
    """An asyncssh client connection that uses only what it is given (no agent, no ~/.ssh keys)."""
    options: dict[str, Any] = {"known_hosts": None, "agent_path": None, "client_keys": None}
    options.update(kwargs)
    return await asyncssh.connect("127.0.0.1", port, username=username, password=password, **options)


async def read_until(stream: Any, marker: str, timeout: float = 10) -> str:
    """Read an asyncssh process stream until ``marker`` shows in its plain text; return all of it."""
    data = b""
    async with asyncio.timeout(timeout):
        while marker not in plain(data):
            chunk = await stream.read(65536)
            if not chunk:
                raise EOFError(f"stream ended before {marker!r}; got {plain(data)!r}")
            data += chunk.encode() if isinstance(chunk, str) else chunk
    return plain(data)


IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
TTYPE, NAWS = 24, 31


class TelnetClient:
    """A telnet client on a plain socket: it answers option negotiation only when given a terminal type."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, terminal: str | None
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.terminal = terminal
        self.raw = b""  # everything received, negotiation included
        self.text = b""  # data bytes not yet consumed by read_until
        self.options: list[tuple[int, int]] = []
        self._pending = b""

    @classmethod
    async def open(cls, port: int, terminal: str | None = None) -> TelnetClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, terminal)

    def _handle(self, data: bytes) -> None:
        data = self._pending + data
        self._pending = b""
        i = 0
        while i < len(data):
            found = data.find(IAC, i)
            if found != i:
                self.text += (data[i:] if found < 0 else data[i:found]).replace(b"\r", b"")
                if found < 0:
                    return
                i = found
            if i + 1 >= len(data):
                self._pending = data[i:]
                return
            verb = data[i + 1]
            if verb == IAC:
                self.text += b"\xff"
                i += 2
            elif verb in (DO, DONT, WILL, WONT):
                if i + 2 >= len(data):
                    self._pending = data[i:]
                    return
                option = data[i + 2]
                self.options.append((verb, option))
                self._answer(verb, option)
                i += 3
            elif verb == SB:
                end = data.find(bytes((IAC, SE)), i)
                if end < 0:
                    self._pending = data[i:]
                    return
                payload = data[i + 2 : end]
                if payload == bytes((TTYPE, 1)) and self.terminal:
                    self.writer.write(bytes((IAC, SB, TTYPE, 0)) + self.terminal.encode() + bytes((IAC, SE)))
                i = end + 2
            else:
                i += 2

    def _answer(self, verb: int, option: int) -> None:
        if self.terminal is None:
            return  # a raw client: ignores negotiation
        if verb == DO and option == TTYPE:
            self.writer.write(bytes((IAC, WILL, TTYPE)))
        elif verb == DO and option == NAWS:
            self.writer.write(bytes((IAC, WILL, NAWS, IAC, SB, NAWS, 0, 100, 0, 30, IAC, SE)))

    async def read_until(self, marker: str, timeout: float = 10) -> str:
        """Read until ``marker`` appears in the data (escape sequences removed); return the text up to its end."""
        async with asyncio.timeout(timeout):
            while marker not in plain(self.text):
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise EOFError(f"connection closed before {marker!r}; got {plain(self.text)!r}")
                self.raw += chunk
                self._handle(chunk)
        text = plain(self.text)
        end = text.index(marker) + len(marker)
        self.text = text[end:].encode()  # what came after the marker stays for the next read
        return text[:end]

    async def read_to_end(self, timeout: float = 10) -> str:
        async with asyncio.timeout(timeout):
            while chunk := await self.reader.read(65536):
                self.raw += chunk
                self._handle(chunk)
        text = plain(self.text)
        self.text = b""
        return text

    def send(self, text: str) -> None:
        self.writer.write(text.encode())

    async def login(self, username: str = "admin", password: str = "secret") -> str:
        await self.read_until("Username: ")
        self.send(username + "\r\n")
        await self.read_until("Password: ")
        self.send(password + "\r\n")
        return await self.read_until(">>> ")

    def close(self) -> None:
        self.writer.close()
