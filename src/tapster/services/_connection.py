"""What stream services share: telling protocol factories from handlers, naming connections, tracking them.

Nothing here touches the data path. A protocol's ``connection_made`` and ``connection_lost`` are wrapped once per
connection (as instance attributes), so the server knows which connections are open and can close them at stop;
``data_received`` is never wrapped.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from tapster.log._context import ConnectionContext, log_context

logger = logging.getLogger("tapster.services")

ProtocolFactory: TypeAlias = Callable[[], asyncio.BaseProtocol]
StreamHandler: TypeAlias = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Factory: TypeAlias = ProtocolFactory | StreamHandler


def is_stream_handler(factory: Callable[..., Any]) -> bool:
    """True for ``async def handle(reader, writer)``; False for a Protocol class or a factory returning one."""
    target: Any = factory
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.isclass(target):
        return False
    if inspect.iscoroutinefunction(target):
        return True
    call = getattr(target, "__call__", None)  # noqa: B004 - an object with an async __call__ is a handler too
    return call is not None and inspect.iscoroutinefunction(call)


def check_factory(factory: object, owner: str) -> None:
    """Refuse, when the service is built, a factory no connection could ever use.

    Raises:
        TypeError: not callable, or a plain ``def handle(reader, writer)`` that forgot ``async`` (asyncio
            would call it, get None, and drop every connection silently).
    """
    if not callable(factory):
        raise TypeError(f"{owner} needs a Protocol factory or an async handler, not {factory!r}")
    target: Any = factory
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.isfunction(target) and not inspect.iscoroutinefunction(target):
        code = target.__code__
        bound = len(factory.args) if isinstance(factory, functools.partial) else 0
        required = code.co_argcount - len(target.__defaults__ or ()) - bound
        if required >= 2:
            raise TypeError(
                f"{owner}: {target.__qualname__}() takes (reader, writer) but is not 'async def': "
                "a stream handler must be a coroutine function"
            )


def callable_label(factory: Callable[..., Any]) -> str:
    """The name twistd would show for a factory: its class or function name."""
    target: Any = factory
    while isinstance(target, functools.partial):
        target = target.func
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return str(name).rsplit(".", 1)[-1] if "<locals>" in str(name) else str(name)


def peer_host(transport: asyncio.BaseTransport) -> str:
    """The peer as a short string: an IP address, or ``unix`` for a unix socket peer."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "unix" if isinstance(peer, str | bytes) else "-"


class _HangUp(asyncio.Protocol):
    """Stands in for a protocol the factory failed to make: drops the connection at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        abort = getattr(transport, "abort", None)
        if abort is not None:
            abort()
        else:
            transport.close()


class ConnectionTracker:
    """Counts the connections of one service, gives each a log context, and knows which are open."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._numbers = itertools.count(1)
        self.transports: set[asyncio.BaseTransport] = set()
        self.handler_tasks: dict[asyncio.Task[None], tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self._idle: asyncio.Event | None = None
        # Set by begin_graceful_close. A connection accepted just before the listener closed can reach
        # connection_made (or its handler task its first step) after that: it is then closed / given EOF at once,
        # or the stop would wait on it until the shutdown timeout.
        self.closing = False

    @property
    def open_count(self) -> int:
        return len(self.transports) + len(self.handler_tasks)

    def wrap_protocol_factory(self, factory: ProtocolFactory) -> ProtocolFactory:
        """A factory whose protocols carry a log context and report their connection's life to this tracker."""

        def make_protocol() -> asyncio.BaseProtocol:
            context = ConnectionContext(self.label, next(self._numbers))
            # Plain asyncio calls the factory inside a task made for this one connection: setting the context
            # here reaches every later callback of the connection. uvloop calls it in the server's shared
            # context: there we set it only around connection_made and restore it afterwards.
            per_connection = asyncio.current_task() is not None
            if per_connection:
                log_context.set(context)
            # asyncio would leave such a connection hanging with nothing in the log: say what failed (as twistd
            # does) and hang up on the client at once. The traceback goes in as text: a record holding a live
            # traceback (a handler that keeps records) would keep the accepting frame, and the socket, alive.
            try:
                protocol = factory()
            except Exception:
                import traceback

                logger.error(
                    "%s: the protocol factory raised; connection %d dropped\n%s",
                    self.label,
                    context.number,
                    traceback.format_exc().rstrip(),
                )
                return _HangUp()
            if not isinstance(protocol, asyncio.BaseProtocol):
                logger.error(
                    "%s: the protocol factory returned %r, not an asyncio Protocol; connection %d dropped",
                    self.label,
                    protocol,
                    context.number,
                )
                return _HangUp()
            self._watch(protocol, context, per_connection)
            return protocol

        return make_protocol

    def _watch(
        self, protocol: asyncio.BaseProtocol, context: ConnectionContext, per_connection: bool
    ) -> None:
        original_made = protocol.connection_made
        original_lost = protocol.connection_lost
        transports = self.transports

        def connection_made(transport: asyncio.BaseTransport) -> None:
            context.peer = peer_host(transport)
            transports.add(transport)
            protocol.__dict__["_tapster_transport"] = transport
            if per_connection:
                original_made(transport)
            else:
                token = log_context.set(context)
                try:
                    original_made(transport)
                finally:
                    log_context.reset(token)
            if self.closing:
                transport.close()

        def connection_lost(exc: Exception | None) -> None:
            transport = protocol.__dict__.pop("_tapster_transport", None)
            try:
                original_lost(exc)
            finally:
                if transport is not None:
                    transports.discard(transport)
                    self._maybe_idle()

        try:
            protocol.connection_made = connection_made  # type: ignore[method-assign]
            protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        except (
            AttributeError
        ):  # a protocol with __slots__: it works, untracked and without a peer in its context
            pass

    def wrap_handler(self, handler: StreamHandler) -> StreamHandler:
        """A handler that runs under a log context, is tracked while it runs, and closes its writer at the end."""

        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            log_context.set(ConnectionContext(self.label, next(self._numbers), peer_host(writer.transport)))
            task = asyncio.current_task()
            assert task is not None
            self.handler_tasks[task] = (reader, writer)
            if self.closing:
                reader.feed_eof()
            try:
                await handler(reader, writer)
            except asyncio.CancelledError:
                # Cancelled by abort_all (or a loop shutting down), and nobody awaits this task. Ending it
                # normally keeps Python 3.11's StreamReaderProtocol (which calls task.exception() on it) from
                # logging a traceback for every aborted handler.
                return
            except Exception:
                logger.exception("unhandled error in connection handler %s", self.label)
            finally:
                del self.handler_tasks[task]
                if not writer.is_closing():
                    writer.close()
                self._maybe_idle()

        return run

    def _maybe_idle(self) -> None:
        if self._idle is not None and self.open_count == 0:
            self._idle.set()

    def begin_graceful_close(self) -> None:
        """Close protocol connections politely and give handlers end-of-file, as if each client had finished."""
        self.closing = True
        for transport in list(self.transports):
            transport.close()
        for reader, _writer in list(self.handler_tasks.values()):
            reader.feed_eof()

    async def wait_closed(self, timeout: float | None) -> None:
        """Wait until every connection is gone; on timeout or cancellation, abort what is left and log how many."""
        if self.open_count == 0:
            return
        self._idle = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            cancelled = list(self.handler_tasks)
            left = self.abort_all()
            logger.warning("%s: aborted %d connection(s) still open after %s s", self.label, left, timeout)
            if cancelled:  # let the handlers' own clean-up run before stop() returns
                await asyncio.wait(cancelled)
        except asyncio.CancelledError:
            left = self.abort_all()
            logger.warning(
                "%s: aborted %d connection(s) still open at the shutdown deadline", self.label, left
            )
            raise
        finally:
            self._idle = None

    def abort_all(self) -> int:
        """Abort open transports and cancel running handlers now; return how many there were."""
        count = self.open_count
        for transport in list(self.transports):
            abort = getattr(transport, "abort", None)
            if abort is not None:
                abort()
            else:
                transport.close()
        self.transports.clear()
        for task, (_reader, writer) in list(self.handler_tasks.items()):
            task.cancel()
            writer.transport.abort()
        return count
