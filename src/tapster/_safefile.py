"""Opening files a root process writes or trusts, without being steered by whoever else can write nearby.

A server started as root opens its pid file, log files and saved state in directories that other users may be
able to write (``/tmp``, a shared run directory). Whoever plants a symbolic link or a hard link there can make a
plain ``open()`` truncate ``/etc/shadow`` or append to it. Every such open goes through :func:`open_regular`:
it never follows a symbolic link in the last component (``O_NOFOLLOW``), never blocks on a FIFO
(``O_NONBLOCK``), and checks with ``fstat`` on the descriptor it got, not on the path, that it holds a regular
file with a single link. New files are created with ``O_EXCL``, so a link planted between a check and a create
makes the create fail instead of being followed.

Symbolic links in the *directories* of a path are followed, as every daemon does (``/var/run`` -> ``/run``); only
the directory's own permissions say whether someone else could have swapped the file in it, which is what
:func:`check_private` looks at.
"""

from __future__ import annotations

import errno
import os
import stat

from tapster.errors import TapsterError

__all__ = ["UnsafeFileError", "check_private", "create_exclusive", "open_regular"]

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

# Errors an open of something planted may get before O_NOFOLLOW or fstat could speak: EEXIST (O_EXCL), and
# EACCES/EPERM from the kernel's own protection of links and FIFOs in sticky directories.
_REFUSED_BY_KERNEL = (errno.EEXIST, errno.EACCES, errno.EPERM)


class UnsafeFileError(TapsterError, PermissionError):
    """A file was refused because opening it could be used against us; the message names it and says why."""


def open_regular(
    path: str, flags: int, mode: int = 0o600, *, what: str = "file", shown: str | None = None
) -> int:
    """Open ``path`` with ``flags`` (``os.O_*``) as a regular file reached without a final symbolic link.

    ``O_NOFOLLOW``, ``O_CLOEXEC`` and (for the open itself) ``O_NONBLOCK`` are added. A new file is created
    with ``mode`` (less the umask). Messages name the file as ``shown`` (the path as the user gave it, when
    ``path`` is its absolute form), else as ``path``.

    Raises:
        UnsafeFileError: ``path`` is a symbolic link, not a regular file (a FIFO, a device, a directory), or
            has other hard links.
        OSError: the open failed for any other reason (missing directory, permission denied, disk full).
    """
    name = path if shown is None else shown
    try:
        fd = os.open(path, flags | _NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno in _REFUSED_BY_KERNEL and os.path.islink(path)):
            # The kernel's protected_symlinks/protected_fifos may refuse first (EACCES) in a sticky directory.
            raise UnsafeFileError(f"refusing {what} {name}: it is a symbolic link") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO) or (
            exc.errno in _REFUSED_BY_KERNEL and _kind(path) not in ("a regular file", "something")
        ):
            raise UnsafeFileError(f"refusing {what} {name}: {_kind(path)}, not a regular file") from None
        raise
    try:
        _check_descriptor(fd, name, what)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_exclusive(
    path: str, flags: int, mode: int = 0o600, *, what: str = "file", shown: str | None = None
) -> int:
    """Create ``path``, which must not exist (``O_CREAT | O_EXCL``): nothing planted there is ever opened.

    Raises:
        UnsafeFileError: something (a symbolic link, a file) appeared at ``path``; the message says which.
        OSError: any other failure.
    """
    try:
        return open_regular(path, flags | os.O_CREAT | os.O_EXCL, mode, what=what, shown=shown)
    except FileExistsError:
        raise UnsafeFileError(
            f"refusing {what} {path if shown is None else shown}: {_kind(path)} appeared there while it was "
            "being created"
        ) from None


def check_private(path: str, info: os.stat_result, *, what: str, trusted_uids: frozenset[int]) -> None:
    """Refuse a file whose content someone outside ``trusted_uids`` could have chosen.

    ``info`` is the ``fstat`` of the descriptor already open (so it describes the file actually read). The file
    must be owned by a trusted uid and writable by nobody else; its directory must be owned by a trusted uid and
    not writable by group or others, unless it is sticky (``/tmp``), where only a file's owner can replace it.

    Raises:
        UnsafeFileError: the owner, the file's mode or the directory's mode would let another user in.
    """
    if info.st_uid not in trusted_uids:
        raise UnsafeFileError(
            f"refusing {what} {path}: it is owned by uid {info.st_uid}, {_trusted(trusted_uids)}"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "others" if info.st_mode & stat.S_IWOTH else "its group"
        raise UnsafeFileError(f"refusing {what} {path}: it is writable by {who}")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        parent = os.stat(directory)
    except OSError as exc:
        raise UnsafeFileError(f"refusing {what} {path}: cannot check its directory: {exc.strerror}") from None
    if parent.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not parent.st_mode & stat.S_ISVTX:
        who = "others" if parent.st_mode & stat.S_IWOTH else "its group"
        raise UnsafeFileError(
            f"refusing {what} {path}: its directory {directory} is writable by {who} (and not sticky), "
            "so another user could have replaced it"
        )
    if parent.st_uid not in trusted_uids:
        raise UnsafeFileError(
            f"refusing {what} {path}: its directory {directory} is owned by uid {parent.st_uid}, "
            f"{_trusted(trusted_uids)}"
        )


def _check_descriptor(fd: int, path: str, what: str) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFileError(f"refusing {what} {path}: {_describe_mode(info.st_mode)}, not a regular file")
    if info.st_nlink > 1:
        raise UnsafeFileError(
            f"refusing {what} {path}: it has {info.st_nlink} hard links (another name may point at the same file)"
        )


def _trusted(uids: frozenset[int]) -> str:
    return "not by " + " or ".join(f"uid {uid}" for uid in sorted(uids))


def _kind(path: str) -> str:
    try:
        return _describe_mode(os.lstat(path).st_mode)
    except OSError:
        return "something"


def _describe_mode(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "not a regular file"
