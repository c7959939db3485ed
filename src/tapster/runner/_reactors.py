"""The event loops tapster can run on (``--reactor``), kept in twistd's vocabulary."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

from tapster._record import Record
from tapster.errors import StartupError

if TYPE_CHECKING:
    import asyncio


class Reactor(Record):
    """One event loop ``--reactor`` can name; immutable."""

    __slots__ = ("description", "extra", "module", "name")

    name: Final[str]
    description: Final[str]
    module: Final[str | None]  # the module that must be importable, None for the standard library
    extra: Final[str | None]  # the tapster extra that installs it

    def __init__(self, name: str, description: str, module: str | None, extra: str | None) -> None:
        self.name = name
        self.description = description
        self.module = module
        self.extra = extra

    @property
    def installed(self) -> bool:
        """Whether the loop's module imports here (a broken install counts as not installed)."""
        if self.module is None:
            return True
        try:
            importlib.import_module(self.module)
        except ImportError:
            return False
        return True


REACTORS: dict[str, Reactor] = {
    "asyncio": Reactor("asyncio", "the standard library's asyncio event loop (epoll)", None, None),
    "uvloop": Reactor("uvloop", "uvloop, asyncio's loop on libuv: faster sockets", "uvloop", "uvloop"),
}


def reactors_help() -> str:
    """The text of ``--help-reactors``: every loop, and whether it can be used here."""
    lines = ["Event loops (--reactor NAME):"]
    for reactor in REACTORS.values():
        state = "installed" if reactor.installed else f"not installed: pip install 'tapster[{reactor.extra}]'"
        lines.append(f"  {reactor.name:<10} {reactor.description} ({state})")
    return "\n".join(lines)


def check_reactor(name: str) -> Reactor:
    """The reactor called ``name``, or a StartupError saying what is wrong and what to do."""
    reactor = REACTORS.get(name)
    if reactor is None:
        raise StartupError(
            f"unknown reactor {name!r} (choose from: {', '.join(REACTORS)}; see --help-reactors)"
        )
    if reactor.module is not None:
        try:
            importlib.import_module(reactor.module)
        except ImportError as exc:
            from tapster._extras import extra_for

            if exc.name is not None and extra_for(exc) is None:  # installed, but a module it needs is missing
                raise StartupError(
                    f"reactor {name!r} cannot be imported: {type(exc).__name__}: {exc}"
                ) from exc
            raise StartupError(
                f"reactor {name!r} is not installed: pip install 'tapster[{reactor.extra}]'"
            ) from exc
    return reactor


def new_event_loop(name: str) -> asyncio.AbstractEventLoop:
    """A fresh event loop of the named kind; the standard loop needs no import beyond asyncio."""
    check_reactor(name)
    if name == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    import asyncio

    return asyncio.new_event_loop()


def describe_loop(loop: asyncio.AbstractEventLoop) -> str:
    """What ``event loop: ...`` says at start-up (twistd's ``reactor class: ...`` line)."""
    kind = type(loop)
    return f"{kind.__module__}.{kind.__qualname__}"
