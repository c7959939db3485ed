"""docs/auth.md's promises, run for real: its code example executes, and malformed hashes fail at load."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_tapster

AUTH_DOC = REPO / "docs" / "auth.md"


def _example() -> str:
    """The Python block of docs/auth.md that defines MyOptions (the "In code" example)."""
    blocks = re.findall(r"```python\n(.*?)```", AUTH_DOC.read_text(), re.DOTALL)
    matching = [block for block in blocks if "class MyOptions(AuthOptions)" in block]
    assert len(matching) == 1, "docs/auth.md should have one example defining MyOptions"
    return matching[0]


def test_the_docs_example_runs_as_written(tmp_path: Path) -> None:
    """Extract the example and run it in a fresh interpreter, in a directory with the files it names."""
    users = tmp_path / "users"
    users.write_text("admin:secret\n")
    users.chmod(0o600)
    (tmp_path / "keys").mkdir(mode=0o700)
    result = subprocess.run(
        [sys.executable, "-c", _example()], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"2222 ['file:{users}', 'sshkey:{tmp_path / 'keys'}']"


def _password_file(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "users"
    path.write_text(line + "\n")
    os.chmod(path, 0o600)
    return path


@pytest.mark.parametrize(
    ("stored", "scheme", "says"),
    [
        ("$6$bad$xx", "sha512-crypt", "with a HASH of 86 characters from ./0-9A-Za-z; this one's has 2"),
        ("$6$bad", "sha512-crypt", "it has no separate SALT and HASH"),
        ("$5$rounds=x$salt$" + "a" * 43, "sha256-crypt", "rounds= is not a number"),
        ("$1$saltsaltsalt$" + "a" * 22, "md5-crypt", "its salt has 12 characters, at most 8 allowed"),
        ("$2b$12$" + "a" * 52, "bcrypt", "this one has 59"),
        ("$argon2id$v=19$m=65536,t=3,p=4$bad", "argon2", "it has 2 of the 3 parts after the version"),
        ("$argon2id$v=19$m=65536,t=3$c2FsdHNhbHRzYWx0$aGFzaGhhc2g", "argon2", "are not m=N,t=N,p=N"),
        ("$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$a!", "argon2", "its HASH is not unpadded base64"),
    ],
)
def test_malformed_hash_fails_at_load_saying_what_is_wrong(
    tmp_path: Path, stored: str, scheme: str, says: str
) -> None:
    """`--auth file:` with a malformed hash: exit 2 at parse time, one line naming file, line, user and fault."""
    path = _password_file(tmp_path, f"alice:{stored}")
    result = run_tapster(
        ["-n", "-o", "--pidfile=", "manhole", "--telnet", "0", "--auth", f"file:{path}"], cwd=tmp_path
    )
    assert result.returncode == 2, result.stdout + result.stderr
    line = result.stderr.splitlines()[0]
    assert line.startswith(
        f"tapster manhole: error: --auth file:{path}: {path}:1: user 'alice': malformed {scheme} hash"
    )
    assert says in line
    assert "()" not in line and "Traceback" not in result.stderr


def test_well_formed_hashes_still_load(tmp_path: Path) -> None:
    """Real hashes of every scheme pass the shape checks (the check refuses no hash crypt() or the packages wrote)."""
    import warnings

    import argon2
    import bcrypt

    from tapster.auth import FileChecker
    from tapster.auth._hashes import scrypt_hash

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    hashes = [
        bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode(),
        argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).hash("pw"),
        scrypt_hash("pw", ln=4),
        crypt.crypt("pw", "$6$rounds=5000$saltsaltsaltsalt$"),
        *(
            crypt.crypt("pw", crypt.mksalt(method))
            for method in (crypt.METHOD_SHA512, crypt.METHOD_SHA256, crypt.METHOD_MD5)
        ),
    ]
    path = _password_file(tmp_path, "\n".join(f"user{index}:{value}" for index, value in enumerate(hashes)))
    assert FileChecker(path).description == f"file:{path}"
