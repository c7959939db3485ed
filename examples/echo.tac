"""echo: send back every byte received (seed 002, ported); port 7001, not the privileged 7.

    tapster -n -y examples/echo.tac       # then: nc 127.0.0.1 7001

The port can be overridden with ECHO_PORT (the tests and benchmarks use 0). examples/echo_stream.tac is the same
server written as an ``async def handle(reader, writer)``.

At SIGTERM the server drains (docs/running.md, "The shutdown sequence"): ``stop_requested`` below is called on
each open connection. Every byte received has been echoed already, so it closes at once, with a lingering
close: the client reads all its echoes, then end-of-file, never a reset.
"""

import asyncio
import os

from tapster import Application
from tapster.services import StreamServer, lingering_close


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def stop_requested(self):
        """The server is stopping: nothing read is left unanswered, so close (gently) now."""
        lingering_close(self.transport)


application = Application("echo")
StreamServer(f"tcp:{os.environ.get('ECHO_PORT', '7001')}:interface=127.0.0.1", Echo).set_parent(application)
