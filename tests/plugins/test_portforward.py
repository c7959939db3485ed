"""`tapster portforward` in a real process with plain sockets: unix to tcp and back, back-pressure both ways
(the forwarder's memory stays flat while a peer does not read), half-close passed on, drain on stop, errors."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TapsterProcess, read_all, run_tapster
from support import cpu_seconds, one_line, taken_port, wait_until

TOTAL = 200 * 1024 * 1024
LOOPS = [pytest.param([], id="asyncio"), pytest.param(["--reactor", "uvloop"], id="uvloop")]
MODES = [
    *LOOPS,
    pytest.param(["--no-splice"], id="asyncio-copy"),
    pytest.param(["--reactor", "uvloop", "--no-splice"], id="uvloop-copy"),
]
"""Both loops, each with plain pairs moved by splice(2) (the default) and copied through the process."""
CHUNK = 64 * 1024


@pytest.fixture
def dest() -> Iterator[socket.socket]:
    """A TCP listener the test accepts on itself (so it decides when, and whether, to read)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(15)
        yield listener


def stop_cleanly(process: TapsterProcess) -> None:
    """SIGTERM, then the forwarder must exit 0."""
    process.signal(signal.SIGTERM)
    assert process.finish()[0] == 0


def start_forward(tapster: type[TapsterProcess], listen: str, dest: str, *extra: str) -> TapsterProcess:
    """``extra``: global options, and ``--no-splice`` (passed on to portforward)."""
    plugin = [arg for arg in extra if arg == "--no-splice"]
    front = [arg for arg in extra if arg != "--no-splice"]
    process = tapster(
        ["-n", "-o", "--pidfile=", *front, "portforward", "--listen", listen, "--dest", dest, *plugin]
    )
    process.wait_for("PortForward starting on")
    return process


@contextlib.contextmanager
def unix_listener(path: Path) -> Iterator[socket.socket]:
    """A unix-socket destination the test accepts on itself."""
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
        listener.settimeout(15)
        yield listener


def tcp_dest(listener: socket.socket) -> str:
    return f"tcp:host=127.0.0.1:port={listener.getsockname()[1]}"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def pattern(index: int) -> bytes:
    return bytes([index % 251]) * CHUNK


def push_until_stalled(
    sender: socket.socket, receiver: socket.socket, pid: int
) -> tuple[int, int, threading.Thread, list[int]]:
    """Send TOTAL bytes from ``sender`` while ``receiver`` reads nothing, until no more goes through for a
    while; return the bytes sent by then, the forwarder's RSS growth (KiB), the sending thread, its counter."""
    sent = [0]

    def send() -> None:
        for index in range(TOTAL // CHUNK):
            sender.sendall(pattern(index))
            sent[0] += CHUNK
        sender.shutdown(socket.SHUT_WR)

    before = rss_kib(pid)
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    last, still_since = -1, time.monotonic()
    while time.monotonic() - still_since < 1.0:  # stalled: nothing moved for a second
        time.sleep(0.05)
        if sent[0] != last:
            last, still_since = sent[0], time.monotonic()
    return sent[0], rss_kib(pid) - before, thread, sent


def drain_and_check(receiver: socket.socket, thread: threading.Thread) -> None:
    """Read everything now: all TOTAL bytes arrive, in order, then end-of-file."""
    expected, got = hashlib.sha256(), hashlib.sha256()
    for index in range(TOTAL // CHUNK):
        expected.update(pattern(index))
    size = 0
    while chunk := receiver.recv(1 << 20):
        got.update(chunk)
        size += len(chunk)
    thread.join(30)
    assert size == TOTAL and got.digest() == expected.digest()


@pytest.mark.parametrize("loop", MODES)
def test_back_pressure_both_ways_keeps_the_forwarder_small(
    tapster: type[TapsterProcess], dest: socket.socket, loop: list[str]
) -> None:
    """A destination that does not read: the client's 200 MB stall after a few MB (kernel buffers) and the
    forwarder's RSS grows by less than 16 MB; once it reads, all 200 MB arrive intact. Then the same the other
    way: a client that does not read while the destination sends 200 MB."""
    process = start_forward(tapster, "tcp:0:interface=127.0.0.1", tcp_dest(dest), *loop)
    port = process.port("PortForward")
    pid = process.proc.pid
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        server, _ = dest.accept()
        with server:
            server.settimeout(30)
            sent, growth, thread, _ = push_until_stalled(client, server, pid)
            assert sent < 64 * 1024 * 1024, f"{sent} bytes went into a peer that reads nothing"
            assert growth < 16 * 1024, f"forwarder RSS grew by {growth} KiB"
            drain_and_check(server, thread)

            sent, growth, thread, _ = push_until_stalled(server, client, pid)
            assert sent < 64 * 1024 * 1024, f"{sent} bytes went into a peer that reads nothing"
            assert growth < 16 * 1024, f"forwarder RSS grew by {growth} KiB"
            drain_and_check(client, thread)
    stop_cleanly(process)


@pytest.mark.parametrize("loop", MODES)
def test_half_close_is_passed_on_tcp_to_unix(
    tapster: type[TapsterProcess], tmp_path: Path, loop: list[str]
) -> None:
    """The client shuts its write side: the destination (a unix socket) reads the question then EOF, and its
    answer still reaches the client, followed by EOF."""
    path = tmp_path / "dest.sock"
    with unix_listener(path) as listener:
        process = start_forward(tapster, "tcp:0:interface=127.0.0.1", f"unix:path={path}", *loop)
        with socket.create_connection(("127.0.0.1", process.port("PortForward")), timeout=15) as client:
            server, _ = listener.accept()
            with server:
                server.settimeout(15)
                client.sendall(b"question")
                client.shutdown(socket.SHUT_WR)
                assert read_all(server) == b"question"  # EOF after it: the half-close arrived
                server.sendall(b"answer")
                server.shutdown(socket.SHUT_WR)
                assert read_all(client) == b"answer"


@pytest.mark.parametrize("loop", MODES)
def test_data_and_eof_sent_before_the_destination_answers_are_kept(
    tapster: type[TapsterProcess], dest: socket.socket, loop: list[str]
) -> None:
    """A client that sends and shuts its write side at once, before the forwarder has reached the destination:
    the destination still gets every byte, then EOF (nothing read early is lost, on either loop)."""
    process = start_forward(tapster, "tcp:0:interface=127.0.0.1", tcp_dest(dest), *loop)
    with socket.create_connection(("127.0.0.1", process.port("PortForward")), timeout=15) as client:
        client.sendall(b"early bytes")
        client.shutdown(socket.SHUT_WR)
        server, _ = dest.accept()
        with server:
            server.settimeout(15)
            assert read_all(server) == b"early bytes"
            server.sendall(b"still answered")
        assert read_all(client) == b"still answered"


def test_unix_listener_to_tcp_destination(
    tapster: type[TapsterProcess], dest: socket.socket, tmp_path: Path
) -> None:
    """--listen unix:PATH --dest tcp:...: bytes go both ways."""
    path = tmp_path / "front.sock"
    start_forward(tapster, f"unix:{path}", tcp_dest(dest))
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(15)
        client.connect(str(path))
        server, _ = dest.accept()
        with server:
            server.settimeout(15)
            client.sendall(b"ping")
            assert server.recv(4) == b"ping"
            server.sendall(b"pong")
            assert client.recv(4) == b"pong"


def test_stop_lets_open_connections_finish(tapster: type[TapsterProcess], dest: socket.socket) -> None:
    """SIGTERM with a connection open: the listener closes at once, the open connection still carries data
    both ways until the client ends it, then the process exits 0 (well before the shutdown timeout)."""
    process = start_forward(tapster, "tcp:0:interface=127.0.0.1", tcp_dest(dest), "--shutdown-timeout", "30")
    port = process.port("PortForward")
    with socket.create_connection(("127.0.0.1", port), timeout=15) as client:
        server, _ = dest.accept()
        with server:
            server.settimeout(15)
            process.signal(signal.SIGTERM)
            process.wait_for("draining 1 open connection")
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            client.sendall(b"late")
            assert server.recv(4) == b"late"
            server.sendall(b"reply")
            assert client.recv(5) == b"reply"
            started = time.monotonic()
            client.shutdown(socket.SHUT_WR)
            assert read_all(server) == b""
    status, _, _ = process.finish()
    assert status == 0 and time.monotonic() - started < 10


def test_unreachable_destination_closes_the_client_with_one_line(
    tapster: type[TapsterProcess], tmp_path: Path
) -> None:
    """A destination that refuses: the client's connection is closed and the log says why, once."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    process = start_forward(tapster, "tcp:0:interface=127.0.0.1", f"tcp:host=127.0.0.1:port={port}")
    with (
        socket.create_connection(("127.0.0.1", process.port("PortForward")), timeout=15) as client,
        contextlib.suppress(ConnectionResetError),
    ):
        assert client.recv(10) == b""
    process.wait_for(f"cannot connect to tcp:host=127.0.0.1:port={port}: .*closing the client's connection")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--listen", "tcp:0"], "give both --listen ENDPOINT and --dest ENDPOINT"),
        (["--listen", "bogus:1", "--dest", "tcp:localhost:80"], "--listen: "),
        (["--listen", "udp:0", "--dest", "tcp:localhost:80"], "not udp"),
        (["--listen", "tcp:0", "--dest", "8080"], "--dest: "),
        (["--listen", "tcp:0", "--dest", "tcp:localhost:80", "--drain-timeout", "-1"], "--drain-timeout"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    """Missing or malformed endpoints: one line, exit 2."""
    result = run_tapster(["-n", "-o", "--pidfile=", "portforward", *args], cwd=tmp_path)
    assert expected in one_line(result, 2)


def test_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """Listening on a taken port: exit 1, one line naming the endpoint."""
    with taken_port() as port:
        result = run_tapster(
            [
                "-n",
                "-o",
                "--pidfile=",
                "portforward",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--dest",
                "tcp:localhost:80",
            ],
            cwd=tmp_path,
        )
    assert "in use" in one_line(result, 1)


@pytest.mark.parametrize("loop", MODES)
def test_many_open_connections_that_carried_data_cost_little_memory(
    tapster: type[TapsterProcess], dest: socket.socket, loop: list[str]
) -> None:
    """100 forwarded connections that each carried 256 KiB both ways and stay open: the forwarder's RSS grows
    by less than 16 MiB (reads share one buffer; a buffer per connection would keep ~50 MiB resident)."""
    process = start_forward(tapster, "tcp:0:interface=127.0.0.1", tcp_dest(dest), *loop)
    port = process.port("PortForward")
    pid = process.proc.pid
    payload = bytes(range(256)) * 1024
    before = rss_kib(pid)
    with contextlib.ExitStack() as stack:
        for _ in range(100):
            client = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=30))
            server = stack.enter_context(dest.accept()[0])
            server.settimeout(30)
            for sender, receiver in ((client, server), (server, client)):
                sender.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    got += receiver.recv(1 << 20)
                assert got == payload
        growth = rss_kib(pid) - before
    assert growth < 16 * 1024, f"forwarder RSS grew by {growth} KiB for 100 connections"
    stop_cleanly(process)


@pytest.mark.parametrize("loop", MODES)
def test_small_writes_to_a_peer_that_reads_nothing_stay_small(
    tapster: type[TapsterProcess], tmp_path: Path, loop: list[str]
) -> None:
    """A client trickling 200-byte writes at a destination that reads nothing: what the forwarder queues (up to
    its high-water mark) is those bytes, not a 256 KiB read buffer kept alive for each. uvloop keeps a reference
    to what it could not send; before queued writes were copied, that cost ~84 MiB for one connection. The
    destination is a unix socket, whose small kernel buffers fill after a few hundred KiB."""
    path = tmp_path / "dest.sock"
    with unix_listener(path) as listener:
        process = start_forward(tapster, "tcp:0:interface=127.0.0.1", f"unix:path={path}", *loop)
        port = process.port("PortForward")
        pid = process.proc.pid
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            server, _ = listener.accept()  # accepted, never read
            with server:
                before = rss_kib(pid)
                client.setblocking(False)
                sent = 0
                for _ in range(4000):
                    with contextlib.suppress(BlockingIOError):
                        sent += client.send(b"x" * 200)
                    time.sleep(0.0005)  # pacing: each write reaches the forwarder as a read of its own
                assert sent > 500_000
                growth = rss_kib(pid) - before
    assert growth < 8 * 1024, f"forwarder RSS grew by {growth} KiB with {sent} bytes sent"
    stop_cleanly(process)


@pytest.mark.parametrize("loop", MODES)
def test_concurrent_connections_sharing_the_read_buffer_stay_byte_exact(
    tapster: type[TapsterProcess], dest: socket.socket, loop: list[str]
) -> None:
    """Every connection reads into one shared buffer: 16 connections at once, each echoing 4 MB of its own
    random bytes through the forwarder, must each get back exactly what it sent, in order."""
    import random

    process = start_forward(tapster, "tcp:0:interface=127.0.0.1", tcp_dest(dest), *loop)
    port = process.port("PortForward")
    echoes: list[threading.Thread] = []

    def echo(conn: socket.socket) -> None:
        with conn:
            while chunk := conn.recv(random.randint(1, 65536)):
                conn.sendall(chunk)

    def accept_all() -> None:
        for _ in range(16):
            conn, _ = dest.accept()
            conn.settimeout(30)
            thread = threading.Thread(target=echo, args=(conn,), daemon=True)
            thread.start()
            echoes.append(thread)

    results: dict[int, bool] = {}

    def client(number: int) -> None:
        payload = os.urandom(4 * 1024 * 1024)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
            sender.start()
            got = bytearray()
            while chunk := sock.recv(random.randint(1, 65536)):
                got += chunk
            sender.join(30)
        results[number] = bytes(got) == payload

    acceptor = threading.Thread(target=accept_all, daemon=True)
    acceptor.start()
    clients = [threading.Thread(target=client, args=(number,)) for number in range(16)]
    for thread in clients:
        thread.start()
    for thread in [*clients, acceptor, *echoes]:
        thread.join(60)
    assert results == {number: True for number in range(16)}
    stop_cleanly(process)


def descriptors(pid: int) -> list[str]:
    """What each of the process's open descriptors is (``socket:[...]``, ``pipe:[...]``, a path)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return found


def pipes(pid: int) -> int:
    return sum(name.startswith("pipe:") for name in descriptors(pid))


def send_until_stalled(sock: socket.socket) -> int:
    """Send from a non-blocking socket until nothing has gone out for half a second; return the bytes sent."""
    sock.setblocking(False)
    sent, still_since = 0, time.monotonic()
    while time.monotonic() - still_since < 0.5:
        try:
            sent += sock.send(b"s" * CHUNK)
            still_since = time.monotonic()
        except BlockingIOError:
            time.sleep(0.01)
    sock.setblocking(True)
    return sent


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("splice", [True, False], ids=["splice", "copy"])
def test_a_stalled_plain_pair_holds_its_bytes_in_a_kernel_pipe_unless_no_splice(
    tapster: type[TapsterProcess], tmp_path: Path, loop: list[str], splice: bool
) -> None:
    """The proof that plain pairs are moved by splice(2): while the destination reads nothing, the bytes the
    forwarder holds sit in a pipe (two more pipe descriptors); with --no-splice no pipe is opened. Every byte
    arrives once the destination reads, then the client's end-of-file."""
    path = tmp_path / "dest.sock"
    with unix_listener(path) as listener:
        extra = [*loop] if splice else [*loop, "--no-splice"]
        process = start_forward(tapster, "tcp:0:interface=127.0.0.1", f"unix:path={path}", *extra)
        pid = process.proc.pid
        before = pipes(pid)
        with socket.create_connection(("127.0.0.1", process.port("PortForward")), timeout=30) as client:
            server, _ = listener.accept()
            with server:
                server.settimeout(30)
                sent = send_until_stalled(client)
                assert pipes(pid) == before + (2 if splice else 0)
                client.shutdown(socket.SHUT_WR)
                assert read_all(server) == b"s" * sent
    stop_cleanly(process)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize(
    ("when", "opened"),
    [
        pytest.param("before", 2, id="no-duplicates-so-the-transports-copy"),
        # the two sockets, their duplicates, and the relays' epoll
        pytest.param("after", 5, id="duplicates-but-no-pipe-so-the-relay-copies"),
    ],
)
def test_with_no_descriptor_to_spare_a_pair_still_forwards_every_byte(
    tapster: type[TapsterProcess], dest: socket.socket, loop: list[str], when: str, opened: int
) -> None:
    """The descriptor limit lowered on the running forwarder: before the pair is made, to leave room for its two
    sockets only (no duplicates: the pair is copied through the process), or once the relay has its duplicates,
    to what is open (no pipe for the bulk data: the relay copies through a buffer). Either way 8 MB go each way
    at once, byte-exact, and both half-closes pass."""
    import random
    import resource

    process = start_forward(tapster, "tcp:0:interface=127.0.0.1", tcp_dest(dest), *loop)
    pid = process.proc.pid
    base, no_pipes = len(descriptors(pid)), pipes(pid)
    hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
    if when == "before":
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (base + 3, hard))
    up, down = random.randbytes(8 << 20), random.randbytes(8 << 20)
    got: dict[str, bytes] = {}
    with socket.create_connection(("127.0.0.1", process.port("PortForward")), timeout=30) as client:
        server, _ = dest.accept()
        with server:
            server.settimeout(30)
            client.sendall(b"first")
            assert (
                server.recv(5) == b"first"
            )  # paired (the first bytes may pass just before the relay starts)
            wait_until(
                lambda: len(descriptors(pid)) == base + opened, 10, f"{opened} descriptors for the pair"
            )
            if when == "after":
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (base + opened, hard))

            def send(sock: socket.socket, data: bytes) -> None:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)

            senders = [
                threading.Thread(target=send, args=(client, up)),
                threading.Thread(target=send, args=(server, down)),
            ]
            readers = [
                threading.Thread(target=lambda: got.__setitem__("up", read_all(server))),
                threading.Thread(target=lambda: got.__setitem__("down", read_all(client))),
            ]
            for thread in [*senders, *readers]:
                thread.start()
            for thread in [*senders, *readers]:
                thread.join(60)
            assert pipes(pid) == no_pipes, "a pipe was opened after all"
    assert got == {"up": up, "down": down}
    stop_cleanly(process)


@pytest.mark.parametrize("loop", MODES)
def test_a_destination_that_speaks_first_is_heard(
    tapster: type[TapsterProcess], dest: socket.socket, loop: list[str]
) -> None:
    """A destination that greets as soon as it accepts (SMTP, FTP, SSH): the greeting can reach the forwarder
    before it has joined the pair, and must be kept and passed on, not dropped. Twenty connections, so that
    the greeting races the pairing on each loop."""
    process = start_forward(tapster, "tcp:0:interface=127.0.0.1", tcp_dest(dest), *loop)
    port = process.port("PortForward")

    def greet() -> None:
        for number in range(20):
            conn, _ = dest.accept()
            with conn:
                conn.sendall(b"220 hello %d\r\n" % number)
                conn.shutdown(socket.SHUT_WR)
                read_all(conn)

    greeter = threading.Thread(target=greet, daemon=True)
    greeter.start()
    for number in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=15) as client:
            client.settimeout(15)
            assert read_all(client) == b"220 hello %d\r\n" % number
    greeter.join(15)


def test_a_destination_by_name_is_reached_after_dropping_to_nobody(
    tapster: type[TapsterProcess], dest: socket.socket, shared_dir: Path
) -> None:
    """`--dest tcp:localhost:PORT` after `-u nobody`: the name is looked up on the loop's thread pool, whose module
    Python imports on first use, which failed once the interpreter's directory was unreadable (the client's
    connection then hung, never answered nor closed). The module is loaded before the switch now."""
    port = dest.getsockname()[1]
    process = tapster(
        [
            "-n",
            "-o",
            "--pidfile=",
            "-u",
            "nobody",
            "portforward",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--dest",
            f"tcp:localhost:{port}",
        ],
        cwd=shared_dir,
    )
    process.wait_for("PortForward starting on")
    with socket.create_connection(("127.0.0.1", process.port("PortForward")), timeout=15) as client:
        client.settimeout(15)
        server, _ = dest.accept()
        with server:
            server.sendall(b"hello")
            server.shutdown(socket.SHUT_WR)
            assert read_all(client) == b"hello"
    process.signal(signal.SIGTERM)
    status, out, _ = process.finish()
    assert status == 0 and "Traceback" not in out


@pytest.mark.parametrize("loop", MODES)
def test_urgent_data_in_a_bulk_stream_neither_stalls_nor_spins_the_forwarder(
    tapster: type[TapsterProcess], dest: socket.socket, loop: list[str]
) -> None:
    """TCP urgent data (MSG_OOB) after enough bytes to switch a direction to splice: splice(2) stops at the
    urgent mark with EAGAIN while the socket stays readable, and a relay that retried it spun a CPU for ever and
    forwarded nothing more (found by review). Every ordinary byte after the mark must arrive, and the forwarder
    must use almost no CPU while the pair is idle afterwards. (The urgent byte itself is not part of the stream:
    it is dropped, as the copying path and twistd drop it.)"""
    process = start_forward(tapster, "tcp:0:interface=127.0.0.1", tcp_dest(dest), *loop)
    pid = process.proc.pid
    with socket.create_connection(("127.0.0.1", process.port("PortForward")), timeout=15) as client:
        server, _ = dest.accept()
        with server:
            server.settimeout(15)
            client.sendall(b"a" * (1 << 20))
            got = 0
            while got < 1 << 20:
                got += len(server.recv(1 << 20))
            client.send(b"!", socket.MSG_OOB)
            client.sendall(b"b" * 100_000)
            after = b""
            while len(after) < 100_000:
                chunk = server.recv(1 << 20)
                assert chunk, "the destination's side ended early"
                after += chunk.replace(b"!", b"")
            assert after == b"b" * 100_000
            before = cpu_seconds(pid)
            time.sleep(1.0)  # measuring idle CPU over a second: nothing to wait for
            used = cpu_seconds(pid) - before
            assert used < 0.3, f"the forwarder used {used:.2f} CPU seconds in an idle second"
    stop_cleanly(process)


@pytest.mark.parametrize("loop", LOOPS)
def test_the_relay_costs_at_most_an_eighth_of_the_connections_a_descriptor_limit_allows(
    tapster: type[TapsterProcess], dest: socket.socket, loop: list[str]
) -> None:
    """A relayed pair holds four descriptors (its sockets and their duplicates), a copied one two: relaying every
    pair halved how many connections fit under the limit (found by review: 25 pairs instead of 50 with 100
    spare descriptors). The relay keeps its duplicates below a quarter of the soft limit, so with 100 spare
    descriptors the forwarder still carries at least 7/8 of the 50 pairs copying alone would."""
    import resource

    process = start_forward(tapster, "tcp:0:interface=127.0.0.1", tcp_dest(dest), *loop)
    pid = process.proc.pid
    port = process.port("PortForward")
    base = len(descriptors(pid))
    resource.prlimit(
        pid, resource.RLIMIT_NOFILE, (base + 100, resource.prlimit(pid, resource.RLIMIT_NOFILE)[1])
    )
    carried = 0
    with contextlib.ExitStack() as stack:
        for _ in range(60):
            client = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            dest.settimeout(2)
            try:
                server = stack.enter_context(dest.accept()[0])
                server.settimeout(2)
                client.settimeout(2)
                client.sendall(b"x")
                assert server.recv(1) == b"x"
                server.sendall(b"y")
                assert client.recv(1) == b"y"
            except (TimeoutError, ConnectionError):
                break  # the forwarder is out of descriptors: this pair was not made
            carried += 1
    assert carried >= 44, f"{carried} pairs fit in 100 spare descriptors"


@pytest.mark.parametrize("loop", MODES)
def test_a_stop_under_load_lets_every_forwarded_stream_finish_byte_exact(
    tapster: type[TapsterProcess], dest: socket.socket, loop: list[str]
) -> None:
    """SIGTERM while 8 connections each echo 4 MB of their own random bytes through the forwarder (relayed, or
    copied with --no-splice): the listener closes, and every connection still gets back exactly what it sent,
    then the process exits 0. The drain's promise under load, for the relay's paused transports too."""
    import random

    process = start_forward(tapster, "tcp:0:interface=127.0.0.1", tcp_dest(dest), *loop)
    port = process.port("PortForward")
    count, size = 8, 4 * 1024 * 1024

    def echo(conn: socket.socket) -> None:
        with conn:
            while chunk := conn.recv(65536):
                conn.sendall(chunk)

    paired = threading.Event()

    def accept_all() -> None:
        for _ in range(count):
            conn, _ = dest.accept()
            conn.settimeout(30)
            threading.Thread(target=echo, args=(conn,), daemon=True).start()
        paired.set()

    halfway = threading.Barrier(count + 1)
    stopping = threading.Event()
    results: dict[int, bool] = {}

    def client(number: int) -> None:
        payload = random.randbytes(size)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:

            def send() -> None:
                sock.sendall(payload[: size // 2])
                halfway.wait(30)
                stopping.wait(30)  # the second half only once the stop has begun
                sock.sendall(payload[size // 2 :])
                sock.shutdown(socket.SHUT_WR)

            sender = threading.Thread(target=send)
            sender.start()
            got = bytearray()
            while chunk := sock.recv(65536):
                got += chunk
            sender.join(30)
        results[number] = bytes(got) == payload

    threading.Thread(target=accept_all, daemon=True).start()
    clients = [threading.Thread(target=client, args=(number,)) for number in range(count)]
    for thread in clients:
        thread.start()
    # Every connection paired (its destination reached) and half sent before the stop.
    assert paired.wait(30)
    halfway.wait(30)
    process.signal(signal.SIGTERM)
    # Every stream is half sent and none can end before the stop has counted them: a stream that finished
    # between the barrier and the signal (a busy machine) would leave fewer to drain, or none.
    assert process.wait_for(r"draining (\d+) open connection").group(1) == str(count)
    stopping.set()
    for thread in clients:
        thread.join(60)
    assert results == {number: True for number in range(count)}
    status, _, _ = process.finish()
    assert status == 0
