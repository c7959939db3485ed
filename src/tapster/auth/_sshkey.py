"""SSH public-key checker: each user's ``~/.ssh/authorized_keys``, or ``DIR/USER.keys``.

Keys are compared as their wire-format blobs (what the base64 field of an authorized_keys line decodes to), in
constant time; nothing here needs an SSH library. The files are read at each login, so a key added or removed
takes effect at once.

Lines carrying options (``from="..."``, ``command="..."``, ``restrict``, ...) are skipped with a warning: this
checker cannot honour such restrictions, and accepting the key without them would grant more than its owner meant.
A file that others may write to is refused, as OpenSSH's StrictModes does.
"""

from __future__ import annotations

import asyncio
import binascii
import hmac
import logging
import os
import pwd
import re
import stat

from tapster.auth._base import Checker
from tapster.errors import StartupError

__all__ = ["SSHKeyChecker", "parse_authorized_keys"]

logger = logging.getLogger("tapster.auth")

_SAFE_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_reported: set[tuple[str, int, str]] = set()


def _key_blob(kind: str, data: str) -> bytes | None:
    """The decoded blob if ``data`` is base64 of a key whose embedded type is ``kind``."""
    try:
        blob = binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    if len(blob) < 4:
        return None
    size = int.from_bytes(blob[:4], "big")
    return blob if blob[4 : 4 + size] == kind.encode("ascii", "replace") else None


def parse_authorized_keys(text: str, source: str = "authorized_keys") -> list[bytes]:
    """The key blobs listed in an authorized_keys text; lines with options are skipped (a warning names them).

    Args:
        text: the file's contents.
        source: how warnings name the file.
    """
    keys: list[bytes] = []
    for number, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        for index in range(len(tokens) - 1):
            blob = _key_blob(tokens[index], tokens[index + 1])
            if blob is None:
                continue
            if index:
                mark = (source, number, line)
                if mark not in _reported:
                    _reported.add(mark)
                    logger.warning(
                        "%s:%d: key with options %r skipped: the manhole cannot honour key options",
                        source,
                        number,
                        " ".join(tokens[:index]),
                    )
                break
            keys.append(blob)
            break
    return keys


class SSHKeyChecker(Checker):
    """Public keys from ``~USER/.ssh/authorized_keys`` (``--auth sshkey``) or ``DIR/USER.keys`` (``sshkey:DIR``).

    Args:
        directory: where ``USER.keys`` files live; None to use each system user's home directory. With a
            directory, only user names made of letters, digits, ``.``, ``_`` and ``-`` (not starting with ``.``)
            are looked up, so a name cannot reach outside it.

    Raises:
        StartupError: ``directory`` does not exist or is not a directory.
    """

    accepts_keys = True

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = None if directory is None else os.path.abspath(os.fspath(directory))
        if self.directory is not None and not os.path.isdir(self.directory):
            raise StartupError(f"sshkey: {self.directory} is not a directory")
        self.description = "sshkey" if self.directory is None else f"sshkey:{self.directory}"

    def keys_path(self, username: str) -> str | None:
        """The file listing ``username``'s keys, or None for a name that cannot have one."""
        if self.directory is not None:
            if not _SAFE_USER.fullmatch(username):
                return None
            return os.path.join(self.directory, f"{username}.keys")
        try:
            home = pwd.getpwnam(username).pw_dir
        except (KeyError, ValueError):
            return None
        return os.path.join(home, ".ssh", "authorized_keys")

    async def check_key(self, username: str, key: bytes) -> bool:
        path = self.keys_path(username)
        if path is None:
            return False
        keys = await asyncio.to_thread(_read_keys, path)
        found = False
        for candidate in keys:
            found |= hmac.compare_digest(candidate, key)
        return found


def _read_keys(path: str) -> list[bytes]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            info = os.fstat(handle.fileno())
            if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                logger.warning("%s is writable by group or others: its keys are refused", path)
                return []
            return parse_authorized_keys(handle.read(), path)
    except FileNotFoundError:
        return []
    except OSError as exc:
        logger.warning("cannot read %s: %s", path, exc.strerror or exc)
        return []
