"""The manhole's telnet server: option negotiation, our own login prompt, then a shell.

prompt_toolkit's telnet server has no authentication and writes to sockets without flow control, so this is a
small protocol of its own. It asks the client for its terminal type (TTYPE) and window size (NAWS). A client that
names a terminal gets the prompt_toolkit REPL in character mode (the server echoes); one that does not (a raw
socket, ``nc``) gets the plain console in line mode.

Telnet sends everything, passwords included, in clear text: the manhole warns when it listens on anything but a
loopback or unix socket.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
from typing import Any

from tapster.auth import LoginAttempts
from tapster.manhole._shell import Shell, ShellHost

__all__ = ["TelnetManhole"]

logger = logging.getLogger("tapster.manhole")

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
IP, BRK, AYT, NOP = 244, 243, 246, 241
ECHO, SGA, TTYPE, NAWS = 1, 3, 24, 31
TTYPE_IS, TTYPE_SEND = 0, 1

_OURS = frozenset({ECHO, SGA})  # options this server performs
_THEIRS = frozenset({TTYPE, NAWS})  # options this server asks of the client
_NO_TERMINAL = frozenset({"", "dumb", "unknown", "network"})
_MAX_LOGIN_LINE = 1024
_MAX_LOGIN_BUFFER = 64 * 1024
_TTYPE_WAIT = 2.0  # how long a client that agreed to send its terminal type gets to send it


class _Disconnected(Exception):
    """The client went away (or gave up with Ctrl-C / Ctrl-D) during login."""


class TelnetManhole(asyncio.Protocol):
    """One telnet connection to the manhole.

    Args:
        host: the manhole (checkers, shells).
        login_timeout: seconds allowed to log in.
        max_attempts: failed logins before the connection is closed.
    """

    def __init__(self, host: ShellHost, *, login_timeout: float = 120.0, max_attempts: int = 3) -> None:
        self._host = host
        self._login_timeout = login_timeout
        self._max_attempts = max_attempts
        self._transport: asyncio.Transport | None = None
        self._attempts: LoginAttempts | None = None
        self._closed = False
        self._writable = asyncio.Event()
        self._writable.set()
        # option state
        self._ours: dict[int, bool] = {}
        self._theirs: dict[int, bool | None] = {}  # None: asked, no answer yet
        self._terminal: str | None = None
        self._ttype_answered = asyncio.Event()
        self._size = (80, 24)
        # parser state
        self._state = "data"
        self._command = 0
        self._sub: bytearray = bytearray()
        self._after_cr = False
        # input routing
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._login_text = ""
        self._login_ready = asyncio.Event()
        self._login_eof = False
        self._shell: Shell | None = None
        self._task: asyncio.Task[None] | None = None

    # -- asyncio callbacks ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        where = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
        self._attempts = self._host.authenticator.attempts(where)
        self._ask(TTYPE)
        self._ask(NAWS)
        self._task = asyncio.get_running_loop().create_task(self._login())

    def data_received(self, data: bytes) -> None:
        self._parse(data)

    def eof_received(self) -> bool:
        # Telnet has no half-closed sessions: a client that stops sending has gone (a half-close cannot be told
        # from a client that vanished), so the session ends now, a running statement included.
        if self._shell is not None:
            self._shell.close()
        self._login_eof = True
        self._login_ready.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._writable.set()
        self._login_ready.set()
        if self._shell is not None:
            self._shell.close()
        elif self._task is not None and not self._task.done():
            self._task.cancel()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- the Channel the shell uses --------------------------------------------------------------------------

    @property
    def terminal(self) -> str | None:
        return self._terminal if self._terminal not in _NO_TERMINAL else None

    @property
    def closed(self) -> bool:
        return self._closed

    def size(self) -> tuple[int, int]:
        return self._size

    def send(self, text: str) -> None:
        if self._closed or self._transport is None:
            return
        data = text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8", "replace")
        self._transport.write(data.replace(b"\xff", b"\xff\xff"))

    send_error = send
    send_prompt = send

    async def drain(self) -> None:
        while not self._closed and not self._writable.is_set():
            await self._writable.wait()

    def close(self, status: int = 0) -> None:
        if self._closed:
            return
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    # -- option negotiation -----------------------------------------------------------------------------------

    def _command_out(self, verb: int, option: int) -> None:
        if self._transport is not None and not self._closed:
            self._transport.write(bytes((IAC, verb, option)))

    def _ask(self, option: int) -> None:
        self._theirs[option] = None
        self._command_out(DO, option)

    def _offer(self, option: int, on: bool) -> None:
        if self._ours.get(option, False) != on:
            self._ours[option] = on
            self._command_out(WILL if on else WONT, option)

    def _negotiate(self, verb: int, option: int) -> None:
        if verb in (DO, DONT):
            wanted = verb == DO
            if option in _OURS:
                if self._ours.get(option, False) != wanted:
                    self._offer(option, wanted)
            elif wanted:
                self._command_out(WONT, option)
            return
        agreed = verb == WILL
        if option in _THEIRS:
            before = self._theirs.get(option, False)
            self._theirs[option] = agreed
            if agreed and before is False:
                self._command_out(DO, option)  # unasked: accept it
            if not agreed and before:
                self._command_out(DONT, option)
            if option == TTYPE:
                if agreed:
                    self._subnegotiate(bytes((TTYPE, TTYPE_SEND)))
                else:
                    self._ttype_answered.set()
        elif agreed:
            self._command_out(DONT, option)

    def _subnegotiate(self, payload: bytes) -> None:
        if self._transport is not None and not self._closed:
            self._transport.write(bytes((IAC, SB)) + payload.replace(b"\xff", b"\xff\xff") + bytes((IAC, SE)))

    def _subnegotiation(self, payload: bytes) -> None:
        if not payload:
            return
        if payload[0] == TTYPE and payload[1:2] == bytes((TTYPE_IS,)):
            self._terminal = payload[2:].decode("ascii", "replace").strip().lower()
            self._ttype_answered.set()
        elif payload[0] == NAWS and len(payload) == 5:
            columns, rows = int.from_bytes(payload[1:3], "big"), int.from_bytes(payload[3:5], "big")
            self._size = (columns or 80, rows or 24)
            if self._shell is not None:
                self._shell.resized()

    # -- input -------------------------------------------------------------------------------------------------

    def _parse(self, data: bytes) -> None:
        plain = bytearray()
        index = 0
        while index < len(data):
            if self._state == "data":
                stop = data.find(IAC, index)
                if stop < 0:
                    plain += data[index:]
                    break
                plain += data[index:stop]
                index = stop + 1
                self._state = "iac"
                continue
            byte = data[index]
            index += 1
            if self._state == "iac":
                if byte == IAC:
                    plain.append(IAC)
                    self._state = "data"
                elif byte in (DO, DONT, WILL, WONT):
                    self._command = byte
                    self._state = "option"
                elif byte == SB:
                    self._sub = bytearray()
                    self._state = "sub"
                else:
                    self._state = "data"
                    if plain:
                        self._plain(bytes(plain))
                        plain = bytearray()
                    self._simple_command(byte)
            elif self._state == "option":
                self._state = "data"
                self._negotiate(self._command, byte)
            elif self._state == "sub":
                if byte == IAC:
                    self._state = "sub-iac"
                else:
                    self._sub.append(byte)
                    if len(self._sub) > 4096:  # a runaway subnegotiation: drop it
                        self._sub = bytearray()
            elif self._state == "sub-iac":
                if byte == SE:
                    self._state = "data"
                    self._subnegotiation(bytes(self._sub))
                else:
                    self._sub.append(byte)  # IAC IAC inside a subnegotiation is a data 255
                    self._state = "sub"
        if plain:
            self._plain(bytes(plain))

    def _simple_command(self, byte: int) -> None:
        if byte in (IP, BRK):
            if self._shell is not None:
                self._shell.interrupt()
            else:
                self.close()
        elif byte == AYT and self._transport is not None:
            self._transport.write(b"\r\n[yes]\r\n")

    def _plain(self, data: bytes) -> None:
        """Data bytes: CR LF and CR NUL become one CR (the Enter key), then text to the login or the shell."""
        if self._after_cr and data[:1] in (b"\n", b"\0"):
            data = data[1:]
        data = data.replace(b"\r\n", b"\r").replace(b"\r\0", b"\r")
        self._after_cr = data.endswith(b"\r")
        text = self._decoder.decode(data)
        if not text:
            return
        if self._shell is not None:
            self._shell.feed(text)
        else:
            self._login_text += text
            self._login_ready.set()
            if len(self._login_text) > _MAX_LOGIN_BUFFER:  # nobody types that much before logging in
                self.close()

    # -- login ---------------------------------------------------------------------------------------------------

    async def _readline(self, *, echo: bool) -> str:
        """One line of login input; with ``echo`` the characters are echoed when the client does not."""
        line: list[str] = []
        while True:
            while not self._login_text:
                if self._closed or self._login_eof:
                    raise _Disconnected
                self._login_ready.clear()
                await self._login_ready.wait()
            text, self._login_text = self._login_text, ""
            for position, char in enumerate(text):
                if char in "\r\n":
                    self._login_text = text[position + 1 :]
                    return "".join(line)
                if char in "\x03\x04":
                    raise _Disconnected
                if char in "\x7f\x08":
                    if line:
                        line.pop()
                        if echo and self._ours.get(ECHO):
                            self.send("\b \b")
                    continue
                if len(line) < _MAX_LOGIN_LINE and char.isprintable():
                    line.append(char)
                    if echo and self._ours.get(ECHO):
                        self.send(char)

    async def _login(self) -> None:
        try:
            async with asyncio.timeout(self._login_timeout):
                username = await self._authenticate()
                if username is None:
                    return
                if self._theirs.get(TTYPE) is True and self._terminal is None:
                    await self._wait_terminal_type()
        except TimeoutError:
            self.send("\nLogin timed out.\n")
            self.close()
            return
        except _Disconnected:
            self.close()
            return
        self._start_shell(username)

    async def _wait_terminal_type(self) -> None:
        try:
            async with asyncio.timeout(_TTYPE_WAIT):
                await self._ttype_answered.wait()
        except TimeoutError:
            pass

    async def _authenticate(self) -> str | None:
        authenticator = self._host.authenticator
        assert self._attempts is not None
        if authenticator.accepts_anyone:
            return "anonymous"
        for _ in range(self._max_attempts):
            self.send("Username: ")
            username = await self._readline(echo=True)
            self._offer(ECHO, True)  # the client stops echoing: the password stays off the screen
            self.send("Password: ")
            password = await self._readline(echo=False)
            self._offer(ECHO, False)
            self.send("\n")
            if await self._attempts.password(username, password):
                logger.info("manhole: %r logged in over telnet from %s", username, self._attempts.peer)
                return username
            self.send("Login incorrect.\n")
        self.send("Too many failed logins.\n")
        self.close()
        return None

    def _start_shell(self, username: str) -> None:
        if self._closed:
            return
        if self.terminal is not None:
            self._offer(ECHO, True)  # character mode: the REPL draws what is typed
            self._offer(SGA, True)
        shell = self._host.open_shell(self, username)
        self._shell = shell
        shell.start()
        if self._login_text:  # typed ahead during login
            text, self._login_text = self._login_text, ""
            shell.feed(text)


def telnet_protocol_factory(host: ShellHost, **options: Any) -> Any:
    """A protocol factory serving the manhole over telnet."""

    def make() -> TelnetManhole:
        return TelnetManhole(host, **options)

    return make
