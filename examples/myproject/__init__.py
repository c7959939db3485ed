"""myproject: the project package of seed 003's layout ("MyProject/myproject/__init__.py").

    examples/                      the project's top-level folder (run tapster from here)
        myproject/__init__.py      this package: the application code
        tapster/plugins/           no __init__.py here or in tapster/
            myproject_plugin.py    the plugin; not named myproject.py, which would read like this package

The plugin imports ``MyFactory`` from here, which works because tapster puts the working directory on
``sys.path`` before loading plugins.
"""

import asyncio
import logging

from tapster.services import lingering_close

log = logging.getLogger("myproject")


class MyProtocol(asyncio.Protocol):
    """A line server that answers each line in capitals, and hangs up on ``bye``."""

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            line = line.rstrip(b"\r")
            if line == b"bye":
                self.transport.close()
                return
            self.transport.write(line.upper() + b"\r\n")

    def stop_requested(self):
        """The server is stopping: every complete line has been answered already, so close gently now."""
        lingering_close(self.transport)


def MyFactory():
    """A fresh protocol per connection (named like the seed's Twisted factory class)."""
    log.info("new connection")
    return MyProtocol()
