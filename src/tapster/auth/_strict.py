"""OpenSSH's StrictModes for the files credentials come from: who may have written them decides if we trust them.

A password or key file that another user could have written is that user's way in. A file is trusted only when
it is a regular file reached without a final symbolic link and with no other hard link, it and its directory are
owned by root or by the user the server runs as, and neither is writable by group or others (a sticky directory
such as /tmp may be world-writable: there only a file's owner can replace it). The checks run on the descriptor
actually read (``fstat``), through :mod:`tapster._safefile`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from tapster._safefile import UnsafeFileError, check_private, open_regular

__all__ = ["check_directory", "open_file", "read_trusted", "trusted_uids"]


def trusted_uids(extra: Iterable[int] = ()) -> frozenset[int]:
    """Root, the user the server runs as now (its effective uid, after any --uid drop), and ``extra``."""
    return frozenset({0, os.geteuid(), *extra})


def open_file(path: str, what: str) -> tuple[str, os.stat_result]:
    """Read ``path`` as a regular file without a final symlink and with a single link: its text and ``fstat``.

    Ownership is not checked here (see :func:`read_trusted`).

    Raises:
        UnsafeFileError: a symbolic link, not a regular file, or other hard links.
        OSError: any other failure to open or read.
    """
    fd = open_regular(path, os.O_RDONLY, what=what)
    with open(fd, encoding="utf-8", errors="replace", closefd=True) as handle:
        info = os.fstat(handle.fileno())
        return handle.read(), info


def read_trusted(path: str, what: str, trusted: frozenset[int]) -> tuple[str, os.stat_result]:
    """Read ``path`` only if it passes StrictModes for ``trusted`` owners; its text and ``fstat``.

    Raises:
        UnsafeFileError: the file or its directory could have been written by another user, or it is a
            symbolic link, not a regular file, or has other hard links.
        OSError: any other failure to open or read.
    """
    fd = open_regular(path, os.O_RDONLY, what=what)
    with open(fd, encoding="utf-8", errors="replace", closefd=True) as handle:
        info = os.fstat(handle.fileno())
        check_private(path, info, what=what, trusted_uids=trusted)
        return handle.read(), info


def check_directory(path: str, what: str, trusted: frozenset[int]) -> None:
    """Refuse a directory another user owns or may write to (or whose own directory is such).

    Raises:
        UnsafeFileError: the directory is missing, not a directory, or fails the rules.
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise UnsafeFileError(f"refusing {what} {path}: {(exc.strerror or str(exc)).lower()}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeFileError(f"refusing {what} {path}: not a directory")
    check_private(path, info, what=what, trusted_uids=trusted)
