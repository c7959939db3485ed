"""Password checkers: in memory, a ``user:password`` file, a passwd-style file, the system's /etc/shadow, anyone.

Stored passwords may be hashes (see :mod:`tapster.auth._hashes`) or plaintext. Plaintext is compared with
:func:`hmac.compare_digest`; hashes are verified in a worker thread so the event loop keeps serving. An unknown
user costs a comparison too, so the answer's timing says as little as possible about which users exist.

File checkers follow OpenSSH's StrictModes (see :mod:`tapster.auth._strict`): a file another user could have
written is refused, when the server starts (:meth:`Checker.verify_files`) and at every later read. File checkers
read their file when made (a missing or malformed file is reported then, naming the path and line)
and read it again when it changes, so users can be added without a restart. A file that becomes unreadable or
malformed lets nobody in until it is fixed, except /etc/shadow, whose last good copy is kept: a server that drops
privileges after start-up can no longer read it, and that is expected.
"""

from __future__ import annotations

import asyncio
import datetime
import hmac
import logging
import os
from collections.abc import Callable, Mapping
from typing import ClassVar

from tapster._safefile import UnsafeFileError, check_private
from tapster.auth._base import Checker
from tapster.auth._hashes import UnsupportedHash, check_supported, hash_scheme, scrypt_hash, verify
from tapster.auth._strict import open_file, read_trusted, trusted_uids
from tapster.errors import StartupError

__all__ = ["AnonymousChecker", "FileChecker", "InMemoryChecker", "PasswdChecker", "UnixChecker"]

logger = logging.getLogger("tapster.auth")

_DUMMY = b"tapster-no-such-user-padding-value"
_LOCKED_MARKERS = frozenset({"", "x", "*"})  # passwd/shadow fields that mean "no password here"

Table = dict[str, str]


async def _verify(stored: str | None, password: str) -> bool:
    """Check ``password`` against ``stored`` (None: unknown user), hashes in a thread."""
    if stored is None:
        hmac.compare_digest(_DUMMY, password.encode("utf-8"))
        return False
    try:
        plaintext = hash_scheme(stored) is None
    except UnsupportedHash:
        return False
    if plaintext:
        return verify(stored, password)
    return await asyncio.to_thread(verify, stored, password)


class InMemoryChecker(Checker):
    """Users and passwords given directly (``--auth memory:USER:PASS``); for tests and quick setups.

    A password may be plaintext or a hash (see :mod:`tapster.auth._hashes`). Plaintext passwords are never
    pickled: saved state (``NAME-shutdown.tap``) holds a salted scrypt hash of each instead, made when the state
    is first saved, so the loaded server accepts the same passwords without the file revealing them.

    Args:
        users: user name -> password (plaintext or hash).
    """

    accepts_passwords = True

    def __init__(self, users: Mapping[str, str]) -> None:
        if not users:
            raise ValueError("InMemoryChecker needs at least one user")
        for name in users:
            if not name:
                raise ValueError("InMemoryChecker: empty user name")
        self.users = dict(users)
        self.description = "memory:" + ",".join(sorted(self.users))
        self._saved: tuple[dict[str, str], dict[str, str]] | None = None  # (users, their hashes) last pickled

    def __getstate__(self) -> dict[str, object]:
        """The state to pickle: every plaintext password replaced by a salted scrypt hash (made once)."""
        if self._saved is None or self._saved[0] != self.users:
            hashed: dict[str, str] = {}
            for name, stored in self.users.items():
                try:
                    plaintext = hash_scheme(stored) is None
                except UnsupportedHash:
                    continue  # a value that can never match: nothing to keep, and it must not leak either
                hashed[name] = scrypt_hash(stored) if plaintext else stored
            self._saved = (dict(self.users), hashed)
        return {"users": dict(self._saved[1]), "description": self.description, "_saved": None}

    async def check_password(self, username: str, password: str) -> bool:
        return await _verify(self.users.get(username), password)


class _WatchedFile:
    """A file parsed into a table, parsed again when its size, mtime or inode changes.

    The first read (when the checker is made, maybe as root before privileges are dropped) refuses symbolic
    links, non-regular files and hard-linked files but not owners: the user the server will run as is not known
    yet. :meth:`verify` applies the whole of StrictModes to that read once the server runs as its final user,
    and every later read applies it before parsing a byte.
    """

    def __init__(
        self, path: str, parse: Callable[[str, str], Table], *, what: str, keep_on_error: bool = False
    ) -> None:
        self.path = path
        self.what = what
        self._parse = parse
        self._keep_on_error = keep_on_error
        self._identity: tuple[int, int, int] | None = None
        self._info: os.stat_result | None = None
        self._verified = False
        self._reported: str | None = None
        self.table: Table = {}
        try:
            text, info = open_file(self.path, what)
            table = self._parse(self.path, text)
        except UnsafeFileError:
            raise
        except (OSError, ValueError) as exc:
            raise StartupError(_describe(self.path, exc)) from exc
        self._accept(table, info)

    def _accept(self, table: Table, info: os.stat_result) -> None:
        self.table = table
        self._info = info
        self._identity = (info.st_ino, info.st_size, info.st_mtime_ns)
        self._reported = None

    def verify(self) -> None:
        """Apply StrictModes, for the user the server runs as now, to the copy read at start-up.

        Raises:
            UnsafeFileError: the file or its directory could have been written by another user.
        """
        if self._info is not None:
            check_private(self.path, self._info, what=self.what, trusted_uids=trusted_uids())
        self._verified = True

    def _reload(self) -> None:
        try:
            text, info = read_trusted(self.path, self.what, trusted_uids())
            table = self._parse(self.path, text)
        except UnsafeFileError as exc:
            self._fail(str(exc), keep=False)
            return
        except (OSError, ValueError) as exc:
            self._fail(_describe(self.path, exc), keep=self._keep_on_error)
            return
        self._accept(table, info)
        self._verified = True

    def _fail(self, message: str, *, keep: bool) -> None:
        if not keep:
            self.table = {}
            self._identity = None
            self._info = None
        if message != self._reported:
            self._reported = message
            if keep:
                logger.debug("%s; using the copy read earlier", message)
            else:
                logger.error("%s; refusing every login until it is fixed", message)

    def current(self) -> Table:
        """The table, read again first if the file changed; empty while the file fails StrictModes."""
        if not self._verified:
            try:
                self.verify()
            except UnsafeFileError as exc:
                self._fail(str(exc), keep=False)
                return self.table
        try:
            info = os.stat(self.path)
            identity: tuple[int, int, int] | None = (info.st_ino, info.st_size, info.st_mtime_ns)
        except OSError:
            identity = None
        if identity is None or identity != self._identity:
            self._reload()
        return self.table


def _describe(path: str, exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read {path}: {exc.strerror.lower()}"
    return str(exc)


def _parse_user_file(path: str, text: str) -> Table:
    table: Table = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user:
            raise ValueError(f"{path}:{number}: expected user:password")
        _add(table, path, number, user, password)
    return table


def _add(table: Table, path: str, number: int, user: str, stored: str) -> None:
    if user in table:
        raise ValueError(f"{path}:{number}: user {user!r} is listed twice")
    try:
        check_supported(stored)
    except UnsupportedHash as exc:
        raise ValueError(f"{path}:{number}: user {user!r}: {exc}") from None
    table[user] = stored


class _PasswordFileChecker(Checker):
    """A table of user -> stored password read from a file, re-read when the file changes."""

    accepts_passwords = True
    _type: ClassVar[str]

    @staticmethod
    def _parse(path: str, text: str) -> Table:
        raise NotImplementedError

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(
            os.fspath(path)
        )  # the server may change directory (--rundir) before a re-read
        self.description = f"{self._type}:{self.path}"
        self._file = _WatchedFile(self.path, type(self)._parse, what="password file")

    def verify_files(self) -> None:
        self._file.verify()

    async def check_password(self, username: str, password: str) -> bool:
        return await _verify(self._file.current().get(username), password)


class FileChecker(_PasswordFileChecker):
    """A file of ``user:password`` lines (``--auth file:PATH``); ``#`` starts a comment line.

    The password is everything after the first colon: a bcrypt, argon2, sha512-crypt or sha256-crypt hash, or
    plaintext. Keep the file private (mode 0600): plaintext passwords in it are readable by whoever can read it.

    Raises:
        StartupError: the file cannot be read, or a line is malformed (the message names path and line).
    """

    _type = "file"
    _parse = staticmethod(_parse_user_file)


def _locked(field: str) -> bool:
    return field in _LOCKED_MARKERS or field.startswith(("!", "*"))


def _parse_passwd(path: str, text: str) -> Table:
    table: Table = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) < 2 or not fields[0]:
            raise ValueError(f"{path}:{number}: expected name:password[:...] (passwd format)")
        if _locked(fields[1]):
            continue
        _add(table, path, number, fields[0], fields[1])
    return table


class PasswdChecker(_PasswordFileChecker):
    """A passwd-style file (``--auth passwd:PATH``): colon-separated fields, the second a crypt hash or plaintext.

    Only the first two fields are read. A second field of ``x``, ``*``, empty, or starting with ``!`` or ``*``
    means "no password here" and never matches: in particular ``/etc/passwd``'s ``x`` placeholders do not let
    anyone in (for system accounts, use :class:`UnixChecker`).

    Raises:
        StartupError: the file cannot be read, or a line is malformed (the message names path and line).
    """

    _type = "passwd"
    _parse = staticmethod(_parse_passwd)


def _parse_shadow(path: str, text: str) -> Table:
    table: Table = {}
    today = (datetime.date.today() - datetime.date(1970, 1, 1)).days
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 2 or not fields[0] or _locked(fields[1]):
            continue
        if len(fields) > 7 and fields[7].strip().isdigit() and int(fields[7]) <= today:
            continue  # the account has expired
        try:
            check_supported(fields[1])
        except UnsupportedHash as exc:
            logger.warning("unix: %s: user %r cannot log in: %s", path, fields[0], exc)
            continue
        table[fields[0]] = fields[1]
    return table


class UnixChecker(Checker):
    """System accounts, through the password hashes in /etc/shadow (``--auth unix``).

    Locked accounts (``!``/``*``), accounts with no password and expired accounts never match. An account whose
    hash cannot be verified here (yescrypt on a Python without the :mod:`crypt` module) is named in a warning at
    start-up and cannot log in.

    Args:
        shadow: the shadow file to read.

    Raises:
        StartupError: the file cannot be read (reading /etc/shadow needs root or the shadow group).
    """

    accepts_passwords = True

    def __init__(self, shadow: str = "/etc/shadow") -> None:
        self.path = shadow
        self.description = "unix" if shadow == "/etc/shadow" else f"unix:{shadow}"
        try:
            self._file = _WatchedFile(shadow, _parse_shadow, what="shadow file", keep_on_error=True)
        except StartupError as exc:
            if isinstance(exc.__cause__, PermissionError):
                raise StartupError(
                    f"unix: cannot read {shadow}: permission denied (it needs root or the shadow group; "
                    "use file:PATH or passwd:PATH otherwise)"
                ) from exc
            raise

    def verify_files(self) -> None:
        self._file.verify()

    async def check_password(self, username: str, password: str) -> bool:
        return await _verify(self._file.current().get(username), password)


class AnonymousChecker(Checker):
    """Lets everyone in without a password (``--auth anonymous``). Only for a manhole on a trusted socket."""

    accepts_anyone = True
    description = "anonymous"

    async def check_password(self, username: str, password: str) -> bool:
        return True

    async def check_key(self, username: str, key: bytes) -> bool:
        return True
