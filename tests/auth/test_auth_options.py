"""Tests for the --auth TYPE:ARGS language, AuthOptions, and the Authenticator's failure delay."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest

from tapster.auth import (
    AnonymousChecker,
    Authenticator,
    AuthOptions,
    FileChecker,
    InMemoryChecker,
    PasswdChecker,
    SSHKeyChecker,
    UnixChecker,
    auth_types,
    parse_auth,
)
from tapster.errors import HelpRequested, UsageError
from tapster.options import Options


def test_parse_each_type(tmp_path: Path):
    """Each TYPE:ARGS string builds the matching checker."""
    users = tmp_path / "users"
    users.write_text("a:b\n")
    assert isinstance(parse_auth("memory:admin:secret"), InMemoryChecker)
    assert isinstance(parse_auth(f"file:{users}"), FileChecker)
    assert isinstance(parse_auth(f"passwd:{users}"), PasswdChecker)
    assert isinstance(parse_auth("anonymous"), AnonymousChecker)
    assert isinstance(parse_auth(f"sshkey:{tmp_path}"), SSHKeyChecker)
    assert isinstance(parse_auth("sshkey"), SSHKeyChecker)
    if os.access("/etc/shadow", os.R_OK):
        assert isinstance(parse_auth("unix"), UnixChecker)
    else:
        with pytest.raises(UsageError, match="permission denied"):
            parse_auth("unix")
    assert isinstance(parse_auth("MEMORY:a:b"), InMemoryChecker)


def test_memory_spec_pairs_and_escapes():
    """memory takes USER:PASS pairs; a backslash puts a colon into a password."""
    checker = parse_auth(r"memory:admin:se\:cret:bob:pw")
    assert isinstance(checker, InMemoryChecker)
    assert checker.users == {"admin": "se:cret", "bob": "pw"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "bogus:x",
            r"--auth 'bogus': unknown checker type \(valid types: anonymous, file, memory, passwd, sshkey, unix\)",
        ),
        (":x", r"expected TYPE\[:ARGS\] \(valid types: anonymous, file"),
        ("", r"expected TYPE\[:ARGS\] \(valid types"),
        ("memory:admin", r"memory:\.\.\.: expected USER:PASS pairs \(syntax: memory:USER:PASS"),
        ("memory", r"expected USER:PASS pairs"),
        ("memory::pw", r"empty user name"),
        ("memory:a:1:a:2", r"user 'a' is given twice"),
        ("file", r"--auth file: expected a PATH \(syntax: file:PATH"),
        ("file:/no/such/file", r"--auth file:/no/such/file: cannot read /no/such/file: no such file"),
        ("passwd:", r"expected a PATH"),
        ("unix:x", r"takes no arguments"),
        ("anonymous:x", r"takes no arguments"),
        ("sshkey:", r"expected a DIR"),
        ("sshkey:/no/dir", r"/no/dir is not a directory"),
    ],
)
def test_bad_specs_are_usage_errors(spec: str, message: str):
    """A malformed spec, an unknown type or a missing file is a usage error saying what is wrong."""
    with pytest.raises(UsageError, match=message):
        parse_auth(spec)


def test_memory_errors_never_show_the_password():
    """An error about a memory: spec does not repeat the spec, which carries passwords."""
    with pytest.raises(UsageError) as info:
        parse_auth("memory:admin:topsecret:bob")
    assert "topsecret" not in str(info.value)


class ServerOptions(AuthOptions):
    parameters = [("port", "p", 0, "The port.", int)]


def test_auth_options_collects_checkers_in_order(tmp_path: Path):
    """--auth is repeatable; options["checkers"] lists the checkers in command-line order."""
    users = tmp_path / "users"
    users.write_text("a:b\n")
    options = ServerOptions()
    options.parse_options(["--auth", "memory:a:b", "-p", "5", f"--auth=file:{users}"])
    assert options["port"] == 5
    assert [type(c) for c in options["checkers"]] == [InMemoryChecker, FileChecker]


def test_auth_options_without_auth_has_no_checkers():
    """Without --auth, options["checkers"] is an empty list (the plugin decides whether that is an error)."""
    options = ServerOptions()
    options.parse_options([])
    assert options["checkers"] == []


def test_auth_options_as_a_mixin():
    """AuthOptions also works listed before another Options subclass."""

    class Base(Options):
        flags = [("verbose", "v", "Talk more.")]

    class Mixed(AuthOptions, Base):
        pass

    options = Mixed()
    options.parse_options(["-v", "--auth", "anonymous"])
    assert options["verbose"]
    assert isinstance(options["checkers"][0], AnonymousChecker)


def test_help_auth_lists_every_type():
    """--help-auth lists each type with its syntax and one line."""
    options = ServerOptions()
    with pytest.raises(HelpRequested) as info:
        options.parse_options(["--help-auth"])
    text = info.value.text
    for name, spec in auth_types().items():
        assert spec.syntax in text, name
    assert "memory:USER:PASS[:USER:PASS...]" in text
    assert "--help-auth-type" in text


def test_help_auth_type_shows_syntax_and_notes():
    """--help-auth-type TYPE shows its syntax and notes; an unknown TYPE is a usage error naming the valid ones."""
    options = ServerOptions()
    with pytest.raises(HelpRequested) as info:
        options.parse_options(["--help-auth-type", "file"])
    assert info.value.text.startswith("Usage: --auth file:PATH")
    assert "bcrypt" in info.value.text
    with pytest.raises(UsageError, match=r"unknown checker type \(valid types: anonymous"):
        ServerOptions().parse_options(["--help-auth-type", "nope"])


def test_auth_option_errors_carry_the_program_name():
    """A bad --auth fails parsing as a usage error with the program's name and usage line."""
    options = ServerOptions("tapster myserver")
    with pytest.raises(UsageError) as info:
        options.parse_options(["--auth", "nope"])
    assert info.value.prog == "tapster myserver"
    assert info.value.usage and "Usage: tapster myserver" in info.value.usage


def test_failure_delay_is_fixed_and_success_is_not_delayed():
    """Each failed password is answered after the same fixed delay; a success at once (no doubling)."""
    authenticator = Authenticator([InMemoryChecker({"a": "b"})], failure_delay=0.05)
    attempts = authenticator.attempts("127.0.0.1")

    async def timed(password: str) -> tuple[bool, float]:
        start = time.monotonic()
        ok = await attempts.password("a", password)
        return ok, time.monotonic() - start

    async def run() -> list[tuple[bool, float]]:
        return [await timed("x"), await timed("y"), await timed("z"), await timed("b")]

    results = asyncio.run(run())
    assert [ok for ok, _ in results] == [False, False, False, True]
    for _, took in results[:3]:
        assert 0.05 <= took < 0.5
    assert results[3][1] < 0.05  # a success is not delayed
    assert attempts.failures == 3


def test_failures_are_logged_without_the_password(caplog):
    """A failed login is logged with the user and peer, never the password."""
    authenticator = Authenticator([InMemoryChecker({"admin": "secret"})], failure_delay=0)
    with caplog.at_level(logging.DEBUG):
        asyncio.run(authenticator.attempts("10.1.2.3").password("admin", "hunter2-guess"))
    assert "login failed for user 'admin' from 10.1.2.3" in caplog.text
    assert "hunter2-guess" not in caplog.text


def test_any_checker_may_accept():
    """With several checkers, a credential accepted by any of them logs in."""
    authenticator = Authenticator([InMemoryChecker({"a": "1"}), InMemoryChecker({"b": "2"})], failure_delay=0)
    attempts = authenticator.attempts()
    assert asyncio.run(attempts.password("b", "2"))
    assert not asyncio.run(attempts.password("b", "1"))


def test_authenticator_needs_checkers():
    """An Authenticator with no checkers (nobody could log in) is refused."""
    with pytest.raises(ValueError, match="no credential checkers"):
        Authenticator([])
