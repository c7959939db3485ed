"""ProcessMonitor: run programs, log their output, restart them when they end, end them all on stop.

Restarts back off: a program that ends within ``threshold`` seconds of its start is restarted after its current
delay, which then doubles (from ``min_restart_delay`` up to ``max_restart_delay``); a run longer than
``threshold`` resets the delay to the minimum, and the restart comes after that minimum (twistd's procmon restarts
at once after a long run). There is no jitter: a program's restarts are spaced exactly as described.

Stopping sends SIGTERM to each program's process group, SIGKILL after ``killtime`` to what is left of it, and
waits for every program's exit, concurrently: the stop takes at most ``killtime`` plus about a second. When a
program ends by itself, the rest of its process group gets the same treatment before it is restarted (as
systemd's default ``KillMode=control-group`` does), so nothing it started lingers as an orphan.

Listening sockets: the monitor binds each program's ``sockets`` in ``privileged_start`` (so port 80 works before
privileges are dropped), keeps them open across restarts (connections wait in the backlog meanwhile) and hands them
to every run as fds 3, 4, ... with ``LISTEN_FDS``, ``LISTEN_FDNAMES`` and ``LISTEN_PID`` (systemd's convention).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import socket
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from tapster.endpoints import ServerEndpoint, parse_server
from tapster.errors import TapsterError
from tapster.service import _COMPLETED, Service
from tapster.services._procmon_child import Child, describe_status

__all__ = ["ProcessMonitor"]

logger = logging.getLogger("tapster.services.procmon")

SocketSpec = str | ServerEndpoint | tuple[str, "str | ServerEndpoint"]


def _user_id(uid: int | str | None) -> int | None:
    if uid is None or isinstance(uid, int):
        return uid
    try:
        return pwd.getpwnam(uid).pw_uid
    except KeyError:
        raise ValueError(f"no such user: {uid!r}") from None


def _group_id(gid: int | str | None) -> int | None:
    if gid is None or isinstance(gid, int):
        return gid
    try:
        return grp.getgrnam(gid).gr_gid
    except KeyError:
        raise ValueError(f"no such group: {gid!r}") from None


def _socket_spec(spec: SocketSpec) -> tuple[str, ServerEndpoint]:
    """``(LISTEN_FDNAMES name, endpoint)``; a plain endpoint is named after its kind (``tcp``, ``unix``)."""
    fd_name, endpoint = spec if isinstance(spec, tuple) else (None, spec)
    parsed = parse_server(endpoint) if isinstance(endpoint, str) else endpoint
    if parsed.is_datagram or parsed.kind == "ssl":
        raise ValueError(
            f"socket {parsed.description!r}: a program can be handed a plain stream socket only "
            "(tcp, tcp6, unix, systemd; TLS is the program's own business)"
        )
    name = fd_name or parsed.kind
    if not name or ":" in name or len(name) > 255:
        raise ValueError(f"socket name {name!r}: LISTEN_FDNAMES names are 1-255 characters without ':'")
    return name, parsed


class _Program:
    """What to run and how (kept in saved states); the live state is in ``_Slot``."""

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None,
        cwd: str | None,
        uid: int | None,
        gid: int | None,
        sockets: Sequence[tuple[str, ServerEndpoint]],
    ) -> None:
        self.args = list(args)
        self.env = None if env is None else dict(env)
        self.cwd = cwd
        self.uid = uid
        self.gid = gid
        self.sockets = list(sockets)


class _Slot:
    """One program while the monitor runs: its current child, its restart timer, its delay and its sockets."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.child: Child | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.restart: asyncio.TimerHandle | None = None
        self.spawning: asyncio.Task[None] | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self.listening: list[int] = []  # the servers' fds, handed to each run
        self.removed = False

    def fds(self) -> list[int]:
        return list(self.listening)


class ProcessMonitor(Service):
    """Runs programs and keeps them running (twistd's ``ProcessMonitor``; see the module docstring).

    Args:
        threshold: a run shorter than this (seconds) counts as a crash at start, and doubles the restart delay.
        killtime: seconds between SIGTERM and SIGKILL when a program is stopped.
        min_restart_delay: the first delay after a quick death, and the delay after a long run.
        max_restart_delay: the delay never grows beyond this.
        name: the service name.
    """

    transient = ("_slots", "_stopping")

    def __init__(
        self,
        *,
        threshold: float = 1.0,
        killtime: float = 5.0,
        min_restart_delay: float = 1.0,
        max_restart_delay: float = 3600.0,
        name: str | None = "ProcessMonitor",
    ) -> None:
        for label, value in (
            ("threshold", threshold),
            ("killtime", killtime),
            ("min_restart_delay", min_restart_delay),
            ("max_restart_delay", max_restart_delay),
        ):
            if not value >= 0 or value == float("inf"):
                raise ValueError(f"ProcessMonitor {label} must be a finite number >= 0, got {value!r}")
        if min_restart_delay > max_restart_delay:
            raise ValueError(
                f"ProcessMonitor min_restart_delay {min_restart_delay} is above max_restart_delay "
                f"{max_restart_delay}"
            )
        self.threshold = threshold
        self.killtime = killtime
        self.min_restart_delay = min_restart_delay
        self.max_restart_delay = max_restart_delay
        self.name = name
        self.programs: dict[str, _Program] = {}
        self._slots: dict[str, _Slot] | None = None
        self._stopping = False

    # -- the programs ----------------------------------------------------------------------------------------

    def add_process(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        uid: int | str | None = None,
        gid: int | str | None = None,
        sockets: Sequence[SocketSpec] = (),
    ) -> Awaitable[None]:
        """Add a program; started at once if the monitor runs (await the result to know it has been).

        Args:
            name: the label of its log lines (``[name] line``); unique within the monitor.
            args: the program and its arguments; the program is looked up in ``PATH`` unless it has a ``/``.
            env: its whole environment; None: the monitor's own (at each start).
            cwd: its working directory; None: the monitor's.
            uid, gid: user and group (number or name) to run as; the monitor must run as root to use them.
            sockets: endpoints (``"tcp:8080:interface=127.0.0.1"``, ``"unix:/run/app.sock"``), or
                ``(fdname, endpoint)`` pairs, bound by the monitor and passed as fds 3, 4, ...

        Raises:
            KeyError: a program of this name exists.
            ValueError: no args, an unknown user or group, a socket that cannot be handed over.
        """
        if name in self.programs:
            raise KeyError(f"ProcessMonitor {self.name!r} already has a program named {name!r}")
        if isinstance(args, str) or not args:
            raise ValueError(f"program {name!r}: args must be a non-empty list of strings, got {args!r}")
        program = _Program(
            args, env, cwd, _user_id(uid), _group_id(gid), [_socket_spec(spec) for spec in sockets]
        )
        self.programs[name] = program
        if self._slots is None or self._stopping:
            return _COMPLETED
        return asyncio.ensure_future(self._start_program(name, program))

    def remove_process(self, name: str) -> Awaitable[None]:
        """Forget a program; if it runs, end it (SIGTERM, SIGKILL after ``killtime``). Await to know it ended.

        Raises:
            KeyError: no program of this name.
        """
        if name not in self.programs:
            raise KeyError(f"ProcessMonitor {self.name!r} has no program named {name!r}")
        del self.programs[name]
        slots = self._slots
        slot = slots.pop(name, None) if slots is not None else None
        if slot is None:
            return _COMPLETED
        return asyncio.ensure_future(self._end_slot(name, slot))

    def pid(self, name: str) -> int | None:
        """The pid of the program's current run, or None between runs."""
        slot = (self._slots or {}).get(name)
        child = slot.child if slot is not None else None
        return child.pid if child is not None and not child.exited.is_set() else None

    # -- the lifecycle ---------------------------------------------------------------------------------------

    async def privileged_start(self) -> None:
        self._slots = {}
        self._stopping = False
        try:
            for name, program in self.programs.items():
                self._slots[name] = await self._bind(name, program)
        except BaseException:
            for slot in self._slots.values():
                _close_servers(slot)
            self._slots = None
            raise
        await super().privileged_start()

    async def start(self) -> None:
        if self._slots is None:  # started without privileged_start (a service added to a running tree)
            await self.privileged_start()
        await super().start()
        for name in list(self.programs):
            slot = (self._slots or {}).get(name)
            if slot is not None:
                await self._launch(name, slot)

    async def stop(self) -> None:
        await super().stop()
        self._stopping = True
        slots, self._slots = self._slots or {}, None
        if slots:
            await asyncio.gather(*(self._end_slot(name, slot) for name, slot in slots.items()))
        self._stopping = False

    # -- internals -------------------------------------------------------------------------------------------

    async def _bind(self, name: str, program: _Program) -> _Slot:
        slot = _Slot(self.min_restart_delay)
        try:
            for fd_name, endpoint in program.sockets:
                server = await endpoint.listen(asyncio.Protocol, start_serving=False)
                slot.servers.append(server)
                # asyncio listens only when it starts serving, which it never does here; a dup is the same socket
                fd: int = server.sockets[0].fileno()  # type: ignore[attr-defined]
                slot.listening.append(fd)
                with socket.socket(fileno=os.dup(fd)) as sock:
                    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                        sock.listen(getattr(endpoint, "backlog", socket.SOMAXCONN))
                    sock.setblocking(
                        True
                    )  # the program's accept() expects a blocking socket, as systemd's are
                logger.info("[%s] socket %s on %s", name, fd_name, endpoint.bound_address(server))
        except BaseException:
            _close_servers(slot)
            raise
        return slot

    async def _start_program(self, name: str, program: _Program) -> None:
        slot = await self._bind(name, program)
        if self._slots is None or self._stopping or self.programs.get(name) is not program:
            _close_servers(slot)
            return
        self._slots[name] = slot
        await self._launch(name, slot)

    def _launch(self, name: str, slot: _Slot) -> asyncio.Task[None]:
        """Start a run as a task the stop can wait for (a stop must not miss a child spawned meanwhile)."""
        slot.restart = None
        slot.spawning = asyncio.ensure_future(self._spawn(name, slot))
        return slot.spawning

    async def _spawn(self, name: str, slot: _Slot) -> None:
        program = self.programs.get(name)
        if program is None or slot.removed or self._stopping:
            return
        started = time.monotonic()
        try:
            child = await Child.spawn(
                name,
                program.args,
                env=program.env,
                cwd=program.cwd,
                uid=program.uid,
                gid=program.gid,
                fds=slot.fds(),
                fd_names=[fd_name for fd_name, _ in program.sockets],
            )
        except (OSError, ValueError) as exc:
            reason = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.filename else exc
            self._schedule(name, slot, f"[{name}] cannot start: {reason}", time.monotonic() - started)
            return
        slot.child = child
        slot.watcher = asyncio.ensure_future(self._watch(name, slot, child))

    async def _watch(self, name: str, slot: _Slot, child: Child) -> None:
        await child.exited.wait()
        if self._stopping or slot.removed:
            return  # the stop in progress ends the group and reports
        child.handled = True
        ran = time.monotonic() - child.started
        if child.exec_error is not None:
            what = f"[{name}] cannot run: {child.exec_error}"
        else:
            await child.outputs_done(
                0.05
            )  # its last lines, unless something else in the group holds the pipes
            what = f"[{name}] pid {child.pid} {describe_status(child.returncode or 0)} after {ran:.2f} s"
        if await child.end_group(self.killtime):
            logger.warning("[%s] killed what was left of its process group after %g s", name, self.killtime)
        if self._stopping or slot.removed:
            logger.info("%s", what)
            return
        self._schedule(name, slot, what, ran)

    def _schedule(self, name: str, slot: _Slot, what: str, ran: float) -> None:
        """Log how the run ended and when the next one comes; double the delay after a quick death."""
        if ran < self.threshold:
            delay = slot.delay
            slot.delay = min(slot.delay * 2, self.max_restart_delay)
        else:
            delay = slot.delay = self.min_restart_delay
        logger.info("%s; restarting in %g s", what, delay)
        loop = asyncio.get_running_loop()
        slot.restart = loop.call_later(delay, self._launch, name, slot)

    async def _end_slot(self, name: str, slot: _Slot) -> None:
        slot.removed = True
        if slot.restart is not None:
            slot.restart.cancel()
            slot.restart = None
        try:
            if slot.spawning is not None:
                with contextlib.suppress(Exception):
                    await slot.spawning
            child = slot.child
            if child is not None and not child.handled:
                if await child.end_group(self.killtime):
                    logger.warning(
                        "[%s] did not end within %g s of SIGTERM: sent SIGKILL to its process group",
                        name,
                        self.killtime,
                    )
                if child.returncode is not None:
                    logger.info("[%s] pid %d %s", name, child.pid, describe_status(child.returncode))
            if slot.watcher is not None:
                await slot.watcher
        finally:
            _close_servers(slot)

    def __repr__(self) -> str:
        return f"<ProcessMonitor {self.name!r}: {', '.join(self.programs) or 'no programs'}>"

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_stopping"] = False
        return state


def _close_servers(slot: _Slot) -> None:
    for server in slot.servers:
        with contextlib.suppress(OSError, TapsterError):
            server.close()
    slot.servers.clear()
    slot.listening.clear()
