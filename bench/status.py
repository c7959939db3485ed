"""--status: what serving probes and metrics costs the data path, and how fast /metrics answers under load.

    python bench/status.py [--seconds 3] [--rounds 3] [--conns 50] [--open 10000] [--scrapes 50]

One invocation measures, on this machine:

* **echo round trips/s** of ``tapster -n -y examples/echo.tac`` without ``--status`` and with ``--status`` while
  a scraper in this process fetches ``/metrics`` 10 times a second (a keep-alive connection, as Prometheus
  keeps); the load client (bench/_common.py, ``--conns`` ping-pong connections, 64-byte messages) and the server
  are pinned to different CPUs. Median of ``--rounds``, each against a fresh server, the two taking turns.
  Goal: ratio >= 0.98.
* **/metrics latency**: the time for one ``GET /metrics`` (request sent -> whole body read), median and max of
  ``--scrapes``, with no client connection and with ``--open`` idle connections open on the echo listener.
  Goal: median < 20 ms with 10,000 connections.

The status listener is a unix socket here, so the port line the bench helpers read is the echo server's.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import sys
import threading
import time
from pathlib import Path

from _common import ECHO_TAC, ServerSpec, median, pin, raise_fd_limit, run_load, start, table, temp_dir, tool
from _common import verdict as _verdict


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (the status listener's endpoint here)."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(self.path)
        self.sock = sock


def scrape(connection: UnixHTTPConnection) -> float:
    """One GET /metrics on a kept-alive connection; the seconds it took."""
    began = time.perf_counter()
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - began
    if response.status != 200 or b"tapster_listener_connections_open" not in body:
        raise SystemExit(f"bench: /metrics answered {response.status}")
    return elapsed


class Scraper(threading.Thread):
    """Fetches /metrics ``rate`` times a second until stopped."""

    def __init__(self, path: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.period = 1.0 / rate
        self.done = threading.Event()
        self.count = 0

    def run(self) -> None:
        connection = UnixHTTPConnection(self.path)
        next_at = time.monotonic()
        while not self.done.is_set():
            scrape(connection)
            self.count += 1
            next_at += self.period
            self.done.wait(max(0.0, next_at - time.monotonic()))
        connection.close()


def spec(status: str | None) -> ServerSpec:
    argv = [tool("tapster"), "-n", "-y", str(ECHO_TAC), "--pidfile="]
    if status:
        argv += ["--status", f"unix:{status}"]
    return ServerSpec("tapster --status" if status else "tapster", "asyncio", tuple(argv))


def throughput(args: argparse.Namespace, directory: Path) -> list[list[str]]:
    results: dict[str, list[float]] = {"without": [], "with": []}
    scrapes = 0
    for round_ in range(args.rounds):
        for which in ("without", "with"):
            path = str(directory / f"status-{round_}.sock") if which == "with" else None
            server = start(spec(path))
            pin(server.proc.pid, 0)
            scraper = Scraper(path, 10.0) if path else None
            try:
                if scraper is not None:
                    scraper.start()
                rate = run_load(server.port, args.conns, 64, 0.5, args.seconds, cpu=1)
            finally:
                if scraper is not None:
                    scraper.done.set()
                    scraper.join()
                    scrapes += scraper.count
                server.terminate()
            results[which].append(rate)
            print(f"  round {round_ + 1} {which} --status: {rate:,.0f} round trips/s", file=sys.stderr)
    without, with_ = median(results["without"]), median(results["with"])
    ratio = with_ / without
    print(f"  ({scrapes} scrapes during the 'with' rounds)", file=sys.stderr)
    return [
        ["without --status", f"{without:,.0f}", ""],
        [
            "with --status, /metrics 10x/s",
            f"{with_:,.0f}",
            f"{ratio:.3f} ({_verdict(ratio >= 0.98)}: >= 0.98)",
        ],
    ]


def latency(args: argparse.Namespace, directory: Path) -> list[list[str]]:
    raise_fd_limit(args.open * 2 + 1000)
    path = str(directory / "latency.sock")
    server = start(spec(path))
    rows = []
    clients: list[socket.socket] = []
    try:
        for opened in (0, args.open):
            while len(clients) < opened:
                clients.append(socket.create_connection(("127.0.0.1", server.port)))
            connection = UnixHTTPConnection(path)  # opening thousands may outlast an idle keep-alive
            scrape(connection)  # the first scrape after the connections may still see some arriving
            deadline = time.monotonic() + 60
            while True:
                connection.request("GET", "/metrics")
                body = connection.getresponse().read().decode()
                line = next(x for x in body.splitlines() if x.startswith("tapster_listener_connections_open"))
                if float(line.rsplit(" ", 1)[1]) >= opened or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            times = [scrape(connection) for _ in range(args.scrapes)]
            ms = median(times) * 1000
            goal = f"{_verdict(ms < 20)}: < 20 ms" if opened else ""
            rows.append([f"{opened:,}", f"{ms:.2f}", f"{max(times) * 1000:.2f}", goal])
            print(f"  {opened} open: /metrics median {ms:.2f} ms", file=sys.stderr)
            connection.close()
    finally:
        for client in clients:
            client.close()
        server.terminate()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--open", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    with temp_dir("tapster-bench-status-") as name:
        directory = Path(name)
        print("echo round trips/s, with and without --status scraped 10x/s", file=sys.stderr)
        rows = throughput(args, directory)
        print(table(["server", "echo round trips/s", "ratio"], rows))
        print()
        print("/metrics latency", file=sys.stderr)
        rows = latency(args, directory)
        print(table(["open connections", "/metrics median ms", "max ms", "goal"], rows))


if __name__ == "__main__":
    main()
