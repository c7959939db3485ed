"""SIGTERM under load drains: no client is reset, nothing the server had read goes unanswered, no traceback.

Real ``tapster`` processes, real loopback sockets, a real SIGTERM. Each client plays ping-pong: it sends one line,
waits for the echo, and repeats, until the server closes. The server is signalled mid-load. On the client a reset
is ``recv()`` raising ConnectionResetError; a clean end is ``recv()`` returning ``b""``.

The goal (issue 9, point 1): 0 resets, 0 tracebacks in the server's output, every request the server had read
before the signal answered; at most the one request per connection that crossed the close goes unanswered, and
the connection then ends in a clean EOF.
"""

from __future__ import annotations

import asyncio
import http.client
import resource
import shutil
import signal
import socket
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reliability.conftest import scale

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"

REACTORS = ["asyncio", "uvloop"]
PING_PONG_CONNECTIONS = 50
ROUNDS_BEFORE_SIGTERM = 20  # every connection has echoed this many lines before the signal

# An echo Protocol *without* stop_requested(): tapster closes it with a lingering close. It also counts, on the
# server side, the bytes it read and the bytes it wrote back, and says so if they ever differ.
NO_HOOK_TAC = textwrap.dedent(
    """
    import asyncio, logging, os
    from tapster import Application
    from tapster.services import StreamServer

    log = logging.getLogger("nohook")

    class PlainEcho(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.read = self.written = 0

        def data_received(self, data):
            self.read += len(data)
            self.transport.write(data)
            self.written += len(data)

        def connection_lost(self, exc):
            if self.read != self.written:
                log.error("UNANSWERED: read %d bytes, answered %d", self.read, self.written)

    application = Application("nohook")
    StreamServer(f"tcp:{os.environ['ECHO_PORT']}:interface=127.0.0.1", PlainEcho).set_parent(application)
    """
)


Figures = Any  # the `figures` fixture of tests/reliability/conftest.py


@dataclass
class Client:
    """One ping-pong connection, as the client saw it."""

    sent: int = 0
    answered: int = 0
    end: str = ""  # "eof", "reset", or "partial" (an answer cut short)
    rounds_ready: threading.Event = field(default_factory=threading.Event)


def ping_pong(port: int, number: int, client: Client) -> None:
    """Send a line, read its echo, repeat, until the server closes; record how it ended.

    Each client is a thread with a blocking socket, so the clients really run beside the server and a request
    is often on the wire when the server stops (an asyncio client in one loop leaves far fewer in flight).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        while True:
            request = b"connection %d request %d\n" % (number, client.sent)
            try:
                sock.sendall(request)
            except (BrokenPipeError, ConnectionResetError):
                client.end = "reset"
                return
            client.sent += 1
            answer = b""
            while len(answer) < len(request):
                try:
                    chunk = sock.recv(4096)
                except ConnectionResetError:
                    client.end = "reset"
                    return
                if not chunk:
                    client.end = "eof" if not answer else "partial"
                    return
                answer += chunk
            if answer != request:
                client.end = "partial"
                return
            client.answered += 1
            if client.answered == ROUNDS_BEFORE_SIGTERM:
                client.rounds_ready.set()


def server_problems(output: str) -> list[str]:
    """Lines of the server's output that must never appear: tracebacks, errors, unanswered input."""
    bad = ("Traceback", "Error", "error", "UNANSWERED", "feed_data after feed_eof")
    return [line for line in output.splitlines() if any(word in line for word in bad)]


def run_ping_pong(
    tapster: Callable[..., object], args: list[str], reactor: str
) -> tuple[list[Client], int, str, float]:
    """Start tapster, load it with ping-pong clients, SIGTERM it mid-load; return what everyone saw."""
    proc = tapster(["-n", "--pidfile=", "-r", reactor, *args], env={"ECHO_PORT": "0"})
    port = proc.port()  # type: ignore[attr-defined]
    clients = [Client() for _ in range(PING_PONG_CONNECTIONS)]
    threads = [
        threading.Thread(target=ping_pong, args=(port, n, c), daemon=True) for n, c in enumerate(clients)
    ]
    for thread in threads:
        thread.start()
    for client in clients:
        assert client.rounds_ready.wait(60), "a client never got going"
    signalled = time.monotonic()
    proc.signal(signal.SIGTERM)  # type: ignore[attr-defined]
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a client was left waiting"
    status, out, err = proc.finish(timeout=30)  # type: ignore[attr-defined]
    return clients, status, out + "\n" + err, time.monotonic() - signalled


def judge(figures: Figures, case: str, clients: list[Client], status: int, output: str, took: float) -> None:
    """Record the figures of one SIGTERM-under-load run, then assert the goal."""
    resets = sum(c.end == "reset" for c in clients)
    partial = sum(c.end == "partial" for c in clients)
    over = sum(c.sent - c.answered > 1 for c in clients)
    unanswered = sum(c.sent - c.answered for c in clients)
    answered = sum(c.answered for c in clients)
    problems = server_problems(output)
    held = resets == 0 and partial == 0 and over == 0 and not problems and status == 0
    figures.record(
        case,
        f"{len(clients)} ping-pong connections, {answered} answers: {resets} resets, {partial} cut answers, "
        f"{unanswered} unanswered (max 1 per connection: {over} over), {len(problems)} error lines, "
        f"exit {status} {took:.2f} s after SIGTERM",
        "0 resets, 0 tracebacks, <= 1 unanswered request per connection (the one crossing the close), then EOF",
        held,
    )
    assert problems == [], "\n".join(problems)
    assert resets == 0, f"{resets} of {len(clients)} clients were reset"
    assert partial == 0, f"{partial} clients got a cut answer"
    assert over == 0, [(c.sent, c.answered) for c in clients if c.sent - c.answered > 1]
    assert all(c.end == "eof" for c in clients)
    assert status == 0, output
    assert "aborted" not in output


@pytest.mark.parametrize("reactor", REACTORS)
def test_sigterm_under_load_protocol_with_the_hook(tapster, figures: Figures, reactor: str) -> None:
    """examples/echo.tac (a Protocol with stop_requested()): SIGTERM mid ping-pong resets nobody."""
    pytest.importorskip(reactor)
    clients, status, output, took = run_ping_pong(tapster, ["-y", str(EXAMPLES / "echo.tac")], reactor)
    judge(
        figures,
        f"SIGTERM under load, Protocol with stop_requested() ({reactor})",
        clients,
        status,
        output,
        took,
    )


@pytest.mark.parametrize("reactor", REACTORS)
def test_sigterm_under_load_stream_handler(tapster, figures: Figures, reactor: str) -> None:
    """examples/echo_stream.tac (a handler using unless_stopping): SIGTERM mid ping-pong resets nobody."""
    pytest.importorskip(reactor)
    clients, status, output, took = run_ping_pong(tapster, ["-y", str(EXAMPLES / "echo_stream.tac")], reactor)
    judge(
        figures,
        f"SIGTERM under load, stream handler with unless_stopping ({reactor})",
        clients,
        status,
        output,
        took,
    )


@pytest.mark.parametrize("reactor", REACTORS)
def test_sigterm_under_load_protocol_without_the_hook(
    tapster, figures: Figures, reactor: str, tmp_path: Path
) -> None:
    """A Protocol without the hook gets the lingering close: SIGTERM mid ping-pong resets nobody."""
    pytest.importorskip(reactor)
    tac = tmp_path / "nohook.tac"
    tac.write_text(NO_HOOK_TAC)
    clients, status, output, took = run_ping_pong(tapster, ["-y", str(tac)], reactor)
    judge(
        figures, f"SIGTERM under load, Protocol without the hook ({reactor})", clients, status, output, took
    )


# --------------------------------------------------------------------------------------------- idle connections


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def hold_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` connections, each having echoed one byte (so the server has accepted and registered it)."""
    loop = asyncio.get_running_loop()
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, b"x")
        assert await loop.sock_recv(sock, 1) == b"x"
        socks.append(sock)
    return socks


async def how_it_ends(sock: socket.socket, close_on_eof: bool) -> str:
    loop = asyncio.get_running_loop()
    try:
        data = await loop.sock_recv(sock, 16)
    except ConnectionResetError:
        return "reset"
    finally:
        if close_on_eof:
            sock.close()
    return "eof" if data == b"" else "data"


def test_idle_connections_get_a_clean_eof_at_stop(tapster, figures: Figures) -> None:
    """N idle clients (5,000 in the long run) each read a clean EOF at SIGTERM; closing on it, the exit is quick."""
    count = scale(500, 5000)
    raise_fd_limit(count + 1000)
    proc = tapster(["-n", "--pidfile=", "-y", str(EXAMPLES / "echo.tac")], env={"ECHO_PORT": "0"})
    port = proc.port()

    async def scenario() -> tuple[list[str], float]:
        socks = await hold_idle(port, count)
        began = time.monotonic()
        proc.signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            ends = await asyncio.gather(*(how_it_ends(sock, True) for sock in socks))
        return ends, began

    ends, began = asyncio.run(scenario())
    status, out, err = proc.finish(timeout=30)
    took = time.monotonic() - began
    clean = ends.count("eof")
    problems = server_problems(out + "\n" + err)
    held = clean == count and status == 0 and not problems
    figures.record(
        "idle connections at SIGTERM",
        f"{clean}/{count} clean EOF, {ends.count('reset')} resets; exit {took:.2f} s after SIGTERM",
        "every idle client gets a clean EOF; exit well under the 2 s linger when clients close on EOF",
        held and took < 2.0,
    )
    assert ends.count("reset") == 0 and clean == count, {e: ends.count(e) for e in set(ends)}
    assert status == 0 and not problems, problems
    assert took < 10


def test_idle_clients_that_never_close_do_not_hold_the_stop(tapster, figures: Figures) -> None:
    """Idle clients that read nothing and never close (pooled connections) get EOF and do not wait out the linger."""
    count = scale(100, 1000)
    raise_fd_limit(count + 1000)
    proc = tapster(["-n", "--pidfile=", "-y", str(EXAMPLES / "echo.tac")], env={"ECHO_PORT": "0"})
    port = proc.port()

    async def hold() -> list[socket.socket]:
        return await hold_idle(port, count)

    socks = asyncio.run(hold())
    try:
        began = time.monotonic()
        proc.signal(signal.SIGTERM)
        status, out, err = proc.finish(timeout=30)  # the clients do nothing until the server has exited
        took = time.monotonic() - began

        async def ends() -> list[str]:
            async with asyncio.timeout(30):
                return await asyncio.gather(*(how_it_ends(sock, False) for sock in socks))

        seen = asyncio.run(ends())
    finally:
        for sock in socks:
            sock.close()
    clean = seen.count("eof")
    held = clean == count and status == 0 and took < 1.5
    figures.record(
        "idle clients that never read nor close, at SIGTERM",
        f"{clean}/{count} clean EOF (read after the exit); exit {took:.2f} s after SIGTERM",
        "clean EOF for all; exit before the 2 s linger (a quiet peer is closed once it holds our EOF)",
        held,
    )
    assert clean == count and status == 0, (seen, out, err)
    assert took < 1.5, took
    assert "aborted" not in out


def test_http_keep_alive_connections_of_the_echo_plugin_drain(
    tapster, figures: Figures, tmp_path: Path
) -> None:
    """The echo plugin's HTTP side (aiohttp) closes idle keep-alive connections at SIGTERM with a clean EOF."""
    pytest.importorskip("aiohttp")
    folder = tmp_path / "tapster" / "plugins"
    folder.mkdir(parents=True)
    shutil.copy(EXAMPLES / "tapster" / "plugins" / "echo_plugin.py", folder)
    proc = tapster(["-n", "-o", "--pidfile=", "echo", "--port", "0"], cwd=tmp_path)
    port = proc.port("EchoHTTP")
    count = 10
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(count)]
    for connection in connections:
        connection.request("POST", "/echo", body=b"hello")
        response = connection.getresponse()
        assert response.read() == b"hello" and not response.will_close  # kept alive
    began = time.monotonic()
    proc.signal(signal.SIGTERM)
    ends = []
    for connection in connections:
        assert connection.sock is not None
        try:
            ends.append("eof" if connection.sock.recv(16) == b"" else "data")
        except ConnectionResetError:
            ends.append("reset")
        connection.close()
    status, out, err = proc.finish(timeout=30)
    took = time.monotonic() - began
    held = ends.count("eof") == count and status == 0 and "aborted" not in out and took < 1
    figures.record(
        "idle HTTP keep-alive connections at SIGTERM (echo plugin, aiohttp)",
        f"{ends.count('eof')}/{count} clean EOF; exit {status} {took:.2f} s after SIGTERM",
        "clean EOF for all; exit < 1 s (without the hook aiohttp's own shutdown waited 1 s)",
        held,
    )
    assert ends == ["eof"] * count, ends
    assert status == 0 and "aborted" not in out, out + err
    assert not server_problems(out + "\n" + err)
    assert took < 5
