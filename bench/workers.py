"""--workers: CPU-bound throughput with 2 workers vs 1, the connection split, reloads under load, master cost.

    python bench/workers.py [--seconds 3] [--rounds 3] [--conns 20] [--reloads 10] [--upgrades 3] [--reload-conns 50]

One invocation measures, on this machine:

* **round trips/s** of a handler that spends ~1 ms of CPU per request (a busy loop on ``time.perf_counter``),
  with ``--workers 1``, ``--workers 2`` and a single process (no master), ``--conns`` ping-pong connections from
  a load client in this process (an asyncio loop in a thread); the ratio 2 vs 1 is the figure to read (goal
  >= 1.6 on 2 cores; the client shares the cores, so the ideal is a little under 2).
* **split**: how many requests each worker answered with ``--workers 2`` (each answer names the worker's pid).
* **reloads and upgrades**: ``--reloads`` rolling reloads (``tapster ctl reload``) and then ``--upgrades``
  in-place upgrades (``tapster ctl upgrade``) of a 2-worker server under ``--reload-conns`` concurrent clients,
  each opening a new connection per request: connections refused or reset, requests without an answer
  (goal: 0 and 0), and the time from the command to all workers new (median).
* **master**: RSS of the master and of one worker; ready time (spawn -> first answer) with ``--workers 1`` vs a
  single process, median of ``--rounds`` starts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import median, rss_kib, table, tool, verdict

APP = """
import os
import time

from tapster import Application
from tapster.services import StreamServer

PID = str(os.getpid()).encode()


async def handle(reader, writer):
    while line := await reader.readline():
        end = time.perf_counter() + 0.001  # ~1 ms of CPU per request
        while time.perf_counter() < end:
            pass
        writer.write(PID + b" " + line)
        await writer.drain()
    writer.close()


application = Application("bench")
StreamServer(f"tcp:{os.environ['PORT']}:interface=127.0.0.1", handle, name="Busy").set_parent(application)
"""


OPEN_GAP = 0.01
"""Seconds between opening two of the load's connections."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A tapster command serving the busy application on a fixed port."""

    def __init__(self, directory: Path, workers: int | None) -> None:
        self.directory = directory
        self.port = free_port()
        argv = [tool("tapster"), "-n", "--pidfile", "bench.pid", "-y", str(directory / "busy.tac")]
        if workers is not None:
            argv[1:1] = ["--workers", str(workers)]
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            argv,
            cwd=directory,
            env={**os.environ, "PORT": str(self.port)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        self.ready = self._wait_ready(workers or 0)

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.decode(errors="replace"))

    def _wait_ready(self, workers: int) -> float:
        """Seconds from spawn to an answer once every worker said it is ready (a log line of the master)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if sum("] worker" in line and " ready (pid " in line for line in list(self.lines)) < workers:
                time.sleep(0.002)
                continue
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    sock.sendall(b"probe\n")
                    if sock.recv(100):
                        return time.perf_counter() - self.started
            except OSError:
                time.sleep(0.002)
        raise SystemExit("bench: the server did not answer:\n" + "".join(self.lines))

    def worker_pids(self) -> list[int]:
        status = subprocess.run(
            [tool("tapster"), "ctl", "status", "--pidfile", "bench.pid"],
            cwd=self.directory,
            capture_output=True,
            text=True,
        ).stdout
        return [int(pid) for pid in re.findall(r"worker \d+: pid (\d+), ready", status)]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _ping_pong(
    port: int, conns: int, warmup: float, seconds: float
) -> tuple[int, collections.Counter[bytes]]:
    """``conns`` connections asking in turn; round trips and the answering pids counted after the warm-up."""
    counting = False
    count = 0
    pids: collections.Counter[bytes] = collections.Counter()
    stop = False

    async def client() -> None:
        nonlocal count
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while not stop:
            writer.write(b"x\n")
            answer = await reader.readline()
            if counting:
                count += 1
                pids[answer.split(b" ", 1)[0]] += 1
        writer.close()

    tasks = []
    for _ in range(conns):  # one every OPEN_GAP s, as clients arrive, rather than all in one millisecond
        tasks.append(asyncio.ensure_future(client()))
        await asyncio.sleep(OPEN_GAP)
    await asyncio.sleep(warmup)
    counting = True
    await asyncio.sleep(seconds)
    counting = False
    stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    return count, pids


def throughput(server: Server, conns: int, seconds: float) -> tuple[float, collections.Counter[bytes]]:
    count, pids = asyncio.run(_ping_pong(server.port, conns, 0.5, seconds))
    return count / seconds, pids


class Load:
    """``clients`` asyncio clients on a loop in a thread, each asking on a new connection after another."""

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.sent = self.answered = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.loop = asyncio.new_event_loop()
        self.running = True
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._all(clients),))
        self._thread.start()

    async def _all(self, clients: int) -> None:
        await asyncio.gather(*(self._client() for _ in range(clients)))

    async def _client(self) -> None:
        while self.running:
            self.sent += 1
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                try:
                    writer.write(b"x\n")
                    if not (await reader.readline()).endswith(b"\n"):
                        raise ConnectionError("closed without an answer")
                finally:
                    writer.close()
            except OSError as exc:
                self.errors[type(exc).__name__] += 1
            else:
                self.answered += 1

    def stop(self) -> None:
        self.running = False
        self._thread.join(timeout=60)
        self.loop.close()


def reloads(directory: Path, commands: list[str], clients: int) -> tuple[Load, dict[str, list[float]]]:
    """Run each ``ctl`` command in turn on a 2-worker server under load; the load and each command's times."""
    server = Server(directory, 2)
    load = Load(server.port, clients)
    times: dict[str, list[float]] = collections.defaultdict(list)
    try:
        for command in commands:
            began = time.perf_counter()
            result = subprocess.run(
                [tool("tapster"), "ctl", command, "--pidfile", "bench.pid"],
                cwd=directory,
                capture_output=True,
                text=True,
            )
            times[command].append(time.perf_counter() - began)
            if result.returncode != 0:
                raise SystemExit(f"bench: ctl {command} failed: {result.stdout}{result.stderr}")
    finally:
        load.stop()
        server.stop()
    return load, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--conns", type=int, default=20)
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--upgrades", type=int, default=3)
    parser.add_argument("--reload-conns", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tapster-bench-workers-") as name:
        directory = Path(name)
        (directory / "busy.tac").write_text(APP)
        rates: dict[str, list[float]] = {"single process": [], "--workers 1": [], "--workers 2": []}
        ready: dict[str, list[float]] = {key: [] for key in rates}
        splits: list[list[float]] = []
        master_rss: list[int] = []
        worker_rss: list[int] = []
        for round_number in range(args.rounds):
            for label, workers in (("single process", None), ("--workers 1", 1), ("--workers 2", 2)):
                print(f"round {round_number + 1}: {label}", file=sys.stderr)
                server = Server(directory, workers)
                try:
                    ready[label].append(server.ready)
                    rate, pids = throughput(server, args.conns, args.seconds)
                    rates[label].append(rate)
                    if workers == 2:
                        total = sum(pids.values()) or 1
                        splits.append(sorted((n / total for n in pids.values()), reverse=True))
                        master_rss.append(rss_kib(server.proc.pid))
                        worker_rss.extend(rss_kib(pid) for pid in server.worker_pids())
                finally:
                    server.stop()
        print(
            f"{args.reloads} reloads, {args.upgrades} upgrades under {args.reload_conns} clients",
            file=sys.stderr,
        )
        commands = ["reload"] * args.reloads + ["upgrade"] * args.upgrades
        load, times = reloads(directory, commands, args.reload_conns)

    one, two = median(rates["--workers 1"]), median(rates["--workers 2"])
    rows = [
        [
            label,
            f"{median(values):,.0f}",
            f"{median(values) / one:.2f}x",
            f"{median(ready[label]) * 1000:.0f}",
        ]
        for label, values in rates.items()
    ]
    print(
        f"## --workers (bench/workers.py, {args.conns} connections, ~1 ms CPU per request, median of {args.rounds})\n"
    )
    print(table(["server", "round trips/s", "vs --workers 1", "ready ms"], rows))
    print(
        f"\n--workers 2 vs 1: {two / one:.2f}x (goal >= 1.6: {verdict(two / one >= 1.6)}); requests per worker "
        "in each round: " + ", ".join(" / ".join(f"{share:.0%}" for share in split) for split in splits)
    )
    print(
        f"master RSS {median(master_rss) / 1024:.1f} MiB, worker RSS {median(worker_rss) / 1024:.1f} MiB; "
        f"ready with --workers 1: {median(ready['--workers 1']) * 1000:.0f} ms vs "
        f"{median(ready['single process']) * 1000:.0f} ms for a single process"
    )
    errors = sum(load.errors.values())
    lost = load.sent - load.answered - errors
    took = "; ".join(
        f"ctl {command} -> all new: median {median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"
        for command, values in times.items()
    )
    print(
        f"\n{args.reloads} rolling reloads and {args.upgrades} upgrades of 2 workers under {args.reload_conns} "
        f"clients (a connection per request): {load.answered:,} answered, {errors} refused/reset "
        f"({dict(load.errors) or 'none'}), {max(lost, 0)} lost (goal 0 and 0: "
        f"{verdict(errors == 0 and lost <= 0)}); {took}"
    )


if __name__ == "__main__":
    main()
