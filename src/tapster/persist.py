"""Saved state: the application tree pickled at shutdown (``NAME-shutdown.tap``) and loaded again with ``-f``.

A saved state holds the services' configuration and whatever state they keep in plain attributes (a counter, a
setting changed at run time); live loop objects are never saved: each service lists them in ``transient`` and
rebuilds them in ``start()``.

A ``.tap`` file is a pickle, which is code, so loading one is guarded twice before anything in it runs:

1. the file itself (:func:`load_state`): never opened through a symbolic link or as anything but a regular file
   with one link, and refused before a byte is read if another user owns it (root and we are trusted), if its
   group or others may write it, or if its directory lets others replace it (unless the directory is sticky,
   like ``/tmp``, and the file is ours);
2. its content (:mod:`tapster._state_pickle`): the unpickler builds only plain values, tapster's classes and
   the code of the modules the header recorded when the state was saved; anything else (``os.system``,
   ``builtins.exec``, a module the header does not list) is refused before its module is even imported.

``--trust-state-file`` (``trust_any_owner``) skips both for a file the user vouches for: the ownership checks
and the allow-list. It does not skip the link and file-type checks, which concern which file is opened rather
than whether its content is trusted.

File layout (format 2)::

    TAPSTER-STATE 2\n
    modules: tapster.endpoints tapster.service _tapster_plugin_0f3a_fastpoetry_plugin ...\n
    <pickle>

Format 1 (``TAPSTER-STATE 1``, no module list) is still read, but only with ``--trust-state-file``: without the
list nothing in it can be vouched for. The next save writes format 2.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import struct
import tempfile
from typing import Any

from tapster._plugin_discovery import without_private_names
from tapster._safefile import UnsafeFileError, check_private, open_regular
from tapster._state_pickle import StateRefused, StateUnpickler, referenced_globals
from tapster.errors import AppLoadError, TapsterError
from tapster.service import MultiService, Service, service_path

__all__ = ["HEADER", "StateNotSaved", "load_state", "save_state", "state_file_name"]

logger = logging.getLogger("tapster")

HEADER = b"TAPSTER-STATE 2\n"
"""The first line of a saved state; the second lists the modules its pickle names (``modules: a b c``)."""

_V1_HEADER = b"TAPSTER-STATE 1\n"
_MODULES = b"modules:"
_MAX_MODULES_LINE = 1 << 20  # far more than any real tree names; bounds the scan of a foreign file


class StateNotSaved(TapsterError):
    """The tree could not be pickled; the message names the object that could not be."""


def state_file_name(root: Service) -> str:
    """``NAME-shutdown.tap``, twistd's name for the state saved at shutdown."""
    return f"{root.name or 'tapster'}-shutdown.tap"


def save_state(root: Service, path: str) -> None:
    """Write ``root`` to ``path`` atomically (temporary file, fsync, rename) with mode 0600.

    The temporary file is created with ``O_EXCL`` under a random name beside ``path``, and the rename replaces
    whatever is at ``path``, a planted symbolic link included, instead of writing through it. The header lists
    the modules the pickle names; if the allow-list would refuse one of its globals when loading, a warning
    says so (the file then needs ``--trust-state-file``).

    Raises:
        StateNotSaved: something in the tree cannot be pickled (the message gives its path in the tree), or
            the file cannot be written. No partial file is left in either case.
    """
    try:
        data = pickle.dumps(root, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise StateNotSaved(f"cannot save state to {path}: {_find_unpicklable(root)}") from exc
    try:
        names = referenced_globals(data)
    except ValueError as exc:  # pragma: no cover - pickle.dumps always writes readable globals
        raise StateNotSaved(f"cannot save state to {path}: {exc}") from exc
    modules = sorted({module for module, _ in names})
    header = HEADER + _MODULES + b" " + " ".join(modules).encode() + b"\n"
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, temporary = tempfile.mkstemp(prefix=".tapster-state-", dir=directory)
    except OSError as exc:
        raise StateNotSaved(f"cannot save state to {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(header)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise StateNotSaved(f"cannot save state to {path}: {exc.strerror}") from exc
    _warn_if_refused(path, names, modules)


def _warn_if_refused(path: str, names: set[tuple[str, str]], modules: list[str]) -> None:
    """Warn now, not at the next start, when loading the state just saved will need --trust-state-file."""
    checker = StateUnpickler(io.BytesIO(b""), modules)
    for module, name in sorted(names):
        try:
            checker.find_class(module, name)
        except StateRefused as exc:
            refused = without_private_names(str(exc))
            logger.warning("%s will load only with --trust-state-file: it names %s", path, refused)
            return
        except Exception:  # a class that cannot be found again is reported when loading, not here
            pass


def load_state(path: str, *, trust_any_owner: bool = False) -> Service:
    """Load a tree saved by :func:`save_state`; its services come back not running.

    Args:
        path: The ``.tap`` file, as the user named it (messages use it).
        trust_any_owner: ``--trust-state-file``: skip the ownership checks and the allow-list (see the
            module's docstring). Links and non-regular files are refused all the same.

    Raises:
        AppLoadError: one line naming the file and what is wrong: missing or unreadable; a symbolic link, a
            directory or another non-regular file; owned by another user, writable by others or in a directory
            others may write; truncated, foreign or of format 1 without trust; naming something the allow-list
            refuses; raising anything while unpickled; or holding something that is not a Service.
    """
    data = _read_checked(path, trust_any_owner)
    body, modules = _split_header(path, data, trust_any_owner)
    try:
        if modules is None or trust_any_owner:
            value = _TrustedUnpickler(io.BytesIO(body)).load()
        else:
            value = StateUnpickler(io.BytesIO(body), modules).load()
    except StateRefused as exc:
        raise AppLoadError(
            f"refusing to load {path}: it names {_printable(without_private_names(str(exc)))} "
            "(--trust-state-file loads a file you trust anyway)"
        ) from None
    except (EOFError, pickle.UnpicklingError, struct.error, IndexError, KeyError) as exc:
        # the pure-Python unpickler reports a cut or garbled stream with struct, index and memo-key errors
        raise AppLoadError(f"saved state {path} is truncated or damaged: {_printable(str(exc))}") from exc
    except (ImportError, AttributeError) as exc:
        reason = _printable(without_private_names(str(exc)))
        raise AppLoadError(f"saved state {path} needs code that cannot be found: {reason}") from exc
    except Exception as exc:
        reason = _printable(without_private_names(f"{type(exc).__name__}: {exc}"))
        raise AppLoadError(f"saved state {path} cannot be loaded: {reason}") from exc
    if not isinstance(value, Service):
        raise AppLoadError(f"saved state {path} holds a {type(value).__qualname__}, not a tapster Service")
    return value


def _printable(text: str) -> str:
    """Names read from a damaged file may hold line breaks or control bytes: escape them, so the error stays the
    one line the CLI prints and cannot forge further lines on the terminal or in the log."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _read_checked(path: str, trust_any_owner: bool) -> bytes:
    """The file's bytes, read only after the descriptor passed the link, type and (unless trusted) owner checks."""
    try:
        fd = open_regular(path, os.O_RDONLY, what="to load")
    except UnsafeFileError as exc:
        raise AppLoadError(str(exc)) from None
    except OSError as exc:
        raise AppLoadError(f"cannot read saved state {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        if not trust_any_owner:
            try:
                check_private(path, os.fstat(fd), what="to load", trusted_uids=frozenset({os.geteuid(), 0}))
            except UnsafeFileError as exc:
                raise AppLoadError(
                    f"{exc}; a saved state is code: use --trust-state-file only if you trust it"
                ) from None
        try:
            return handle.read()
        except OSError as exc:
            raise AppLoadError(f"cannot read saved state {path}: {exc.strerror}") from exc


def _split_header(path: str, data: bytes, trust_any_owner: bool) -> tuple[bytes, list[str] | None]:
    """The pickle and the recorded modules (``None`` for a format-1 file, loaded only when trusted)."""
    if data.startswith(_V1_HEADER):
        if not trust_any_owner:
            raise AppLoadError(
                f"refusing to load {path}: it was saved by an older tapster (TAPSTER-STATE 1) and records no "
                "module list to check it against; load it once with --trust-state-file if you trust it "
                "(the next save writes the new format)"
            )
        return data[len(_V1_HEADER) :], None
    if not data.startswith(HEADER):
        raise AppLoadError(f"{path} is not a tapster saved state (no {HEADER.strip().decode()} header)")
    line, newline, _ = data[len(HEADER) : len(HEADER) + _MAX_MODULES_LINE].partition(b"\n")
    if not newline or not line.startswith(_MODULES):
        raise AppLoadError(f"saved state {path} is truncated or damaged: no module list after its header")
    try:
        modules = line[len(_MODULES) :].decode().split()
    except UnicodeDecodeError:
        raise AppLoadError(
            f"saved state {path} is truncated or damaged: its module list is not text"
        ) from None
    if not all(all(part.isidentifier() for part in module.split(".")) for module in modules):
        raise AppLoadError(f"saved state {path} is truncated or damaged: its module list is not module names")
    start = len(HEADER) + len(line) + 1
    return data[start:], modules


class _TrustedUnpickler(pickle.Unpickler):
    """The plain unpickler, for a file the user trusts (--trust-state-file).

    It only adds finding plugin classes under the private module names plugin discovery loads them as.
    """

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("_tapster_plugin_"):
            from tapster.plugin import import_plugin_module

            import_plugin_module(module)
        return super().find_class(module, name)


def _find_unpicklable(root: Service) -> str:
    """Name the first thing in the tree that does not pickle, e.g. ``app/web: attribute 'sock' (socket)``."""
    for service in _walk(root):
        state = service.__getstate__()
        for attr, value in state.items():
            if attr in ("parent", "_children", "_named"):
                continue
            try:
                pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                kind = type(value).__qualname__
                return f"{service_path(service)}: attribute {attr!r} ({kind}) cannot be saved: {exc}"
        try:
            pickle.dumps(type(service), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            return f"{service_path(service)}: its class {type(service).__qualname__} cannot be saved: {exc}"
    return f"{service_path(root)} cannot be pickled"


def _walk(root: Service) -> list[Service]:
    found = [root]
    if isinstance(root, MultiService):
        for child in root:
            found.extend(_walk(child))
    return found
