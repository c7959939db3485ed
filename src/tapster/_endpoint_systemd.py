"""Socket activation: the listening sockets systemd passes (``LISTEN_FDS``), and the ``systemd:`` endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from asyncio import AbstractServer
from typing import Final

from tapster import _endpoint_parse as _p
from tapster._endpoint_errors import listen_error, reason
from tapster._endpoint_server import ProtocolFactory, ServerEndpoint, ServerKind
from tapster._listen_backlog import listen_backlog
from tapster.errors import ListenError

__all__ = ["SystemdServerEndpoint", "claim_systemd_sockets", "release_passed_sockets"]

logger = logging.getLogger("tapster")

_passed: _p.PassedSockets | None = None
_passed_lock = threading.Lock()


def claim_systemd_sockets() -> None:
    """Take the sockets systemd passed (socket activation), once per process; later calls do nothing.

    The sockets are ours only when ``LISTEN_PID`` is this process's pid, which stops being true after a fork:
    so the ``tapster`` command calls this before it loads the application (and so before daemonizing), and a
    systemd endpoint calls it when parsed or listened on.
    ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` are removed from the environment (as systemd's
    ``sd_listen_fds(1)`` does) so that child processes do not take them for their own, and the passed fds are
    made close-on-exec.
    """
    global _passed
    with _passed_lock:
        if _passed is not None:
            return
        pid_text = os.environ.pop("LISTEN_PID", None)
        count_text = os.environ.pop("LISTEN_FDS", None)
        names_text = os.environ.pop("LISTEN_FDNAMES", None)
        _passed = _p.read_listen_env(pid_text, count_text, names_text, os.getpid())
        for fd in _passed.fds:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


def _kept_backlog(sock: socket.socket, description: str) -> int:
    """The queue length the socket was created with (``Backlog=``), for the ``listen()`` asyncio repeats."""
    backlog = listen_backlog(sock)
    if backlog is None:
        # a unix socket on a kernel without unix_diag; SOMAXCONN is systemd's default Backlog= anyway
        logger.info(
            "%s: cannot read the socket's listen backlog; it becomes %d.", description, socket.SOMAXCONN
        )
        return socket.SOMAXCONN
    return backlog


_DOMAINS = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}


class SystemdServerEndpoint(ServerEndpoint):
    """``systemd:``: a listening socket passed by systemd, chosen by ``index`` (0 is fd 3) or by ``name``.

    The passed fd is duplicated, never consumed, so the same endpoint can be listened on again after a close.
    """

    __module__ = "tapster.endpoints"

    __slots__ = ("domain", "index", "name")

    domain: Final[str]
    index: Final[int | None]
    name: Final[str | None]

    def __init__(
        self,
        *,
        description: str,
        kind: ServerKind,
        domain: str,
        index: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(description=description, kind=kind)
        self.domain = domain
        self.index = index
        self.name = name

    def _fd(self) -> int:
        claim_systemd_sockets()
        passed = _passed
        assert passed is not None
        if self.name is not None:
            for fd, fd_name in zip(passed.fds, passed.names, strict=False):
                if fd_name == self.name:
                    return fd
            names = ":".join(passed.names) if passed.names else "not set"
            reason = (
                f"no socket named {self.name!r} passed by systemd ({passed.note}, LISTEN_FDNAMES={names})"
            )
            raise listen_error(self.description, reason)
        index = self.index or 0
        if index >= len(passed.fds):
            raise listen_error(
                self.description, f"no socket passed by systemd at index {index} ({passed.note})"
            )
        return passed.fds[index]

    async def listen(
        self, protocol_factory: ProtocolFactory, *, start_serving: bool = True
    ) -> AbstractServer:
        fd = self._fd()
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError as exc:
            raise listen_error(self.description, f"fd {fd} from systemd: {reason(exc)}", exc) from exc
        try:
            if sock.family != _DOMAINS[self.domain] or sock.type != socket.SOCK_STREAM:
                raise listen_error(
                    self.description,
                    f"the socket systemd passed on fd {fd} is {sock.family.name}/{sock.type.name}, "
                    f"not a stream socket of domain {self.domain}",
                )
            loop = asyncio.get_running_loop()
            backlog = _kept_backlog(sock, self.description)
            if sock.family == socket.AF_UNIX:
                return await loop.create_unix_server(
                    protocol_factory, sock=sock, backlog=backlog, start_serving=start_serving
                )
            return await loop.create_server(
                protocol_factory, sock=sock, backlog=backlog, start_serving=start_serving
            )
        except BaseException as exc:
            sock.close()
            if isinstance(exc, OSError) and not isinstance(exc, ListenError):
                raise self._failed(exc) from exc
            raise


def release_passed_sockets() -> None:
    """At a ``--workers`` worker's stop: point every descriptor the master passed at /dev/null.

    Each server (an inherited endpoint, _endpoint_inherited.py) listens on a duplicate of its passed descriptor;
    kept, the passed one would hold the listening socket open until the worker exits, so after the server closed
    at the stop the kernel would go on completing handshakes on it (the master closes its own copies first) and
    those clients would be reset at the exit instead of refused. Done only when the process stops, so a service
    stopped and started again while the worker runs can still listen. The numbers stay taken (by /dev/null), so
    nothing else is given them.
    """
    passed = _passed
    if passed is None:
        return
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            for fd in passed.fds:
                with contextlib.suppress(OSError):
                    os.dup2(null, fd, inheritable=False)
        finally:
            os.close(null)
