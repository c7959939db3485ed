"""The process side of tapster: load the app, set up the process, run the loop, stop cleanly.

``cli.py`` uses only the names in ``__all__``; the modules behind them are private (one step each, see
docs/architecture.md). Each name is imported on first use (PEP 562), so ``tapster ctl`` and ``tapster --help``
never import the event loop.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tapster.runner._appload import load_root
    from tapster.runner._config import RunConfig
    from tapster.runner._ctl import CtlOptions, run_ctl
    from tapster.runner._mktap import MktapOptions, run_mktap
    from tapster.runner._options import ServerOptions
    from tapster.runner._pid1 import serve_as_init
    from tapster.runner._run import run

__all__ = [
    "CtlOptions",
    "MktapOptions",
    "RunConfig",
    "ServerOptions",
    "load_root",
    "run",
    "run_ctl",
    "run_mktap",
    "serve_as_init",
]

_LAZY = {
    "CtlOptions": "tapster.runner._ctl",
    "MktapOptions": "tapster.runner._mktap",
    "RunConfig": "tapster.runner._config",
    "ServerOptions": "tapster.runner._options",
    "load_root": "tapster.runner._appload",
    "run": "tapster.runner._run",
    "run_ctl": "tapster.runner._ctl",
    "run_mktap": "tapster.runner._mktap",
    "serve_as_init": "tapster.runner._pid1",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tapster.runner' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
