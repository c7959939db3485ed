"""Outgoing connections: StreamClient connects once; ClientService keeps a connection up, reconnecting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

from tapster.endpoints import ClientEndpoint, parse_client
from tapster.log._context import ConnectionContext, log_context
from tapster.service import Service
from tapster.services._connection import (
    ConnectionTracker,
    Factory,
    ProtocolFactory,
    StreamHandler,
    callable_label,
    check_factory,
    is_stream_handler,
    peer_host,
)
from tapster.services._drain import LINGER, is_lingering, start_lingering_close

__all__ = ["ClientService", "StreamClient"]

logger = logging.getLogger("tapster.services")

_Inner = TypeVar("_Inner", asyncio.Protocol, asyncio.BufferedProtocol)

Connection = asyncio.BaseProtocol | tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Session:
    """One live client connection: its transport, what to hand to callers, and a future done when it ends."""

    def __init__(
        self,
        transport: asyncio.BaseTransport,
        value: Connection,
        ended: asyncio.Future[None],
        tracker: ConnectionTracker | None = None,
    ) -> None:
        self.transport = transport
        self.value = value
        self.ended = ended
        self.tracker = tracker  # a handler's: its task, its stop signal

    async def close(self) -> None:
        """End the connection as a stop should; never with an end-of-file the peer did not send.

        A Protocol's connection gets the lingering close at once: the peer reads our end-of-file after what was
        buffered, what it still sends is discarded, and ``connection_lost`` comes when the connection really
        ends. A handler is told first (``server_stopping()``, ``unless_stopping()``) and may finish what it is
        doing, the answer it awaits included: the lingering close begins when it returns, or after 2.5 s (a
        handler reading a stream that does not end, or a plain ``await reader.read()`` that never asks
        ``unless_stopping``), and its reads then end with the connection's real end. The stop also waits for
        what the handler wrote to be sent. A TLS connection cannot half-close: it is closed, and aborted if the
        peer has not answered our close within a second. After 5 s what is left is aborted and the handler
        cancelled. (Feeding the reader an end-of-file, as before, made the reader refuse the bytes still
        arriving: a traceback at every stop of a client whose peer was talking.)
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CLOSE_BOUND
        tracker = self.tracker
        if tracker is None:
            self._end()
            try:
                await asyncio.wait_for(asyncio.shield(self.ended), _CLOSE_BOUND)
            except TimeoutError:
                self._abort()
            return
        tracker.begin_stop()
        await asyncio.wait([self.ended], timeout=_HANDLER_GRACE)
        if not self.ended.done():
            self._end()
        # the handler's end, and its lingering close: what it wrote is still being sent
        await tracker.wait_closed(max(0.0, deadline - loop.time()))

    def _end(self) -> None:
        """The lingering close (tracked, for a handler); for TLS a close, aborted after a second."""
        transport = self.transport
        if transport.is_closing() or is_lingering(transport):
            return
        tracker = self.tracker
        if tracker is not None:
            tracker.lingering.add(transport)
            if start_lingering_close(transport, LINGER, tracker._linger_ended):
                return
            tracker.lingering.discard(transport)
        elif start_lingering_close(transport, LINGER):
            return
        asyncio.get_running_loop().call_later(_TLS_CLOSE_WAIT, self._abort)

    def _abort(self) -> None:
        abort = getattr(self.transport, "abort", None)
        if abort is not None:
            abort()  # nothing happens if the connection is gone already


_CLOSE_BOUND = 5.0  # seconds a client's stop waits for its connection to end
# Seconds a told handler may go on before the lingering close begins under it (it may be awaiting an answer).
_HANDLER_GRACE = _CLOSE_BOUND / 2
_TLS_CLOSE_WAIT = 1.0  # seconds a TLS peer gets to answer our close_notify


class _ForwarderBase(Generic[_Inner]):
    """Passes every callback on to a protocol whose ``connection_lost`` cannot be wrapped (it has ``__slots__``).

    Only such protocols pay for the extra call per callback; the others are watched through an instance attribute.
    The callbacks both protocol kinds share live here; the two subclasses add their own read path (asyncio picks
    it by the protocol's type, so a plain and a buffered protocol each need a forwarder of their own type).
    """

    def __init__(self, inner: _Inner, finished: Callable[[], None]) -> None:
        self._inner: _Inner = inner
        self._finished = finished

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            self._finished()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()


class _Forwarder(_ForwarderBase[asyncio.Protocol], asyncio.Protocol):
    """The forwarder for a plain ``Protocol``: data arrives as bytes."""

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)


class _BufferedForwarder(_ForwarderBase[asyncio.BufferedProtocol], asyncio.BufferedProtocol):
    """The forwarder for a ``BufferedProtocol``: data is read into the buffer the inner protocol hands out."""

    def get_buffer(self, sizehint: int) -> Any:
        return self._inner.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._inner.buffer_updated(nbytes)


class _HangUp(asyncio.Protocol):
    """Stands in when the protocol factory raised: the fresh connection is dropped, the error re-raised."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).abort()


def _watched(protocol: asyncio.BaseProtocol, finished: Callable[[], None]) -> asyncio.BaseProtocol:
    """The protocol to hand to asyncio, so that ``finished`` runs after the protocol's ``connection_lost``."""
    original_lost = protocol.connection_lost

    def connection_lost(exc: Exception | None) -> None:
        try:
            original_lost(exc)
        finally:
            finished()

    try:
        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
    except AttributeError:  # no __dict__ (__slots__), or a read-only attribute
        if isinstance(protocol, asyncio.BufferedProtocol):
            return _BufferedForwarder(protocol, finished)
        return _Forwarder(cast(asyncio.Protocol, protocol), finished)
    return protocol


async def _connect(endpoint: ClientEndpoint, factory: Factory, label: str, limit: int) -> _Session:
    """Connect once; the session's ``ended`` future completes when the connection is lost (or the handler ends).

    The protocol is built only once the connection exists (asyncio calls the factory then), so a failed attempt
    builds nothing. A factory that raises has its connection dropped and its error raised here.
    """
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def finished(_exc: object = None) -> None:
        if not ended.done():
            ended.set_result(None)

    if is_stream_handler(factory):
        reader = asyncio.StreamReader(limit=limit)
        stream_protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await endpoint.connect(lambda: stream_protocol)
        writer = asyncio.StreamWriter(transport, stream_protocol, reader, loop)  # type: ignore[arg-type]
        # The handler runs as a server's would: a log context, unless_stopping()/server_stopping(), and its
        # writer closed when it returns (with a lingering close once the stop has begun).
        tracker = ConnectionTracker(label)
        handler = tracker.wrap_handler(cast(StreamHandler, factory))

        async def run() -> None:
            await handler(reader, writer)

        loop.create_task(run()).add_done_callback(finished)
        return _Session(transport, (reader, writer), ended, tracker)

    context = ConnectionContext(label, 1)  # a handler's comes from its tracker
    built: list[asyncio.BaseProtocol] = []
    failed: list[Exception] = []

    def build() -> asyncio.BaseProtocol:
        token = log_context.set(context)
        try:
            protocol = cast(ProtocolFactory, factory)()
        except Exception as exc:
            failed.append(exc)
            return _HangUp()
        finally:
            log_context.reset(token)
        built.append(protocol)
        return _watched(protocol, finished)

    transport, _ = await endpoint.connect(build)
    if failed:
        transport.abort()
        raise failed[0]
    context.peer = peer_host(transport)
    return _Session(transport, built[0], ended)


class StreamClient(Service):
    """Connect to ``endpoint`` when started and close the connection when stopped (twistd's TCPClient).

    ``start()`` returns once connected and raises if the connection fails; it does not retry (ClientService does).
    ``factory`` is a Protocol factory or an ``async def handle(reader, writer)`` run as a task.
    """

    transient = ("_session",)

    def __init__(
        self, endpoint: str, factory: Factory, *, name: str | None = None, limit: int = 2**16
    ) -> None:
        self.endpoint: ClientEndpoint = parse_client(endpoint)
        check_factory(factory, type(self).__name__)
        self.factory = factory
        self.name = name
        self.limit = limit
        self._session: _Session | None = None

    @property
    def connection(self) -> Connection | None:
        """The protocol (or ``(reader, writer)`` for a handler) while connected."""
        return self._session.value if self._session is not None else None

    async def start(self) -> None:
        self._session = await _connect(
            self.endpoint, self.factory, self.name or callable_label(self.factory), self.limit
        )
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        session, self._session = self._session, None
        if session is not None:
            await session.close()


class ClientService(Service):
    """Keep a connection to ``endpoint`` open: reconnect after a failure or a loss, with capped backoff and jitter.

    The delay after the n-th consecutive failure is ``min(initial_delay * factor**(n-1), max_delay)`` scaled by a
    random factor in [0.5, 1.0] (so many clients restarted together do not reconnect in lockstep). A connection
    that succeeds resets the count, as in Twisted: after a loss the next attempt waits ``delay_after(1)``, so a
    peer that accepts and hangs up at once is retried at most once per ``initial_delay / 2``, never in a tight
    loop. A factory that raises counts as a failed attempt (logged with its traceback), not as the end of the
    service.

    ``start()`` returns at once: a server must start even while its peer is down. Code that needs the connection
    awaits ``when_connected()``. The lifecycle follows twistd's ClientService: a second ``start()`` does nothing;
    ``stop()`` returns once the connection is closed, and every concurrent ``stop()`` waits for that; a
    ``start()`` during a pending stop connects only after the old connection is closed.
    """

    transient = ("_task", "_session", "_stopping", "_waiters")

    _task: asyncio.Task[None] | None = None
    _session: _Session | None = None
    _stopping: asyncio.Task[None] | None = None
    _waiters: list[asyncio.Future[Any]] | None = None
    _restarts: int = 0  # start() calls waiting for a pending stop to end

    def __init__(
        self,
        endpoint: str,
        factory: Factory,
        *,
        name: str | None = None,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
        factor: float = 2.0,
        limit: int = 2**16,
    ) -> None:
        if initial_delay <= 0 or max_delay < initial_delay or factor < 1:
            raise ValueError("ClientService needs 0 < initial_delay <= max_delay and factor >= 1")
        self.endpoint: ClientEndpoint = parse_client(endpoint)
        check_factory(factory, type(self).__name__)
        self.factory = factory
        self.name = name
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.factor = factor
        self.limit = limit
        self.attempts = 0

    @property
    def _label(self) -> str:
        return self.name or callable_label(self.factory)

    def delay_after(self, failures: int) -> float:
        """The pause before the next attempt after ``failures`` consecutive failures."""
        try:
            base = min(self.initial_delay * self.factor ** max(failures - 1, 0), self.max_delay)
        except OverflowError:  # a peer down for a very long time: float power overflows, the cap applies
            base = self.max_delay
        import random  # not on the start-up path: only needed once a connection fails

        return base * random.uniform(0.5, 1.0)

    async def when_connected(self) -> Any:
        """Wait until connected; return the protocol (or ``(reader, writer)`` for a handler).

        Called while a stop is pending, it waits too: if ``start()`` is called before the stop ends, it returns
        the next connection; otherwise it raises when the stop ends.

        Raises:
            RuntimeError: the service is not running, or was stopped (and not restarted) while waiting.
        """
        session = self._session
        if session is not None and not session.ended.done() and self._stopping is None:
            return session.value
        if self._task is None and self._stopping is None and not self._restarts:
            raise RuntimeError(f"{self._label} is not running")
        if self._waiters is None:
            self._waiters = []
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)

    def _settle_waiters(self, value: Any = None, error: BaseException | None = None) -> None:
        waiters, self._waiters = self._waiters or [], None
        for waiter in waiters:
            if waiter.done():
                continue
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(value)

    async def start(self) -> None:
        """Launch the reconnect loop and return at once; after a pending stop, once that stop has ended."""
        if self._stopping is not None:
            self._restarts += 1
            try:
                while self._stopping is not None:
                    await asyncio.shield(self._stopping)
            finally:
                self._restarts -= 1
        if self._task is not None:  # already running (or another start() won the race): one loop only
            return
        self._task = asyncio.get_running_loop().create_task(self._keep_connected())
        await super().start()

    async def _keep_connected(self) -> None:
        label = self._label
        failures = 0
        while True:
            self.attempts += 1
            try:
                session = await _connect(self.endpoint, self.factory, label, self.limit)
            except Exception as exc:
                failures += 1
                delay = self.delay_after(failures)
                if isinstance(exc, OSError):
                    logger.info(
                        "%s: cannot connect to %s (%s); retrying in %.2f s",
                        label,
                        self.endpoint.description,
                        exc,
                        delay,
                    )
                else:  # a bug in the factory: loud, but the service keeps trying, as after a refused connect
                    logger.error(
                        "%s: connecting to %s failed; retrying in %.2f s",
                        label,
                        self.endpoint.description,
                        delay,
                        exc_info=exc,
                    )
                await asyncio.sleep(delay)
                continue
            failures = 0
            self._session = session
            self._settle_waiters(session.value)
            # Shielded: cancelling this task at stop must not cancel the future that close() waits on.
            await asyncio.shield(session.ended)
            self._session = None
            failures = 1
            delay = self.delay_after(failures)
            logger.info(
                "%s: connection to %s lost; reconnecting in %.2f s", label, self.endpoint.description, delay
            )
            await asyncio.sleep(delay)

    async def stop(self) -> None:
        """Stop reconnecting and close the connection; return when it is closed (every concurrent call waits)."""
        await super().stop()
        stopping = self._stopping
        if stopping is None:
            if self._task is None and self._session is None:
                return
            stopping = self._stopping = asyncio.get_running_loop().create_task(self._stop_now())
        try:
            await asyncio.shield(stopping)
        except asyncio.CancelledError:
            stopping.cancel()  # a caller's timeout (the runner's --shutdown-timeout) ends the stop for all
            raise

    async def _stop_now(self) -> None:
        try:
            task, self._task = self._task, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            session, self._session = self._session, None
            if session is not None:
                await session.close()
        finally:
            self._stopping = None
            if not self._restarts:
                self._settle_waiters(error=RuntimeError(f"{self._label} is not running: it was stopped"))
