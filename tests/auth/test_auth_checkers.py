"""Tests for the credential checkers: memory, file, passwd, unix (a shadow file), anonymous and sshkey."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A root-owned 0755 directory that nobody can search (pytest's tmp_path is 0700 inside 0700 parents)."""
    path = Path(tempfile.mkdtemp(prefix="tapster-auth-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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
