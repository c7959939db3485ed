"""Outgoing connections: StreamClient connects once; ClientService keeps a connection up, reconnecting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

from tapster.endpoints import ClientEndpoint, parse_client
from tapster.log._context import ConnectionContext, log_context
from tapster.service import Service
from tapster.services._connection import (
    Factory,
    ProtocolFactory,
    StreamHandler,
    callable_label,
    check_factory,
    is_stream_handler,
    peer_host,
)

__all__ = ["ClientService", "StreamClient"]

logger = logging.getLogger("tapster.services")

Connection = asyncio.BaseProtocol | tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Session:
    """One live client connection: its transport, what to hand to callers, and a future done when it ends."""

    def __init__(
        self,
        transport: asyncio.BaseTransport,
        value: Connection,
        ended: asyncio.Future[None],
        task: asyncio.Task[None] | None = None,
    ) -> None:
        self.transport = transport
        self.value = value
        self.ended = ended
        self.task = task

    async def close(self) -> None:
        if isinstance(self.value, tuple):
            self.value[0].feed_eof()
        else:
            self.transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.ended), 5)
        except TimeoutError:
            if self.task is not None:
                self.task.cancel()
            abort = getattr(self.transport, "abort", None)
            if abort is not None:
                abort()


async def _connect(endpoint: ClientEndpoint, factory: Factory, label: str, limit: int) -> _Session:
    """Connect once; the session's ``ended`` future completes when the connection is lost (or the handler ends)."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()
    context = ConnectionContext(label, 1)

    def finished(_exc: object = None) -> None:
        if not ended.done():
            ended.set_result(None)

    if is_stream_handler(factory):
        reader = asyncio.StreamReader(limit=limit)
        stream_protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await endpoint.connect(lambda: stream_protocol)
        writer = asyncio.StreamWriter(transport, stream_protocol, reader, loop)  # type: ignore[arg-type]
        context.peer = peer_host(transport)

        async def run() -> None:
            log_context.set(context)
            try:
                await cast(StreamHandler, factory)(reader, writer)
            except Exception:
                logger.exception("unhandled error in client handler %s", label)
            finally:
                if not writer.is_closing():
                    writer.close()
                finished()

        task = asyncio.get_running_loop().create_task(run())
        return _Session(transport, (reader, writer), ended, task)

    token = log_context.set(context)
    try:
        protocol = cast(ProtocolFactory, factory)()
    finally:
        log_context.reset(token)
    original_lost = protocol.connection_lost

    def connection_lost(exc: Exception | None) -> None:
        try:
            original_lost(exc)
        finally:
            finished()

    protocol.connection_lost = connection_lost  # type: ignore[method-assign]
    transport, _ = await endpoint.connect(lambda: protocol)
    context.peer = peer_host(transport)
    return _Session(transport, protocol, ended)


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
    random factor in [0.5, 1.0] (so many clients restarted together do not reconnect in lockstep); a connection
    that succeeds resets it. ``start()`` returns at once: a server must start even while its peer is down. Code
    that needs the connection awaits ``when_connected()``.
    """

    transient = ("_task", "_session", "_connected")

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
        self._task: asyncio.Task[None] | None = None
        self._session: _Session | None = None
        self._connected: asyncio.Event | None = None

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

        Raises:
            RuntimeError: the service is not running, or was stopped while waiting.
        """
        while True:
            connected = self._connected
            if connected is None:
                raise RuntimeError(f"{self.name or callable_label(self.factory)} is not running")
            await connected.wait()
            session = self._session
            if session is not None and self._connected is connected:
                if not session.ended.done():
                    return session.value
                await asyncio.sleep(0)  # lost just now; let _keep_connected notice before waiting again

    async def start(self) -> None:
        self._connected = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._keep_connected())
        await super().start()

    async def _keep_connected(self) -> None:
        label = self.name or callable_label(self.factory)
        failures = 0
        assert self._connected is not None
        while True:
            self.attempts += 1
            try:
                session = await _connect(self.endpoint, self.factory, label, self.limit)
            except OSError as exc:
                failures += 1
                delay = self.delay_after(failures)
                logger.info(
                    "%s: cannot connect to %s (%s); retrying in %.2f s",
                    label,
                    self.endpoint.description,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            self._session = session
            self._connected.set()
            connected_at = asyncio.get_running_loop().time()
            # Shielded: cancelling this task at stop must not cancel the future that close() waits on.
            await asyncio.shield(session.ended)
            self._connected.clear()
            self._session = None
            # A peer that accepts and hangs up at once must not make us reconnect in a tight loop: only a
            # connection that lasted at least max_delay resets the backoff.
            lived = asyncio.get_running_loop().time() - connected_at
            failures = 1 if lived >= self.max_delay else failures + 1
            delay = self.delay_after(failures)
            logger.info(
                "%s: connection to %s lost; reconnecting in %.2f s", label, self.endpoint.description, delay
            )
            await asyncio.sleep(delay)

    async def stop(self) -> None:
        await super().stop()
        # Wake callers of when_connected() so they see the service is not running (left set with no session,
        # the event would make them spin).
        connected, self._connected = self._connected, None
        if connected is not None:
            connected.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session = self._session, None
        if session is not None:
            await session.close()
