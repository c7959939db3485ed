"""One run of one monitored program: spawn it in its own process group, log its output, learn how it ended, and
end it (and whatever it started in its group) when asked.

The program is started through the exec wrapper (``_procmon_exec.py``), which places the passed sockets, switches
user, asks for SIGKILL should the monitor die, and reports a failed ``exec`` on a status pipe. The wrapper is a
Python start (~25 ms): most of a replacement's latency. So a program that needs none of the first two (no
sockets, no user switch) and that can be found before the spawn is started the fast way instead, through
util-linux's ``setpriv --pdeathsig KILL`` and ``/bin/sh`` (a few milliseconds): setpriv asks for the signal,
the shell checks the monitor is still its parent (a monitor killed before the request took effect is not
missed) and ``exec``s the program, which keeps the pid. Without ``setpriv`` (or one too old for
``--pdeathsig``) every program goes through the wrapper. What the fast way cannot do as well: an ``exec`` that
still fails (the file was removed in between) is the shell's message on stderr and exit status 127, not the
wrapper's one line.

The exit is learnt from a pidfd (``os.pidfd_open``) watched by the event loop: no thread per child, no SIGCHLD
handler that could reap another part of the program's children, the same on asyncio and uvloop.

A process group (the child's own session: ``start_new_session``) is what is signalled, so a shell's children and
a server's workers go with it. A process that leaves the group (``setsid``, a daemon's double fork) is beyond
reach: that needs cgroups.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tapster.services._procmon_output import OutputLines

__all__ = ["Child", "describe_status", "group_alive"]

logger = logging.getLogger("tapster.services.procmon")

_WRAPPER = str(Path(__file__).with_name("_procmon_exec.py"))
_POLL = (
    0.02  # seconds between checks of a process group's members (the kernel has no event for "group empty")
)


_WRAPPER_ADDS = ("LC_CTYPE",)
"""What the wrapper's own Python start may add to the environment (C-locale coercion, PEP 538)."""

_SHELL_ADDS = ("PWD", "OLDPWD", "SHLVL")
"""What ``/bin/sh`` may export to the program that it was not given."""


@functools.cache
def _setpriv() -> str | None:
    """util-linux's setpriv, if it is there and knows ``--pdeathsig`` (2.33 and later); asked once."""
    found = shutil.which("setpriv")
    if found is None or not os.path.exists("/bin/sh"):
        return None
    try:
        usage = subprocess.run([found, "--help"], capture_output=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return found if b"--pdeathsig" in usage else None


def _findable(program: str, env: Mapping[str, str], cwd: str | None) -> bool:
    """Whether ``program`` names an executable file now, found as ``execvp`` in the child would find it."""
    if "/" in program:
        path = program if os.path.isabs(program) else os.path.join(cwd or os.getcwd(), program)
        return os.path.isfile(path) and os.access(path, os.X_OK)
    search = env.get("PATH")
    if search is None or not all(os.path.isabs(entry) for entry in search.split(os.pathsep)):
        # the shell's default PATH, or entries relative to the program's cwd: the wrapper decides
        return False
    return shutil.which(program, path=search) is not None


def _fast_launch(
    args: Sequence[str],
    env: Mapping[str, str],
    cwd: str | None,
    uid: int | None,
    gid: int | None,
    fds: Sequence[int],
) -> list[str] | None:
    """The argv that starts ``args`` without the Python wrapper (see the module's docstring), or None."""
    if fds or uid is not None or gid is not None or not args:
        return None
    setpriv = _setpriv()
    if setpriv is None or not _findable(args[0], env, cwd):
        return None
    unset = " ".join(name for name in _SHELL_ADDS if name not in env)
    forget = f"unset {unset}; " if unset else ""
    parent_check = f'[ "$PPID" = {os.getpid()} ] || exit 125; {forget}exec "$0" "$@"'
    return [setpriv, "--pdeathsig", "KILL", "--", "/bin/sh", "-c", parent_check, *args]


def group_alive(pgid: int) -> bool:
    """Whether the process group ``pgid`` has a member that is not a zombie."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def describe_status(returncode: int) -> str:
    """``exited with status 3`` or ``killed by SIGSEGV``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class Child:
    """A started program. ``exited`` is set once it has been reaped; ``exec_error`` says why it never ran.

    Raises from :meth:`spawn`: OSError when even the wrapper could not start (no such ``cwd``, out of
    processes); the monitor logs it as one line and backs off.
    """

    def __init__(self, name: str, popen: subprocess.Popen[bytes], status_fd: int, command: str) -> None:
        self.name = name
        self.command = command
        self.popen = popen
        self.pid = popen.pid
        self.started = time.monotonic()
        self.exited = asyncio.Event()
        self.exec_error: str | None = None
        self.handled = False  # the monitor's watcher took charge of reporting this run's end
        self.returncode: int | None = None
        self._status_fd = status_fd
        self._status = bytearray()
        self._pidfd = os.pidfd_open(popen.pid)
        self.outputs: list[OutputLines] = []
        loop = asyncio.get_running_loop()
        loop.add_reader(self._pidfd, self._reap)
        loop.add_reader(status_fd, self._read_status)

    @classmethod
    async def spawn(
        cls,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None,
        cwd: str | None,
        uid: int | None,
        gid: int | None,
        fds: Sequence[int],
        fd_names: Sequence[str],
    ) -> Child:
        loop = asyncio.get_running_loop()
        child_env = dict(os.environ if env is None else env)
        status_read, status_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        if not fds and uid is None and gid is None and _setpriv.cache_info().currsize == 0:
            await loop.run_in_executor(None, _setpriv)  # asked once, by running it: not on the loop
        fast = _fast_launch(args, child_env, cwd, uid, gid, fds)
        wrapper = fast or [
            sys.executable,
            "-I",
            "-S",
            _WRAPPER,
            str(status_write),
            str(os.getpid()),
            "-" if uid is None else str(uid),
            "-" if gid is None else str(gid),
            ",".join(map(str, fds)),
            ":".join(fd_names),
            ",".join(name for name in _WRAPPER_ADDS if name not in child_env),
            "--",
            *args,
        ]
        try:
            popen = subprocess.Popen(
                wrapper,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=child_env,
                cwd=cwd,
                pass_fds=() if fast else (*fds, status_write),
                start_new_session=True,
                bufsize=0,
            )
        except BaseException:
            os.close(status_read)
            raise
        finally:
            os.close(status_write)
        try:
            child = cls(name, popen, status_read, shlex.join(args).replace("\n", "\\n"))
        except BaseException:  # no pidfd (a kernel before 5.3): do not leave an untracked child behind
            os.close(status_read)
            with contextlib.suppress(OSError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            for pipe in (popen.stdout, popen.stderr):
                if pipe is not None:
                    pipe.close()
            raise
        for stream, pipe in (("stdout", popen.stdout), ("stderr", popen.stderr)):
            output = OutputLines(name, stream)
            await loop.connect_read_pipe(lambda output=output: output, pipe)  # type: ignore[misc]
            child.outputs.append(output)
        return child

    def _read_status(self) -> None:
        try:
            data = os.read(self._status_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._status += data
            return
        self._close_status()

    def _close_status(self) -> None:
        if self._status_fd >= 0:
            asyncio.get_running_loop().remove_reader(self._status_fd)
            os.close(self._status_fd)
            self._status_fd = -1
            if self._status:
                self.exec_error = self._status.decode("utf-8", "backslashreplace")
            else:
                logger.info("[%s] started, pid %d: %s", self.name, self.pid, self.command)

    def _reap(self) -> None:
        if self.popen.poll() is None:
            return
        self._read_status()  # what the wrapper wrote before it exited is in the pipe by now
        self._close_status()
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self.returncode = self.popen.returncode
        self.exited.set()

    def signal_group(self, signum: int) -> bool:
        """Send ``signum`` to the child's process group; False if the group is gone."""
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            return False
        except PermissionError:  # a member runs as a user this monitor may not signal
            logger.error("[%s] not allowed to signal process group %d", self.name, self.pid)
            return False
        return True

    async def _group_gone(self, timeout: float) -> bool:
        """Wait for the child's exit and then for the rest of its group; False if ``timeout`` passes first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await asyncio.wait_for(self.exited.wait(), timeout)
        except TimeoutError:
            return False
        while group_alive(self.pid):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(_POLL)
        return True

    async def end_group(self, killtime: float) -> bool:
        """SIGTERM to the group, SIGKILL after ``killtime`` to whatever is left; wait for the child's exit.

        Returns True when SIGKILL was needed. Bounded: ``killtime`` plus at most one more second for the kernel
        to finish a killed process (one stuck in uninterruptible sleep is logged and left).
        """
        killed = False
        if self.signal_group(signal.SIGTERM) and not await self._group_gone(killtime):
            killed = self.signal_group(signal.SIGKILL)
        if not self.exited.is_set():
            try:
                await asyncio.wait_for(self.exited.wait(), 1.0)
            except TimeoutError:
                logger.error("[%s] pid %d did not end even after SIGKILL", self.name, self.pid)
        self.close_outputs()
        return killed

    def close_outputs(self) -> None:
        """Stop reading the pipes once nobody in the group can write more (an escaped process still could)."""
        for output in self.outputs:
            output.close()

    async def outputs_done(self, timeout: float) -> None:
        """Wait (bounded) until the pipes have ended, so the last lines are logged before the exit line."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(output.done.wait() for output in self.outputs)), timeout)
