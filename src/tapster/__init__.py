"""tapster: the twistd system for asyncio.

Build a tree of services (``Application``, ``MultiService``, ``StreamServer``, ...) in an application file or a
plugin, and let the ``tapster`` command run it as a well-behaved server.

The names below are loaded on first use (PEP 562), so ``tapster --help`` and ``tapster ctl`` do not pay for
importing asyncio; ``from tapster import Application`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tapster._version import __version__

if TYPE_CHECKING:
    from tapster.options import Options
    from tapster.plugin import ServiceMaker
    from tapster.service import Application, MultiService, Service

__all__ = [
    "Application",
    "MultiService",
    "Options",
    "Service",
    "ServiceMaker",
    "__version__",
]

_LAZY = {
    "Application": "tapster.service",
    "MultiService": "tapster.service",
    "Service": "tapster.service",
    "Options": "tapster.options",
    "ServiceMaker": "tapster.plugin",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tapster' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
