"""The service tree: named services with an async start/stop lifecycle, grouped under an Application.

A tac file or a plugin builds the tree without running anything; the runner then calls ``privileged_start()`` on
the whole tree (still as root: bind port 80 here), drops privileges, and calls ``start()``. ``start()`` returns only
when the service is really ready, or raises; ``stop()`` returns when it has really stopped.

Subclasses override the three coroutines and call ``super()``. The base class keeps ``running`` true between start
and stop. ``running`` is deliberately a plain attribute, so a subclass written in twistd's style, whose
``__init__`` never calls ``super().__init__()``, still works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Generator, Iterator
from typing import Any, ClassVar

from tapster.errors import ServiceTreeError

__all__ = ["Application", "MultiService", "Service", "service_path", "still_stopping"]

logger = logging.getLogger(__name__)


class _Completed:
    """An awaitable that is already done: what add/remove return when nothing needed scheduling."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover - makes this a generator


_COMPLETED = _Completed()


class _ServiceName:
    """``Service.name``: a plain attribute, except that a service with a parent cannot be renamed (as in twistd).

    The parent indexes its children by name, so a rename under it would leave ``parent["old"]`` finding the
    service and ``parent["new"]`` failing. The value lives in the instance ``__dict__`` under ``name``, so saved
    states and subclasses that never call ``super().__init__()`` see no difference.
    """

    def __get__(self, service: Service | None, owner: type | None = None) -> str | None:
        if service is None:
            return None
        value: str | None = service.__dict__.get("name")
        return value

    def __set__(self, service: Service, value: str | None) -> None:
        parent = service.__dict__.get("parent")
        if parent is not None and value != service.__dict__.get("name"):
            raise ServiceTreeError(
                f"cannot rename {_label(service)} to {value!r} while it is a child of {_label(parent)}; "
                "call disown_parent() first"
            )
        service.__dict__["name"] = value


class Service:
    """One node of the tree: something that can be started and stopped.

    ``transient`` names attributes that hold live loop objects (servers, transports, tasks). They are dropped when
    the service is pickled into a saved state (``NAME-shutdown.tap``) and come back as ``None``, to be rebuilt by
    ``start()``. Each class lists its own; the lists of base classes are added automatically.
    """

    name = _ServiceName()
    parent: MultiService | None = None
    running: bool = False
    transient: ClassVar[tuple[str, ...]] = ()

    def set_parent(self, parent: MultiService) -> Awaitable[None]:
        """Attach this service to ``parent``; if the parent is running, this service is started too.

        Returns an awaitable for that start (already complete when the parent is not running), so code in a
        running server can ``await service.set_parent(app)`` to know the new service is ready.

        Raises:
            ServiceTreeError: this service already has a parent, or ``parent`` has a child with this name.
        """
        if self.parent is not None:
            raise ServiceTreeError(
                f"{_label(self)} already has a parent, {_label(self.parent)}; "
                f"call disown_parent() before adding it to {_label(parent)}"
            )
        return parent.add_service(self)

    def set_name(self, name: str | None) -> None:
        """Set ``name`` (twistd's ``setName``); the same as assigning it.

        Raises:
            ServiceTreeError: the service has a parent (the parent's index would keep the old name).
        """
        self.name = name

    def disown_parent(self) -> Awaitable[None]:
        """Detach from the parent; a running service is stopped (await the result to know it has)."""
        if self.parent is None:
            return _COMPLETED
        return self.parent.remove_service(self)

    async def privileged_start(self) -> None:
        """Do what needs the privileges the process starts with (binding low ports); runs before ``start()``."""

    async def start(self) -> None:
        """Start; return only when ready. The base class marks the service running."""
        self.running = True

    async def stop(self) -> None:
        """Stop; return only when stopped. The base class marks the service not running."""
        self.running = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["running"] = False
        for attr in _transient_attributes(type(self)):
            state.pop(attr, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for attr in _transient_attributes(type(self)):
            state.setdefault(attr, None)
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self.name!r}>" if self.name else f"<{type(self).__qualname__}>"


class MultiService(Service):
    """A service that holds children, starts them in order and stops them in reverse.

    Starting awaits each child before the next, so a later child may rely on an earlier one being ready.
    Stopping calls ``stop()`` on the children in reverse order and lets the stops run concurrently: a server with
    many listeners stops as fast as the slowest one, not the sum of all.
    """

    transient: ClassVar[tuple[str, ...]] = ("_pending_stops",)

    def __init__(self) -> None:
        self._children: list[Service] = []
        self._named: dict[str, Service] = {}
        self._pending_stops: set[Service] | None = None

    def add_service(self, service: Service) -> Awaitable[None]:
        """Add a child; when this service is running, the child is started (see ``Service.set_parent``)."""
        if service.parent is not None:
            raise ServiceTreeError(
                f"{_label(service)} already has a parent, {_label(service.parent)}; "
                f"call disown_parent() before adding it to {_label(self)}"
            )
        if service.name is not None:
            if service.name in self._named:
                raise ServiceTreeError(f"{_label(self)} already has a child named {service.name!r}")
            self._named[service.name] = service
        self._children.append(service)
        service.parent = self
        if not self.running:
            return _COMPLETED
        return asyncio.ensure_future(_start_one(service))

    def remove_service(self, service: Service) -> Awaitable[None]:
        """Remove a child; a running child is stopped (await the result to know it has)."""
        try:
            self._children.remove(service)
        except ValueError:
            raise ServiceTreeError(f"{_label(service)} is not a child of {_label(self)}") from None
        if service.name is not None:
            self._named.pop(service.name, None)
        service.parent = None
        if not service.running:
            return _COMPLETED
        return asyncio.ensure_future(service.stop())

    def __getitem__(self, name: str) -> Service:
        try:
            return self._named[name]
        except KeyError:
            raise KeyError(f"{_label(self)} has no child named {name!r}") from None

    def __iter__(self) -> Iterator[Service]:
        return iter(list(self._children))

    def __len__(self) -> int:
        return len(self._children)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            return item in self._named
        return item in self._children

    async def privileged_start(self) -> None:
        await super().privileged_start()
        for child in list(self._children):
            await child.privileged_start()

    async def start(self) -> None:
        """Start children in order; if one fails (or the start is cancelled), stop those already started."""
        await super().start()
        started: list[Service] = []
        try:
            for child in list(self._children):
                try:
                    await child.start()
                except BaseException as exc:
                    # the deepest service whose start raised (sys.exit() included, cancellation not): what the
                    # runner names in its one-line error
                    if not isinstance(exc, asyncio.CancelledError) and not hasattr(
                        exc, "tapster_service_path"
                    ):
                        with contextlib.suppress(AttributeError, TypeError):
                            exc.tapster_service_path = service_path(child)  # type: ignore[attr-defined]
                    raise
                started.append(child)
        except BaseException:
            for child in reversed(started):
                try:
                    await child.stop()
                except Exception:
                    logger.exception("error stopping %s after a failed start", service_path(child))
            await Service.stop(self)
            raise

    async def stop(self) -> None:
        """Stop running children concurrently (``stop()`` called in reverse order); log failures, never skip one.

        A child whose ``stop`` is the base class's (it only marks the service stopped, and cannot wait) is stopped
        right here; only the others get a task each, run concurrently. A tree of many plain services thus stops
        without one task per service, which costs more than the stop itself.
        """
        await super().stop()
        children = [child for child in reversed(self._children) if child.running]
        waiting: list[Service] = []
        for child in children:
            if _stops_at_once(child):
                _stop_now(child)
            else:
                waiting.append(child)
        if not waiting:
            return
        self._pending_stops = set()  # filled as each child's stop() really begins
        try:
            results = await asyncio.gather(
                *(self._stop_child(child) for child in waiting), return_exceptions=True
            )
        finally:
            self._pending_stops = None
        for child, result in zip(waiting, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                logger.error(
                    "error stopping %s",
                    service_path(child),
                    exc_info=(type(result), result, result.__traceback__),
                )

    async def _stop_child(self, child: Service) -> None:
        if self._pending_stops is not None:
            self._pending_stops.add(child)
        try:
            await child.stop()
        finally:
            if self._pending_stops is not None:
                self._pending_stops.discard(child)


def _stops_at_once(service: Service) -> bool:
    """Whether ``service.stop`` is :meth:`Service.stop` itself, which never waits and never fails."""
    return type(service).stop is Service.stop and "stop" not in vars(service)


def _stop_now(service: Service) -> None:
    """Run a stop that cannot wait (see :func:`_stops_at_once`) to its end, without a task."""
    stopping = service.stop().__await__()
    try:
        stopping.send(None)
    except StopIteration:
        return
    raise RuntimeError(f"{_label(service)}: Service.stop() waited")  # pragma: no cover - it never awaits


class Application(MultiService):
    """The root of the tree: one per process. Its name gives the state file ``NAME-shutdown.tap``, the default
    process title, and a ``uid``/``gid`` used when the command line gives none."""

    def __init__(self, name: str, uid: int | str | None = None, gid: int | str | None = None) -> None:
        super().__init__()
        if not isinstance(name, str) or not name:
            raise ValueError(f"an Application needs a non-empty name, got {name!r}")
        self.name = name
        self.uid = uid
        self.gid = gid


async def _start_one(service: Service) -> None:
    await service.privileged_start()
    await service.start()


def _label(service: Service) -> str:
    kind = type(service).__qualname__
    return f"{kind} {service.name!r}" if service.name else kind


def service_path(service: Service) -> str:
    """A readable path from the root, e.g. ``fastpoetry/MultiService/'db'``: how logs name a service."""
    parts: list[str] = []
    node: Service | None = service
    while node is not None:
        parts.append(node.name if node.name else type(node).__qualname__)
        node = node.parent
    return "/".join(reversed(parts))


def still_stopping(root: Service) -> list[Service]:
    """The services whose ``stop()`` has been called and has not returned, deepest first.

    A parent whose stop waits only on a slow child is not listed; the child is. This is what the runner logs when
    the shutdown timeout passes, so the user learns which service blocks shutdown.
    """
    found: list[Service] = []

    def visit(node: Service) -> bool:
        pending = getattr(node, "_pending_stops", None) if isinstance(node, MultiService) else None
        if not pending:
            return False
        for child in list(pending):  # a copy: the runner's shutdown guard reads this from another thread
            if not visit(child):
                found.append(child)
        return True

    visit(root)
    return found


def _transient_attributes(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        names.update(klass.__dict__.get("transient", ()))
    return names
