"""echo_stream: examples/echo.tac written as a stream handler, ``async def handle(reader, writer)``; port 7002.

    tapster -n -y examples/echo_stream.tac       # then: nc 127.0.0.1 7002

The port can be overridden with ECHO_PORT (the tests use 0).

It echoes line by line. ``unless_stopping`` wraps the wait for the next line: when the server stops (SIGTERM),
that wait returns None instead of a line, so the handler answers every line it has received and returns; the
client then reads end-of-file, never a reset. Without it the handler would run until the shutdown timeout and
then be cancelled.
"""

import os

from tapster import Application
from tapster.services import StreamServer, unless_stopping


async def echo_lines(reader, writer):
    """Send back each line until the client closes or the server stops."""
    while line := await unless_stopping(reader.readline()):
        writer.write(line)
        await writer.drain()


application = Application("echo_stream")
StreamServer(f"tcp:{os.environ.get('ECHO_PORT', '7002')}:interface=127.0.0.1", echo_lines).set_parent(application)
