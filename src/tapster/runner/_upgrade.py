"""In-place upgrade, the old master's side: check the new code, hand everything over, and exec.

``tapster ctl upgrade`` (SIGURG to the master): the master re-executes itself, so the pid stays the same (the pid
file and systemd's ``MAINPID`` stay right) and runs whatever tapster and application code is installed now. Its
listening sockets, its workers' control sockets and outputs, and the pid file's locked descriptor survive the
exec (made inheritable just before it); ``TAPSTER_UPGRADE`` tells the new image (runner/_upgraded.py) which is
which. The new master then adopts the old workers and rolls them onto new ones as a reload does.

An exec cannot be undone: a new image that fails to import would take the master, and with it the workers
(parent-death signal), down. So first a separate process (``python -m tapster.runner._upgraded check``) imports
the new code, loads the application and compares its listeners with the master's; only when that succeeded does
the master exec. A failed check leaves everything as it was and says why (log and ``ctl``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import Sequence

from tapster.runner._master_workers import Worker

__all__ = ["HANDOFF", "check_new_code", "exec_new_master", "handoff"]

HANDOFF = "TAPSTER_UPGRADE"
_CHECK_LINES = 20


async def check_new_code(
    argv: Sequence[str], launch_dir: str, names: Sequence[str], timeout: float
) -> str | None:
    """Load the application with the code installed now, in a separate process; None if it loads, else why."""
    env = {**os.environ, "TAPSTER_LISTENER_NAMES": json.dumps(list(names))}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tapster.runner._upgraded",
            "check",
            *argv,
            cwd=launch_dir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        return f"cannot run the check of the new code: {exc}"
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"loading the application with the new code took more than {timeout:g} s"
    if proc.returncode == 0:
        return None
    lines = [line for line in err.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].removeprefix("tapster: ") if lines else f"the check exited with status {proc.returncode}"


def handoff(
    listeners: Sequence[tuple[str, socket.socket]],
    workers: Sequence[tuple[Worker, int]],
    *,
    notify_socket: str | None,
    pidfile_fd: int | None,
    watchdog_interval: float | None = None,
    status_fd: int | None = None,
) -> dict[str, object]:
    """What the new image needs, with every descriptor in it made inheritable (the exec keeps them)."""
    for _, sock in listeners:
        os.set_inheritable(sock.fileno(), True)
    for worker, _ in workers:
        os.set_inheritable(worker.control.fileno(), True)
        os.set_inheritable(worker.output_fd, True)
    for fd in (pidfile_fd, status_fd):
        if fd is not None:
            os.set_inheritable(fd, True)
    return {
        "listeners": [[name, sock.fileno()] for name, sock in listeners],
        "workers": [
            [w.number, w.pid, w.control.fileno(), w.output_fd, w.started_wall, restarts]
            for w, restarts in workers
        ],
        "notify_socket": notify_socket,
        "pidfile_fd": pidfile_fd,
        "watchdog_interval": watchdog_interval,
        "status_fd": status_fd,  # --status's listener (runner/_master_run.py)
    }


def exec_new_master(argv: Sequence[str], launch_dir: str, state: dict[str, object]) -> None:
    """Replace this process with the new master (same pid).

    Raises:
        OSError: the exec failed; the descriptors are close-on-exec again and nothing else changed.
    """
    env = {**os.environ, HANDOFF: json.dumps(state)}
    here = os.getcwd()
    try:
        os.chdir(launch_dir)  # the command line's relative paths mean the launch directory
        os.execve(sys.executable, [sys.executable, "-m", "tapster.runner._upgraded", "run", *argv], env)
    finally:  # only after a failed exec
        os.chdir(here)
        for fd in _descriptors(state):
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


def _descriptors(state: dict[str, object]) -> list[int]:
    fds = [fd for _, fd in state["listeners"]]  # type: ignore[attr-defined]
    for _, _, control, output, _, _ in state["workers"]:  # type: ignore[attr-defined]
        fds += [control, output]
    fds += [fd for fd in (state["pidfile_fd"], state.get("status_fd")) if isinstance(fd, int)]
    return fds
