"""Closing a listener without resetting the connections that wait in its accept queue.

The kernel completes a TCP (or unix) handshake before the server accepts: a client that connected just before a
stop may already have sent its request. Closing the listening socket resets every connection still queued,
so that client reads ``ECONNRESET`` although the server never saw it; under load at a stop (or a rolling
reload of ``SO_REUSEPORT`` workers, each with its own queue) that is a handful of lost requests every time.

So the listener is closed in three steps, with public loop API only:

1. the loop stops accepting, and what it accepted becomes a tracked connection (:func:`_stop_accepting`);
2. the listening socket is held open by a duplicate descriptor while the server closes (the kernel keeps
   queueing on a socket while any descriptor of it is open; the server's own close is what its loop expects);
3. the queue is accepted until it is empty, each connection is handed to the server's own protocol factory with
   ``loop.connect_accepted_socket`` (with the listener's TLS context), and the duplicate is closed.

A connection completing its handshake between the last accept and that close is still reset: the window is a
few microseconds instead of the whole queue. Without a descriptor to spare for the duplicate (``EMFILE``), or
for an accepted connection, the queue (or what is left of it) is reset as before, and one line says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
from typing import Any

from tapster._endpoint_server import ProtocolFactory, listener_tls

__all__ = ["HANDSHAKE_AT_STOP", "close_listener"]

logger = logging.getLogger("tapster.services")

HANDSHAKE_AT_STOP = 5.0
"""Seconds a TLS connection taken from the queue at the stop gets for its handshake (asyncio's default is 60): a
client that connected and then says nothing must not hold the stop until the shutdown deadline."""


async def close_listener(
    server: asyncio.AbstractServer, protocol_factory: ProtocolFactory, label: str
) -> list[asyncio.Task[Any]]:
    """Close ``server``; return the tasks adopting the connections its queue held (each ends once its protocol
    has ``connection_made``, or, for TLS, once the handshake is over or failed)."""
    loop = asyncio.get_running_loop()
    # asyncio's own loops accept through a reader that can be removed, and must not close the server before
    # what they accepted is attached to it; uvloop accepts on its own until the server closes, and would take
    # (and start TLS handshakes on) what is queued during those turns, before the tracker knows of it: there
    # the server closes first and the turns come after.
    native = isinstance(loop, asyncio.BaseEventLoop)
    if native:
        try:
            await _stop_accepting(server)
        except BaseException:  # cancelled (the shutdown deadline) during its loop turns: still close it
            server.close()
            raise
    held = [_hold(sock, label) for sock in getattr(server, "sockets", None) or ()]
    context = listener_tls(server)
    server.close()
    adopting: list[asyncio.Task[Any]] = []
    for sock in held:
        if sock is None:
            continue
        with sock:
            for accepted in _accept_all(sock, label):
                adopting.append(loop.create_task(_adopt(loop, accepted, protocol_factory, context, label)))
    if not native:
        try:
            await _turns()
        except BaseException:
            for task in adopting:
                task.cancel()
            raise
    return adopting


async def _stop_accepting(server: asyncio.AbstractServer) -> None:
    """Stop the loop's accepting, then let what was accepted become a tracked connection.

    On asyncio's selector loop an accepted socket takes three loop turns to reach the connection tracker: the
    accept callback queues a task that makes the transport (turn 1); the transport calls its protocol's
    ``connection_made`` with ``call_soon`` (turn 2), which is where a Protocol is tracked; for a stream handler,
    ``connection_made`` starts the handler's task, and the handler is tracked when that task first runs (turn
    3). A server closed before turn 1 drops the socket (``Server._attach`` fails, silently); a drain that looks
    before turn 3 finds nothing to wait for, the process exits, and the request in that socket is answered with
    a reset or a bare end-of-file. Rare for one process at its stop, but a rolling reload stops workers under
    load: a reload test saw it about once in 50 runs with one turn, once in 170 with two.

    Removing the listener's reader (public loop API; what the close does first anyway) ends the accepting,
    including an accept already queued for this turn (its handle is cancelled). Then three turns: the stop's
    step can run just before the transport task of the last accept in the same turn, so each link of the chain
    may need a turn of its own. uvloop makes the transport in the accept (no reader to remove; its accepting
    ends when the server closes, so :func:`close_listener` closes it first there) but still calls
    ``connection_made`` and starts a handler's task later, so the turns are taken after the close: three
    ``sleep(0)`` at a stop cost nothing measurable.
    """
    loop = asyncio.get_running_loop()
    for sock in getattr(server, "sockets", None) or ():
        with contextlib.suppress(OSError, ValueError, NotImplementedError, RuntimeError):
            loop.remove_reader(sock.fileno())
    await _turns()


async def _turns() -> None:
    """Three loop turns. 1: the transport is made; 2: connection_made (a Protocol is tracked); 3: a handler's
    task runs (and is tracked)."""
    for _ in range(3):
        await asyncio.sleep(0)


def _hold(listener: Any, label: str) -> socket.socket | None:
    """A duplicate of a listening stream socket, non-blocking; None for anything else or without a descriptor."""
    try:
        if listener.type != socket.SOCK_STREAM:
            return None
        held = socket.socket(fileno=os.dup(listener.fileno()))
    except OSError as exc:
        logger.warning(
            "%s: cannot keep the listener open to accept its queue at stop (%s): queued connections are reset "
            "unless another process holds the socket",
            label,
            exc.strerror or exc,
        )
        return None
    held.setblocking(False)
    return held


def _accept_all(sock: socket.socket, label: str) -> list[socket.socket]:
    """Every connection waiting in ``sock``'s queue now."""
    accepted: list[socket.socket] = []
    while True:
        try:
            connection, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return accepted
        except OSError as exc:
            # EMFILE/ENFILE: the rest of the queue is reset when the duplicate closes; ECONNABORTED: that
            # client gave up, try the next one.
            if exc.errno == errno.ECONNABORTED:
                continue
            logger.warning(
                "%s: accepted %d queued connection(s) at stop, then: %s; the rest are reset unless another "
                "process holds the socket",
                label,
                len(accepted),
                exc.strerror or exc,
            )
            return accepted
        connection.setblocking(False)
        accepted.append(connection)


async def _adopt(
    loop: asyncio.AbstractEventLoop,
    connection: socket.socket,
    protocol_factory: ProtocolFactory,
    context: ssl.SSLContext | None,
    label: str,
) -> None:
    try:
        if context is None:
            await loop.connect_accepted_socket(protocol_factory, connection)
        else:
            await loop.connect_accepted_socket(
                protocol_factory, connection, ssl=context, ssl_handshake_timeout=HANDSHAKE_AT_STOP
            )
    except asyncio.CancelledError:
        connection.close()
        raise
    except (OSError, ssl.SSLError, EOFError, TimeoutError) as exc:
        connection.close()
        logger.info("%s: a connection accepted at stop failed: %s", label, exc)
