"""SOCKS5 UDP ASSOCIATE in a real `tapster socks` process, with raw sockets (python-socks has no UDP): datagrams
relayed both ways to a UDP echo server, hostnames, refused destinations, strangers' datagrams dropped, and the
association's end with its TCP connection."""

from __future__ import annotations

import signal
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_socks import ALLOW_LOOPBACK, LOOPS, raw, start_socks, v5_request

from conftest import TapsterProcess, read_all


class Echo:
    """A UDP echo server on ``host``: answers every datagram to its sender and keeps what it got."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.got: list[bytes] = []
        self.senders: list[tuple[str, int]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65536)
            except OSError:
                return
            self.got.append(data)
            self.senders.append(addr)
            self.sock.sendto(data, addr)


@pytest.fixture
def udp_echo() -> Iterator[Echo]:
    echo = Echo()
    yield echo
    echo.sock.close()


def associate(port: int, source_port: int = 0) -> tuple[socket.socket, tuple[str, int]]:
    """Open the TCP control connection and ask for an association; return it and the relay's address."""
    control = raw(port)
    control.sendall(b"\x05\x01\x00" + v5_request("0.0.0.0", source_port, command=3))
    assert control.recv(2) == b"\x05\x00"
    reply = b""
    while len(reply) < 10:
        reply += control.recv(10 - len(reply))
    assert reply[:4] == b"\x05\x00\x00\x01", reply
    return control, (socket.inet_ntoa(reply[4:8]), struct.unpack("!H", reply[8:10])[0])


def header(host: str | bytes, port: int) -> bytes:
    if isinstance(host, bytes):
        return struct.pack("!HBBB", 0, 0, 3, len(host)) + host + struct.pack("!H", port)
    return struct.pack("!HBB", 0, 0, 1) + socket.inet_aton(host) + struct.pack("!H", port)


def udp_client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(15)
    return sock


@pytest.mark.parametrize("loop", LOOPS)
def test_datagrams_are_relayed_both_ways(
    tapster: type[TapsterProcess], udp_echo: Echo, loop: list[str]
) -> None:
    """To an address and to a hostname: the echo comes back with a header naming its source; closing the TCP
    connection ends the association (one line)."""
    process, port = start_socks(tapster, *ALLOW_LOOPBACK, before=loop)
    control, relay = associate(port)
    assert relay[0] == "127.0.0.1"
    with control, udp_client() as client:
        client.sendto(header("127.0.0.1", udp_echo.port) + b"to an address", relay)
        data, source = client.recvfrom(65536)
        assert source == relay and data == header("127.0.0.1", udp_echo.port) + b"to an address"
        client.sendto(header(b"localhost", udp_echo.port) + b"to a name", relay)
        data, _ = client.recvfrom(65536)
        assert data == header("127.0.0.1", udp_echo.port) + b"to a name"
        process.wait_for(
            r"SOCKS5 127\.0\.0\.1:\d+ -> UDP ASSOCIATE: relaying datagrams through 127\.0\.0\.1:\d+"
        )
        control.shutdown(socket.SHUT_WR)
        assert read_all(control) == b""
    process.wait_for(r"SOCKS5 UDP 127\.0\.0\.1:\d+: association ended: the client closed its connection")


def test_refused_destinations_and_strangers_are_dropped(
    tapster: type[TapsterProcess], udp_echo: Echo
) -> None:
    """A datagram to a refused address (127.0.0.2 is loopback, not in --allow) or to a name resolving there is
    dropped with a log line; a datagram from another port than the client's first is dropped silently; a
    fragment is dropped. Datagrams are handled in order, so once the last allowed one's echo is back, the
    others have been dealt with: the echo server got none of them."""
    process, port = start_socks(tapster, *ALLOW_LOOPBACK)
    control, relay = associate(port)
    with control, udp_client() as client, udp_client() as stranger:
        client.sendto(header("127.0.0.1", udp_echo.port) + b"first", relay)
        assert client.recvfrom(65536)[0].endswith(b"first")
        client.sendto(header("127.0.0.2", udp_echo.port) + b"refused", relay)
        process.wait_for(
            rf"SOCKS5 UDP 127\.0\.0\.1:\d+ -> 127\.0\.0\.2:{udp_echo.port}: dropped: 127\.0\.0\.2 is"
        )
        client.sendto(header(b"::1", udp_echo.port) + b"refused name", relay)
        process.wait_for(r"dropped: ::1 is a loopback address, not in --allow")
        stranger.sendto(header("127.0.0.1", udp_echo.port) + b"stranger", relay)
        client.sendto(b"\x00\x00\x01\x01" + header("127.0.0.1", udp_echo.port)[4:] + b"fragment", relay)
        client.sendto(b"\x00\x00\x00\x09junk", relay)
        client.sendto(header("127.0.0.1", udp_echo.port) + b"last", relay)
        assert client.recvfrom(65536)[0].endswith(b"last")
    assert udp_echo.got == [b"first", b"last"]


def test_answers_only_from_destinations_the_client_sent_to(
    tapster: type[TapsterProcess], udp_echo: Echo
) -> None:
    """Another host sending to the proxy's outbound port is not passed on: only the echo server's answers come
    back to the client."""
    _, port = start_socks(tapster, *ALLOW_LOOPBACK)
    control, relay = associate(port)
    with control, udp_client() as client, udp_client() as intruder:
        client.sendto(header("127.0.0.1", udp_echo.port) + b"one", relay)
        assert client.recvfrom(65536)[0].endswith(b"one")
        intruder.sendto(b"spoofed", udp_echo.senders[-1])  # the proxy's outbound socket
        client.sendto(header("127.0.0.1", udp_echo.port) + b"two", relay)
        data = client.recvfrom(65536)[0]
        assert data.endswith(b"two"), data


def test_association_ends_when_the_server_stops(tapster: type[TapsterProcess]) -> None:
    """SIGTERM: the association is closed (its TCP connection gets EOF), and the process exits 0 at once."""
    process, port = start_socks(tapster, *ALLOW_LOOPBACK)
    control, _ = associate(port)
    with control:
        process.wait_for("relaying datagrams through")
        process.signal(signal.SIGTERM)
        assert read_all(control) == b""
    process.wait_for("association ended: the server is stopping")
    assert process.finish()[0] == 0


def test_udp_associate_on_a_unix_listener_is_not_supported(
    tapster: type[TapsterProcess], tmp_path: Path
) -> None:
    """A client on a unix socket has no IP address to take datagrams from: reply 0x07, one line."""
    path = tmp_path / "socks.sock"
    process = tapster(["-n", "-o", "--pidfile=", "socks", "--listen", f"unix:{path}"])
    process.wait_for("SOCKSServer starting on")
    with socket.socket(socket.AF_UNIX) as control:
        control.settimeout(15)
        control.connect(str(path))
        control.sendall(b"\x05\x01\x00" + v5_request("0.0.0.0", 0, command=3))
        assert read_all(control) == b"\x05\x00\x05\x07\x00\x01" + b"\0" * 6
    process.wait_for("refused: UDP ASSOCIATE needs a TCP listener")
