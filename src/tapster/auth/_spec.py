"""The ``--auth TYPE:ARGS`` language: one string names a checker type and its arguments.

Error messages never repeat a ``memory:`` spec, because it carries passwords.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tapster.auth._base import Checker
from tapster.auth._checkers import AnonymousChecker, FileChecker, InMemoryChecker, PasswdChecker, UnixChecker
from tapster.auth._sshkey import SSHKeyChecker
from tapster.errors import StartupError, UsageError

__all__ = ["AuthType", "auth_types", "format_auth_type", "format_auth_types", "parse_auth"]


@dataclass(frozen=True)
class AuthType:
    """One checker type of the ``--auth`` language.

    Attributes:
        name: the TYPE word.
        syntax: how it is written, e.g. ``file:PATH``.
        summary: one line for ``--help-auth``.
        notes: the longer text of ``--help-auth-type``.
        make: builds the checker from the text after ``TYPE:`` (None when there was no colon); raises
            ValueError for malformed arguments.
    """

    name: str
    syntax: str
    summary: str
    notes: str
    make: Callable[[str | None], Checker]


def _split_escaped(text: str) -> list[str]:
    r"""Split on ``:``; a backslash makes the next character literal (``\:`` is a colon in a password)."""
    fields: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            current.append(next(chars, "\\"))
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def _make_memory(args: str | None) -> Checker:
    fields = _split_escaped(args or "")
    if args is None or len(fields) % 2:
        raise ValueError("expected USER:PASS pairs")
    users: dict[str, str] = {}
    for user, password in zip(fields[::2], fields[1::2], strict=True):
        if not user:
            raise ValueError("empty user name")
        if user in users:
            raise ValueError(f"user {user!r} is given twice")
        users[user] = password
    return InMemoryChecker(users)


def _needs_path(args: str | None) -> str:
    if not args:
        raise ValueError("expected a PATH")
    return args


def _make_file(args: str | None) -> Checker:
    return FileChecker(_needs_path(args))


def _make_passwd(args: str | None) -> Checker:
    return PasswdChecker(_needs_path(args))


def _make_unix(args: str | None) -> Checker:
    if args is not None:
        raise ValueError("takes no arguments")
    return UnixChecker()


def _make_sshkey(args: str | None) -> Checker:
    if args == "":
        raise ValueError("expected a DIR after the colon")
    return SSHKeyChecker(args)


def _make_anonymous(args: str | None) -> Checker:
    if args is not None:
        raise ValueError("takes no arguments")
    return AnonymousChecker()


_HASHES = "bcrypt ($2b$), argon2 ($argon2id$), sha512-crypt ($6$) or sha256-crypt ($5$) hash, or plaintext"

_TYPES: dict[str, AuthType] = {
    spec.name: spec
    for spec in (
        AuthType(
            "anonymous",
            "anonymous",
            "let everyone in without a password (only on a socket you trust)",
            "Every user name is accepted without a password or key. Over SSH no authentication is asked for at\n"
            "all; over telnet there is no login prompt. Use it only on a loopback or unix socket that nobody\n"
            "else can reach: whoever connects runs Python code inside the server. The manhole refuses it on\n"
            "any other address unless given --allow-remote-anonymous.",
            _make_anonymous,
        ),
        AuthType(
            "file",
            "file:PATH",
            "user:password lines in PATH, passwords hashed or plaintext",
            "PATH holds one user:password per line; lines starting with # are comments. The password is\n"
            f"everything after the first colon: a {_HASHES}.\n"
            "Make one with: python -c \"import bcrypt; print(bcrypt.hashpw(b'secret', bcrypt.gensalt()).decode())\"\n"
            "The file is read at start-up (a missing file or a bad line is an error naming it) and again when it\n"
            "changes; while it is unreadable or malformed nobody can log in. Keep it mode 0600. It and its\n"
            "directory must be owned by root or the server's user and not writable by group or others, and it\n"
            "must not be a symbolic link (OpenSSH's StrictModes), or the server refuses to start.",
            _make_file,
        ),
        AuthType(
            "memory",
            "memory:USER:PASS[:USER:PASS...]",
            "users and plaintext passwords given on the command line",
            "Each USER:PASS pair adds a user; write \\: for a colon inside a name or password. Passwords given\n"
            "this way are visible to anyone who can list the processes of this machine (ps): use it for tests\n"
            "and private machines, and file:PATH otherwise. Saved state holds salted scrypt hashes of them,\n"
            "never the passwords.",
            _make_memory,
        ),
        AuthType(
            "passwd",
            "passwd:PATH",
            "a passwd-style file: name:hash[:...] with a crypt hash or plaintext",
            "PATH is colon-separated like /etc/passwd; only the first two fields are read. The second is a\n"
            f"{_HASHES}.\n"
            "A second field of x, *, empty, or starting with ! or * never matches, so /etc/passwd's x\n"
            "placeholders let nobody in: for system accounts use --auth unix. Re-read when it changes.",
            _make_passwd,
        ),
        AuthType(
            "sshkey",
            "sshkey[:DIR]",
            "SSH public keys: ~USER/.ssh/authorized_keys, or DIR/USER.keys",
            "Without DIR, a user's keys are those in the authorized_keys file of the system account of that name.\n"
            "With DIR, they are in DIR/USER.keys (user names of letters, digits, '.', '_' and '-' only). The\n"
            "files use the authorized_keys format and are read at each login. Lines with options (from=,\n"
            "command=, restrict, ...) are skipped with a warning: the manhole cannot honour them. Keys files and\n"
            "their directories must be owned by root or the server's user (or the account, for authorized_keys)\n"
            "and not writable by group or others; symbolic links are refused (OpenSSH's StrictModes). DIR and its\n"
            "*.keys files are checked at start. Keys work over SSH only, not telnet.",
            _make_sshkey,
        ),
        AuthType(
            "unix",
            "unix",
            "system accounts, through /etc/shadow (needs root or the shadow group)",
            "Passwords are checked against /etc/shadow, read when the checker is made (before privileges are\n"
            "dropped) and again when it changes and is still readable. Locked, password-less and expired\n"
            "accounts never match. sha512-crypt and sha256-crypt are verified through the crypt module or\n"
            "passlib; yescrypt ($y$, Debian's default) only through Python's crypt module and the C library, so\n"
            "on a Python without the crypt module (3.13+) such accounts are named in a warning and cannot log in.\n"
            "If /etc/shadow is not readable, --auth unix is refused at start-up.",
            _make_unix,
        ),
    )
}


def auth_types() -> dict[str, AuthType]:
    """The checker types of the ``--auth`` language, by name."""
    return dict(_TYPES)


def _valid() -> str:
    return ", ".join(sorted(_TYPES))


def parse_auth(spec: str) -> Checker:
    """Build the checker a ``TYPE:ARGS`` string describes.

    Raises:
        UsageError: the type is missing or unknown (the message lists the valid types), its arguments are
            malformed (the message shows its syntax), or its file or directory cannot be used (named).
    """
    kind, colon, args = spec.partition(":")
    name = kind.strip().lower()
    if not name:
        raise UsageError(f"--auth {spec!r}: expected TYPE[:ARGS] (valid types: {_valid()})")
    entry = _TYPES.get(name)
    if entry is None:
        raise UsageError(f"--auth {kind!r}: unknown checker type (valid types: {_valid()})")
    shown = f"{name}:..." if name == "memory" else spec
    try:
        return entry.make(args if colon else None)
    except StartupError as exc:
        raise UsageError(f"--auth {shown}: {exc}") from None
    except ValueError as exc:
        raise UsageError(
            f"--auth {shown}: {exc} (syntax: {entry.syntax}; see --help-auth-type {name})"
        ) from None


def format_auth_types() -> str:
    """The ``--help-auth`` text: each type with its syntax and one line."""
    width = max(len(spec.syntax) for spec in _TYPES.values())
    lines = [
        "Checker types for --auth TYPE:ARGS (repeatable; a login is accepted when any checker accepts it):",
        "",
    ]
    for spec in sorted(_TYPES.values(), key=lambda s: s.name):
        lines.append(f"  {spec.syntax.ljust(width)}  {spec.summary}")
    lines += ["", "Details: --help-auth-type TYPE"]
    return "\n".join(lines) + "\n"


def format_auth_type(name: str) -> str:
    """The ``--help-auth-type TYPE`` text.

    Raises:
        UsageError: ``name`` is not a checker type (the message lists the valid ones).
    """
    entry = _TYPES.get(name.strip().lower())
    if entry is None:
        raise UsageError(f"--help-auth-type {name!r}: unknown checker type (valid types: {_valid()})")
    return (
        f"Usage: --auth {entry.syntax}\n\n{entry.summary[:1].upper()}{entry.summary[1:]}.\n\n{entry.notes}\n"
    )
