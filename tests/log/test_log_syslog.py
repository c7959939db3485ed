"""The syslog destination, against a unix datagram socket the test binds itself."""

from __future__ import annotations

import contextvars
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tapster.errors import StartupError
from tapster.log import log_context
from tapster.log._syslog import make_syslog_handler

LOG_USER = 1


@pytest.fixture
def syslog_socket() -> Iterator[tuple[str, socket.socket]]:
    """A bound unix datagram socket standing in for /dev/log (in a short path: sun_path is ~108 bytes)."""
    directory = tempfile.mkdtemp(prefix="tsl")
    path = os.path.join(directory, "log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(10)  # a safety net only: datagrams are sent before recv is called
    yield path, server
    server.close()
    shutil.rmtree(directory)


def record(msg: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    return logging.makeLogRecord(
        {"msg": msg, "levelno": level, "levelname": logging.getLevelName(level), "name": "t", **extra}
    )


def test_message_format_and_priority(syslog_socket: tuple[str, socket.socket]) -> None:
    """A record arrives as '<pri>prefix[pid]: [context] message', daemon facility, priority from the level."""
    path, server = syslog_socket
    handler = make_syslog_handler("myapp", address=path)
    try:
        handler.handle(record("hello wörld"))
        handler.handle(record("bad", logging.ERROR))
    finally:
        handler.close()
    pid = os.getpid()
    assert server.recv(4096) == f"<30>myapp[{pid}]: [-] hello wörld\x00".encode()  # daemon(3)*8 + info(6)
    assert server.recv(4096) == f"<27>myapp[{pid}]: [-] bad\x00".encode()  # daemon(3)*8 + err(3)


def test_context_and_facility(syslog_socket: tuple[str, socket.socket]) -> None:
    """The log context fills the [context] field and the facility argument sets the priority's facility."""
    path, server = syslog_socket
    handler = make_syslog_handler("p", facility=LOG_USER, address=path)

    def inside() -> None:
        log_context.set("Echo,1,127.0.0.1")
        handler.handle(record("hi", logging.WARNING))

    try:
        contextvars.copy_context().run(inside)
    finally:
        handler.close()
    assert server.recv(4096) == f"<12>p[{os.getpid()}]: [Echo,1,127.0.0.1] hi\x00".encode()


def test_multiline_sent_line_by_line(syslog_socket: tuple[str, socket.socket]) -> None:
    """Each line of a multi-line message (a traceback) is its own syslog message with the same head."""
    path, server = syslog_socket
    handler = make_syslog_handler("p", address=path)
    try:
        try:
            raise ValueError("boom")
        except ValueError as exc:
            handler.handle(record("failed\n", logging.ERROR, exc_info=(type(exc), exc, exc.__traceback__)))
    finally:
        handler.close()
    head = f"<27>p[{os.getpid()}]: [-] "
    first = server.recv(4096).decode()
    assert first == f"{head}failed\x00"
    server.setblocking(False)
    rest = []
    while True:
        try:
            rest.append(server.recv(4096).decode())
        except BlockingIOError:
            break
    assert rest[0] == f"{head}Traceback (most recent call last):\x00"
    assert rest[-1] == f"{head}ValueError: boom\x00"
    assert all(message.startswith(head) for message in rest)


def test_missing_socket_is_startup_error(tmp_path: Path) -> None:
    """No socket at the address: StartupError naming it."""
    missing = tmp_path / "log"
    with pytest.raises(StartupError, match=rf"^no syslog socket at {missing}"):
        make_syslog_handler(address=str(missing))


def test_stale_socket_is_startup_error() -> None:
    """A socket file nobody listens on: StartupError naming it."""
    directory = tempfile.mkdtemp(prefix="tsl")
    path = os.path.join(directory, "log")
    try:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        server.close()  # the file stays, the listener is gone
        with pytest.raises(StartupError, match=rf"^cannot connect to the syslog socket at {path}: "):
            make_syslog_handler(address=path)
    finally:
        shutil.rmtree(directory)
