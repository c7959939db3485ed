"""fastpoetry as a plugin (seed 001, "The Twisted Plugin System", ported): ``tapster fastpoetry [options]``.

    cd examples
    tapster --help                                          # fastpoetry is listed with its description
    tapster fastpoetry --help                               # its own options
    tapster -n fastpoetry --port 10000 --poem poetry/ecstasy.txt

The folder this file sits in, ``tapster/plugins/`` with no ``__init__.py``, is what makes it a plugin: tapster
looks in every such folder on ``sys.path``, the working directory included. The file name does not matter, nor
does the name of the variable holding the ServiceMaker at the bottom.

The protocol and service are those of ``fastpoetry.tac``; a real project would import them from its package.
"""

import asyncio
import functools
import logging
import os

from tapster import MultiService, Service
from tapster.errors import UsageError
from tapster.options import Options
from tapster.services import StreamServer

log = logging.getLogger("fastpoetry")

EXAMPLE_POEM = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "poetry", "ecstasy.txt"))


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


class PoetryOptions(Options):
    """The words after ``tapster fastpoetry``."""

    parameters = [
        ("port", "p", 10000, "The port number to listen on (0: any free port).", int),
        ("poem", None, EXAMPLE_POEM, "The file containing the poem."),
        ("iface", None, "127.0.0.1", "The interface to listen on."),
    ]

    def post_options(self):
        if not os.path.isfile(self["poem"]):
            raise UsageError(f"--poem: no such file: {self['poem']}")


class PoetryServiceMaker:
    """The plugin: a name, a description, the options, and how to build the service from them."""

    tapname = "fastpoetry"
    description = "A fast poetry service."
    options = PoetryOptions

    def make_service(self, options):
        top_service = MultiService()
        poetry_service = PoetryService(options["poem"])
        poetry_service.set_parent(top_service)
        endpoint = f"tcp:{options['port']}:interface={options['iface']}"
        tcp_service = StreamServer(endpoint, functools.partial(PoetryProtocol, poetry_service))
        tcp_service.set_parent(top_service)
        return top_service


service_maker = PoetryServiceMaker()
