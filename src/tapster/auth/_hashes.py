"""Password hashes: recognising the scheme of a stored value and verifying a password against it.

A stored value that starts with ``$ID$`` is a hash; anything else is a plaintext password. Supported:

- bcrypt (``$2a$``, ``$2b$``, ``$2y$``), through the ``bcrypt`` package;
- argon2 (``$argon2id$``, ``$argon2i$``, ``$argon2d$``), through ``argon2-cffi``;
- sha512-crypt (``$6$``), sha256-crypt (``$5$``) and md5-crypt (``$1$``), through the standard library's
  :mod:`crypt` module where present (Python < 3.13 with libc crypt), else through ``passlib``;
- scrypt in passlib's format (``$scrypt$ln=14,r=8,p=1$SALT$HASH``), through :func:`hashlib.scrypt`: what
  :func:`scrypt_hash` makes, e.g. for the ``memory:`` passwords of a saved state;
- yescrypt (``$y$``, ``$gy$``) and scrypt (``$7$``), which only libc crypt verifies: through :mod:`crypt` when it is
  available and the C library supports them. Newer Debian ``/etc/shadow`` files use yescrypt.

Third-party packages are imported on first use, never at import time. Verifying is CPU work (tens to hundreds of
milliseconds for bcrypt and argon2): callers in the event loop run :func:`verify` in a thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import importlib
import os
import re
import warnings
from types import ModuleType
from typing import Any

__all__ = ["UnsupportedHash", "check_supported", "hash_scheme", "scrypt_hash", "verify"]

_HASH_ID = re.compile(r"^\$([0-9a-z-]+)\$")

_SCHEMES = {
    "2a": "bcrypt",
    "2b": "bcrypt",
    "2y": "bcrypt",
    "argon2id": "argon2",
    "argon2i": "argon2",
    "argon2d": "argon2",
    "6": "sha512-crypt",
    "5": "sha256-crypt",
    "1": "md5-crypt",
    "y": "yescrypt",
    "gy": "gost-yescrypt",
    "7": "scrypt-crypt",
    "scrypt": "scrypt",
}
_LIBC_ONLY = frozenset({"yescrypt", "gost-yescrypt", "scrypt-crypt"})
_PASSLIB_NAMES = {"sha512-crypt": "sha512_crypt", "sha256-crypt": "sha256_crypt", "md5-crypt": "md5_crypt"}
_BCRYPT_MAX = 72  # bcrypt looks at no more bytes than this; bcrypt >= 5 raises instead of truncating


class UnsupportedHash(ValueError):
    """A stored hash that cannot be verified here: unknown scheme, missing package, or malformed."""


def hash_scheme(stored: str) -> str | None:
    """The scheme name of ``stored`` (``"bcrypt"``, ``"sha512-crypt"``, ...), or None for plaintext.

    Raises:
        UnsupportedHash: ``stored`` looks like a ``$ID$`` hash of a scheme tapster does not know.
    """
    match = _HASH_ID.match(stored)
    if match is None:
        return None
    scheme = _SCHEMES.get(match.group(1))
    if scheme is None:
        raise UnsupportedHash(f"unknown password hash scheme ${match.group(1)}$")
    return scheme


_SCRYPT = re.compile(
    r"^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/.]+)\$([A-Za-z0-9+/.]+)$"
)
_SCRYPT_LN = 14  # n = 2**14, r = 8: 16 MiB and ~50 ms a check, the parameters RFC 7914 suggests for logins
_SCRYPT_MAXMEM = 256 * 1024 * 1024


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    text = text.replace(".", "+")  # passlib's "adapted" base64 uses "." where base64 has "+"
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def scrypt_hash(password: str, *, ln: int = _SCRYPT_LN) -> str:
    """A salted scrypt hash of ``password``, in passlib's ``$scrypt$`` format (which passlib also verifies)."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=2**ln, r=8, p=1, maxmem=_SCRYPT_MAXMEM, dklen=32
    )
    return f"$scrypt$ln={ln},r=8,p=1${_b64encode(salt)}${_b64encode(digest)}"


def _scrypt_parts(stored: str) -> tuple[int, int, int, bytes, bytes]:
    match = _SCRYPT.match(stored)
    if match is None:
        raise UnsupportedHash("malformed scrypt hash (expected $scrypt$ln=N,r=N,p=N$SALT$HASH)")
    ln, r, p = (int(match.group(index)) for index in (1, 2, 3))
    try:
        salt, digest = _b64decode(match.group(4)), _b64decode(match.group(5))
    except (binascii.Error, ValueError):
        raise UnsupportedHash("malformed scrypt hash (bad base64)") from None
    if (
        not (1 <= ln <= 20 and 1 <= r <= 32 and 1 <= p <= 16)
        or 128 * r * 2**ln > _SCRYPT_MAXMEM
        or not digest
    ):
        raise UnsupportedHash(f"scrypt hash with unsupported parameters ln={ln},r={r},p={p}")
    return ln, r, p, salt, digest


def _verify_scrypt(stored: str, password: str) -> bool:
    ln, r, p, salt, digest = _scrypt_parts(stored)
    computed = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=2**ln, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=len(digest)
    )
    return hmac.compare_digest(computed, digest)


def _crypt_module() -> ModuleType | None:
    """The standard library's :mod:`crypt`, or None where it is gone (Python 3.13+) or unusable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
    except ImportError:
        return None
    return crypt


def _libc_crypt(password: str, stored: str) -> str | None:
    module = _crypt_module()
    if module is None:
        return None
    try:
        result: Any = module.crypt(password, stored)
    except OSError:  # the C library rejects the method
        return None
    if not isinstance(result, str) or result.startswith("*"):  # libxcrypt answers "*0" / "*1" on failure
        return None
    return result


def check_supported(stored: str) -> str | None:
    """Make sure ``stored`` can be verified; return its scheme (None for plaintext).

    Called when a password file is loaded, so a missing package or an unusable hash is reported at start-up
    rather than as a refused login later.

    Raises:
        UnsupportedHash: the scheme is unknown, its package is missing, or the hash is malformed.
    """
    scheme = hash_scheme(stored)
    if scheme is None:
        return None
    if scheme == "bcrypt":
        _require("bcrypt", "bcrypt", "bcrypt")
        if not _BCRYPT.match(stored):
            raise UnsupportedHash(
                "malformed bcrypt hash (expected $2b$NN$ then 53 characters from ./A-Za-z0-9, 60 in all; "
                f"this one has {len(stored)})"
            )
    elif scheme == "argon2":
        argon2 = _require("argon2", "argon2-cffi", "argon2")
        fault = _argon2_fault(stored)
        if fault is None:
            try:
                argon2.extract_parameters(stored)
            except Exception as exc:
                fault = (
                    f"{_ARGON2_FORM} ({exc})"
                    if str(exc).strip()
                    else f"{_ARGON2_FORM}: argon2-cffi cannot read it"
                )
        if fault is not None:
            raise UnsupportedHash(f"malformed argon2 hash: {fault}")
    elif scheme in _CRYPT_SHAPES:
        _check_crypt_shape(scheme, stored)
        _check_crypt(scheme, stored)
    elif scheme == "scrypt":
        _scrypt_parts(stored)
    elif scheme in _LIBC_ONLY:
        if _crypt_module() is None:
            raise UnsupportedHash(
                f"{scheme} hashes can only be verified by the C library's crypt(), through Python's crypt "
                "module, which this Python does not have (it was removed in 3.13)"
            )
        if _libc_crypt("", stored) is None:
            raise UnsupportedHash(
                f"this system's crypt() cannot verify {scheme} hashes, or the hash is malformed"
            )
    return scheme


def _check_crypt(scheme: str, stored: str) -> None:
    """Make sure the C library or passlib can verify a well-shaped sha512/sha256/md5-crypt hash."""
    if _crypt_module() is not None and _libc_crypt("", stored) is not None:
        return
    handler = getattr(_require("passlib.hash", "passlib", scheme), _PASSLIB_NAMES[scheme])
    if not handler.identify(stored):
        raise UnsupportedHash(f"malformed {scheme} hash")
    try:
        handler.verify("", stored)
    except ValueError as exc:
        raise UnsupportedHash(f"malformed {scheme} hash ({exc})") from None


_BCRYPT = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
_CRYPT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CRYPT_SHAPES = {  # scheme: (id, longest salt, hash length, rounds allowed), as crypt(5) describes them
    "md5-crypt": ("1", 8, 22, False),
    "sha256-crypt": ("5", 16, 43, True),
    "sha512-crypt": ("6", 16, 86, True),
}


def _check_crypt_shape(scheme: str, stored: str) -> None:
    """Refuse a sha512/sha256/md5-crypt value that no crypt() could have written.

    The C library's crypt() takes any such value as a salt setting and answers with a hash, so a truncated or
    mistyped line (``$6$bad$xx``) would load and then never match: a user locked out with no error anywhere.

    Raises:
        UnsupportedHash: naming the part that is wrong, never repeating the value.
    """
    ident, max_salt, hash_length, rounds = _CRYPT_SHAPES[scheme]
    fields = stored.split("$")[2:]  # after "", ident
    form = f"${ident}$" + ("[rounds=N$]" if rounds else "") + "SALT$HASH"
    if rounds and fields and fields[0].startswith("rounds="):
        if not fields[0][len("rounds=") :].isdigit():
            raise UnsupportedHash(f"malformed {scheme} hash (expected {form}: rounds= is not a number)")
        fields = fields[1:]
    if len(fields) != 2:
        raise UnsupportedHash(f"malformed {scheme} hash (expected {form}: it has no separate SALT and HASH)")
    salt, digest = fields
    if len(salt) > max_salt:
        raise UnsupportedHash(
            f"malformed {scheme} hash (expected {form}: its salt has {len(salt)} characters, at most "
            f"{max_salt} allowed)"
        )
    if len(digest) != hash_length or digest.strip(_CRYPT_ALPHABET):
        raise UnsupportedHash(
            f"malformed {scheme} hash (expected {form} with a HASH of {hash_length} characters from "
            f"./0-9A-Za-z; this one's has {len(digest)})"
        )


_ARGON2_FORM = "expected $argon2id$v=19$m=MEMORY,t=TIME,p=THREADS$SALT$HASH"
_ARGON2_PARTS = (
    ("SALT", 11),
    ("HASH", 6),
)  # base64 of the shortest salt (8 bytes) and tag (4 bytes) argon2 allows


def _argon2_fault(stored: str) -> str | None:
    """What is wrong with the shape of an argon2 hash, or None (argon2-cffi's own message is often empty, and
    it reads the parameters only: a cut or garbled SALT or HASH would load and then never match)."""
    fields = stored.split("$")[2:]
    version = fields.pop(0) if fields and fields[0].startswith("v=") else "v=19"
    if not version[2:].isdigit():
        return f"{_ARGON2_FORM}: the version is not v=NUMBER"
    if len(fields) != 3:
        return f"{_ARGON2_FORM}: it has {len(fields)} of the 3 parts after the version"
    if not re.fullmatch(r"m=\d+,t=\d+,p=\d+", fields[0]):
        return f"{_ARGON2_FORM}: the parameters are not m=N,t=N,p=N"
    for (name, shortest), value in zip(_ARGON2_PARTS, fields[1:], strict=True):
        if not re.fullmatch(r"[A-Za-z0-9+/]+", value):
            return f"{_ARGON2_FORM}: its {name} is not unpadded base64"
        if len(value) < shortest:
            return f"{_ARGON2_FORM}: its {name} has {len(value)} characters, fewer than the {shortest} argon2 needs"
    return None


def _require(module: str, package: str, scheme: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UnsupportedHash(
            f"{scheme} hashes need the {package} package (pip install 'tapster[ssh]')"
        ) from None


def verify(stored: str, password: str) -> bool:
    """Whether ``password`` matches ``stored`` (a hash, or a plaintext password compared in constant time).

    Never raises for a wrong password; an unusable hash counts as no match (:func:`check_supported` is where
    such hashes are reported).
    """
    try:
        scheme = hash_scheme(stored)
    except UnsupportedHash:
        return False
    if scheme is None:
        return hmac.compare_digest(stored.encode("utf-8"), password.encode("utf-8"))
    try:
        return _verify_hash(scheme, stored, password)
    except (UnsupportedHash, ValueError, TypeError):
        return False


def _verify_hash(scheme: str, stored: str, password: str) -> bool:
    if scheme == "bcrypt":
        import bcrypt

        return bool(bcrypt.checkpw(password.encode("utf-8")[:_BCRYPT_MAX], stored.encode("ascii")))
    if scheme == "scrypt":
        return _verify_scrypt(stored, password)
    if scheme == "argon2":
        import argon2

        try:
            return bool(argon2.PasswordHasher().verify(stored, password))
        except argon2.exceptions.VerificationError:
            return False
        except argon2.exceptions.InvalidHashError:
            return False
    result = _libc_crypt(password, stored)
    if result is not None:
        return hmac.compare_digest(result.encode("utf-8"), stored.encode("utf-8"))
    if scheme in _LIBC_ONLY:
        return False
    handler = getattr(_require("passlib.hash", "passlib", scheme), _PASSLIB_NAMES[scheme])
    return bool(handler.verify(password, stored))
