"""Saved state: the application tree pickled at shutdown (``NAME-shutdown.tap``) and loaded again with ``-f``.

A saved state holds the services' configuration and whatever state they keep in plain attributes (a counter, a
setting changed at run time); live loop objects are never saved: each service lists them in ``transient`` and
rebuilds them in ``start()``. A ``.tap`` file is a pickle, which is code: tapster refuses to load one that is not
owned by the current user or that others may write, unless told to trust it.

File layout: a header line ``TAPSTER-STATE 1\\n`` followed by the pickle, so a foreign or truncated file is told
apart from a real one with a clear message instead of an unpickling traceback.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import stat
import tempfile
from typing import Any

from tapster.errors import AppLoadError, TapsterError
from tapster.service import MultiService, Service, service_path

__all__ = ["HEADER", "StateNotSaved", "load_state", "save_state", "state_file_name"]

logger = logging.getLogger("tapster")

HEADER = b"TAPSTER-STATE 1\n"


class StateNotSaved(TapsterError):
    """The tree could not be pickled; the message names the object that could not be."""


def state_file_name(root: Service) -> str:
    """``NAME-shutdown.tap``, twistd's name for the state saved at shutdown."""
    return f"{root.name or 'tapster'}-shutdown.tap"


def save_state(root: Service, path: str) -> None:
    """Write ``root`` to ``path`` atomically (temporary file, fsync, rename) with mode 0600.

    Raises:
        StateNotSaved: something in the tree cannot be pickled (the message gives its path in the tree), or
            the file cannot be written. No partial file is left in either case.
    """
    try:
        data = pickle.dumps(root, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise StateNotSaved(f"cannot save state to {path}: {_find_unpicklable(root)}") from exc
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, temporary = tempfile.mkstemp(prefix=".tapster-state-", dir=directory)
    except OSError as exc:
        raise StateNotSaved(f"cannot save state to {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(HEADER)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise StateNotSaved(f"cannot save state to {path}: {exc.strerror}") from exc


def load_state(path: str, *, trust_any_owner: bool = False) -> Service:
    """Load a tree saved by :func:`save_state`; its services come back not running.

    Raises:
        AppLoadError: the file is missing, unsafe (not ours, or writable by others, unless ``trust_any_owner``),
            truncated, not a tapster state, or holds something that is not a Service.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise AppLoadError(f"cannot read saved state {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        if not trust_any_owner:
            _check_safe(path, os.fstat(handle.fileno()))
        data = handle.read()
    if not data.startswith(HEADER):
        raise AppLoadError(f"{path} is not a tapster saved state (no {HEADER.strip().decode()} header)")
    try:
        value = _StateUnpickler(io.BytesIO(data[len(HEADER) :])).load()
    except (EOFError, pickle.UnpicklingError) as exc:
        raise AppLoadError(f"saved state {path} is truncated or damaged: {exc}") from exc
    except (ImportError, AttributeError) as exc:
        raise AppLoadError(f"saved state {path} needs code that cannot be found: {exc}") from exc
    if not isinstance(value, Service):
        raise AppLoadError(f"saved state {path} holds a {type(value).__qualname__}, not a tapster Service")
    return value


def _check_safe(path: str, info: os.stat_result) -> None:
    """Refuse a file another user could have written: unpickling it runs whatever code they chose."""
    if info.st_uid != os.geteuid():
        raise AppLoadError(
            f"refusing to load {path}: it is owned by uid {info.st_uid}, not by you (uid {os.geteuid()}); "
            "a saved state is code: use --trust-state-file if you trust it"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise AppLoadError(
            f"refusing to load {path}: it is writable by {'others' if info.st_mode & stat.S_IWOTH else 'its group'}; "
            "a saved state is code: chmod go-w it, or use --trust-state-file if you trust it"
        )


class _StateUnpickler(pickle.Unpickler):
    """Finds the classes of plugin modules, which live under private module names until discovery loads them."""

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
