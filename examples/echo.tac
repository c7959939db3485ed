"""echo: send back every byte received (seed 002, ported); port 7001, not the privileged 7.

    tapster -n -y examples/echo.tac       # then: nc 127.0.0.1 7001

The port can be overridden with ECHO_PORT (the tests and benchmarks use 0).
"""

import asyncio
import os

from tapster import Application
from tapster.services import StreamServer


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


application = Application("echo")
StreamServer(f"tcp:{os.environ.get('ECHO_PORT', '7001')}:interface=127.0.0.1", Echo).set_parent(application)
