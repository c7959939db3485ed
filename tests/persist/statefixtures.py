"""Importable services for saved-state tests (classes in a saved state must be importable when it loads)."""

from __future__ import annotations

import asyncio
import socket

from tapster import Application, Service
from tapster.services import StreamServer


class Counter(Service):
    """Counts connections; the count is state that must survive a save and a load."""

    def __init__(self) -> None:
        self.name = "counter"
        self.count = 0


class CountingProtocol(asyncio.Protocol):
    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.counter.count += 1
        transport.write(f"{self.counter.count}\n".encode())  # type: ignore[attr-defined]
        transport.close()


class CountingFactory:
    """A picklable protocol factory bound to the counter."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def __call__(self) -> CountingProtocol:
        return CountingProtocol(self.counter)


def build(endpoint: str = "tcp:0:interface=127.0.0.1") -> Application:
    app = Application("counting")
    counter = Counter()
    counter.set_parent(app)
    StreamServer(endpoint, CountingFactory(counter), name="listener").set_parent(app)
    return app


class HoldsSocket(Service):
    """Keeps a live socket in a plain attribute: exactly what must not be saved."""

    def __init__(self) -> None:
        self.name = "holder"
        self.sock = socket.socket()
