"""Built-in services: listeners, clients, a reconnecting client, UDP, a timer; and the drain's helpers."""

from tapster.services._clients import ClientService, StreamClient
from tapster.services._drain import LINGER, lingering_close, server_stopping, unless_stopping
from tapster.services._stream_server import StreamServer
from tapster.services._timer import TimerService
from tapster.services._udp import UDPServer

__all__ = [
    "LINGER",
    "ClientService",
    "StreamClient",
    "StreamServer",
    "TimerService",
    "UDPServer",
    "lingering_close",
    "server_stopping",
    "unless_stopping",
]
