"""Built-in services: listeners, clients, a reconnecting client, UDP, a timer, a web server, an FTP server, a port
forwarder, a process monitor, a SOCKS proxy; and the drain's helpers. None of them imports an extra (aiohttp, aioftp)
before it starts.

The servers of the built-in plugins (web, FTP, SOCKS, port forwarding, process monitor) are imported on first use
(PEP 562): a tac file that only needs a StreamServer must not pay for them at start-up (measured: importing them all
cost ~10 ms and ~3 MiB, through tapster.auth).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from tapster.services._clients import ClientService, StreamClient
from tapster.services._drain import LINGER, lingering_close, server_stopping, unless_stopping
from tapster.services._stream_server import StreamServer
from tapster.services._timer import TimerService
from tapster.services._udp import UDPServer

if TYPE_CHECKING:
    from tapster.services._ftp import FTPServer
    from tapster.services._portforward import PortForward
    from tapster.services._procmon import ProcessMonitor
    from tapster.services._socks import SOCKSServer
    from tapster.services._web import WebServer

_LAZY = {
    "FTPServer": "tapster.services._ftp",
    "PortForward": "tapster.services._portforward",
    "ProcessMonitor": "tapster.services._procmon",
    "SOCKSServer": "tapster.services._socks",
    "WebServer": "tapster.services._web",
}

__all__ = [
    "LINGER",
    "ClientService",
    "FTPServer",
    "PortForward",
    "ProcessMonitor",
    "SOCKSServer",
    "StreamClient",
    "StreamServer",
    "TimerService",
    "UDPServer",
    "WebServer",
    "lingering_close",
    "server_stopping",
    "unless_stopping",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tapster.services' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # once imported, as cheap as the others
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
