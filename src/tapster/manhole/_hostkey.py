"""The SSH server's host key: read from a file, or made on first use and saved there with mode 0600."""

from __future__ import annotations

import logging
import os
import stat
from typing import Any

from tapster.errors import StartupError

__all__ = ["load_host_key"]

logger = logging.getLogger("tapster.manhole")


def _generate() -> Any:
    import asyncssh

    return asyncssh.generate_private_key("ssh-ed25519")


def load_host_key(path: str | None) -> Any:
    """The host key (an ``asyncssh.SSHKey``) at ``path``, generated and saved there if the file does not exist.

    With ``path=None`` a key is made for this run only: clients then see a different host key after each
    restart, and OpenSSH refuses to connect until the old one is removed from known_hosts.

    Raises:
        StartupError: the file cannot be read or written, or holds no usable private key.
    """
    import asyncssh

    if path is None:
        key = _generate()
        logger.warning(
            "no SSH host key file given: using a new key for this run only (%s)", key.get_fingerprint()
        )
        return key
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read()
    except FileNotFoundError:
        return _create(path)
    except OSError as exc:
        raise StartupError(f"cannot read SSH host key {path}: {(exc.strerror or str(exc)).lower()}") from exc
    try:
        key = asyncssh.import_private_key(data)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise StartupError(f"cannot load SSH host key {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("SSH host key %s can be read by others (mode %04o): chmod 600 it", path, mode & 0o7777)
    logger.info("SSH host key %s (%s)", path, key.get_fingerprint())
    return key


def _create(path: str) -> Any:
    key = _generate()
    data = key.export_private_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made by someone else meanwhile: use theirs
        return load_host_key(path)
    except OSError as exc:
        raise StartupError(
            f"cannot create SSH host key {path}: {(exc.strerror or str(exc)).lower()}"
        ) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        os.unlink(path)
        raise StartupError(f"cannot write SSH host key {path}: {(exc.strerror or str(exc)).lower()}") from exc
    logger.info("generated a new SSH host key in %s (%s)", path, key.get_fingerprint())
    return key
