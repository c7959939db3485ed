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
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from tapster.log._context import ConnectionContext, log_context
from tapster.services._drain import LINGER, is_lingering, serving, start_lingering_close

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


def _inherited(protocol: asyncio.BaseProtocol, name: str) -> bool:
    """Whether ``protocol.name`` is its class's method (not an instance attribute of its own)."""
    bound = getattr(protocol, name, None)
    return getattr(bound, "__self__", None) is protocol and getattr(bound, "__func__", None) is getattr(
        type(protocol), name, None
    )


class _Connection(ConnectionContext):
    """One Protocol connection, in one small object: its log context, its entry in the tracker, and what stands
    in for the protocol's ``connection_made`` and ``connection_lost``.

    It is set as both of those instance attributes and tells the two calls apart by their argument (a transport,
    or None or an exception). One slotted object per connection, instead of closures and bound methods, keeps an
    idle connection close to what a bare asyncio server spends on it. The peer is filled in when a log line
    first shows it. It holds the protocol only while the connection is open: ``connection_lost`` lets go of it,
    so a closed connection holds no reference cycle and its protocol is freed at once, without the collector.
    """

    # Slotted, with its base: 89 B a connection instead of 137 B with a dict (tracemalloc), a fifth of what
    # tapster adds to an idle connection; the RSS-per-connection goal of bench/connections.py passes narrowly.
    __slots__ = ("protocol", "tracker", "transport")

    shared = False  # the loop calls the factory in a context shared by every connection (uvloop)

    def __init__(self, tracker: ConnectionTracker, number: int) -> None:
        self.label = tracker.label
        self.number = number
        self.peer = None
        self.tracker = tracker
        self.protocol: asyncio.BaseProtocol | None = None
        self.transport: asyncio.BaseTransport | None = None

    def __str__(self) -> str:
        if self.peer is None and self.transport is not None:
            self.peer = peer_host(self.transport)
        return ConnectionContext.__str__(self)

    def watch(self, protocol: asyncio.BaseProtocol) -> None:
        """Stand in for ``protocol``'s ``connection_made`` and ``connection_lost`` (not for one with its own
        instance attributes of those names, nor for one with ``__slots__``: they work, untracked)."""
        # Set with setattr, never through vars(protocol): that would give every protocol a dict of its own
        # (64 bytes more per connection) where Python otherwise keeps its attributes inline.
        if not (_inherited(protocol, "connection_made") and _inherited(protocol, "connection_lost")):
            return
        try:
            protocol.connection_made = self  # type: ignore[method-assign, assignment]
            protocol.connection_lost = self  # type: ignore[method-assign, assignment]
        except AttributeError:
            return
        self.protocol = protocol

    def __call__(self, argument: Any) -> None:
        if argument is None or isinstance(argument, Exception):
            self._lost(argument)
        else:
            self._made(argument)

    def _made(self, transport: asyncio.BaseTransport) -> None:
        protocol = self.protocol
        assert protocol is not None
        tracker = self.tracker
        self.transport = transport
        tracker.connections.add(self)
        if self.shared:
            token = log_context.set(self)
            try:
                type(protocol).connection_made(protocol, transport)
            finally:
                log_context.reset(token)
        else:
            type(protocol).connection_made(protocol, transport)
        if tracker.closing:
            tracker._tell(transport, self)

    def _lost(self, exc: Exception | None) -> None:
        protocol, self.protocol = self.protocol, None
        if protocol is None:  # called a second time
            return
        token = log_context.set(self) if self.shared else None
        try:
            type(protocol).connection_lost(protocol, exc)
        finally:
            if token is not None:
                log_context.reset(token)
            if self.transport is not None:
                tracker = self.tracker
                tracker.connections.discard(self)
                tracker._maybe_idle()


class _SharedConnection(_Connection):
    """A connection whose factory ran in a shared context (uvloop): its context is set around connection_made
    and connection_lost (not the data path: data_received is never wrapped)."""

    __slots__ = ()

    shared = True


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
        # Connections accepted so far (each one's number): a plain int, bumped on the loop, read by /metrics.
        self.accepted = 0
        # Open Protocol connections (each knows its transport and protocol, and is its log context). A set, not
        # a dict by transport: an idle connection costs what a bare server's set of transports costs.
        self.connections: set[_Connection] = set()
        self.handler_tasks: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        # Handler connections whose handler returned during the stop, in their lingering close.
        self.lingering: set[asyncio.BaseTransport] = set()
        self.stopping = asyncio.Event()
        # Handler tasks inside unless_stopping(), and those of them the stop has cancelled.
        self.waiting: set[asyncio.Task[Any]] = set()
        self.interrupted: set[asyncio.Task[Any]] = set()
        # Connections taken from the listener's queue at the stop, until each is tracked above (or failed): a
        # TLS one is here for its handshake. Counted as open, cancelled by abort_all.
        self.adopting: set[asyncio.Task[Any]] = set()
        self._idle: asyncio.Event | None = None
        # Set by begin_stop. A connection accepted just before the listener closed can reach connection_made
        # after that: it is then told at once, or it would hold the stop until the shutdown timeout.
        self.closing = False

    @property
    def open_count(self) -> int:
        return len(self.connections) + len(self.handler_tasks) + len(self.lingering) + len(self.adopting)

    def wrap_protocol_factory(self, factory: ProtocolFactory) -> ProtocolFactory:
        """A factory whose protocols carry a log context and report their connection's life to this tracker."""

        def make_protocol() -> asyncio.BaseProtocol:
            number = self.accepted = self.accepted + 1
            # Plain asyncio calls the factory inside a task made for this one connection: setting the context
            # here reaches every later callback of the connection. uvloop calls it in the server's shared
            # context: there the context is set only around connection_made and restored afterwards.
            per_connection = asyncio.current_task() is not None
            connection = _Connection(self, number) if per_connection else _SharedConnection(self, number)
            if per_connection:
                log_context.set(connection)
            # asyncio would leave such a connection hanging with nothing in the log: say what failed (as twistd
            # does) and hang up on the client at once. The traceback goes in as text: a record holding a live
            # traceback (a handler that keeps records) would keep the accepting frame, and the socket, alive.
            try:
                protocol = factory()
            except Exception:
                logger.error(
                    "%s: the protocol factory raised; connection %d dropped\n%s",
                    self.label,
                    number,
                    traceback.format_exc().rstrip(),
                )
                return _HangUp()
            if not isinstance(protocol, asyncio.BaseProtocol):
                logger.error(
                    "%s: the protocol factory returned %r, not an asyncio Protocol; connection %d dropped",
                    self.label,
                    protocol,
                    number,
                )
                return _HangUp()
            connection.watch(protocol)
            return protocol

        return make_protocol

    def wrap_handler(self, handler: StreamHandler) -> StreamHandler:
        """A handler that runs under a log context, is tracked while it runs, and closes its writer at the end.

        The writer is closed at once when the handler returns while the server runs; during a stop it gets a
        lingering close, tracked until the connection is gone, so the peer reads end-of-file, not a reset.
        """

        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            log_context.set(ConnectionContext(self.label, self.accepted, peer_host(writer.transport)))
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

    def adopt(self, task: asyncio.Task[Any]) -> None:
        """Count ``task`` (making one connection from the listener's queue) as open until it is done, and then
        two loop turns more: a stream handler is tracked when its task first runs, a turn after connection_made.
        """
        self.adopting.add(task)
        loop = task.get_loop()

        def done(_: object) -> None:
            loop.call_soon(loop.call_soon, self._adopted, task)

        task.add_done_callback(done)

    def _adopted(self, task: asyncio.Task[Any]) -> None:
        self.adopting.discard(task)
        self._maybe_idle()

    def _close_writer(self, writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        if transport.is_closing() or is_lingering(transport):
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
        for connection in list(self.connections):
            assert connection.transport is not None
            self._tell(connection.transport, connection)
        for task in list(self.waiting):
            self.interrupt(task)

    def _tell(self, transport: asyncio.BaseTransport, connection: _Connection) -> None:
        """Call the protocol's ``stop_requested()`` hook; without one, close the connection lingering."""
        if transport.is_closing() or is_lingering(transport):
            return
        hook = getattr(connection.protocol, "stop_requested", None)
        if hook is None:
            start_lingering_close(transport, self.linger)
            return
        token = log_context.set(connection)
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
        opened = [connection.transport for connection in self.connections if connection.transport is not None]
        for transport in [*opened, *self.lingering]:
            abort = getattr(transport, "abort", None)
            if abort is not None:
                abort()
            else:
                transport.close()
        self.connections.clear()
        self.lingering.clear()
        for task in self.adopting:
            task.cancel()  # a TLS handshake still going on at the deadline
        self.adopting.clear()
        for task, writer in list(self.handler_tasks.items()):
            task.cancel()
            writer.transport.abort()
        return count
