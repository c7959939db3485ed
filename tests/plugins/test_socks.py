"""`tapster socks` in a real process: python-socks as the client for SOCKS 4, 4a, 5 and 5 with a login, raw
sockets for what a library would never send (malformed, truncated, oversized, slow handshakes, pipelined data),
and a real echo server on loopback as the destination (so the tests --allow 127.0.0.1/32)."""

from __future__ import annotations

import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from python_socks import ProxyError, ProxyType
from python_socks.sync import Proxy
from test_portforward import drain_and_check, pipes, push_until_stalled, rss_kib

from conftest import TapsterProcess, read_all, run_tapster
from support import one_line

LOOPS = [pytest.param([], id="asyncio"), pytest.param(["--reactor", "uvloop"], id="uvloop")]
ALLOW_LOOPBACK = ["--allow", "127.0.0.1/32"]


@pytest.fixture
def echo() -> Iterator[int]:
    """A loopback echo server (one thread per connection): echoes until EOF, then ends its side too."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


def start_socks(
    tapster: type[TapsterProcess], *args: str, before: Sequence[str] = ()
) -> tuple[TapsterProcess, int]:
    """Start ``tapster [before] socks`` on a loopback port chosen by the OS; return it and the port."""
    process = tapster(
        ["-n", "-o", "--pidfile=", *before, "socks", "--listen", "tcp:0:interface=127.0.0.1", *args]
    )
    return process, process.port("SOCKSServer")


def through(
    port: int, kind: ProxyType, host: str, dest_port: int, *, rdns: bool = False, **login: str
) -> socket.socket:
    proxy = Proxy.create(kind, "127.0.0.1", port, rdns=rdns, **login)
    return proxy.connect(host, dest_port, timeout=15)


def raw(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=15)


def echo_round_trip(sock: socket.socket, payload: bytes = b"x" * 300_000) -> None:
    """Send a payload and end our side: all of it comes back, then EOF (data both ways, half-close both ways)."""
    with sock:
        sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
        sender.start()
        assert read_all(sock) == payload
        sender.join(15)


def v5_request(host: bytes | str, port: int, command: int = 1) -> bytes:
    if isinstance(host, str):
        packed = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        kind = 4 if ":" in host else 1
        return struct.pack("!BBBB", 5, command, 0, kind) + packed + struct.pack("!H", port)
    return struct.pack("!BBBBB", 5, command, 0, 3, len(host)) + host + struct.pack("!H", port)


def v4_request(
    address: str, port: int, command: int = 1, user: bytes = b"", host: bytes | None = None
) -> bytes:
    message = struct.pack("!BBH", 4, command, port) + socket.inet_aton(address) + user + b"\0"
    return message + (host + b"\0" if host is not None else b"")


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize(
    ("kind", "host", "rdns", "version"),
    [
        (ProxyType.SOCKS4, "127.0.0.1", False, "4"),
        (ProxyType.SOCKS4, "localhost", True, "4a"),
        (ProxyType.SOCKS5, "127.0.0.1", False, "5"),
        (ProxyType.SOCKS5, "localhost", True, "5"),
    ],
    ids=["socks4", "socks4a-hostname", "socks5", "socks5-hostname"],
)
def test_relays_both_ways_with_half_close(
    tapster: type[TapsterProcess],
    echo: int,
    loop: list[str],
    kind: ProxyType,
    host: str,
    rdns: bool,
    version: str,
) -> None:
    """300 KB each way through the proxy, the client's EOF reaches the echo server and the echo server's EOF
    comes back; one log line names the client, the destination (and the address a hostname resolved to)."""
    process, port = start_socks(tapster, *ALLOW_LOOPBACK, before=loop)
    sock = through(port, kind, host, echo, rdns=rdns)
    client_port = sock.getsockname()[1]
    echo_round_trip(sock)
    resolved = re.escape(" (127.0.0.1)") if rdns else ""
    process.wait_for(
        rf"SOCKS{version} 127\.0\.0\.1:{client_port} -> {re.escape(host)}:{echo}{resolved}: connected"
    )


def test_loopback_is_refused_by_default_with_the_right_codes(
    tapster: type[TapsterProcess], echo: int
) -> None:
    """Without --allow, a loopback destination is refused: SOCKS5 reply 0x02 (not allowed by ruleset), SOCKS4
    0x5B; so is a hostname that resolves to loopback, and an IPv4-mapped IPv6 address of loopback. The echo
    server is never reached."""
    process, port = start_socks(tapster)
    with pytest.raises(ProxyError) as refused:
        through(port, ProxyType.SOCKS5, "127.0.0.1", echo)
    assert refused.value.error_code == 2
    process.wait_for(
        rf"SOCKS5 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:{echo}: refused: 127\.0\.0\.1 is a loopback address"
    )

    with pytest.raises(ProxyError) as refused:
        through(port, ProxyType.SOCKS5, "localhost", echo, rdns=True)
    assert refused.value.error_code == 2
    process.wait_for(
        rf"-> localhost:{echo}: refused: 127\.0\.0\.1 is a loopback address, not in --allow \(public\)"
    )

    with raw(port) as sock:
        sock.sendall(v4_request("127.0.0.1", echo))
        assert read_all(sock) == b"\x00\x5b" + b"\0" * 6

    with raw(port) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        sock.sendall(v5_request("::ffff:127.0.0.1", echo))
        assert read_all(sock)[:2] == b"\x05\x02"
    process.wait_for(rf"-> \[::ffff:127\.0\.0\.1\]:{echo}: refused: 127\.0\.0\.1 is a loopback address")


def test_allow_list_replaces_the_default(tapster: type[TapsterProcess], echo: int) -> None:
    """--allow 10.0.0.0/8 alone: loopback stays refused (the list replaces 'public', it does not widen it)."""
    process, port = start_socks(tapster, "--allow", "10.0.0.0/8")
    process.wait_for("destinations allowed: 10.0.0.0/8; no login")
    with pytest.raises(ProxyError) as refused:
        through(port, ProxyType.SOCKS5, "127.0.0.1", echo)
    assert refused.value.error_code == 2


def test_hostname_with_allowed_and_refused_addresses_uses_only_the_allowed(
    tapster: type[TapsterProcess], echo: int
) -> None:
    """'localhost' resolves to 127.0.0.1 and ::1; with only 127.0.0.1/32 allowed, the proxy connects there."""
    process, port = start_socks(tapster, *ALLOW_LOOPBACK)
    echo_round_trip(through(port, ProxyType.SOCKS5, "localhost", echo, rdns=True), b"ping")
    process.wait_for(rf"-> localhost:{echo} \(127\.0\.0\.1\): connected")


def test_login_right_wrong_and_socks4_refused(tapster: type[TapsterProcess], echo: int) -> None:
    """--auth: the right password relays, a wrong one is refused (RFC 1929 status 1, after the failure delay),
    a client offering no login is told 0xFF, and SOCKS4 (no password) is refused with 0x5B."""
    process, port = start_socks(tapster, *ALLOW_LOOPBACK, "--auth", "memory:alice:secret")
    process.wait_for("SOCKS5 login required")
    echo_round_trip(
        through(port, ProxyType.SOCKS5, "127.0.0.1", echo, username="alice", password="secret"), b"hi"
    )

    with pytest.raises(ProxyError):
        through(port, ProxyType.SOCKS5, "127.0.0.1", echo, username="alice", password="wrong")
    process.wait_for(r"SOCKS client 127\.0\.0\.1:\d+: SOCKS5 login failed for user 'alice'; closing")

    with raw(port) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert read_all(sock) == b"\x05\xff"
    process.wait_for(r"none acceptable \(need username/password \(0x02\)\)")

    with pytest.raises(ProxyError):
        through(port, ProxyType.SOCKS4, "127.0.0.1", echo)
    process.wait_for(r"SOCKS4 refused: it has no password and --auth is set")


BAD_HANDSHAKES = [
    # (what is sent, end our side after it, the reply expected before EOF, a fragment of the one log line)
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False, b"", "not a SOCKS request (first byte 0x47)"),
    (b"\x05\x02\x00", True, b"", "the client ended its side"),
    (b"\x05\x00", False, b"\x05\xff", "offers no authentication method"),
    (
        b"\x04\x01\x00\x50\x7f\x00\x00\x01" + b"A" * 100_000,
        False,
        b"",
        "SOCKS4 user id is longer than 255 bytes",
    ),
    (
        v4_request("0.0.0.1", 80)[:-1] + b"\0" + b"h" * 300,
        False,
        b"",
        "SOCKS4a hostname is longer than 255 bytes",
    ),
    (v4_request("0.0.0.1", 80, host=b"bad host"), False, b"\x00\x5b" + b"\0" * 6, "has spaces or control"),
    (v4_request("127.0.0.1", 80, command=2), False, b"\x00\x5b" + b"\0" * 6, "SOCKS4 command BIND is not"),
    (b"\x05\x01\x00\x05\x01\x00\x09", False, b"\x05\x00\x05\x08\x00\x01" + b"\0" * 6, "address type 0x09"),
    (
        b"\x05\x01\x00" + v5_request("127.0.0.1", 9, command=4),
        False,
        b"\x05\x00\x05\x07\x00\x01" + b"\0" * 6,
        "command 0x04 is not supported",
    ),
    (
        b"\x05\x01\x00" + v5_request("127.0.0.1", 9, command=2),
        False,
        b"\x05\x00\x05\x07\x00\x01" + b"\0" * 6,
        "command BIND is not supported",
    ),
    (
        b"\x05\x01\x00\x04\x01\x00\x01",
        False,
        b"\x05\x00\x05\x01\x00\x01" + b"\0" * 6,
        "request has version 4",
    ),
    (b"\x05\x01\x00\x05\x01\x00\x03\x00", False, b"\x05\x00\x05\x01\x00\x01" + b"\0" * 6, "empty hostname"),
    (b"\x05\x01\x00\x05\x01\x00\x03\x05ab", True, b"\x05\x00", "the client ended its side"),
]


@pytest.mark.parametrize("loop", LOOPS)
def test_bad_handshakes_are_one_line_and_the_server_keeps_serving(
    tapster: type[TapsterProcess], echo: int, loop: list[str]
) -> None:
    """Malformed, truncated, oversized and unsupported handshakes: each gets its refusal (where the protocol
    has one), then EOF (never a reset), one log line naming the client, no traceback; a good client after all
    of them is served."""
    process, port = start_socks(tapster, *ALLOW_LOOPBACK, before=loop)
    clients = []
    for payload, end, reply, fragment in BAD_HANDSHAKES:
        with raw(port) as sock:
            client = sock.getsockname()[1]
            clients.append(client)
            sock.sendall(payload)
            if end:
                sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == reply, fragment
        process.wait_for(rf"SOCKS client 127\.0\.0\.1:{client}: .*{re.escape(fragment)}.*; closing")
    echo_round_trip(through(port, ProxyType.SOCKS5, "127.0.0.1", echo), b"still serving")
    process.signal(signal.SIGTERM)
    status, out, err = process.finish()
    assert status == 0 and "Traceback" not in out + err
    for client in clients:
        assert len(re.findall(rf"127\.0\.0\.1:{client}\b", out)) == 1, f"client port {client}:\n{out}"


def test_slow_handshake_times_out(tapster: type[TapsterProcess]) -> None:
    """A client that sends half a greeting and waits is closed at --handshake-timeout, with one line."""
    process, port = start_socks(tapster, "--handshake-timeout", "0.5")
    with raw(port) as sock:
        sock.sendall(b"\x05\x01")
        assert read_all(sock) == b""
    process.wait_for(r"no complete request within 0\.5 s; closing")


def test_back_pressure_through_the_proxy(tapster: type[TapsterProcess]) -> None:
    """The relay is the port forwarder's: a destination that does not read stalls the client after a few MB
    and the proxy's RSS grows by less than 16 MB, what it holds sitting in a kernel pipe (splice(2): one pipe's
    two descriptors); once it reads, all 200 MB arrive intact."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(15)
        process, port = start_socks(tapster, *ALLOW_LOOPBACK)
        no_pipes = pipes(process.proc.pid)
        with through(port, ProxyType.SOCKS5, "127.0.0.1", listener.getsockname()[1]) as client:
            client.settimeout(30)
            server, _ = listener.accept()
            with server:
                server.settimeout(30)
                sent, growth, thread, _ = push_until_stalled(client, server, process.proc.pid)
                assert sent < 64 * 1024 * 1024, f"{sent} bytes went into a peer that reads nothing"
                assert growth < 16 * 1024, f"proxy RSS grew by {growth} KiB"
                assert pipes(process.proc.pid) == no_pipes + 2
                drain_and_check(server, thread)


def test_a_flood_during_the_handshake_is_not_buffered(tapster: type[TapsterProcess]) -> None:
    """While the proxy is still connecting (to a listener whose accept queue is full, so its SYN goes
    unanswered), the client pours data after its request: the proxy stops reading past a few KiB, so the client
    stalls after the kernel buffers (a few MB) and the proxy's RSS stays flat."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        for (
            filler
        ) in fillers:  # on loopback the handshake completes inside connect(): the queue is full after
            filler.setblocking(False)
            filler.connect_ex(full.getsockname())
        process, port = start_socks(tapster, *ALLOW_LOOPBACK, "--connect-timeout", "60")
        pid = process.proc.pid
        before = rss_kib(pid)
        with raw(port) as sock:
            sock.sendall(b"\x05\x01\x00" + v5_request("127.0.0.1", full.getsockname()[1]))
            sock.setblocking(False)
            sent, chunk, still_since = 0, b"f" * 65536, time.monotonic()
            while time.monotonic() - still_since < 1.0 and sent < 256 * 1024 * 1024:
                try:
                    sent += sock.send(chunk)
                    still_since = time.monotonic()
                except BlockingIOError:
                    time.sleep(0.01)  # polling the condition "nothing moved for a second"
            growth = rss_kib(pid) - before
            try:
                early = sock.recv(100)
            except BlockingIOError:
                early = b""
            assert early == b"\x05\x00", f"{early!r}: the proxy was not still connecting"
        for filler in fillers:
            filler.close()
    assert sent < 64 * 1024 * 1024, f"{sent} bytes went into a proxy that should have stopped reading"
    assert growth < 16 * 1024, f"proxy RSS grew by {growth} KiB"


def pipelined(
    sock: socket.socket, listener: socket.socket, request: bytes, early: bytes, greeting: bytes
) -> bytes:
    """Send the greeting, ``request`` and ``early`` data in one write and end our side; the destination greets
    first, reads ``early`` then EOF, and ends its side. Return all the client read."""
    sock.sendall(b"\x05\x01\x00" + request + early)
    sock.shutdown(socket.SHUT_WR)
    server, _ = listener.accept()
    with server:
        server.settimeout(15)
        server.sendall(greeting)
        assert read_all(server) == early
        server.shutdown(socket.SHUT_WR)
    return read_all(sock)


@pytest.mark.parametrize("loop", LOOPS)
def test_pipelined_data_and_a_destination_that_speaks_first(
    tapster: type[TapsterProcess], loop: list[str]
) -> None:
    """A client sends greeting, request and data in one write before any answer, then ends its side; the
    destination greets first. The client reads the method choice, the reply, then the greeting, then EOF; the
    destination reads the data, then EOF. Nothing sent early is lost or reordered."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(15)
        dest_port = listener.getsockname()[1]
        process, port = start_socks(tapster, *ALLOW_LOOPBACK, before=loop)
        with raw(port) as sock:
            answer = pipelined(
                sock, listener, v5_request("127.0.0.1", dest_port), b"early data", b"220 hello\r\n"
            )
        assert answer[:4] == b"\x05\x00\x05\x00" and answer[12:] == b"220 hello\r\n"
        assert answer[4:8] == b"\x00\x01\x7f\x00"  # the bound address: IPv4 127.0.0.x
    process.wait_for(r"SOCKS5 .* connected")


def test_unreachable_destination_answers_connection_refused(tapster: type[TapsterProcess]) -> None:
    """A destination that refuses: SOCKS5 reply 0x05, one line."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = unused.getsockname()[1]
    process, port = start_socks(tapster, *ALLOW_LOOPBACK)
    with pytest.raises(ProxyError) as refused:
        through(port, ProxyType.SOCKS5, "127.0.0.1", dead)
    assert refused.value.error_code == 5
    process.wait_for(rf"-> 127\.0\.0\.1:{dead}: failed: Connection refused")


def test_stop_drains_relayed_connections_and_closes_handshakes(
    tapster: type[TapsterProcess], echo: int
) -> None:
    """SIGTERM: a connection still in its handshake is closed at once, a relayed one carries on until its
    client ends it, then the process exits 0."""
    process, port = start_socks(tapster, *ALLOW_LOOPBACK, before=["--shutdown-timeout", "30"])
    relayed = through(port, ProxyType.SOCKS5, "127.0.0.1", echo)
    with raw(port) as pending:
        pending.sendall(b"\x05")
        process.wait_for("connected")
        process.signal(signal.SIGTERM)
        process.wait_for("draining 2 open connection")
        assert read_all(pending) == b""
    process.wait_for("closed in its handshake, the server is stopping")
    echo_round_trip(relayed, b"after the stop began")
    assert process.finish()[0] == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--allow", "10.0.0.1/8"], "--allow: '10.0.0.1/8' is not a network"),
        (["--allow", "everything"], "--allow: 'everything' is not a network"),
        (["--listen", "udp:0"], "not udp"),
        (["--listen", "bogus:1"], "--listen: "),
        (["--handshake-timeout", "0"], "--handshake-timeout"),
        (["--connect-timeout", "nan"], "--connect-timeout"),
        (["--auth", "sshkey"], "need a password checker"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    """Malformed networks, endpoints, timeouts, a checker without passwords: one line, exit 2."""
    result = run_tapster(["-n", "-o", "--pidfile=", "socks", *args], cwd=tmp_path)
    assert expected in one_line(result, 2)


def test_ipv6_listener_and_destination(tapster: type[TapsterProcess]) -> None:
    """A tcp6 listener on ::1 and an IPv6 destination allowed by --allow ::1/128: relayed, and the reply's bound
    address is IPv6 (address type 4)."""
    with socket.socket(socket.AF_INET6) as listener:
        try:
            listener.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback on this machine")
        listener.listen()
        listener.settimeout(15)
        dest_port = listener.getsockname()[1]
        process = tapster(
            ["-n", "-o", "--pidfile=", "socks", "--listen", r"tcp6:0:interface=\:\:1", "--allow", "::1"]
        )
        port = process.port("SOCKSServer")
        with socket.create_connection(("::1", port), timeout=15) as sock:
            answer = pipelined(sock, listener, v5_request("::1", dest_port), b"six", b"ok")
        assert answer[:6] == b"\x05\x00\x05\x00\x00\x04" and answer[6:22] == socket.inet_pton(
            socket.AF_INET6, "::1"
        )
        assert answer[24:] == b"ok"
    process.wait_for(rf"SOCKS5 \[::1\]:\d+ -> \[::1\]:{dest_port}: connected")
