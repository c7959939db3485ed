"""guard_accept_errors: a listener out of descriptors is paused and reported once per period, then recovers.

Run in a child process with a low ``RLIMIT_NOFILE`` and a short report period; the clients are made before the
descriptors run out (a connect needs none), so the server's ``accept()`` is the one that fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CHILD = """
import asyncio, json, logging, os, resource, socket, time
from tapster.runner import _loop_errors

_loop_errors.REPORT_PERIOD = 0.5
messages = []


class Collect(logging.Handler):
    def emit(self, record):
        messages.append(f"{record.name}: {record.getMessage()}")


logging.getLogger().addHandler(Collect())
logging.getLogger().setLevel(logging.INFO)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
accepted = []
lost = []


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        accepted.append(transport)
        self.transport = transport

    def connection_lost(self, exc):
        lost.append(self.transport)

    def data_received(self, data):
        self.transport.write(data)


async def exhaust(port, count):
    clients = [socket.socket() for _ in range(count)]
    hog = []
    try:
        while True:
            hog.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    for client in clients:
        client.setblocking(False)
        try:
            client.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
    return clients, hog


async def until(predicate, timeout=10):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def main():
    loop = asyncio.get_running_loop()
    _loop_errors.guard_accept_errors(loop)
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await until(lambda: len(accepted) >= 1)  # our own connection is in before the count starts
    before = len(accepted)
    clients, hog = await exhaust(port, 20)
    cpu = time.process_time()
    asked = answered = 0
    started = loop.time()
    while loop.time() - started < 1.6:
        asked += 1
        writer.write(b"ping")
        answered += await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        await asyncio.sleep(0.05)
    cpu = time.process_time() - cpu
    during = len(accepted) - before
    for fd in hog:
        os.close(fd)
    freed = loop.time()
    while len(accepted) - before < 20 and loop.time() - freed < 5:
        await asyncio.sleep(0.01)
    served_after = loop.time() - freed
    while not any("accepting connections again" in m for m in messages) and loop.time() - freed < 5:
        await asyncio.sleep(0.05)
    for client in clients:
        client.close()
    # Out of descriptors again, then the server closes while its listener is paused: nothing to report. The
    # server's side of the clients just closed gives its descriptors back first (all but our own connection).
    await until(lambda: len(lost) == len(accepted) - 1)
    clients, hog = await exhaust(port, 5)
    starts = lambda: sum("cannot accept connections: [Errno 24]" in m for m in messages)
    await until(lambda: starts() >= 2)  # the second episode has begun: the listener is paused now
    server.close()
    # Proving that nothing is logged needs a bounded wait: three report periods, each of which would log.
    await asyncio.sleep(1.5)
    for fd in hog:
        os.close(fd)
    writer.close()
    print(json.dumps({
        "messages": messages, "asked": asked, "answered": answered, "during": during,
        "served": len(accepted) - before, "served_after": served_after, "cpu": cpu,
    }))


asyncio.run(main())
"""


@pytest.fixture
def outcome(tmp_path: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_listener_out_of_descriptors_is_paused_reported_and_recovers(outcome: dict[str, object]) -> None:
    messages = outcome["messages"]
    assert isinstance(messages, list)
    starts = [m for m in messages if "cannot accept connections: [Errno 24] Too many open files" in m]
    summaries = [m for m in messages if "still cannot accept connections" in m]
    again = [m for m in messages if "accepting connections again" in m]
    assert len(starts) == 2, messages  # the first episode, and the one cut short by the server's close
    assert starts[0].startswith("tapster: listener 127.0.0.1:")
    assert 1 <= len(summaries) <= 4, messages  # at most one per 0.5 s period over 1.6 s
    assert len(again) == 1, messages
    assert len(messages) == len(starts) + len(summaries) + len(again), (
        messages
    )  # no traceback, no other error
    assert outcome["during"] == 0
    assert outcome["asked"] == outcome["answered"]  # the connection opened before is served throughout
    assert outcome["served"] == 20  # every waiting client is taken once descriptors are free
    assert isinstance(outcome["served_after"], float) and outcome["served_after"] < 2.5
    assert isinstance(outcome["cpu"], float) and outcome["cpu"] < 0.5  # of 1.6 s
