"""fastpoetry: send a poem to each client, then hang up (seed 001, "Twisted Daemonologie", ported).

    tapster -n -y examples/fastpoetry.tac      # foreground, log on stdout; Ctrl-C stops it
    tapster -y examples/fastpoetry.tac         # a daemon: tapster.pid and tapster.log appear
    nc 127.0.0.1 10000                         # fetch the poem

Like a twistd tac file, this only builds the application; tapster starts it. The port can be overridden with
FASTPOETRY_PORT (the tests use 0: any free port).
"""

import asyncio
import functools
import logging
import os

from tapster import Application, MultiService, Service
from tapster.services import StreamServer

log = logging.getLogger("fastpoetry")


class PoetryProtocol(asyncio.Protocol):
    """Send the service's poem and close the connection."""

    def __init__(self, service):
        self.service = service

    def connection_made(self, transport):
        poem = self.service.poem
        log.info("sending %d bytes of poetry to %s", len(poem), transport.get_extra_info("peername"))
        transport.write(poem)
        transport.close()

    def stop_requested(self):
        """The server is stopping. Nothing to finish: the connection closes itself once the poem is sent."""


class PoetryService(Service):
    """Holds the poem; loads it when started."""

    def __init__(self, poetry_file):
        self.poetry_file = poetry_file
        self.poem = b""

    async def start(self):
        await super().start()
        with open(self.poetry_file, "rb") as handle:
            self.poem = handle.read()
        log.info("loaded a poem from: %s", self.poetry_file)


# configuration parameters
port = int(os.environ.get("FASTPOETRY_PORT", "10000"))
iface = "127.0.0.1"
poetry_file = os.path.join(os.path.dirname(__file__), "poetry", "ecstasy.txt")

# the poetry service and the listener that serves it, grouped together
top_service = MultiService()
poetry_service = PoetryService(poetry_file)
poetry_service.set_parent(top_service)
tcp_service = StreamServer(f"tcp:{port}:interface={iface}", functools.partial(PoetryProtocol, poetry_service))
tcp_service.set_parent(top_service)

# the one variable tapster looks for
application = Application("fastpoetry")
top_service.set_parent(application)
