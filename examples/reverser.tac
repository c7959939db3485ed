"""reverser: send back each line reversed; ``quit`` hangs up (seed 004, ported).

    tapster -y examples/reverser.tac     # then: telnet 127.0.0.1 2323

The port can be overridden with REVERSER_PORT (the tests use 0). At SIGTERM, ``unless_stopping`` makes the
wait for the next line return None: lines already received are answered, then the connection ends.
"""

import os

from tapster import Application
from tapster.services import StreamServer, unless_stopping


async def reverse_lines(reader, writer):
    """Reverse every line until the client says quit or goes away, or the server stops."""
    while line := await unless_stopping(reader.readline()):
        text = line.rstrip(b"\r\n")
        if text == b"quit":
            break
        writer.write(text[::-1] + b"\r\n")
        await writer.drain()


application = Application("Reverser")
StreamServer(f"tcp:{os.environ.get('REVERSER_PORT', '2323')}:interface=127.0.0.1", reverse_lines).set_parent(application)
