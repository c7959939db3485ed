"""The ``hello`` plugin: each client gets one greeting line, then the connection closes.

Installed, it is found through the ``tapster.plugins`` entry point in ``pyproject.toml``; this module is imported
only when the plugin runs, or when ``tapster --help`` has not seen this version of the distribution before.
"""

from __future__ import annotations

import asyncio
import logging

from tapster.options import Options
from tapster.service import Service
from tapster.services import StreamServer

log = logging.getLogger("tapster_hello")


class HelloOptions(Options):
    parameters = [
        ("port", "p", 8007, "The port number to listen on (0: any free port).", int),
        ("greeting", "g", "Hello from tapster-hello!", "What to say to each client."),
        ("iface", None, "127.0.0.1", "The interface to listen on."),
    ]


class Greeter:
    """A stream handler (an object with an async ``__call__``): say the greeting, then close."""

    def __init__(self, greeting: str) -> None:
        self.greeting = greeting.encode() + b"\r\n"

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        log.info("greeting %s", writer.get_extra_info("peername"))
        writer.write(self.greeting)
        await writer.drain()
        writer.close()


class HelloServiceMaker:
    tapname = "hello"
    description = "Greet each client, then hang up."
    options = HelloOptions

    def make_service(self, options: HelloOptions) -> Service:
        endpoint = f"tcp:{options['port']}:interface={options['iface']}"
        return StreamServer(endpoint, Greeter(options["greeting"]))


service_maker = HelloServiceMaker()
