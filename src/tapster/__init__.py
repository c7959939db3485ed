"""tapster: the twistd system for asyncio.

Build a tree of services (``Application``, ``MultiService``, ``StreamServer``, ...) in an application file or a
plugin, and let the ``tapster`` command run it as a well-behaved server.
"""

from tapster._version import __version__
from tapster.service import Application, MultiService, Service

__all__ = [
    "Application",
    "MultiService",
    "Service",
    "__version__",
]
