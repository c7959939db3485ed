"""The foreground runner (-n -y): milestones, signals, the shutdown timeout, and the seed examples."""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

from conftest import EXAMPLES, connect, read_all

POEM = (EXAMPLES / "poetry" / "ecstasy.txt").read_bytes()


def test_fastpoetry_serves_the_poem_and_stops_on_sigint_with_the_milestones(tapster, tmp_path: Path) -> None:
    """tapster -n -y fastpoetry.tac logs twistd's milestones, serves the poem, and stops cleanly on Ctrl-C."""
    proc = tapster(["-n", "-y", str(EXAMPLES / "fastpoetry.tac")], env={"FASTPOETRY_PORT": "0"})
    port = proc.port("PoetryProtocol")
    with connect(port) as sock:
        assert read_all(sock) == POEM
    proc.wait_for(rf"\[PoetryProtocol,1,127\.0\.0\.1\] sending {len(POEM)} bytes of poetry")
    proc.signal(signal.SIGINT)
    status, out, err = proc.finish()
    assert status == 0, err
    expected = [
        "[-] Log opened.",
        "[-] tapster 0.1.0 (python 3.",
        "[-] event loop: asyncio.",
        "loaded a poem from:",
        "[-] PoetryProtocol starting on",
        "[-] Received SIGINT, shutting down.",
        "[-] Server Shut Down.",
    ]
    positions = [next(i for i, line in enumerate(out.splitlines()) if text in line) for text in expected]
    assert positions == sorted(positions), out
    assert out.splitlines()[0][:4].isdigit() and "+0000 [-] Log opened." in out.splitlines()[0]
    assert not (tmp_path / "tapster.pid").exists()


def test_pid_file_is_written_in_foreground_mode_and_removed(tapster, tmp_path: Path) -> None:
    """-n still writes tapster.pid (the process's own pid) and removes it at exit."""
    proc = tapster(["-n", "-y", str(EXAMPLES / "fastpoetry.tac")], env={"FASTPOETRY_PORT": "0"})
    proc.port()
    assert (tmp_path / "tapster.pid").read_text() == str(proc.proc.pid)
    proc.signal(signal.SIGTERM)
    status, out, _ = proc.finish()
    assert status == 0 and "Received SIGTERM, shutting down." in out
    assert not (tmp_path / "tapster.pid").exists()


def test_reverser_reverses_lines_and_quit_hangs_up(tapster) -> None:
    """Seed 004's reverser: each line comes back reversed; 'quit' closes the connection."""
    proc = tapster(["-n", "-y", str(EXAMPLES / "reverser.tac"), "--pidfile="], env={"REVERSER_PORT": "0"})
    with connect(proc.port("reverse_lines")) as sock:
        sock.sendall(b"hello world!\r\n")
        assert sock.recv(100) == b"!dlrow olleh\r\n"
        sock.sendall(b"quit\r\n")
        assert read_all(sock) == b""
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def test_echo_example_echoes(tapster) -> None:
    """Seed 002's echo server sends back what it receives."""
    proc = tapster(["-n", "-y", str(EXAMPLES / "echo.tac"), "--pidfile="], env={"ECHO_PORT": "0"})
    with connect(proc.port("Echo")) as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def test_uvloop_reactor_serves(tapster) -> None:
    """--reactor uvloop runs the same application on uvloop and says so."""
    proc = tapster(
        ["-n", "--reactor", "uvloop", "-y", str(EXAMPLES / "fastpoetry.tac"), "--pidfile="],
        env={"FASTPOETRY_PORT": "0"},
    )
    proc.wait_for(r"event loop: uvloop\.Loop")
    with connect(proc.port()) as sock:
        assert read_all(sock) == POEM
    proc.signal(signal.SIGINT)
    assert proc.finish()[0] == 0


HANGING = textwrap.dedent("""
    import asyncio, logging
    from tapster import Application, Service
    from tapster.services import StreamServer

    log = logging.getLogger("hang")

    class Quick(Service):
        name = "quick"
        async def stop(self):
            await super().stop()
            log.info("quick stopped")

    class Hang(Service):
        name = "hang"
        async def start(self):
            await super().start()
            log.info("hang started")
        async def stop(self):
            await super().stop()
            log.info("hang stopping forever")
            await asyncio.Event().wait()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

    application = Application("slowapp")
    Quick().set_parent(application)
    Hang().set_parent(application)
    StreamServer("tcp:0:interface=127.0.0.1", Echo).set_parent(application)
""")


def test_shutdown_timeout_names_the_service_that_blocks(tapster, tmp_path: Path) -> None:
    """When stop outlives --shutdown-timeout, the log names the stuck service and the exit status is 1."""
    (tmp_path / "slow.tac").write_text(HANGING)
    proc = tapster(["-n", "-y", "slow.tac", "--shutdown-timeout", "0.3"])
    with connect(proc.port("Echo")):
        proc.signal(signal.SIGTERM)
        status, out, _ = proc.finish()
    assert status == 1
    assert "Shutdown timeout (0.3 s) passed; still stopping: slowapp/hang (Hang)" in out
    assert "quick stopped" in out and "Server Shut Down." in out


def test_second_sigint_forces_exit(tapster, tmp_path: Path) -> None:
    """A second SIGINT during a stuck stop cancels it and exits with status 1."""
    (tmp_path / "slow.tac").write_text(HANGING)
    proc = tapster(["-n", "-y", "slow.tac", "--shutdown-timeout", "60"])
    proc.port("Echo")
    proc.signal(signal.SIGINT)
    proc.wait_for("hang stopping forever")
    proc.signal(signal.SIGINT)
    status, out, _ = proc.finish()
    assert status == 1
    assert "Received SIGINT again: forcing shutdown." in out


STARTING = textwrap.dedent("""
    import asyncio, logging
    from tapster import Application, Service

    log = logging.getLogger("starting")

    class First(Service):
        name = "first"
        async def stop(self):
            await super().stop()
            log.info("first stopped")

    class Slow(Service):
        name = "slow"
        async def start(self):
            log.info("slow start begins")
            await asyncio.Event().wait()

    application = Application("starting")
    First().set_parent(application)
    Slow().set_parent(application)
""")


def test_signal_during_start_stops_what_started_and_exits_zero(tapster, tmp_path: Path) -> None:
    """SIGTERM while a service is still starting stops the services already started, then exits 0."""
    (tmp_path / "starting.tac").write_text(STARTING)
    proc = tapster(["-n", "-y", "starting.tac"])
    proc.wait_for("slow start begins")
    proc.signal(signal.SIGTERM)
    status, out, _ = proc.finish()
    assert status == 0, out
    assert "first stopped" in out
    assert out.rstrip().endswith("Server Shut Down.")
    assert not (tmp_path / "tapster.pid").exists()
