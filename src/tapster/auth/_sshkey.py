"""SSH public-key checker: each user's ``~/.ssh/authorized_keys``, or ``DIR/USER.keys``.

Keys are compared as their wire-format blobs (what the base64 field of an authorized_keys line decodes to), in
constant time; nothing here needs an SSH library. The files are read at each login, so a key added or removed
takes effect at once.

Lines carrying options (``from="..."``, ``command="..."``, ``restrict``, ...) are skipped with a warning: this
checker cannot honour such restrictions, and accepting the key without them would grant more than its owner meant.
A file that another user could have written is refused, as OpenSSH's StrictModes does (see
:mod:`tapster.auth._strict`); a symbolic link is refused, not followed.
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

from tapster._safefile import UnsafeFileError, check_private
from tapster.auth._base import Checker
from tapster.auth._strict import check_directory, read_trusted, trusted_uids
from tapster.errors import StartupError

__all__ = ["SSHKeyChecker", "parse_authorized_keys"]

logger = logging.getLogger("tapster.auth")

_SAFE_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_reported: set[tuple[str, int, str]] = set()
_refusals: set[str] = set()


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

    StrictModes (see :mod:`tapster.auth._strict`): a keys file is used only if it is a regular file (a symbolic
    link is refused, never followed), with one link, and it and its directory are owned by root or the user the
    server runs as (or, for ``authorized_keys``, the account it belongs to) and not writable by group or others.
    With ``DIR``, the directory and every ``*.keys`` file in it are checked when the server starts
    (:meth:`verify_files`), and each file again when it is read at a login.

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

    def verify_files(self) -> None:
        """Refuse a keys directory, or a ``*.keys`` file in it, that another user could have written."""
        if self.directory is None:
            return  # each user's authorized_keys is checked when it is read
        trusted = trusted_uids()
        check_directory(self.directory, "SSH key directory", trusted)
        for name in sorted(os.listdir(self.directory)):
            if not name.endswith(".keys"):
                continue
            path = os.path.join(self.directory, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                raise UnsafeFileError(f"refusing SSH keys file {path}: it is a symbolic link")
            if not stat.S_ISREG(info.st_mode):
                raise UnsafeFileError(f"refusing SSH keys file {path}: not a regular file")
            if info.st_nlink > 1:
                raise UnsafeFileError(f"refusing SSH keys file {path}: it has {info.st_nlink} hard links")
            check_private(path, info, what="SSH keys file", trusted_uids=trusted)

    def keys_file(self, username: str) -> tuple[str, frozenset[int]] | None:
        """The file listing ``username``'s keys and the owners it may have, or None for a name without one."""
        if self.directory is not None:
            if not _SAFE_USER.fullmatch(username):
                return None
            return os.path.join(self.directory, f"{username}.keys"), trusted_uids()
        try:
            entry = pwd.getpwnam(username)
        except (KeyError, ValueError):
            return None
        return os.path.join(entry.pw_dir, ".ssh", "authorized_keys"), trusted_uids((entry.pw_uid,))

    def keys_path(self, username: str) -> str | None:
        """The file listing ``username``'s keys, or None for a name that cannot have one."""
        found = self.keys_file(username)
        return None if found is None else found[0]

    async def check_key(self, username: str, key: bytes) -> bool:
        found = self.keys_file(username)
        if found is None:
            return False
        path, trusted = found
        keys = await asyncio.to_thread(_read_keys, path, trusted, home=self.directory is None)
        matched = False
        for candidate in keys:
            matched |= hmac.compare_digest(candidate, key)
        return matched


def _read_keys(path: str, trusted: frozenset[int], *, home: bool) -> list[bytes]:
    """The keys in ``path`` if it passes StrictModes for ``trusted`` owners; else none, and a logged reason."""
    try:
        if home:  # ~/.ssh and the home directory above it must be safe too
            check_directory(os.path.dirname(path), "SSH directory", trusted)
        text, _ = read_trusted(path, "SSH keys file", trusted)
    except FileNotFoundError:
        return []
    except UnsafeFileError as exc:
        if os.path.lexists(path):
            _report(f"{exc}: its keys are refused")
        return []
    except OSError as exc:
        _report(f"cannot read {path}: {exc.strerror or exc}")
        return []
    return parse_authorized_keys(text, path)


def _report(message: str) -> None:
    """Log a refusal once (a login is retried often; the table is bounded, so an attacker cannot grow it)."""
    if message in _refusals:
        return
    if len(_refusals) > 1000:
        _refusals.clear()
    _refusals.add(message)
    logger.warning("%s", message)
