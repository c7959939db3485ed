"""Keeping an FTP user inside the root: no ``..`` above it, no symlink out of it, no absolute path elsewhere.

aioftp maps a client's path onto the root lexically and quietly turns a climb above ``/`` into ``/`` itself; it
follows symlinks wherever they point. Two layers close that: each path command is checked before aioftp sees it
(a climb above the root, or a path whose resolved form leaves the root, is answered ``550``), and the file
operations themselves refuse any path that resolves outside the root, and leave such entries out of listings
(so a symlink planted inside the root that points out is invisible and unusable). The second layer is what
holds when a path changes between the check and the use.

A local user who can rename directories inside the root while a command runs could still race the last
resolution and the system call; the process's own permissions (``--uid``) are the bound for that.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Any

import aioftp

__all__ = ["ConfinedPathIO", "climbs_above_root", "inside"]


def climbs_above_root(current: PurePosixPath, requested: str) -> bool:
    """Whether ``requested`` (relative to ``current``, or absolute) goes above ``/`` at any step."""
    path = PurePosixPath(requested)
    if not path.is_absolute():
        path = current / path
    depth = 0
    for part in path.parts[1:]:
        depth += -1 if part == ".." else 1
        if depth < 0:
            return True
    return False


def inside(root: str, path: str | os.PathLike[str]) -> bool:
    """Whether ``path``, every symlink on it resolved, is ``root`` or under it (``root`` is already resolved)."""
    try:
        resolved = os.path.realpath(path)
    except (ValueError, OSError):  # a NUL byte, a name too long: nothing to serve
        return False
    return root == "/" or resolved == root or resolved.startswith(root + os.sep)


def _refused(path: Path) -> aioftp.PathIOError:
    return aioftp.PathIOError(f"{path} resolves outside the FTP root")


class ConfinedPathIO(aioftp.PathIO):
    """aioftp's blocking file layer, refusing every path that resolves outside the logged-in user's root."""

    def _root(self) -> str:
        connection: Any = self.connection
        if connection is None or not connection.future.user.done():
            return "\0"  # no user, no root: nothing is inside
        return str(connection.user.base_path)

    def _check(self, *paths: Path) -> None:
        root = self._root()
        for path in paths:
            if not inside(root, path):
                raise _refused(path)

    async def exists(self, path: Path) -> bool:
        return inside(self._root(), path) and await super().exists(path)

    async def is_dir(self, path: Path) -> bool:
        return inside(self._root(), path) and await super().is_dir(path)

    async def is_file(self, path: Path) -> bool:
        return inside(self._root(), path) and await super().is_file(path)

    async def mkdir(self, path: Path, *, parents: bool = False, exist_ok: bool = False) -> None:
        self._check(path)
        await super().mkdir(path, parents=parents, exist_ok=exist_ok)

    async def rmdir(self, path: Path) -> None:
        self._check(path)
        await super().rmdir(path)

    async def unlink(self, path: Path) -> None:
        self._check(path)
        await super().unlink(path)

    async def stat(self, path: Path) -> os.stat_result:
        self._check(path)
        return await super().stat(path)

    async def _open(self, path: Path, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self._check(path)
        return await super()._open(path, *args, **kwargs)

    async def rename(self, source: Path, destination: Path) -> Path:
        self._check(source, destination)
        return await super().rename(source, destination)

    def list(self, path: Path) -> AsyncIterator[Path]:  # type: ignore[override]
        return self._list_inside(path)

    async def _list_inside(self, path: Path) -> AsyncIterator[Path]:
        root = self._root()
        if not inside(root, path):
            raise _refused(path)
        async for entry in super().list(path):
            if inside(root, entry):
                yield entry
