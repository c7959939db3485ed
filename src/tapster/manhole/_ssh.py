"""The manhole's SSH server, through asyncssh, on any tapster stream endpoint.

asyncssh's connection object is an asyncio Protocol, so a :class:`~tapster.services.StreamServer` serves it like
any other protocol: the endpoint string decides TCP, TLS-free unix sockets or systemd sockets, and the stream
server's connection tracking, log context and graceful stop apply. Password and public-key logins go through the
manhole's :class:`~tapster.auth.Authenticator`. Keyboard-interactive is not offered (as Debian's sshd with
``KbdInteractiveAuthentication no``): OpenSSH then asks for a password with the ``password`` method, up to its
``NumberOfPasswordPrompts`` (3) times on one connection, instead of three keyboard-interactive prompts and then
three password prompts more. Port forwarding, agent and X11 forwarding, SFTP
and SCP are all refused.

This module imports asyncssh, so it is imported only when a manhole with SSH starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import asyncssh

from tapster.auth import LoginAttempts
from tapster.manhole._shell import Shell, ShellHost

__all__ = ["ssh_protocol_factory"]

logger = logging.getLogger("tapster.manhole")

_DEFAULT_SIZE = (80, 24)


class _Session(asyncssh.SSHServerSession[str]):
    """One SSH session channel, seen by the shell as its :class:`~tapster.manhole._shell.Channel`."""

    def __init__(self, host: ShellHost, username: str) -> None:
        self._host = host
        self._username = username
        self._chan: Any = None
        self._terminal: str | None = None
        self._command: str | None = None
        self._shell: Shell | None = None
        self._closed = False
        self._writable = asyncio.Event()
        self._writable.set()

    # -- asyncssh callbacks ---------------------------------------------------------------------------------

    def connection_made(self, chan: Any) -> None:
        self._chan = chan

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        self._terminal = term_type or "vt100"
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        return False

    def session_started(self) -> None:
        self._shell = self._host.open_shell(self, self._username)
        self._shell.start(self._command)

    def data_received(self, data: str, datatype: Any) -> None:
        if datatype is None and self._shell is not None:
            self._shell.feed(data)

    def eof_received(self) -> bool:
        if self._shell is not None:
            self._shell.feed_eof()
        return True  # keep sending: the output of the last statements of a piped script is still to come

    def break_received(self, msec: int) -> bool:
        if self._shell is not None:
            self._shell.interrupt()
        return True

    def signal_received(self, signal: str) -> None:
        if signal == "INT" and self._shell is not None:
            self._shell.interrupt()

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self._shell is not None:
            self._shell.resized()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._writable.set()
        if self._shell is not None:
            self._shell.close()

    # -- the Channel the shell uses --------------------------------------------------------------------------

    @property
    def terminal(self) -> str | None:
        return self._terminal

    @property
    def closed(self) -> bool:
        return self._closed

    def size(self) -> tuple[int, int]:
        if self._chan is None:
            return _DEFAULT_SIZE
        width, height = self._chan.get_terminal_size()[:2]
        return (width or _DEFAULT_SIZE[0], height or _DEFAULT_SIZE[1])

    def _text(self, text: str) -> str:
        return text.replace("\r\n", "\n").replace("\n", "\r\n") if self._terminal else text

    def send(self, text: str) -> None:
        self._write(self._text(text), stderr=False)

    def send_error(self, text: str) -> None:
        # With a terminal, stderr shares the terminal, as with a process on a pty under sshd.
        self._write(self._text(text), stderr=self._terminal is None)

    def send_prompt(self, text: str) -> None:
        self._write(self._text(text), stderr=self._terminal is None)

    def _write(self, text: str, *, stderr: bool) -> None:
        if self._closed or self._chan is None:
            return
        try:
            if stderr:
                self._chan.write_stderr(text)
            else:
                self._chan.write(text)
        except (OSError, asyncssh.Error):
            self._closed = True

    async def drain(self) -> None:
        while not self._closed and not self._writable.is_set():
            await self._writable.wait()

    def close(self, status: int = 0) -> None:
        if self._closed:
            return
        self._closed = True
        if self._chan is not None:
            try:
                self._chan.exit(status)
            except (OSError, asyncssh.Error):
                self._chan.close()


class _Server(asyncssh.SSHServer):
    """One SSH connection: authentication through the manhole's checkers, then sessions."""

    def __init__(self, host: ShellHost) -> None:
        self._host = host
        self._conn: Any = None
        self._attempts: LoginAttempts | None = None

    def connection_made(self, conn: Any) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername")
        where = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
        self._attempts = self._host.authenticator.attempts(where)

    def begin_auth(self, username: str) -> bool:
        return not self._host.authenticator.accepts_anyone

    def password_auth_supported(self) -> bool:
        return self._host.authenticator.accepts_passwords

    def kbdint_auth_supported(self) -> bool:
        return False

    async def validate_password(self, username: str, password: str) -> bool:
        assert self._attempts is not None
        return await self._attempts.password(username, password)

    def public_key_auth_supported(self) -> bool:
        return self._host.authenticator.accepts_keys

    async def validate_public_key(self, username: str, key: Any) -> bool:
        assert self._attempts is not None
        return await self._attempts.key(username, bytes(key.public_data))

    def auth_completed(self) -> None:
        username = self._conn.get_extra_info("username") if self._conn is not None else "?"
        where = self._attempts.peer if self._attempts is not None else "-"
        logger.info("manhole: %r logged in over SSH from %s", username, where)

    def session_requested(self) -> _Session:
        username = self._conn.get_extra_info("username") if self._conn is not None else ""
        return _Session(self._host, str(username or ""))


async def ssh_protocol_factory(host: ShellHost, host_key: Any) -> Callable[[], asyncio.BaseProtocol]:
    """A protocol factory that serves the manhole over SSH with ``host_key`` (an ``asyncssh.SSHKey``)."""
    settings: dict[str, Any] = {
        "server_factory": lambda: _Server(host),
        "server_host_keys": [host_key],
        "line_editor": False,  # the REPL edits lines itself (or there is no terminal)
        "encoding": "utf-8",
        "errors": "replace",
        "agent_forwarding": False,
        "x11_forwarding": False,
        "allow_scp": False,
        "login_timeout": 120,
    }
    library_logger = logging.getLogger("asyncssh")
    if library_logger.level == logging.NOTSET:
        # asyncssh logs every channel event at INFO, exec'd commands included; the manhole logs logins itself.
        library_logger.setLevel(logging.WARNING)
    construct = getattr(asyncssh.SSHServerConnectionOptions, "construct", None)
    if construct is not None:
        options = await construct(**settings)
    else:  # asyncssh before 2.15 built options synchronously
        options = asyncssh.SSHServerConnectionOptions(**settings)
    loop = asyncio.get_running_loop()

    def make_connection() -> asyncio.BaseProtocol:
        connection: asyncio.BaseProtocol = asyncssh.SSHServerConnection(loop, options)
        return connection

    return make_connection
