"""Which tapster extra installs a third-party module, so an import that fails for want of one says how to fix it.

tapster's core needs only the standard library; SSH, the manhole's prompt, password hashes, uvloop, the web
server and the FTP server need packages installed by an extra (``pip install 'tapster[ssh]'``). A bare ``No
module named 'asyncssh'`` leaves a new user to guess which; every place where such an ImportError reaches the
user adds the extra to its one line through :func:`install_hint`, or raises :class:`MissingExtraError` through
:func:`import_extra`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tapster.errors import TapsterError

__all__ = ["EXTRAS", "MissingExtraError", "extra_for", "import_extra", "install_hint", "missing"]

EXTRAS: dict[str, str] = {
    "asyncssh": "ssh",
    "prompt_toolkit": "ssh",
    "ptpython": "ssh",
    "bcrypt": "ssh",
    "argon2": "ssh",
    "passlib": "ssh",
    "aiohttp": "web",
    "a2wsgi": "web",
    "prometheus_client": "metrics",
    "aioftp": "ftp",
    "uvloop": "uvloop",
    "setproctitle": "all",
}
"""Top-level module -> the extra (pyproject.toml's optional-dependencies) that installs it."""


class MissingExtraError(TapsterError, ImportError):
    """A module an extra installs is missing; ``str()`` is the one line to show, with the pip command."""


def extra_for(exc: BaseException) -> str | None:
    """The extra whose missing module caused ``exc`` (an ImportError, or one it was raised from), or None.

    Only a module that is itself absent counts (``exc.name``): an installed package failing to import one of its
    own dependencies is a broken install, which the extra's name would not explain.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ImportError) and current.name:
            extra = EXTRAS.get(current.name.partition(".")[0])
            if extra is not None:
                return extra
        current = current.__cause__ or current.__context__
    return None


def install_hint(exc: BaseException) -> str:
    """``" (pip install 'tapster[ssh]')"`` when ``exc`` comes from a module an extra installs; else ``""``."""
    extra = extra_for(exc)
    return f" (pip install 'tapster[{extra}]')" if extra else ""


def import_extra(module: str, purpose: str) -> ModuleType:
    """Import ``module``, which an extra installs, for ``purpose`` (``"the manhole's SSH server"``).

    Raises:
        MissingExtraError: it is not installed: ``the manhole's SSH server needs asyncssh: No module named
            'asyncssh' (pip install 'tapster[ssh]')``. Other import failures propagate unchanged.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing(exc, purpose) from exc


def missing(exc: ImportError, purpose: str) -> ImportError:
    """``exc`` as a :class:`MissingExtraError` naming ``purpose`` and the extra, or ``exc`` itself when no extra
    installs the missing module (for ``raise missing(exc, ...) from exc`` in an ``except ImportError``)."""
    hint = install_hint(exc)
    if not hint:
        return exc
    return MissingExtraError(f"{purpose} needs {exc.name}: {exc}{hint}", name=exc.name)
