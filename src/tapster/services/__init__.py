"""Built-in services: listeners, clients, a reconnecting client, UDP, a timer, a web server, an FTP server, a port
forwarder, a process monitor, a SOCKS proxy; and the drain's helpers. None of them imports an extra (aiohttp, aioftp)
before it starts."""

from tapster.services._clients import ClientService, StreamClient
from tapster.services._drain import LINGER, lingering_close, server_stopping, unless_stopping
from tapster.services._ftp import FTPServer
from tapster.services._portforward import PortForward
from tapster.services._procmon import ProcessMonitor
from tapster.services._socks import SOCKSServer
from tapster.services._stream_server import StreamServer
from tapster.services._timer import TimerService
from tapster.services._udp import UDPServer
from tapster.services._web import WebServer

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
