"""StreamServer: a listening stream socket (TCP, TLS, unix, systemd-passed) bound to a protocol or a handler."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tapster.endpoints import ServerEndpoint, parse_server
from tapster.errors import ListenError
from tapster.service import Service
from tapster.services._connection import (
    ConnectionTracker,
    Factory,
    ProtocolFactory,
    callable_label,
    check_factory,
    is_stream_handler,
)
from tapster.services._drain import LINGER
from tapster.services._listener_close import close_listener

__all__ = ["StreamServer"]

logger = logging.getLogger("tapster.services")


class StreamServer(Service):
    """Listen on ``endpoint`` and serve each connection with ``factory``.

    ``factory`` is an asyncio Protocol factory (often the Protocol class itself) or an
    ``async def handle(reader, writer)``. The socket is bound in ``privileged_start`` (so port 80 can be bound
    before privileges are dropped) and starts accepting in ``start``.

    Stopping drains (docs/running.md, "The shutdown sequence"): the listener closes first; then each open
    connection is told the server is stopping. A Protocol with a ``stop_requested()`` method has it called and
    stays open until it closes itself; a Protocol without one has its buffered writes flushed and gets a
    lingering close (:func:`~tapster.services.lingering_close`: the peer reads end-of-file, never a reset). A
    handler sees :func:`~tapster.services.server_stopping` set, a wait inside
    :func:`~tapster.services.unless_stopping` returns None, and the handler runs until it returns; its
    connection then gets the lingering close. Nobody is fed an end-of-file the client did not send. The stop
    waits for all of them: for ``drain_timeout`` seconds if given, otherwise until the runner's shutdown timeout
    cancels the stop. Whatever is still open then is aborted (handlers cancelled), and the log says how many.

    Args:
        endpoint: an endpoint string such as ``"tcp:8080:interface=127.0.0.1"``, or a port number.
        factory: a Protocol factory or a stream handler coroutine function.
        name: the service name (also the log context label; defaults to the factory's name).
        drain_timeout: seconds to wait for open connections at stop, ``None`` for no limit of its own.
        limit: the StreamReader buffer limit for handlers.
        linger: the most seconds a lingering close waits for a peer still sending after our end-of-file.
    """

    transient = ("_server", "_tracker", "_listening_factory")
    linger = LINGER  # a class default too, so a server saved before the option existed still loads

    def __init__(
        self,
        endpoint: str | int,
        factory: Factory,
        *,
        name: str | None = None,
        drain_timeout: float | None = None,
        limit: int = 2**16,
        linger: float = LINGER,
    ) -> None:
        self.endpoint: ServerEndpoint = parse_server(endpoint)
        if self.endpoint.is_datagram:
            raise ValueError(
                f"StreamServer needs a stream endpoint, not {self.endpoint.description!r}: use UDPServer"
            )
        check_factory(factory, "StreamServer")
        self.factory = factory
        self.name = name
        self.drain_timeout = drain_timeout
        self.limit = limit
        self.linger = linger
        self._server: asyncio.AbstractServer | None = None
        self._tracker: ConnectionTracker | None = None
        self._listening_factory: ProtocolFactory | None = None

    @property
    def label(self) -> str:
        return self.name or callable_label(self.factory)

    @property
    def server(self) -> asyncio.AbstractServer | None:
        """The asyncio server while listening."""
        return self._server

    @property
    def address(self) -> Any:
        """The address actually bound (``(host, port)`` for TCP), so a test can listen on port 0."""
        if self._server is None:
            raise RuntimeError(f"{self.label} is not listening")
        sockets = getattr(self._server, "sockets", None) or ()
        return sockets[0].getsockname() if sockets else None

    @property
    def port(self) -> int:
        """The TCP port actually bound."""
        address = self.address
        if not isinstance(address, tuple):
            raise RuntimeError(f"{self.label} on {self.endpoint.description} has no port")
        return int(address[1])

    @property
    def open_connections(self) -> int:
        return self._tracker.open_count if self._tracker is not None else 0

    @property
    def accepted_connections(self) -> int:
        """Connections accepted since the listener last started listening (a counter that resets then)."""
        return self._tracker.accepted if self._tracker is not None else 0

    def _protocol_factory(self, tracker: ConnectionTracker) -> ProtocolFactory:
        if not is_stream_handler(self.factory):
            return tracker.wrap_protocol_factory(self.factory)  # type: ignore[arg-type]
        handler = tracker.wrap_handler(self.factory)  # type: ignore[arg-type]
        limit = self.limit

        def make_stream_protocol() -> asyncio.BaseProtocol:
            return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=limit), handler)

        return make_stream_protocol

    async def privileged_start(self) -> None:
        await super().privileged_start()
        await self._listen()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        tracker = ConnectionTracker(self.label, self.linger)
        factory = self._protocol_factory(tracker)
        self._server = await self.endpoint.listen(factory, start_serving=False)
        self._tracker, self._listening_factory = tracker, factory

    async def start(self) -> None:
        await self._listen()
        assert self._server is not None
        # Two sockets with SO_REUSEADDR may both bind a port while neither listens; the second listen() then
        # fails here, after privileged_start succeeded. asyncio raises; uvloop only closes the socket.
        try:
            await self._server.start_serving()
        except OSError as exc:
            self._close_failed()
            if isinstance(exc, ListenError):
                raise
            raise self.endpoint._failed(exc) from exc
        sockets = getattr(self._server, "sockets", None) or ()
        if any(sock is None or sock.fileno() == -1 for sock in sockets):
            self._close_failed()
            raise ListenError(
                f"cannot listen on {self.endpoint.description}: listen() failed "
                "(another socket bound to the same address may be listening)"
            )
        await super().start()
        logger.info("%s starting on %s", self.label, self._where())

    def _close_failed(self) -> None:
        server, self._server, self._tracker, self._listening_factory = self._server, None, None, None
        if server is not None:
            server.close()

    def _where(self) -> str:
        assert self._server is not None
        address = self.address
        if self.endpoint.kind in ("tcp", "tcp6", "ssl") and isinstance(address, tuple):
            return str(address[1])
        return self.endpoint.bound_address(self._server)

    async def stop(self) -> None:
        await super().stop()
        server, tracker, factory = self._server, self._tracker, self._listening_factory
        if server is None or tracker is None or factory is None:
            return
        where = self._where()
        self._server = None
        # the listener first: nothing new arrives while the open connections drain; what its queue held is
        # accepted and drained with them (a close would reset it)
        try:
            try:
                adopting = await close_listener(server, factory, self.label)
            except asyncio.CancelledError:  # the shutdown deadline, before the drain began
                left = tracker.abort_all()
                if left:
                    logger.warning(
                        "%s: aborted %d connection(s) still open at the shutdown deadline", self.label, left
                    )
                raise
            for task in adopting:
                tracker.adopt(task)
            if tracker.open_count:
                logger.info("%s: stopping; draining %d open connection(s)", self.label, tracker.open_count)
            tracker.begin_stop()
            await tracker.wait_closed(self.drain_timeout)
        finally:
            logger.info("(%s on %s closed)", self.label, where)
        await server.wait_closed()
