"""The plugin of seed 003's example project: ``tapster -n myproject [--port N]``, run from ``examples/``.

It keeps no code of its own: the protocol comes from the ``myproject`` package beside ``tapster/`` in the
project's top-level folder, which tapster puts on ``sys.path``.
"""

from myproject import MyFactory

from tapster.options import Options
from tapster.services import StreamServer


class MyProjectOptions(Options):
    parameters = [("port", "p", 1235, "The port number to listen on (0: any free port).", int)]


class MyServiceMaker:
    tapname = "myproject"
    description = "Seed 003's example project: a line server that answers in capitals."
    options = MyProjectOptions

    def make_service(self, options):
        """A TCP server speaking myproject's protocol; nothing starts until tapster starts it."""
        return StreamServer(f"tcp:{options['port']}:interface=127.0.0.1", MyFactory)


# Any module-level name will do: tapster looks at what the object has, not what it is called.
serviceMaker = MyServiceMaker()
