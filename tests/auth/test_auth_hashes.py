"""Tests for tapster.auth._hashes: recognising stored password hashes and verifying passwords against them."""

from __future__ import annotations

import warnings

import pytest

from tapster.auth._hashes import UnsupportedHash, check_supported, hash_scheme, verify


def _crypt() -> object | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
    except ImportError:
        return None
    return crypt


def _bcrypt_hash(password: str) -> str:
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def _argon2_hash(password: str) -> str:
    import argon2

    return argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(password)


def _passlib_hash(scheme: str, password: str) -> str:
    from passlib import hash as passlib_hash

    handler = getattr(passlib_hash, scheme)
    return str(handler.using(rounds=1000).hash(password))


@pytest.mark.parametrize(
    ("make", "scheme"),
    [
        (_bcrypt_hash, "bcrypt"),
        (_argon2_hash, "argon2"),
        (lambda p: _passlib_hash("sha512_crypt", p), "sha512-crypt"),
        (lambda p: _passlib_hash("sha256_crypt", p), "sha256-crypt"),
    ],
)
def test_hashes_verify_the_right_password_only(make, scheme):
    """bcrypt, argon2, sha512-crypt and sha256-crypt hashes accept their password and refuse others."""
    stored = make("s3cret")
    assert hash_scheme(stored) == scheme
    assert check_supported(stored) == scheme
    assert verify(stored, "s3cret")
    assert not verify(stored, "s3cret ")
    assert not verify(stored, "")


def test_plaintext_is_compared_exactly():
    """A value without a $ID$ prefix is a plaintext password, compared exactly."""
    assert hash_scheme("x") is None
    assert check_supported("hunter2") is None
    assert verify("hunter2", "hunter2")
    assert not verify("hunter2", "hunter")
    assert not verify("hunter2", "Hunter2")
    assert verify("pässwörd", "pässwörd")


def test_bcrypt_long_password_uses_its_first_72_bytes():
    """bcrypt sees only 72 bytes: a longer password verifies as bcrypt always did, instead of raising."""
    import bcrypt

    password = "a" * 100
    stored = bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(rounds=4)).decode()
    assert verify(stored, password)
    assert not verify(stored, "b" * 100)


def test_unknown_scheme_is_reported():
    """A $ID$ value of an unknown scheme is an error when loading and never matches."""
    with pytest.raises(UnsupportedHash, match=r"unknown password hash scheme \$zz\$"):
        check_supported("$zz$abc")
    assert not verify("$zz$abc", "$zz$abc")


def test_malformed_hashes_are_reported():
    """A truncated bcrypt or argon2 hash is reported when loading, not silently refused later."""
    with pytest.raises(UnsupportedHash, match="bcrypt"):
        check_supported("$2b$12$short")
    with pytest.raises(UnsupportedHash, match="argon2"):
        check_supported("$argon2id$v=19$garbage")


@pytest.mark.skipif(_crypt() is None, reason="this Python has no crypt module (3.13+)")
def test_yescrypt_through_the_crypt_module():
    """A yescrypt hash (Debian's /etc/shadow default) verifies through libc crypt when it is available."""
    crypt = _crypt()
    stored = crypt.crypt("secret", "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$")  # type: ignore[attr-defined]
    if not stored or stored.startswith("*"):
        pytest.skip("this C library's crypt() has no yescrypt")
    assert check_supported(stored) == "yescrypt"
    assert verify(stored, "secret")
    assert not verify(stored, "secreT")


def test_yescrypt_without_the_crypt_module_says_so(monkeypatch):
    """Where the crypt module is missing, a yescrypt hash is reported as unverifiable, naming the reason."""
    from tapster.auth import _hashes

    monkeypatch.setattr(_hashes, "_crypt_module", lambda: None)
    stored = "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$GmcwIgvdUC9qLWcKCi6gklUa1dM3ziD43YxYNURLKy0"
    with pytest.raises(UnsupportedHash, match=r"crypt module.*removed in 3\.13"):
        check_supported(stored)
    assert not verify(stored, "secret")


def test_sha512_crypt_falls_back_to_passlib(monkeypatch):
    """Without the crypt module, sha512-crypt hashes are still verified (through passlib)."""
    from tapster.auth import _hashes

    stored = _passlib_hash("sha512_crypt", "pw")
    monkeypatch.setattr(_hashes, "_crypt_module", lambda: None)
    assert check_supported(stored) == "sha512-crypt"
    assert verify(stored, "pw")
    assert not verify(stored, "pW")


def test_scrypt_hashes_round_trip_and_match_passlib():
    """scrypt_hash makes salted $scrypt$ hashes that verify here and in passlib, and passlib's verify here."""
    from tapster.auth._hashes import scrypt_hash

    stored = scrypt_hash("S3cret:with colon")
    assert stored.startswith("$scrypt$ln=14,r=8,p=1$") and "S3cret" not in stored
    assert scrypt_hash("S3cret:with colon") != stored  # salted
    assert check_supported(stored) == "scrypt"
    assert verify(stored, "S3cret:with colon")
    assert not verify(stored, "S3cret:with colon ")
    passlib_hash = pytest.importorskip("passlib.hash")
    assert passlib_hash.scrypt.verify("S3cret:with colon", stored)
    assert verify(passlib_hash.scrypt.using(rounds=10).hash("pw"), "pw")


@pytest.mark.parametrize(
    "stored",
    ["$scrypt$ln=14,r=8,p=1$", "$scrypt$ln=14,r=8,p=1$c2FsdA$!!", "$scrypt$ln=30,r=8,p=1$c2FsdA$c2FsdA",
     "$scrypt$ln=14,r=8$c2FsdA$c2FsdA"],
)  # fmt: skip
def test_malformed_scrypt_hashes_are_reported(stored: str):
    """A malformed or too costly scrypt hash is refused when loaded, not at a login."""
    with pytest.raises(UnsupportedHash, match="scrypt"):
        check_supported(stored)
    assert not verify(stored, "")
