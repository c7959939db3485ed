"""The one way tapster turns ``module:attr`` text into an object: ``--logger``, entry points, ``--namespace``.

``pkgutil.resolve_name`` does the work (``pkg.mod:attr.sub`` and the older dotted ``pkg.mod.attr``); this module
only turns its several failures into one :class:`NameNotResolved` whose message names the spec and the reason,
so each caller adds what the name was for.
"""

from __future__ import annotations

import pkgutil
from typing import Any

__all__ = ["NameNotResolved", "resolve_name"]


class NameNotResolved(ValueError):
    """``spec`` names nothing importable; ``str()`` says why in a few words (without the caller's context)."""


def resolve_name(spec: str) -> Any:
    """The object ``spec`` names, imported now.

    Raises:
        NameNotResolved: the spec is malformed, its module cannot be imported (or raises while importing),
            or it has no such attribute.
    """
    try:
        return pkgutil.resolve_name(spec)
    except ValueError:
        raise NameNotResolved("expected 'module:attr' or 'module.attr'") from None
    except ImportError as exc:
        raise NameNotResolved(f"cannot import {exc.name or spec}: {exc}") from exc
    except AttributeError as exc:
        raise NameNotResolved(f"not found: {exc}") from None
    except Exception as exc:
        raise NameNotResolved(f"importing it failed: {type(exc).__name__}: {exc}") from exc
