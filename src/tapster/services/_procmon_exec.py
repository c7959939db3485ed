"""The exec wrapper between the process monitor and each program it runs (run as a script, never imported).

The monitor starts ``python -I -S _procmon_exec.py ARGS -- PROGRAM ...``, and this script, in the new process,
does what ``subprocess`` cannot do safely in a process with threads (no ``preexec_fn``), then ``exec``s the
program, so the program keeps this process's pid and nothing stays behind:

1. moves the passed listening sockets to fds 3, 4, ... and sets ``LISTEN_FDS``, ``LISTEN_FDNAMES`` and
   ``LISTEN_PID`` (this pid, which the program keeps) -- the systemd socket-passing convention;
2. switches to the program's group, supplementary groups and user;
3. asks the kernel for SIGKILL when the monitor dies (``PR_SET_PDEATHSIG``, after the user switch, which would
   clear it), then checks the monitor is still its parent, so a monitor killed in between is not missed;
4. ``exec``s the program, searching the program's ``PATH``. If that fails, the error goes back on the status
   pipe (close-on-exec, so a successful exec closes it empty) and the wrapper exits 127.

The program gets the environment and signal dispositions it was meant to get, not the wrapper's: Python's start
ignores SIGPIPE and SIGXFSZ (an ignored signal stays ignored across ``exec``), so both are set back to the
default; and Python's C-locale coercion may have added ``LC_CTYPE`` to the environment, so the names in DROP
(what the monitor's environment for the program did not have) are removed again.

Arguments: STATUS_FD MONITOR_PID UID GID FDS NAMES DROP -- PROGRAM ARGS...; DROP is a comma-separated list of
environment names to remove (may be empty); UID, GID are numbers or ``-``, FDS is a
comma-separated list of inherited fds (may be empty), NAMES the ``:``-joined ``LISTEN_FDNAMES``.
Only the standard library, and only what this needs: it runs under ``-I -S`` for a fast start.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C module: signal would cost an enum import
import ctypes  # imported before the user switch: the new user may not be able to read the standard library
import fcntl
import os
import pwd
import sys

PR_SET_PDEATHSIG = 1
SIGKILL = 9  # the number on every Linux architecture; the signal module would cost an enum import
_SIGPIPE = _signal.SIGPIPE
_SIGXFSZ = _signal.SIGXFSZ


def _place_fds(fds: list[int], keep: int) -> int:
    """Put ``fds`` at 3, 4, ...; return where the status fd ``keep`` ended up (moved out of the way)."""
    top = 3 + len(fds)
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top) for fd in fds]
    keep_moved = fcntl.fcntl(keep, fcntl.F_DUPFD_CLOEXEC, top)
    for fd in {*fds, keep}:
        os.close(fd)
    for target, fd in enumerate(moved, start=3):
        os.dup2(fd, target)  # the copy at ``target`` is inheritable
        os.close(fd)
    return keep_moved


def _die_with_parent(libc: ctypes.CDLL, monitor_pid: int) -> None:
    if libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != monitor_pid:  # the monitor died before the request took effect
        os._exit(1)


def main(argv: list[str]) -> None:
    status_fd, monitor_pid, uid, gid, fds_text, names, drop = argv[:7]
    assert argv[7] == "--"
    program = argv[8:]
    status = int(status_fd)
    try:
        fds = [int(fd) for fd in fds_text.split(",") if fd]
        status = _place_fds(fds, status)
        env = dict(os.environ)
        for name in drop.split(","):
            env.pop(name, None)
        if fds:
            env["LISTEN_FDS"] = str(len(fds))
            env["LISTEN_FDNAMES"] = names
            env["LISTEN_PID"] = str(os.getpid())
        libc = ctypes.CDLL(None, use_errno=True)
        if uid != "-":
            user = pwd.getpwuid(int(uid))
            group = int(gid) if gid != "-" else user.pw_gid
            if (int(uid), group) != (os.getuid(), os.getgid()):
                os.initgroups(user.pw_name, group)
                os.setgid(group)
                os.setuid(int(uid))
        elif gid != "-" and int(gid) != os.getgid():
            os.setgroups([])
            os.setgid(int(gid))
        _die_with_parent(libc, int(monitor_pid))
        for signum in (_SIGPIPE, _SIGXFSZ):
            _signal.signal(signum, _signal.SIG_DFL)
        os.execvpe(program[0], program, env)
    except OSError as exc:
        what = exc.filename if exc.filename else program[0]
        message = f"{what}: {exc.strerror or exc}"
    except Exception as exc:  # a user or group that no longer exists, and the like
        message = f"{type(exc).__name__}: {exc}"
    try:
        os.write(status, message.encode("utf-8", "backslashreplace"))
    finally:
        os._exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
