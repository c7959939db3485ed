"""Tests for the credential checkers: memory, file, passwd, unix (a shadow file), anonymous and sshkey."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest

from tapster._safefile import UnsafeFileError
from tapster.auth import (
    AnonymousChecker,
    FileChecker,
    InMemoryChecker,
    PasswdChecker,
    SSHKeyChecker,
    UnixChecker,
    parse_authorized_keys,
)
from tapster.errors import StartupError


def check(checker, user: str, password: str) -> bool:
    return asyncio.run(checker.check_password(user, password))


def check_key(checker, user: str, key: bytes) -> bool:
    return asyncio.run(checker.check_key(user, key))


def bcrypt_hash(password: str) -> str:
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def test_memory_checker():
    """memory accepts each user's own password and nothing else, unknown users included."""
    checker = InMemoryChecker({"admin": "secret", "bob": "pw"})
    assert check(checker, "admin", "secret")
    assert check(checker, "bob", "pw")
    assert not check(checker, "admin", "pw")
    assert not check(checker, "nobody", "secret")
    assert checker.accepts_passwords and not checker.accepts_keys


def test_file_checker_plaintext_and_hashes(tmp_path: Path):
    """file: lines are user:password, comments skipped; plaintext (colons allowed) and bcrypt both work."""
    users = tmp_path / "users"
    users.write_text(f"# admins\n\nadmin:{bcrypt_hash('s3cret')}\nbob:pa:ss\n")
    checker = FileChecker(users)
    assert check(checker, "admin", "s3cret")
    assert not check(checker, "admin", "wrong")
    assert check(checker, "bob", "pa:ss")
    assert not check(checker, "# admins", "")


def test_file_checker_rereads_a_changed_file(tmp_path: Path):
    """Editing the file adds and removes users without a restart."""
    users = tmp_path / "users"
    users.write_text("admin:one\n")
    checker = FileChecker(users)
    assert check(checker, "admin", "one")
    users.write_text("admin:two\ncarol:three\n")
    assert not check(checker, "admin", "one")
    assert check(checker, "admin", "two")
    assert check(checker, "carol", "three")


def test_file_checker_refuses_everyone_while_broken(tmp_path: Path, caplog):
    """A file that becomes malformed or disappears lets nobody in (logged), until it is fixed."""
    users = tmp_path / "users"
    users.write_text("admin:one\n")
    checker = FileChecker(users)
    users.write_text("admin:one\nbroken line\n")
    assert not check(checker, "admin", "one")
    assert "users:2: expected user:password" in caplog.text
    users.unlink()
    assert not check(checker, "admin", "one")
    users.write_text("admin:one\n")
    assert check(checker, "admin", "one")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("admin\n", r"users:1: expected user:password"),
        ("a:1\na:2\n", r"users:2: user 'a' is listed twice"),
        ("a:$zz$x\n", r"users:1: user 'a': unknown password hash scheme"),
        (":pw\n", r"users:1: expected user:password"),
    ],
)
def test_file_checker_bad_lines_name_path_and_line(tmp_path: Path, content: str, message: str):
    """A malformed file is refused at load with the path, the line number and the fault."""
    users = tmp_path / "users"
    users.write_text(content)
    with pytest.raises(StartupError, match=message):
        FileChecker(users)


def test_file_checker_missing_file_names_it(tmp_path: Path):
    """A missing file is an error naming the path."""
    with pytest.raises(StartupError, match=f"cannot read {tmp_path}/nope: no such file"):
        FileChecker(tmp_path / "nope")


def test_passwd_checker_reads_the_second_field(tmp_path: Path):
    """passwd: the second field is the password (hash or plaintext); placeholders like x never match."""
    passwd = tmp_path / "passwd"
    passwd.write_text(
        f"yann:{bcrypt_hash('x2')}:1000:1000:Yann:/home/yann:/bin/sh\n"
        "plain:hello:1001:1001::/:/bin/sh\n"
        "root:x:0:0:root:/root:/bin/bash\n"
        "locked:!hello:2:2::/:/bin/false\n"
        "empty::3:3::/:/bin/false\n"
    )
    checker = PasswdChecker(passwd)
    assert check(checker, "yann", "x2")
    assert check(checker, "plain", "hello")
    assert not check(checker, "root", "x")  # seed 000's trick: not a way in
    assert not check(checker, "locked", "hello")
    assert not check(checker, "locked", "!hello")
    assert not check(checker, "empty", "")


def test_unix_checker_reads_a_shadow_file(tmp_path: Path):
    """unix: sha512-crypt entries verify; locked, password-less and expired accounts never match."""
    from passlib.hash import sha512_crypt

    digest = sha512_crypt.using(rounds=1000).hash("pw")
    yesterday = (datetime.date.today() - datetime.date(1970, 1, 1)).days - 1
    shadow = tmp_path / "shadow"
    shadow.write_text(
        f"alice:{digest}:19000:0:99999:7:::\n"
        f"locked:!{digest}:19000:0:99999:7:::\n"
        "nopass::19000:0:99999:7:::\n"
        "daemon:*:19000:0:99999:7:::\n"
        f"gone:{digest}:19000:0:99999:7::{yesterday}:\n"
    )
    checker = UnixChecker(str(shadow))
    assert check(checker, "alice", "pw")
    assert not check(checker, "alice", "Pw")
    assert not check(checker, "locked", "pw")
    assert not check(checker, "nopass", "")
    assert not check(checker, "daemon", "")
    assert not check(checker, "gone", "pw")


def test_unix_checker_warns_about_unverifiable_hashes(tmp_path: Path, caplog, monkeypatch):
    """An account whose hash cannot be verified here is named in a warning and cannot log in."""
    from tapster.auth import _hashes

    monkeypatch.setattr(_hashes, "_crypt_module", lambda: None)
    shadow = tmp_path / "shadow"
    shadow.write_text(
        "root:$y$j9T$F5Jx5fExrKuPp53xLKQ..1$GmcwIgvdUC9qLWcKCi6gklUa1dM3ziD43YxYNURLKy0:1::::::\n"
    )
    checker = UnixChecker(str(shadow))
    assert "user 'root' cannot log in: yescrypt" in caplog.text
    assert not check(checker, "root", "secret")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unix_checker_refuses_an_unreadable_shadow(tmp_path: Path):
    """An unreadable shadow file is refused at load, saying why."""
    shadow = tmp_path / "shadow"
    shadow.write_text("a:b:1::::::\n")
    shadow.chmod(0)
    with pytest.raises(StartupError, match="permission denied"):
        UnixChecker(str(shadow))


@contextlib.contextmanager
def as_nobody() -> Iterator[None]:
    """Run the body with the effective uid of ``nobody`` (as a server does after --uid nobody), then root again."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody")
    os.seteuid(pwd.getpwnam("nobody").pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)


def test_unix_checker_permission_message(shared_dir: Path):
    """A permission error on the shadow file names it and says what is needed."""
    shadow = shared_dir / "shadow"
    shadow.write_text("a:b:1::::::\n")
    shadow.chmod(0o600)
    expected = r"unix: cannot read .*shadow: permission denied \(it needs root"
    with as_nobody(), pytest.raises(StartupError, match=expected):
        UnixChecker(str(shadow))


def test_unix_checker_keeps_its_copy_when_the_file_becomes_unreadable(shared_dir: Path):
    """After privileges are dropped /etc/shadow is unreadable: the copy read at start-up stays in use."""
    from passlib.hash import sha256_crypt

    shadow = shared_dir / "shadow"
    shadow.write_text(f"alice:{sha256_crypt.using(rounds=1000).hash('pw')}:1::::::\n")
    shadow.chmod(0o600)
    checker = UnixChecker(str(shadow))
    os.utime(shadow, (1, 1))  # looks changed, and now (as nobody) cannot be read
    with as_nobody():
        checker.verify_files()
        assert check(checker, "alice", "pw")


def test_anonymous_lets_anyone_in():
    """anonymous accepts any user with any password or key."""
    checker = AnonymousChecker()
    assert checker.accepts_anyone
    assert check(checker, "whoever", "")
    assert check_key(checker, "whoever", b"anything")


def _key_line(blob: bytes, kind: str = "ssh-ed25519", options: str = "") -> str:
    prefix = f"{options} " if options else ""
    return f"{prefix}{kind} {base64.b64encode(blob).decode()} someone@example\n"


def _blob(kind: str, body: bytes) -> bytes:
    name = kind.encode()
    return len(name).to_bytes(4, "big") + name + len(body).to_bytes(4, "big") + body


def test_authorized_keys_parsing(caplog):
    """Keys come from authorized_keys lines; comments, garbage and lines with options (warned) are skipped."""
    one = _blob("ssh-ed25519", b"1" * 32)
    two = _blob("ssh-rsa", b"2" * 64)
    three = _blob("ssh-ed25519", b"3" * 32)
    text = (
        "# comment\n\n"
        + _key_line(one)
        + _key_line(two, "ssh-rsa")
        + _key_line(three, options='from="10.0.0.1",no-pty')
        + "ssh-ed25519 not-base64!!\n"
        + f"ssh-rsa {base64.b64encode(one).decode()}\n"  # type mismatch: not a key
    )
    assert parse_authorized_keys(text, "keys") == [one, two]
    assert "keys:5: key with options" in caplog.text


def test_sshkey_checker_with_a_directory(tmp_path: Path):
    """sshkey:DIR reads DIR/USER.keys; a listed key is accepted, others and unknown users refused."""
    good = _blob("ssh-ed25519", b"g" * 32)
    other = _blob("ssh-ed25519", b"o" * 32)
    (tmp_path / "admin.keys").write_text(_key_line(good))
    (tmp_path / "admin.keys").chmod(0o600)
    checker = SSHKeyChecker(tmp_path)
    assert check_key(checker, "admin", good)
    assert not check_key(checker, "admin", other)
    assert not check_key(checker, "nobody", good)
    assert not check(checker, "admin", "")


def test_sshkey_checker_refuses_names_that_leave_the_directory(tmp_path: Path):
    """A user name cannot reach a keys file outside the directory."""
    good = _blob("ssh-ed25519", b"g" * 32)
    keys = tmp_path / "keys"
    keys.mkdir()
    (tmp_path / "evil.keys").write_text(_key_line(good))
    checker = SSHKeyChecker(keys)
    for name in ("../evil", ".hidden", "a/b", ""):
        assert checker.keys_path(name) is None
        assert not check_key(checker, name, good)


def test_sshkey_checker_refuses_a_writable_file(tmp_path: Path, caplog):
    """A keys file others can write to is refused, as OpenSSH's StrictModes does."""
    good = _blob("ssh-ed25519", b"g" * 32)
    path = tmp_path / "admin.keys"
    path.write_text(_key_line(good))
    path.chmod(0o666)
    assert not check_key(SSHKeyChecker(tmp_path), "admin", good)
    assert "admin.keys: it is writable by others: its keys are refused" in caplog.text


def test_sshkey_checker_uses_home_directories(tmp_path: Path, monkeypatch):
    """Without a directory, a user's keys are in ~USER/.ssh/authorized_keys of the system account."""
    import pwd

    good = _blob("ssh-ed25519", b"h" * 32)
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "authorized_keys").write_text(_key_line(good))
    real = pwd.getpwnam

    def fake_getpwnam(name: str):
        if name == "keyuser":
            return pwd.struct_passwd(("keyuser", "x", 1234, 1234, "", str(tmp_path), "/bin/sh"))
        return real(name)

    monkeypatch.setattr(pwd, "getpwnam", fake_getpwnam)
    checker = SSHKeyChecker()
    assert check_key(checker, "keyuser", good)
    assert not check_key(checker, "no-such-user-here", good)


def test_sshkey_checker_missing_directory():
    """sshkey:DIR with a missing directory is an error naming it."""
    with pytest.raises(StartupError, match="/no/such/dir is not a directory"):
        SSHKeyChecker("/no/such/dir")


# -- StrictModes --------------------------------------------------------------------------------------------------

NOBODY = pwd.getpwnam("nobody").pw_uid
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to nobody")


@root_only
@pytest.mark.parametrize("make", [FileChecker, PasswdChecker])
def test_password_file_owned_by_another_user_is_refused(tmp_path: Path, make):
    """A password file owned by someone other than root or the server's user is refused when the server starts."""
    users = tmp_path / "users"
    users.write_text("admin:secret\n")
    os.chown(users, NOBODY, -1)
    checker = make(users)
    with pytest.raises(
        UnsafeFileError, match=rf"refusing password file {users}: it is owned by uid {NOBODY}"
    ):
        checker.verify_files()
    assert not check(
        checker, "admin", "secret"
    )  # a server that never verified refuses at the first login too


@root_only
def test_password_file_of_the_server_user_is_accepted(shared_dir: Path):
    """After the switch to nobody, a file nobody owns is the server's own and passes."""
    users = shared_dir / "users"
    users.write_text("admin:secret\n")
    users.chmod(0o600)
    os.chown(users, NOBODY, -1)
    checker = FileChecker(users)
    with as_nobody():
        checker.verify_files()
        assert check(checker, "admin", "secret")


def test_password_file_in_a_directory_others_can_write_is_refused(tmp_path: Path):
    """A password file in a world-writable, non-sticky directory could be swapped: refused."""
    shared = tmp_path / "open"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "users").write_text("admin:secret\n")
    checker = FileChecker(shared / "users")
    with pytest.raises(UnsafeFileError, match=r"its directory .*open is writable by others"):
        checker.verify_files()


def test_password_file_that_becomes_writable_is_refused_at_the_next_login(tmp_path: Path, caplog):
    """StrictModes is checked again at each re-read: a file made group-writable stops every login."""
    users = tmp_path / "users"
    users.write_text("admin:secret\n")
    users.chmod(0o600)
    checker = FileChecker(users)
    checker.verify_files()
    assert check(checker, "admin", "secret")
    users.write_text("admin:secret\nmallory:x\n")
    users.chmod(0o620)
    assert not check(checker, "admin", "secret")
    assert "it is writable by its group; refusing every login" in caplog.text
    users.chmod(0o600)
    assert check(checker, "admin", "secret")


def test_symlinked_password_file_is_refused(tmp_path: Path):
    """A password file that is a symbolic link is refused at once (never followed), as a one-line error."""
    (tmp_path / "real").write_text("admin:secret\n")
    (tmp_path / "users").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafeFileError, match="it is a symbolic link"):
        FileChecker(tmp_path / "users")


@root_only
def test_sshkey_directory_checks(tmp_path: Path):
    """sshkey:DIR refuses, at start, a directory another user owns, a keys file another user owns, a symlink."""
    keys = tmp_path / "keys"
    keys.mkdir()
    checker = SSHKeyChecker(keys)
    checker.verify_files()
    (keys / "admin.keys").write_text("")
    os.chown(keys / "admin.keys", NOBODY, -1)
    with pytest.raises(UnsafeFileError, match=rf"admin.keys: it is owned by uid {NOBODY}"):
        checker.verify_files()
    (keys / "admin.keys").unlink()
    (keys / "bob.keys").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeFileError, match=r"bob\.keys: it is a symbolic link"):
        checker.verify_files()
    (keys / "bob.keys").unlink()
    os.chown(keys, NOBODY, -1)
    with pytest.raises(UnsafeFileError, match=rf"SSH key directory {keys}: it is owned by uid {NOBODY}"):
        checker.verify_files()


def test_sshkey_symlinked_file_is_refused_at_login(tmp_path: Path, caplog):
    """A USER.keys that became a symbolic link after start is not followed: its keys are refused."""
    good = _blob("ssh-ed25519", b"s" * 32)
    (tmp_path / "real").write_text(_key_line(good))
    (tmp_path / "admin.keys").symlink_to(tmp_path / "real")
    assert not check_key(SSHKeyChecker(tmp_path), "admin", good)
    assert "it is a symbolic link: its keys are refused" in caplog.text


def test_memory_checker_pickles_hashes_not_passwords():
    """A pickled memory checker holds salted scrypt hashes; the copy accepts the same passwords."""
    import pickle

    checker = InMemoryChecker({"admin": "S3cretPassw0rd", "bob": "$2b$04$" + "a" * 53})
    data = pickle.dumps(checker)
    assert b"S3cretPassw0rd" not in data
    assert pickle.dumps(checker) == data  # hashed once, not at every save
    copy = pickle.loads(data)
    assert copy.users["admin"].startswith("$scrypt$")
    assert check(copy, "admin", "S3cretPassw0rd")
    assert not check(copy, "admin", "wrong")
    assert check(checker, "admin", "S3cretPassw0rd")  # the live checker is unchanged
