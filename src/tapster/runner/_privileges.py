"""Giving up root: resolving ``--uid``/``--gid``, switching to them, chroot and the umask.

A server started as root binds its privileged ports first and then runs as an ordinary user. Names that do not
exist, a switch that is impossible without root, and a switch that could be undone all stop the start with one
line naming the user, group or directory, where twistd lets a ``KeyError`` traceback escape.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from typing import Final

from tapster._record import Record
from tapster.errors import StartupError, UsageError

__all__ = [
    "Identity",
    "check_can_switch",
    "describe_user",
    "drop_privileges",
    "enter_chroot",
    "may_create_files_in",
    "parse_umask",
    "resolve_identity",
]

# uid_t and gid_t are 32-bit; the all-ones value means "unchanged" to the set*id calls, so it is not an id.
_MAX_ID = 2**32 - 2

_UMASK = re.compile(r"(?:0[oO])?([0-7]+)")


class Identity(Record):
    """The user and group a server runs as; immutable, compared by value.

    ``user_name`` is the passwd name used to load the supplementary groups; it is ``None`` for a numeric uid
    without a passwd entry, or when only a group was asked for, and the group list is then just ``gid``.
    """

    __slots__ = ("gid", "groups", "uid", "user_name")

    uid: Final[int]
    gid: Final[int]
    user_name: Final[str | None]
    groups: Final[tuple[int, ...] | None]

    def __init__(
        self, uid: int, gid: int, user_name: str | None, groups: tuple[int, ...] | None = None
    ) -> None:
        self.uid = uid
        self.gid = gid
        self.user_name = user_name
        # The supplementary groups, read from the group database when resolving: after a --chroot the jail's
        # /etc/group (if any) is not the one the user is defined in. None: look them up when switching.
        self.groups = groups


def resolve_identity(uid: str | int | None, gid: str | int | None) -> Identity | None:
    """Turn ``--uid``/``--gid`` values (names or numbers) into ids, or ``None`` when neither is given.

    With only a user, the group is that user's primary group. With only a group, the user stays the current
    one.

    Raises:
        StartupError: The user or group does not exist ("unknown user 'nosuchuser'"), an id is out of range,
            or a numeric uid has no passwd entry to take a group from and no group was given.
    """
    if uid is None:
        return None if gid is None else Identity(os.getuid(), _resolve_group(gid), None)
    user_id, entry = _resolve_user(uid)
    if gid is not None:
        group_id = _resolve_group(gid)
    elif entry is not None:
        group_id = entry.pw_gid
    else:
        raise StartupError(f"uid {user_id} has no entry in the user database: give a group (gid) as well")
    if entry is None:
        return Identity(user_id, group_id, None)
    return Identity(user_id, group_id, entry.pw_name, tuple(os.getgrouplist(entry.pw_name, group_id)))


def check_can_switch(identity: Identity) -> None:
    """Fail early when switching to ``identity`` needs root and this process is not root.

    Raises:
        StartupError: "cannot switch to user nobody (uid 65534): tapster is not running as root".
    """
    if os.geteuid() == 0:
        return
    if identity.uid != os.geteuid():
        raise StartupError(f"cannot switch to {_describe_user(identity)}: tapster is not running as root")
    if identity.gid != os.getegid():
        raise StartupError(f"cannot switch to {_describe_group(identity)}: tapster is not running as root")


def drop_privileges(identity: Identity, *, euid_only: bool = False) -> None:
    """Switch this process to ``identity``: supplementary groups, then group, then user.

    A process that is not root and already runs as ``identity`` is left as it is. With ``euid_only`` only the
    effective ids change (twistd's ``--euid``), so the process keeps its real uid and can switch back;
    otherwise real, effective and saved ids all change, and the switch is checked to be irreversible.

    Raises:
        StartupError: The switch is impossible (not root) or failed, or root could be regained afterwards.
    """
    check_can_switch(identity)
    if os.geteuid() != 0:
        return  # already running as identity: nothing to change, and setgroups would need root
    try:
        if identity.groups is not None:
            os.setgroups(list(identity.groups))
        elif identity.user_name is not None:
            os.initgroups(identity.user_name, identity.gid)
        else:
            os.setgroups([identity.gid])
        if euid_only:
            os.setegid(identity.gid)
            os.seteuid(identity.uid)
        else:
            os.setgid(identity.gid)
            os.setuid(identity.uid)
    except OSError as exc:
        raise StartupError(f"cannot switch to {_describe_user(identity)}: {exc.strerror}") from exc
    if euid_only or identity.uid == 0:
        return
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise StartupError(f"switched to {_describe_user(identity)} but root can be regained: refusing to run")


def may_create_files_in(identity: Identity, directory: str) -> bool:
    """Whether ``identity`` can reach ``directory`` and create and remove files in it, by the mode bits.

    Every ancestor needs search permission and the directory itself write and search permission; access
    control lists are not read (they can only be stricter in what they show here, rarely looser).
    """
    if identity.uid == 0:
        return True
    groups = {identity.gid, *(identity.groups or ())}
    path = os.path.abspath(directory)
    parts = [path]
    while parts[-1] != os.path.dirname(parts[-1]):
        parts.append(os.path.dirname(parts[-1]))
    for i, part in enumerate(parts):
        try:
            info = os.stat(part)
        except OSError:
            return False
        needed = 0o3 if i == 0 else 0o1  # write and search for the directory itself, search for ancestors
        if info.st_uid == identity.uid:
            bits = (info.st_mode >> 6) & 0o7
        elif info.st_gid in groups:
            bits = (info.st_mode >> 3) & 0o7
        else:
            bits = info.st_mode & 0o7
        if bits & needed != needed:
            return False
    return True


def describe_user(identity: Identity) -> str:
    """``user nobody (uid 65534)``, or ``uid N`` without a name."""
    return _describe_user(identity)


def enter_chroot(path: str) -> None:
    """Make ``path`` the root directory of this process and move into it.

    Raises:
        StartupError: The directory does not exist or is not one, or the process is not root.
    """
    try:
        os.chroot(path)
    except PermissionError as exc:
        if os.geteuid() != 0:
            raise StartupError(f"cannot chroot to {path}: tapster is not running as root") from exc
        raise StartupError(f"cannot chroot to {path}: {exc.strerror}") from exc
    except OSError as exc:
        raise StartupError(f"cannot chroot to {path}: {exc.strerror}") from exc
    os.chdir("/")


def parse_umask(text: str) -> int:
    """Read a ``--umask`` value as octal: ``"077"``, ``"0022"`` and ``"0o022"`` are all accepted.

    Raises:
        UsageError: The text is empty, not octal, or above 0o777.
    """
    match = _UMASK.fullmatch(text.strip())
    value = int(match.group(1), 8) if match else -1
    if not 0 <= value <= 0o777:
        raise UsageError(f"invalid umask {text!r}: expected an octal number such as 022")
    return value


def _resolve_user(value: str | int) -> tuple[int, pwd.struct_passwd | None]:
    """The uid and passwd entry for a user name or number; a number may lack an entry."""
    number = _as_number(value, "uid")
    if number is None:
        try:
            entry = pwd.getpwnam(str(value))
        except KeyError:
            raise StartupError(f"unknown user {str(value)!r}") from None
        return entry.pw_uid, entry
    try:
        return number, pwd.getpwuid(number)
    except KeyError:
        return number, None


def _resolve_group(value: str | int) -> int:
    """The gid for a group name or number; a number needs no group entry."""
    number = _as_number(value, "gid")
    if number is not None:
        return number
    try:
        return grp.getgrnam(str(value)).gr_gid
    except KeyError:
        raise StartupError(f"unknown group {str(value)!r}") from None


def _as_number(value: str | int, kind: str) -> int | None:
    """``value`` as an id if it is numeric (an int or a string of digits), ``None`` if it is a name."""
    if isinstance(value, int):
        number = value
    elif value.isascii() and value.isdigit():
        number = int(value)
    else:
        return None
    if not 0 <= number <= _MAX_ID:
        raise StartupError(f"invalid {kind} {value!r}: out of range")
    return number


def _describe_user(identity: Identity) -> str:
    name = identity.user_name if identity.user_name is not None else _lookup_user_name(identity.uid)
    return f"user {name} (uid {identity.uid})" if name is not None else f"uid {identity.uid}"


def _describe_group(identity: Identity) -> str:
    try:
        return f"group {grp.getgrgid(identity.gid).gr_name} (gid {identity.gid})"
    except KeyError:
        return f"gid {identity.gid}"


def _lookup_user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
