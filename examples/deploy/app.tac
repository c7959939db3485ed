"""The application the deployment examples run: an echo server on every interface (a container's port).

    APP_PORT (default 8080): the port. The examples (Dockerfile, kubernetes.yaml, app@.service) add the rest on
    the command line: --status for the probes, --drain-delay, --shutdown-timeout, JSON logs.

Each connection's stop_requested() closes it gently at the stop, so a client reads all its echoes, then
end-of-file (docs/running.md, "The shutdown sequence").
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
        lingering_close(self.transport)


application = Application("app")
StreamServer(f"tcp:{os.environ.get('APP_PORT', '8080')}", Echo).set_parent(application)
