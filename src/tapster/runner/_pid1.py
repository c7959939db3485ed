"""Running as PID 1 (a container without ``--init``): a minimal init in front of the server.

PID 1 is special in two ways that break an ordinary server. The kernel gives it no default signal actions, so a
SIGTERM that arrives before a handler is installed (while the application is still importing) is silently
dropped and the container is killed after its grace period. And every orphaned process in the namespace (a
grandchild whose parent exited: a double-forking helper, a shell pipeline) is re-parented to it, and stays a
zombie unless PID 1 waits for it; the asyncio child watchers and the process monitor wait only for the pids they
started, so a server cannot be that reaper without stealing their exit statuses.

So, as PID 1, tapster forks first, before reading the application: the parent stays PID 1 and does only an
init's work (wait for every child, pass SIGTERM/SIGINT/SIGHUP/SIGUSR1/SIGUSR2/SIGQUIT/SIGURG on to the server,
exit with the server's status); the child is the server, an ordinary process with ordinary signal behaviour, run
in the foreground (``-n`` implied: a container's log is its standard output). The server is put in a process
group of its own, in the terminal's foreground when there is one, so a Ctrl-C at ``docker run -it`` reaches it
once, not once from the terminal and once forwarded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from types import FrameType

__all__ = ["announce", "serve_as_init"]

FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGQUIT,
    signal.SIGURG,
)
"""The signals the init passes on to the server: the stop signals and tapster's control signals."""

_under_init = False  # in the server: an init of ours is PID 1 (set in the forked child)


def serve_as_init() -> int | None:
    """As PID 1: fork; return None in the child (the server), the server's exit status in the parent.

    Not PID 1: None at once, nothing changed. The stop signals are blocked across the fork, so one sent at any
    moment is either forwarded by the init or received by the server itself.
    """
    global _under_init
    if os.getpid() != 1:
        return None
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    server = os.fork()
    if server == 0:
        _under_init = True
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return None
    with contextlib.suppress(OSError):  # the child may have done it already: either order ends the same
        os.setpgid(server, server)
    _give_terminal_to(server)

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return _reap_until_exit(server)


def _give_terminal_to(pgid: int) -> None:
    """``docker run -it``: the server's group becomes the terminal's foreground group, so Ctrl-C reaches it."""
    try:
        if not os.isatty(0):
            return
        with _ignoring(signal.SIGTTOU):  # a background process may not change the foreground group otherwise
            os.tcsetpgrp(0, pgid)
    except OSError:
        pass


@contextlib.contextmanager
def _ignoring(signum: int) -> Iterator[None]:
    previous = signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def _reap_until_exit(server: int) -> int:
    """Wait for every child (orphans included) until the server exits; its status as an exit status."""
    while True:
        try:
            pid, status = os.wait()  # a forwarded signal interrupts it; PEP 475 retries it afterwards
        except ChildProcessError:
            return 1  # cannot happen while the server lives; nothing left to wait for
        if pid == server:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell reports it


def announce(logger: logging.Logger) -> None:
    """In the server's log, once it is open: say that it runs under tapster's own init, with ``-n`` implied."""
    if _under_init:
        logger.info(
            "Running as PID 1's child: tapster is the container's init (pid 1 reaps orphaned processes and "
            "forwards signals to this server, pid %d); -n implied.",
            os.getpid(),
        )
