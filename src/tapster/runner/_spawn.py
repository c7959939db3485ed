"""Starting one worker process: ``posix_spawn`` of a shell that execs ``python -m tapster.runner._worker``.

Why this way:

* No ``fork()`` of the master's running event loop: ``posix_spawn`` runs no Python in the child.
* The listening sockets must sit at fds 3, 4, ... (systemd's convention, which the worker's endpoints read
  through the same code as socket activation). ``posix_spawn``'s dup2 actions put them there; ``subprocess``
  can pass descriptors only at the numbers they already have. Each source is first copied above the range the
  actions write to, so no action overwrites a descriptor a later one reads.
* ``LISTEN_PID`` must be the worker's own pid, which the master learns only once the child exists. The child
  is ``/bin/sh -c 'LISTEN_PID=$$ ... exec "$@"'``: the shell's ``$$`` is its pid, and ``exec`` keeps the pid
  for python. The shell also changes to the directory tapster was launched from, which the command line's
  relative paths mean.
* Every other descriptor of the master is close-on-exec (Python's default, PEP 446), so only what the actions
  name reaches the worker.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import sys
from collections.abc import Sequence

__all__ = ["SpawnedWorker", "spawn_worker"]

_SCRIPT = 'cd -- "$TAPSTER_LAUNCH_DIR" && LISTEN_PID=$$ && export LISTEN_PID && exec "$@"'
_DEFAULT_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGPIPE,
    signal.SIGQUIT,
)


class SpawnedWorker:
    """A started worker: its pid, the master's end of its control socket, the read end of its output."""

    def __init__(self, pid: int, control: socket.socket, output_fd: int) -> None:
        self.pid = pid
        self.control = control
        self.output_fd = output_fd


def spawn_worker(
    number: int,
    listeners: Sequence[tuple[str, socket.socket]],
    *,
    argv: Sequence[str],
    launch_dir: str,
    beat: float,
) -> SpawnedWorker:
    """Start worker ``number`` with ``listeners`` (name, socket) at fds 3.. and the control socket after them.

    Raises:
        OSError: the process could not be started.
    """
    control, child_control = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    output_read, output_write = os.pipe()
    floor = 3 + len(listeners) + 1
    copies: list[int] = []
    try:
        sources = [sock.fileno() for _, sock in listeners] + [child_control.fileno(), output_write]
        copies = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in sources]
        *listener_copies, control_copy, output_copy = copies
        actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, output_copy, 1),
            (os.POSIX_SPAWN_DUP2, output_copy, 2),
        ]
        actions += [(os.POSIX_SPAWN_DUP2, fd, 3 + index) for index, fd in enumerate(listener_copies)]
        control_fd = 3 + len(listeners)
        actions.append((os.POSIX_SPAWN_DUP2, control_copy, control_fd))
        env = {
            **os.environ,
            "LISTEN_FDS": str(len(listeners)),
            "LISTEN_FDNAMES": ":".join(name for name, _ in listeners),
            "TAPSTER_WORKER": str(number),
            "TAPSTER_MASTER_PID": str(os.getpid()),
            "TAPSTER_WORKER_CONTROL_FD": str(control_fd),
            "TAPSTER_WORKER_BEAT": repr(beat),
            "TAPSTER_LAUNCH_DIR": launch_dir,
            "PYTHONUNBUFFERED": "1",  # a print reaches the log as a line, not a block at exit
        }
        command = ["sh", "-c", _SCRIPT, "sh", sys.executable, "-m", "tapster.runner._worker", *argv]
        pid = os.posix_spawn(
            "/bin/sh", command, env, file_actions=actions, setsigdef=_DEFAULT_SIGNALS, setsigmask=()
        )
    except BaseException:
        control.close()
        os.close(output_read)
        raise
    finally:
        for fd in copies:
            os.close(fd)
        child_control.close()
        os.close(output_write)
    control.setblocking(False)
    os.set_blocking(output_read, False)
    return SpawnedWorker(pid, control, output_read)
