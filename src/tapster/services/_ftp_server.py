"""aioftp's server, fitted to tapster: logins through tapster's Authenticator, confinement to the root, quiet
ends of connection, passive data connections only from the client, and a graceful stop per connection.

Imported only when an FTPServer starts (it imports aioftp, which the ``ftp`` extra installs). aioftp's own
``start()`` is never called: its ``dispatcher`` is the stream handler of tapster's listeners, so every tapster
endpoint and tapster's per-connection log context and drain apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import weakref
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import aioftp

from tapster.auth import Authenticator
from tapster.services._ftp_paths import ConfinedPathIO, climbs_above_root, inside

__all__ = ["ANONYMOUS_NAMES", "MAX_FAILED_LOGINS", "TapsterFTP"]

logger = logging.getLogger("tapster.ftp")

ANONYMOUS_NAMES = frozenset({"anonymous", "ftp"})
"""The user names of an anonymous login (RFC 1635)."""

MAX_FAILED_LOGINS = 3
"""Failed passwords on one connection before it is closed (the throttle counts per address as well)."""

_TRANSFER_COMMANDS = ("retr", "stor", "appe", "list", "mlsd", "nlst")

_PATH_COMMANDS = (
    "cwd", "mkd", "rmd", "mlsd", "list", "nlst", "mlst", "rnfr", "rnto", "dele", "stor", "appe", "retr"
)  # fmt: skip

Command = Callable[[Any, Any], Awaitable[bool]]
_Response = aioftp.AbstractUserManager.GetUserResponse


class _Session:
    """What tapster keeps per control connection: its response queue (so a stop can wait until every answer
    is written) and its failed logins."""

    __slots__ = ("failures", "queue")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] | None = None
        self.failures = 0


class _Users(aioftp.AbstractUserManager):
    """Every user shares the root; anonymous users may only read."""

    def __init__(self, root: Path, *, anonymous: bool, passwords: bool) -> None:
        super().__init__()
        self.root = root
        self.anonymous = anonymous
        self.passwords = passwords

    async def get_user(self, login: str) -> tuple[Any, aioftp.User | None, str]:
        if self.anonymous and login.lower() in ANONYMOUS_NAMES:
            reader = aioftp.User(
                login,
                base_path=self.root,
                permissions=[aioftp.Permission("/", readable=True, writable=False)],
            )
            return (
                _Response.PASSWORD_REQUIRED,
                reader,
                "anonymous login: send your e-mail address as password",
            )
        if self.passwords:
            return _Response.PASSWORD_REQUIRED, aioftp.User(login, base_path=self.root), "password required"
        return _Response.ERROR, None, "only anonymous logins here (USER anonymous)"

    async def authenticate(self, user: aioftp.User, password: str) -> bool:
        raise NotImplementedError("TapsterFTP.pass_ asks the Authenticator, which needs the client's address")


class TapsterFTP(aioftp.Server):
    """aioftp.Server with tapster's logins, confinement, connection ends and stop.

    Args:
        root: the resolved directory every user sees as ``/``.
        authenticator: checks passwords (throttled per address); None when only anonymous logins exist.
        anonymous: whether ``anonymous``/``ftp`` may log in (read-only) with any password.
        passive_ports: the ports passive data connections may use; None for any free port.
        passive_address: the IPv4 address told to clients in PASV answers (behind NAT); None for our own.
        idle_timeout: seconds a control connection may stay silent while no transfer runs.
    """

    def __init__(
        self,
        root: Path,
        *,
        authenticator: Authenticator | None,
        anonymous: bool,
        passive_ports: Iterable[int] | None,
        passive_address: str | None,
        idle_timeout: float | None,
    ) -> None:
        super().__init__(
            _Users(root, anonymous=anonymous, passwords=authenticator is not None),
            block_size=64 * 1024,
            path_io_factory=ConfinedPathIO,
            data_ports=passive_ports,
            ipv4_pasv_forced_response_address=passive_address,
            welcome_message="tapster FTP server ready",
        )
        self.root = os.fspath(root)
        self.authenticator = authenticator
        self.anonymous = anonymous
        self.command_idle_timeout = idle_timeout
        self.sessions: dict[asyncio.Task[Any], _Session] = {}
        # Data connections, so a stop can wait until what a finished transfer left in a buffer has been sent.
        self.data_writers: weakref.WeakSet[asyncio.StreamWriter] = weakref.WeakSet()
        # What aioftp.Server.start() would set: its dispatcher and passive listeners read them.
        self.connections = {}
        self._start_server_extra_arguments = {}
        self.server_host = None
        self.server_port = 0
        self.commands_mapping["nlst"] = self.nlst
        self.commands_mapping["noop"] = self.noop
        for name in _TRANSFER_COMMANDS:
            self.commands_mapping[name] = self._data_loss_answered(self.commands_mapping[name])
        for name in _PATH_COMMANDS:
            self.commands_mapping[name] = self._confined(self.commands_mapping[name])
        self.commands_mapping["cdup"] = self._confined(self.commands_mapping["cdup"], "..")

    # -- one control connection ---------------------------------------------------------------------------------

    async def dispatcher(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.sessions[task] = _Session()
        try:
            await super().dispatcher(reader, writer)
        finally:
            del self.sessions[task]

    async def response_writer(self, stream: aioftp.StreamIO, response_queue: asyncio.Queue[Any]) -> None:
        connection = self.connections.get(stream)
        session = self.sessions.get(connection._dispatcher) if connection is not None else None
        if session is not None:
            session.queue = response_queue
        try:
            await super().response_writer(stream, response_queue)
        except ConnectionError:
            # The client is gone (aioftp would log a traceback). Later answers are dropped rather than left
            # queued, so the dispatcher's wait for them ends and the session closes when the reader sees the end.
            while True:
                await response_queue.get()
                response_queue.task_done()

    async def parse_command(  # type: ignore[override]
        self, stream: aioftp.StreamIO, censor_commands: tuple[str] = ("pass",)
    ) -> tuple[str, str] | bool:
        """The next command; False ends the connection quietly (the client left, was idle, or sent garbage).

        aioftp's own version logs a traceback for each client that leaves without QUIT; and its idle timeout
        would also end a connection whose transfer is still running.
        """
        transferred = False  # a transfer ran during the last idle period: the quiet time starts after it
        while True:
            try:
                async with asyncio.timeout(self.command_idle_timeout):
                    line = await stream.readline()
            except TimeoutError:
                if transferred or self._transferring(stream):
                    transferred = self._transferring(stream)
                    continue
                return await self._last_words(stream, "421", "idle too long: closing the control connection")
            except ValueError:  # longer than the reader's limit
                return await self._last_words(stream, "500", "command line too long")
            except ConnectionError:
                return False
            if not line:
                return False
            try:
                text = line.decode(self.encoding)
            except UnicodeDecodeError:
                try:
                    await self.write_response(stream, "501", f"command is not valid {self.encoding}")
                except ConnectionError:
                    return False
                continue
            command, _, rest = text.rstrip("\r\n").partition(" ")
            return command.lower(), rest

    async def _last_words(self, stream: aioftp.StreamIO, code: str, text: str) -> bool:
        """Answer once more, if the client is still there, and end the session (False)."""
        with contextlib.suppress(ConnectionError):
            await self.write_response(stream, code, text)
        return False

    def _transferring(self, stream: aioftp.StreamIO) -> bool:
        connection = self.connections.get(stream)
        return connection is not None and any(not task.done() for task in connection.extra_workers)

    # -- logins -------------------------------------------------------------------------------------------------

    @aioftp.ConnectionConditions(aioftp.ConnectionConditions.user_required)  # type: ignore[arg-type]
    async def pass_(self, connection: aioftp.Connection, rest: str) -> bool:
        if connection.future.logged.done():
            connection.response("503", "already logged in")
            return True
        user: aioftp.User = connection.user
        peer = str(connection.client_host)
        anonymous = self.anonymous and (user.login or "").lower() in ANONYMOUS_NAMES
        if anonymous:
            accepted = True
        elif self.authenticator is not None:
            accepted = await self.authenticator.attempts(peer).password(user.login or "", rest)
        else:
            accepted = False
        if accepted:
            connection.logged = True
            access = "read-only" if anonymous else "read-write"
            logger.info("FTP login: %r from %s (%s)", (user.login or "")[:64], peer, access)
            connection.response("230", f"logged in, {access}")
            return True
        session = self.sessions.get(connection._dispatcher)
        failures = 1 if session is None else session.failures + 1
        if session is not None:
            session.failures = failures
        if failures >= MAX_FAILED_LOGINS:
            connection.response("421", "too many failed logins")
            return False
        connection.response("530", "login incorrect")
        return True

    async def noop(self, connection: aioftp.Connection, rest: str) -> bool:
        """NOOP, which aioftp lacks: clients send it to keep an idle session open."""
        connection.response("200", "ok")
        return True

    # -- NLST, which aioftp lacks (ftplib's nlst(), a command-line client's mget) ------------------------------

    @aioftp.ConnectionConditions(
        aioftp.ConnectionConditions.login_required, aioftp.ConnectionConditions.passive_server_started
    )
    @aioftp.PathConditions(aioftp.PathConditions.path_must_exists)
    @aioftp.PathPermissions(aioftp.PathPermissions.readable)  # type: ignore[arg-type]
    async def nlst(self, connection: aioftp.Connection, rest: str) -> bool:
        """The names in a directory (or the one name of a file), one a line, over the data connection."""
        real_path, _virtual = self.get_paths(connection, rest)

        @aioftp.ConnectionConditions(
            aioftp.ConnectionConditions.data_connection_made,
            wait=True,
            fail_code="425",
            fail_info="cannot open the data connection",
        )
        @aioftp.worker
        async def send_names(server: aioftp.Server, connection: aioftp.Connection, rest: str) -> bool:
            stream = connection.data_connection
            del connection.data_connection
            path_io = connection.path_io
            async with stream:
                if await path_io.is_file(real_path):
                    await stream.write((real_path.name + aioftp.END_OF_LINE).encode(self.encoding))
                else:
                    async for path in path_io.list(real_path):
                        await stream.write((path.name + aioftp.END_OF_LINE).encode(self.encoding))
            connection.response("226", "name list sent")
            return True

        sending: Any = send_names(self, connection, rest)
        connection.extra_workers.add(asyncio.create_task(sending))
        connection.response("150", "name list follows")
        return True

    # -- a data connection lost mid-transfer ---------------------------------------------------------------------

    def _data_loss_answered(self, command: Command) -> Command:
        """``command`` whose transfer, if its data connection breaks, is answered ``426`` and the session goes on.

        aioftp's dispatcher expects only file system errors from a transfer: a reset data connection ended the
        whole session, with a traceback. The transfer task the command starts is swapped, before the dispatcher
        sees it, for one that turns the lost connection into the reply.
        """

        async def answered(connection: Any, rest: Any) -> bool:
            before = set(connection.extra_workers)
            result = await command(connection, rest)
            for transfer in connection.extra_workers - before:
                connection.extra_workers.discard(transfer)
                connection.extra_workers.add(
                    asyncio.ensure_future(self._answer_data_loss(connection, transfer))
                )
            return result

        return answered

    @staticmethod
    async def _answer_data_loss(connection: Any, transfer: asyncio.Future[Any]) -> Any:
        try:
            return await transfer
        except ConnectionError as exc:
            logger.info("data connection lost mid-transfer: %s", exc)
            connection.response("426", "data connection lost; transfer aborted")
            return True

    # -- the root -----------------------------------------------------------------------------------------------

    def _confined(self, command: Command, fixed: str | None = None) -> Command:
        """``command`` answering 550, without running, for a path above the root or resolving outside it."""

        async def confined(connection: Any, rest: Any) -> bool:
            if connection.future.logged.done() and not self.allowed(
                connection, rest if fixed is None else fixed
            ):
                connection.response("550", "no such file or directory")
                return True
            return await command(connection, rest)

        return confined

    def allowed(self, connection: Any, requested: str) -> bool:
        """Whether the path a client asked for stays inside the root, lexically and once symlinks resolve."""
        if climbs_above_root(connection.current_directory, requested):
            return False
        real, _virtual = self.get_paths(connection, requested)
        return inside(self.root, real)

    # -- passive data connections -------------------------------------------------------------------------------

    async def _start_passive_server(
        self,
        connection: aioftp.Connection,
        handler_callback: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ) -> asyncio.Server:
        """aioftp's passive listener, taking data connections from the control connection's host only (a data
        port is otherwise anyone's to steal), and a port that cannot be bound as "no free ports", not a crash."""
        client = connection.client_host

        async def from_client_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername") or ("",)
            if peer[0] != client:
                logger.warning(
                    "refused a data connection from %s: the control connection is from %s", peer[0], client
                )
                writer.close()
                return
            self.data_writers.add(writer)
            await handler_callback(reader, writer)

        try:
            return await super()._start_passive_server(connection, from_client_only)
        except OSError as exc:
            logger.warning("cannot open a passive data port: %s", exc)
            raise aioftp.errors.NoAvailablePort from exc

    # -- stopping -----------------------------------------------------------------------------------------------

    async def data_sent(self, timeout: float | None) -> None:
        """Wait until every data connection has sent what it holds and closed; abort the rest after ``timeout``.

        A transfer ends (and is answered ``226``) once its last block is in the transport's buffer: without this
        wait, a process exiting right after a stop would drop the end of the file.
        """
        writers = list(self.data_writers)
        if not writers:
            return
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(writer.wait_closed() for writer in writers), return_exceptions=True)
        except (TimeoutError, asyncio.CancelledError):
            self.abort_data()
            raise

    def abort_data(self) -> None:
        """Cut every data connection now (the stop's deadline has passed)."""
        for writer in list(self.data_writers):
            writer.transport.abort()

    async def close_when_idle(self, dispatcher: asyncio.Task[None]) -> None:
        """End one control connection for a stop: transfers in flight finish, then ``421`` and the close."""
        connection = next((c for c in self.connections.values() if c._dispatcher is dispatcher), None)
        if connection is not None:
            while busy := {task for task in connection.extra_workers if not task.done()}:
                await asyncio.wait({*busy, dispatcher}, return_when=asyncio.FIRST_COMPLETED)
                if dispatcher.done():
                    return
            connection.response("421", "server shutting down")
            session = self.sessions.get(dispatcher)
            if session is not None and session.queue is not None:
                written = asyncio.ensure_future(session.queue.join())
                try:
                    await asyncio.wait({written, dispatcher}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    written.cancel()
        dispatcher.cancel()
        await asyncio.wait({dispatcher})
