"""Built-in services: listeners, clients, a reconnecting client, UDP, a timer."""

from tapster.services._clients import ClientService, StreamClient
from tapster.services._stream_server import StreamServer
from tapster.services._timer import TimerService
from tapster.services._udp import UDPServer

__all__ = ["ClientService", "StreamClient", "StreamServer", "TimerService", "UDPServer"]
