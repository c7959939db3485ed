"""What stream services share: telling protocol factories from handlers, naming connections, tracking them.

Nothing here touches the data path. A protocol's ``connection_made`` and ``connection_lost`` are wrapped once per
connection (as instance attributes), so the server knows which connections are open and can drain them at stop;
``data_received`` is never wrapped. How a connection is ended at stop (the lingering close, the handlers'
stopping event) lives in ``_drain.py``.
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
from tapster.services._drain import LINGER, serving, start_lingering_close

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
    """Counts the connections of one service, gives each a log context, knows which are open, and drains them.

    The drain (:meth:`begin_stop`): every Protocol connection is told the server is stopping, through the
    protocol's optional ``stop_requested()`` hook, or, without the hook, closed with a lingering close; every
    handler sees :attr:`stopping` set, and a handler waiting in :func:`~tapster.services.unless_stopping` is
    woken. Nobody is given an end-of-file the peer did not send.
    """

    def __init__(self, label: str, linger: float = LINGER) -> None:
        self.label = label
        self.linger = linger
        self._numbers = itertools.count(1)
        # Open Protocol connections: transport -> (protocol, its log context), for the hook and its log lines.
        self.transports: dict[asyncio.BaseTransport, tuple[asyncio.BaseProtocol, ConnectionContext]] = {}
        self.handler_tasks: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        # Handler connections whose handler returned during the stop, in their lingering close.
        self.lingering: set[asyncio.BaseTransport] = set()
        self.stopping = asyncio.Event()
        # Handler tasks inside unless_stopping(), and those of them the stop has cancelled.
        self.waiting: set[asyncio.Task[Any]] = set()
        self.interrupted: set[asyncio.Task[Any]] = set()
        self._idle: asyncio.Event | None = None
        # Set by begin_stop. A connection accepted just before the listener closed can reach connection_made
        # after that: it is then told at once, or it would hold the stop until the shutdown timeout.
        self.closing = False

    @property
    def open_count(self) -> int:
        return len(self.transports) + len(self.handler_tasks) + len(self.lingering)

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
            transports[transport] = (protocol, context)
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
                self._tell(transport, protocol, context)

        def connection_lost(exc: Exception | None) -> None:
            transport = protocol.__dict__.pop("_tapster_transport", None)
            try:
                original_lost(exc)
            finally:
                if transport is not None:
                    transports.pop(transport, None)
                    self._maybe_idle()

        try:
            protocol.connection_made = connection_made  # type: ignore[method-assign]
            protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        except (
            AttributeError
        ):  # a protocol with __slots__: it works, untracked and without a peer in its context
            pass

    def wrap_handler(self, handler: StreamHandler) -> StreamHandler:
        """A handler that runs under a log context, is tracked while it runs, and closes its writer at the end.

        The writer is closed at once when the handler returns while the server runs; during a stop it gets a
        lingering close, tracked until the connection is gone, so the peer reads end-of-file, not a reset.
        """

        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            log_context.set(ConnectionContext(self.label, next(self._numbers), peer_host(writer.transport)))
            serving.set(self)
            task = asyncio.current_task()
            assert task is not None
            self.handler_tasks[task] = writer
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
                self._close_writer(writer)
                self._maybe_idle()

        return run

    def _close_writer(self, writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        if transport.is_closing():
            return
        if not self.closing:
            writer.close()
            return
        self.lingering.add(transport)
        if not start_lingering_close(transport, self.linger, self._linger_ended):
            self.lingering.discard(transport)  # closed at once (TLS): nothing will report the end

    def _linger_ended(self, transport: asyncio.BaseTransport) -> None:
        self.lingering.discard(transport)
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if self._idle is not None and self.open_count == 0:
            self._idle.set()

    def interrupt(self, task: asyncio.Task[Any]) -> None:
        """Wake a handler waiting in unless_stopping() by cancelling that wait (it then returns None)."""
        if task in self.waiting and task not in self.interrupted:
            self.interrupted.add(task)
            task.cancel()

    def begin_stop(self) -> None:
        """Tell every open connection the server is stopping (the listener is closed already)."""
        self.closing = True
        self.stopping.set()
        for transport, (protocol, context) in list(self.transports.items()):
            self._tell(transport, protocol, context)
        for task in list(self.waiting):
            self.interrupt(task)

    def _tell(
        self, transport: asyncio.BaseTransport, protocol: asyncio.BaseProtocol, context: ConnectionContext
    ) -> None:
        """Call the protocol's ``stop_requested()`` hook; without one, close the connection lingering."""
        if transport.is_closing():
            return
        hook = getattr(protocol, "stop_requested", None)
        if hook is None:
            start_lingering_close(transport, self.linger)
            return
        token = log_context.set(context)
        try:
            hook()
        except Exception:
            logger.exception("%s: stop_requested() raised; closing the connection", self.label)
            start_lingering_close(transport, self.linger)
        finally:
            log_context.reset(token)

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
        """Abort open transports and cancel running handlers now; return how many connections there were."""
        count = self.open_count
        for transport in [*self.transports, *self.lingering]:
            abort = getattr(transport, "abort", None)
            if abort is not None:
                abort()
            else:
                transport.close()
        self.transports.clear()
        self.lingering.clear()
        for task, writer in list(self.handler_tasks.items()):
            task.cancel()
            writer.transport.abort()
        return count
