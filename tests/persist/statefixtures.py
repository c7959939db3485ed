"""Importable services for saved-state tests (classes in a saved state must be importable when it loads)."""

from __future__ import annotations

import asyncio
import socket
import subprocess

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


def touch(path: str) -> None:
    """A module-level function with a side effect: a state may store it but must never call it while loading."""
    with open(path, "w") as marker:
        marker.write("ran\n")


class Toucher(Service):
    """A service with a method that has a side effect, for bound-method tests."""

    def __init__(self) -> None:
        self.name = "toucher"

    def touch(self, path: str) -> None:
        touch(path)


class Exploding(Service):
    """Raises from __setstate__: loading it must be one clear error, whatever the exception."""

    def __setstate__(self, state: dict[str, object]) -> None:
        raise ValueError("this state explodes")


class Reduced:
    """Pickles as ``func(*args)``: the shape every malicious pickle has (pickle calls ``func`` on load)."""

    def __init__(self, func: object, *args: object) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (self.func, self.args)


ReexportedPopen = subprocess.Popen  # a standard-library class this module re-exports
