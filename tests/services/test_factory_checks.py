"""A factory that cannot work is refused when the service is built; one that fails is logged, never silent."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tapster.services import ClientService, StreamClient, StreamServer


def handle_without_async(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The easy mistake: a handler written without `async`."""


@pytest.mark.parametrize("cls", [StreamServer, StreamClient, ClientService])
def test_non_async_handler_is_refused_at_construction(cls: type) -> None:
    """A plain def taking (reader, writer) is refused with a message saying it must be async."""
    endpoint = "tcp:0" if cls is StreamServer else "tcp:host=127.0.0.1:port=9"
    with pytest.raises(
        TypeError, match=r"handle_without_async\(\) takes \(reader, writer\) but is not 'async def'"
    ):
        cls(endpoint, handle_without_async)


def test_uncallable_factory_is_refused() -> None:
    """A factory that is not callable is refused at once."""
    with pytest.raises(TypeError, match="needs a Protocol factory or an async handler, not 42"):
        StreamServer("tcp:0", 42)  # type: ignore[arg-type]


def test_protocol_classes_and_async_handlers_are_accepted() -> None:
    """The two supported kinds pass the check."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pass

    StreamServer("tcp:0", asyncio.Protocol)
    StreamServer("tcp:0", handle)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: 1 / 0, "the protocol factory raised; connection 1 dropped"),
        (lambda: None, "the protocol factory returned None, not an asyncio Protocol; connection 1 dropped"),
    ],
)
def test_failing_factory_is_logged(caplog: pytest.LogCaptureFixture, factory: object, message: str) -> None:
    """A factory that raises or returns nonsense at connection time is logged with the service label."""

    async def scenario() -> None:
        server = StreamServer("tcp:0:interface=127.0.0.1", factory, name="broken")  # type: ignore[arg-type]
        await server.privileged_start()
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await reader.read()  # the server drops it
        writer.close()
        await server.stop()

    with caplog.at_level(logging.ERROR, logger="tapster.services"):
        asyncio.run(scenario())
    assert any(
        message in record.getMessage() and "broken" in record.getMessage() for record in caplog.records
    ), [r.getMessage() for r in caplog.records]
