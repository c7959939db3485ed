"""--drain-delay with --workers: the master keeps its workers serving for the delay, then stops them as before.

The workers run with no delay of their own (the master's SIGTERM to them means "stop now"); a second signal to
the master skips the rest of the delay, a third kills the workers as a second one did without a delay.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from workerapp import ask, free_port, ready_pids, write_app

from support.sdnotify import NotifyReceiver

SLACK = 2.0  # process start-up and exit on a loaded 2-core machine


@pytest.fixture
def receiver() -> Iterator[NotifyReceiver]:
    notify = NotifyReceiver()
    yield notify
    notify.close()


def start(tapster, tmp_path: Path, receiver: NotifyReceiver, *extra: str):
    port = free_port()
    app = write_app(tmp_path / "app.tac")
    proc = tapster(
        ["-n", "--pidfile", "t.pid", "--workers", "2", *extra, "-y", str(app)],
        env={"PORT": str(port), "NOTIFY_SOCKET": receiver.address},
    )
    receiver.wait_field(
        "READY", "1"
    )  # the master runs: a stop signal now drains, it does not abandon the start
    return proc, port


def test_workers_serve_new_connections_during_the_delay(tapster, tmp_path: Path, receiver) -> None:
    proc, port = start(tapster, tmp_path, receiver, "--drain-delay", "3", "--shutdown-timeout", "5")
    signalled = time.monotonic()
    proc.signal(signal.SIGTERM)
    draining = receiver.wait_for(lambda m: m.fields.get("STATUS") == "draining (3 s)", "STATUS=draining")
    assert draining.fields["STOPPING"] == "1"
    proc.wait_for(r"Draining for 3 s \(--drain-delay\)")
    workers = set(ready_pids(proc.lines).values())
    assert len(workers) == 2
    assert ask(port)[1] in workers  # a new connection, answered by a worker that has not been told to stop
    status, out, err = proc.finish(timeout=3 + 5 + 1.5 + SLACK + 5)
    elapsed = time.monotonic() - signalled
    assert status == 0, out + err
    assert 3 <= elapsed < 3 + 5 + 1.5 + SLACK
    assert out.index("Draining for 3 s") < out.index("Stopping 2 worker(s).")
    assert "Draining" not in out[out.index("Stopping 2 worker(s).") :]  # the workers stop at once


def test_a_second_signal_skips_the_masters_delay(tapster, tmp_path: Path, receiver) -> None:
    proc, port = start(tapster, tmp_path, receiver, "--drain-delay", "600")
    proc.signal(signal.SIGTERM)
    proc.wait_for(r"Draining for 600 s")
    assert ask(port)[0] == "v1"
    skipped = time.monotonic()
    proc.signal(signal.SIGTERM)
    status, out, err = proc.finish(timeout=10 + 1.5 + SLACK)
    assert status == 0, out + err  # graceful: the workers were stopped, not killed
    assert time.monotonic() - skipped < 10 + 1.5 + SLACK
    assert "Received SIGTERM again: skipping the rest of the drain delay." in out
    assert "killing the workers" not in out


def test_no_reload_during_the_drain(tapster, tmp_path: Path, receiver) -> None:
    proc, _ = start(tapster, tmp_path, receiver, "--drain-delay", "600")
    proc.signal(signal.SIGTERM)
    proc.wait_for(r"Draining for 600 s")
    proc.signal(signal.SIGUSR2)
    proc.signal(signal.SIGTERM)
    status, out, _ = proc.finish(timeout=15)
    assert status == 0
    assert "worker 1 started" not in out.split("Draining for 600 s", 1)[1]  # no new worker was started


SLOW_APP = """
import asyncio, os
from tapster import Application
from tapster.services import StreamServer

async def answer(reader, writer):
    line = await reader.readline()
    if line.startswith(b"slow"):
        for _ in range(2000):  # until the test releases it (20 s at most)
            if os.path.exists(os.environ["RELEASE"]):
                break
            await asyncio.sleep(0.01)
    writer.write(b"answer " + line)
    await writer.drain()

application = Application("slow")
StreamServer(f"tcp:{os.environ['PORT']}:interface=127.0.0.1", answer, name="echo").set_parent(application)
"""


def test_once_every_worker_closed_its_listener_new_connections_are_refused(tapster, tmp_path: Path) -> None:
    """During the stop's drain a new client is refused, not accepted by the kernel and reset at the exit: the
    workers let go of the socket the master passed them once their server has its own copy, so closing that
    copy at the stop really closes the listener (the master closed its own first). The request in flight is
    still answered."""
    import re
    import socket

    port = free_port()
    app = tmp_path / "slow.tac"
    app.write_text(SLOW_APP)
    release = tmp_path / "release"
    proc = tapster(
        ["-n", "--pidfile", "t.pid", "--workers", "2", "-y", str(app)],
        env={"PORT": str(port), "RELEASE": str(release)},
    )
    proc.wait_for(r"worker 1: .*echo starting on")
    proc.wait_for(r"worker 2: .*echo starting on")
    slow = socket.create_connection(("127.0.0.1", port), timeout=20)
    slow.sendall(b"slow\n")
    proc.signal(signal.SIGTERM)
    proc.wait_for(r"echo: stopping; draining 1 open connection")
    proc.wait_for(r"worker \d+ \(pid \d+\) stopped")  # the idle worker is gone, its copy with it
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    release.touch()
    assert slow.makefile("rb").readline() == b"answer slow\n"
    slow.close()
    status, out, err = proc.finish(timeout=20)
    assert status == 0, out + err
    assert not re.search(r"Traceback", out + err)


RELISTEN_APP = """
import asyncio, logging, os
from tapster import Application, Service
from tapster.services import StreamServer

async def echo(reader, writer):
    writer.write(b"pid %d\\n" % os.getpid())
    await writer.drain()

class Toggle(Service):
    async def start(self):
        await super().start()
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.toggle()))

    async def toggle(self):
        await server.stop()
        try:
            await server.start()
            logging.getLogger("toggle").info("toggle: listening again")
        except Exception as exc:
            logging.getLogger("toggle").info("toggle: failed: %r", exc)

application = Application("relisten")
server = StreamServer(f"tcp:{os.environ['PORT']}:interface=127.0.0.1", echo, name="echo")
server.set_parent(application)
Toggle().set_parent(application)
"""


def test_a_server_stopped_and_started_again_inside_a_running_worker_listens_again(
    tapster, tmp_path: Path
) -> None:
    """The worker lets go of the passed sockets only when it stops: a service stopped and started again while
    it runs (a child removed and added back) listens on the passed socket again and is answered."""
    import socket

    port = free_port()
    app = tmp_path / "relisten.tac"
    app.write_text(RELISTEN_APP)
    proc = tapster(["-n", "--pidfile", "t.pid", "--workers", "1", "-y", str(app)], env={"PORT": str(port)})
    proc.wait_for(r"toggle: (listening again|failed.*)$")
    assert any("toggle: listening again" in line for line in proc.lines), proc.lines
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        assert client.makefile("rb").readline().startswith(b"pid ")
    proc.signal(signal.SIGTERM)
    status, out, err = proc.finish(timeout=20)
    assert status == 0, out + err
