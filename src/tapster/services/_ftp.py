"""FTPServer: an FTP server over one directory, on aioftp, listening on tapster endpoints.

aioftp is imported when the server starts, never when this module is (the core must not pay for it); a missing
aioftp is one line naming the ``ftp`` extra. The aioftp parts live in _ftp_server (logins, connection ends,
passive connections, stop) and _ftp_paths (confinement to the root).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from tapster.auth import Authenticator, Checker, ThrottleLimits
from tapster.endpoints import parse_server
from tapster.service import MultiService
from tapster.services._drain import server_stopping
from tapster.services._stream_server import StreamServer
from tapster.services._web import _Listener

__all__ = ["DEFAULT_FTP_LISTEN", "FTPServer", "check_ftp_endpoint"]

logger = logging.getLogger("tapster.ftp")

DEFAULT_FTP_LISTEN = "tcp:2121:interface=127.0.0.1"
"""twistd's ftp port, 2121, but on loopback only: serving the network is a decision (``--listen tcp:2121``)."""

_FTP_KINDS = ("tcp", "tcp6", "systemd")


def check_ftp_endpoint(endpoint: str | int) -> None:
    """Refuse an endpoint FTP cannot use: passive data connections are TCP, and FTPS is not offered.

    Raises:
        ValueError: the endpoint's kind (the message names it); EndpointError for a malformed string.
    """
    kind = parse_server(endpoint).kind
    if kind not in _FTP_KINDS:
        raise ValueError(f"FTP needs a TCP endpoint (tcp:, tcp6:, systemd:), not {kind}: {endpoint!r}")


class FTPServer(MultiService):
    """An FTP server whose users see ``root`` as ``/`` and cannot leave it.

    Password logins are checked by ``checkers`` through an :class:`~tapster.auth.Authenticator` (throttled per
    source address and overall, each failure answered after ``failure_delay``); three failures close the
    connection. With an ``anonymous`` checker, the users ``anonymous`` and ``ftp`` log in with any password and
    may only read. Paths above the root, absolute paths outside it, and symlinks leading out are refused.
    Passive mode only (PASV, EPSV): each data connection is accepted from the control connection's host only.

    Stopping is graceful: the listeners close; an idle connection gets ``421`` and is closed at once; a transfer
    in flight runs to its end and its connection then gets ``421`` (within ``drain_timeout`` if given, else until
    the runner's ``--shutdown-timeout`` cancels the stop, when what is left is cut).

    Args:
        root: the directory served.
        listen: one endpoint or a list (tcp, tcp6, systemd); default: port 2121 on 127.0.0.1.
        checkers: who may log in (see :mod:`tapster.auth`): password checkers and/or ``anonymous``.
        passive_ports: ``(first, last)``, the ports passive data connections may use; each logged-in client
            holds one for its session, so the range bounds the clients transferring at once. None: any port.
        passive_address: the IPv4 address PASV answers give (a server behind NAT); None: the address the
            client connected to.
        failure_delay: seconds the answer to a failed password is held back.
        throttle: the login throttle's numbers; the documented defaults when None.
        idle_timeout: seconds a control connection may stay silent while no transfer runs; None for ever.
        drain_timeout: seconds transfers in flight get at stop; None: the runner's shutdown timeout.
        name: the service name, and the label of its log lines.

    Raises:
        ValueError: no usable checker, an endpoint FTP cannot use, a bad passive range, root not a directory.
    """

    transient: ClassVar[tuple[str, ...]] = ("_ftp",)

    def __init__(
        self,
        root: str | os.PathLike[str],
        listen: str | int | Sequence[str | int] = DEFAULT_FTP_LISTEN,
        *,
        checkers: Iterable[Checker],
        passive_ports: tuple[int, int] | None = None,
        passive_address: str | None = None,
        failure_delay: float = 1.0,
        throttle: ThrottleLimits | None = None,
        idle_timeout: float | None = 300.0,
        drain_timeout: float | None = None,
        name: str = "FTPServer",
    ) -> None:
        super().__init__()
        self.name = name
        self.root = os.path.abspath(os.fspath(root))  # named now, so a later chdir or chroot does not move it
        if not os.path.isdir(self.root):
            raise ValueError(f"FTP root {self.root!r} is not a directory")
        checkers = list(checkers)
        self.anonymous = any(checker.accepts_anyone for checker in checkers)
        passwords = [c for c in checkers if c.accepts_passwords and not c.accepts_anyone]
        if not passwords and not self.anonymous:
            raise ValueError(
                "FTP logins need a password checker or anonymous (SSH keys work over SSH only)"
                if checkers
                else "no credential checkers given: nobody could log in"
            )
        self.authenticator = (
            Authenticator(passwords, failure_delay=failure_delay, limits=throttle) if passwords else None
        )
        if passive_ports is not None:
            first, last = passive_ports
            if not 1 <= first <= last <= 65535:
                raise ValueError(f"passive ports {first}-{last}: expected FIRST-LAST within 1-65535")
            passive_ports = (first, last)
        self.passive_ports = passive_ports
        self.passive_address = passive_address
        self.idle_timeout = idle_timeout
        self.drain_timeout = drain_timeout
        self._ftp: Any = None
        endpoints = [listen] if isinstance(listen, str | int) else list(listen)
        if not endpoints:
            raise ValueError("FTPServer needs at least one endpoint to listen on")
        for endpoint in endpoints:
            check_ftp_endpoint(endpoint)
            listener = _Listener(endpoint, self._serve, name)
            listener.drain_timeout = drain_timeout
            listener.set_parent(self)

    @property
    def port(self) -> int:
        """The TCP port of the first listener (for tests that listen on port 0)."""
        return next(child for child in self if isinstance(child, StreamServer)).port

    def _build(self) -> None:
        from tapster._extras import import_extra

        import_extra("aioftp", "tapster's FTP server")
        from pathlib import Path

        from tapster.services._ftp_server import TapsterFTP

        ports = (
            None if self.passive_ports is None else range(self.passive_ports[0], self.passive_ports[1] + 1)
        )
        self._ftp = TapsterFTP(
            Path(os.path.realpath(self.root)),
            authenticator=self.authenticator,
            anonymous=self.anonymous,
            passive_ports=ports,
            passive_address=self.passive_address,
            idle_timeout=self.idle_timeout,
        )

    async def privileged_start(self) -> None:
        if self._ftp is None:
            self._build()
        await super().privileged_start()

    async def start(self) -> None:
        if self._ftp is None:
            self._build()
        if self.authenticator is not None:
            # Privileges are dropped by now: StrictModes judges the files for the user the server runs as.
            self.authenticator.verify_files()
        await super().start()

    async def stop(self) -> None:
        ftp, started = self._ftp, time.monotonic()
        try:
            await super().stop()  # the listeners close and drain their connections (see _serve)
        except asyncio.CancelledError:  # the runner's deadline: transfers are cut, their data connections too
            if ftp is not None:
                ftp.abort_data()
            raise
        finally:
            self._ftp = None
        if ftp is not None:
            left = (
                None
                if self.drain_timeout is None
                else max(0.0, self.drain_timeout - (time.monotonic() - started))
            )
            try:
                await ftp.data_sent(left)  # the end of the last transfers, still in buffers
            except TimeoutError:
                logger.warning(
                    "%s: data connections still sending after %s s: cut", self.name, self.drain_timeout
                )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One control connection: aioftp's dispatcher, ended gracefully when the server stops."""
        ftp = self._ftp
        if writer.get_extra_info("peername") is None:  # aioftp's dispatcher would fail on it
            logger.info("connection reset before it was served")
            return
        dispatcher = asyncio.ensure_future(ftp.dispatcher(reader, writer))
        stopping = asyncio.ensure_future(server_stopping().wait())
        try:
            await asyncio.wait({dispatcher, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not dispatcher.done():
                await ftp.close_when_idle(dispatcher)
        finally:
            stopping.cancel()
            if not dispatcher.done():  # cut at the deadline: aioftp's own clean-up runs before we return
                dispatcher.cancel()
                await asyncio.wait({dispatcher})
