"""Tests for giving up root: resolving users and groups, switching ids, chroot and umask parsing.

Switching ids and chroot change the whole process, so those tests run in a forked child and report back
through a pipe; they need root and are skipped otherwise.
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest

from support import run_in_child
from tapster.errors import StartupError, UsageError
from tapster.runner._privileges import (
    Identity,
    check_can_switch,
    drop_privileges,
    enter_chroot,
    parse_umask,
    resolve_identity,
)


def _entry_or_none() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


NOBODY = _entry_or_none()
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching ids and chroot need root")
needs_nobody = pytest.mark.skipif(NOBODY is None, reason="no user 'nobody'")


def nobody() -> pwd.struct_passwd:
    assert NOBODY is not None
    return NOBODY


def unused_id() -> int:
    """An id with neither a passwd nor a group entry."""
    for candidate in range(54321, 60000):
        try:
            pwd.getpwuid(candidate)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(candidate)
        except KeyError:
            return candidate
    raise AssertionError("no unused id found")


def regains_root() -> bool:
    try:
        os.setuid(0)
    except PermissionError:
        return False
    return True


# --- resolve_identity ---------------------------------------------------------------------------------------


def test_resolve_nothing() -> None:
    """No uid and no gid means no switch."""
    assert resolve_identity(None, None) is None


@needs_nobody
@pytest.mark.parametrize("uid", ["nobody", "NUMBER", "STRING"])
def test_resolve_user_by_name_or_number(uid: str) -> None:
    """A user given by name, number or numeric string resolves to its uid, its primary group and its name."""
    entry = nobody()
    values: dict[str, str | int] = {"nobody": "nobody", "NUMBER": entry.pw_uid, "STRING": str(entry.pw_uid)}
    value = values[uid]
    assert resolve_identity(value, None) == Identity(entry.pw_uid, entry.pw_gid, "nobody", (entry.pw_gid,))


@needs_nobody
def test_resolve_group_by_name_or_number() -> None:
    """A group given by name or number overrides the user's primary group."""
    entry = nobody()
    root_group = grp.getgrgid(0).gr_name
    assert resolve_identity("nobody", root_group) == Identity(
        entry.pw_uid, 0, "nobody", tuple(os.getgrouplist("nobody", 0))
    )
    assert resolve_identity("nobody", 0) == Identity(
        entry.pw_uid, 0, "nobody", tuple(os.getgrouplist("nobody", 0))
    )
    assert resolve_identity("nobody", "0") == Identity(
        entry.pw_uid, 0, "nobody", tuple(os.getgrouplist("nobody", 0))
    )


def test_resolve_group_only_keeps_current_user() -> None:
    """With only a gid, the user stays the current one and no user name is kept for initgroups."""
    assert resolve_identity(None, 0) == Identity(os.getuid(), 0, None)


def test_unknown_user() -> None:
    """An unknown user name is one clear error, not a KeyError traceback."""
    with pytest.raises(StartupError) as info:
        resolve_identity("nosuchuser", None)
    assert str(info.value) == "unknown user 'nosuchuser'"


def test_unknown_group() -> None:
    """An unknown group name is one clear error naming it."""
    with pytest.raises(StartupError) as info:
        resolve_identity(0, "x")
    assert str(info.value) == "unknown group 'x'"
    with pytest.raises(StartupError, match=r"^unknown group 'x'$"):
        resolve_identity(None, "x")


def test_numeric_uid_without_entry_needs_gid() -> None:
    """A uid with no passwd entry has no primary group: a gid must be given, and no name is kept."""
    number = unused_id()
    with pytest.raises(StartupError) as info:
        resolve_identity(number, None)
    assert str(info.value) == f"uid {number} has no entry in the user database: give a group (gid) as well"
    assert resolve_identity(number, number) == Identity(number, number, None)
    assert resolve_identity(str(number), str(number)) == Identity(number, number, None)


@pytest.mark.parametrize(("uid", "gid"), [(-1, None), (2**32 - 1, 0), (0, 2**40)])
def test_out_of_range_ids(uid: int, gid: int | None) -> None:
    """Ids outside uid_t/gid_t are rejected with the offending value."""
    with pytest.raises(StartupError, match=r"^invalid (uid|gid) -?\d+: out of range$"):
        resolve_identity(uid, gid)


# --- check_can_switch and drop_privileges -------------------------------------------------------------------


@needs_root
def test_check_can_switch_as_root() -> None:
    """Root may switch to anyone."""
    check_can_switch(Identity(12345, 12345, None))


@needs_root
@needs_nobody
def test_drop_to_nobody() -> None:
    """A full drop sets real, effective and saved ids and the user's groups, and root cannot be regained."""
    entry = nobody()

    def child() -> object:
        identity = resolve_identity("nobody", None)
        assert identity is not None
        drop_privileges(identity)
        return (os.getresuid(), os.getresgid(), sorted(os.getgroups()), regains_root())

    expected_groups = sorted({entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem})
    result = run_in_child(child)
    assert isinstance(result, tuple)
    uids, gids, groups, regained = result
    assert uids == (entry.pw_uid,) * 3
    assert gids == (entry.pw_gid,) * 3
    assert groups == expected_groups
    assert 0 not in groups
    assert regained is False


@needs_root
def test_drop_without_user_name_sets_only_the_gid_as_group() -> None:
    """A uid without passwd entry gets exactly its gid as group list."""
    number = unused_id()

    def child() -> object:
        drop_privileges(Identity(number, number, None))
        return (os.getuid(), os.getgid(), os.getgroups(), regains_root())

    assert run_in_child(child) == (number, number, [number], False)


@needs_root
def test_drop_group_only_as_root() -> None:
    """Switching only the group keeps uid 0 and is not mistaken for a failed drop."""
    number = unused_id()

    def child() -> object:
        identity = resolve_identity(None, number)
        assert identity is not None
        drop_privileges(identity)
        return (os.getuid(), os.getresgid(), os.getgroups())

    assert run_in_child(child) == (0, (number,) * 3, [number])


@needs_root
@needs_nobody
def test_drop_euid_only_can_switch_back() -> None:
    """With euid_only the real uid stays 0, so the process can become root again."""
    entry = nobody()

    def child() -> object:
        drop_privileges(Identity(entry.pw_uid, entry.pw_gid, "nobody"), euid_only=True)
        during = (os.getuid(), os.geteuid(), os.getgid(), os.getegid(), 0 in os.getgroups())
        os.seteuid(0)
        return (during, os.geteuid())

    assert run_in_child(child) == ((0, entry.pw_uid, 0, entry.pw_gid, False), 0)


@needs_root
def test_drop_refuses_when_root_can_be_regained(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the uid switch silently did nothing, the check that root is gone stops the start."""
    number = unused_id()

    def child() -> object:
        monkeypatch.setattr(os, "setuid", lambda uid: None)
        drop_privileges(Identity(number, number, None))
        return None

    with pytest.raises(StartupError) as info:
        run_in_child(child)
    assert str(info.value) == f"switched to uid {number} but root can be regained: refusing to run"


@needs_root
@needs_nobody
def test_not_root_cannot_switch() -> None:
    """Without root, switching to another user or group fails early with a message naming the target."""
    entry = nobody()

    def child() -> object:
        drop_privileges(Identity(entry.pw_uid, entry.pw_gid, "nobody"))
        messages = []
        for identity in (Identity(0, 0, "root"), Identity(entry.pw_uid, 0, "nobody")):
            try:
                check_can_switch(identity)
            except StartupError as exc:
                messages.append(str(exc))
        try:
            drop_privileges(Identity(0, 0, "root"))
        except StartupError as exc:
            messages.append(str(exc))
        # Already running as the target: nothing to do, and no error.
        check_can_switch(Identity(entry.pw_uid, entry.pw_gid, "nobody"))
        drop_privileges(Identity(entry.pw_uid, entry.pw_gid, "nobody"))
        return messages

    root_group = grp.getgrgid(0).gr_name
    assert run_in_child(child) == [
        "cannot switch to user root (uid 0): tapster is not running as root",
        f"cannot switch to group {root_group} (gid 0): tapster is not running as root",
        "cannot switch to user root (uid 0): tapster is not running as root",
    ]


@needs_root
@needs_nobody
def test_not_root_message_names_user_without_user_name() -> None:
    """The not-root message finds the user name from the uid when the identity carries none."""
    entry = nobody()

    def child() -> object:
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
        check_can_switch(Identity(0, 0, None))
        return None

    with pytest.raises(
        StartupError, match=r"^cannot switch to user root \(uid 0\): tapster is not running as root$"
    ):
        run_in_child(child)


# --- enter_chroot -------------------------------------------------------------------------------------------


@needs_root
def test_chroot(tmp_path: Path) -> None:
    """After enter_chroot the directory is "/" and the working directory is inside it."""
    (tmp_path / "marker").write_text("here")

    def child() -> object:
        enter_chroot(str(tmp_path))
        return (os.path.exists("/marker"), os.getcwd(), os.path.exists(str(tmp_path)))

    assert run_in_child(child) == (True, "/", False)


def test_chroot_missing_directory(tmp_path: Path) -> None:
    """A missing chroot directory is one clear error naming it."""
    missing = str(tmp_path / "missing")

    def child() -> object:
        enter_chroot(missing)
        return None

    with pytest.raises(StartupError) as info:
        run_in_child(child)
    assert str(info.value) == f"cannot chroot to {missing}: No such file or directory"


def test_chroot_not_a_directory(tmp_path: Path) -> None:
    """A file given as chroot directory is rejected with the system's reason."""
    target = tmp_path / "file"
    target.write_text("")

    def child() -> object:
        enter_chroot(str(target))
        return None

    with pytest.raises(StartupError, match=r"^cannot chroot to .*/file: Not a directory$"):
        run_in_child(child)


@needs_root
@needs_nobody
def test_chroot_not_root() -> None:
    """Without root, chroot fails with a message saying so."""
    entry = nobody()

    def child() -> object:
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
        enter_chroot("/")
        return None

    with pytest.raises(StartupError) as info:
        run_in_child(child)
    assert str(info.value) == "cannot chroot to /: tapster is not running as root"


# --- parse_umask --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("077", 0o077),
        ("022", 0o022),
        ("0022", 0o022),
        ("0o022", 0o022),
        ("0O027", 0o027),
        ("0", 0),
        ("777", 0o777),
        ("7", 0o7),
        (" 027 ", 0o027),
        ("0000777", 0o777),
    ],
)
def test_parse_umask_valid(text: str, value: int) -> None:
    """Octal umasks with or without 0 / 0o prefixes are read as octal."""
    assert parse_umask(text) == value


@pytest.mark.parametrize(
    "text", ["", "8", "089", "0x22", "1000", "0o", "-022", "22a", "0o0o22", "٠٢٢", "abc"]
)
def test_parse_umask_invalid(text: str) -> None:
    """Anything not an octal number up to 0o777 is a usage error quoting the text."""
    with pytest.raises(UsageError) as info:
        parse_umask(text)
    assert str(info.value) == f"invalid umask {text!r}: expected an octal number such as 022"
