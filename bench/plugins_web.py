"""The built-in ``web --path`` and ``portforward`` plugins against twistd's and a bare script, in one invocation.

    python bench/plugins_web.py [--seconds 3] [--rounds 3] [--bytes 1000000000] [--short]

- **web --path**: requests/s for a 1 KiB and a 1 MiB static file with ``--conns`` (50) keep-alive connections,
  ``tapster -n web --path DIR`` (default access log to the main log, and ``--access-log off``) against
  ``twistd -n web --path DIR`` (its access log on stdout) and a bare aiohttp script (``add_static``, no access
  log). The load is ``wrk`` (Debian's; ``apt-get install -y wrk`` is tried once when it is missing and we are
  root) or, failing that, an aiohttp-on-uvloop client in its own process. Every server first answers one GET
  checked for status 200 and the file's length; wrk's non-2xx count must be 0.
- **portforward**: the forwarder in front of a uvloop destination server, ``tapster -n portforward`` against
  ``twistd -n portforward`` and a direct connection to the destination: MB/s of one ``--bytes`` stream
  (client -> destination, acknowledged when the last byte arrived) and round trips/s of ``--conns`` echo
  clients (64-byte ping-pong, the load client of bench/_common.py).

Servers take turns in every round; figures are medians of ``--rounds`` rounds. On two or more CPUs the server
under test (the forwarder, for portforward) runs on CPU 0 and the load (and the destination) on CPU 1.
Needs the ``bench`` extra. Tables (Markdown) on stdout, progress on stderr; exit status 0 when the run completed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from _common import (
    BARE_ECHO,
    PYTHON,
    Running,
    ServerSpec,
    machine,
    median,
    pin,
    raise_fd_limit,
    run_client,
    run_load,
    start_logged,
    table,
    temp_dir,
    tool,
    verdict,
)

FILES = {"1 KiB": ("small.bin", 1024), "1 MiB": ("big.bin", 1024 * 1024)}

BARE_AIOHTTP = '''\
"""A bare aiohttp static file server: what a hand-written script does."""
import asyncio
import signal
import sys

from aiohttp import web


async def main():
    app = web.Application()
    app.router.add_static("/", sys.argv[1])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print("aiohttp starting on", runner.addresses[0][1], flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


asyncio.run(main())
'''

# The destination behind the forwarders: a connection starting with b"S" + an 8-byte length is a sink that
# answers b"k" once that many bytes arrived; any other connection is an echo (as bare_echo.py on uvloop).
DESTINATION = BARE_ECHO.replace(
    "    def data_received(self, data):\n        self.transport.write(data)\n",
    """    sink = None

    def data_received(self, data):
        if self.sink is None and data[:1] == b"S" and len(data) >= 9:
            self.sink = int.from_bytes(data[1:9], "big")
            data = data[9:]
        if self.sink is None:
            self.transport.write(data)
            return
        self.sink -= len(data)
        if self.sink <= 0:
            self.transport.write(b"k")
""",
)
assert DESTINATION != BARE_ECHO


def http_probe(path: str, length: int) -> Callable[[int], None]:
    """A probe that GETs ``path`` and checks status 200 and the body's length."""

    def probe(port: int) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=20) as response:
            body = response.read()
            if response.status != 200 or len(body) != length:
                raise SystemExit(f"bench: GET /{path} on {port}: status {response.status}, {len(body)} bytes")

    return probe


def connect_probe(port: int) -> None:
    socket.create_connection(("127.0.0.1", port), timeout=20).close()


def echo_probe(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as probe:
        probe.sendall(b"x")
        if probe.recv(1) != b"x":
            raise SystemExit(f"bench: no echo through port {port}")


def find_wrk(install: bool) -> str | None:
    """``wrk`` on PATH, installed from Debian first if missing, ``install`` is set and we are root."""
    if shutil.which("wrk") is None and install and os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: installing wrk (apt-get install -y wrk) ...", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True, check=False)
    return shutil.which("wrk")


_WRK_RATE = re.compile(rb"Requests/sec:\s+([\d.]+)")
_WRK_BAD = re.compile(rb"Non-2xx or 3xx responses: (\d+)|Socket errors: .*")


def wrk_rate(wrk: str, url: str, conns: int, seconds: float, cpu: int | None) -> float:
    """Requests/s from one wrk run of ``seconds`` (one thread, ``conns`` keep-alive connections)."""
    argv = [wrk, "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", url]
    out = run_client(argv, cpu, seconds + 60, f"wrk against {url}")
    match = _WRK_RATE.search(out)
    if match is None or _WRK_BAD.search(out):
        raise SystemExit(f"bench: wrk against {url} saw errors:\n{out.decode(errors='replace')}")
    return float(match.group(1))


def client_rate(url: str, length: int, conns: int, warmup: float, seconds: float, cpu: int | None) -> float:
    """Requests/s from the aiohttp/uvloop client of this script, run in its own process."""
    argv = [PYTHON, __file__, "http-load", url, str(length), str(conns), str(warmup), str(seconds)]
    result = json.loads(run_client(argv, cpu, warmup + seconds + 60, "HTTP load client"))
    return float(result["responses"]) / float(result["seconds"])


def stream_mb_s(port: int, size: int, cpu: int | None) -> float:
    """MB/s of one ``size``-byte stream sent to ``port`` by a client process, until the sink acknowledges."""
    out = run_client([PYTHON, __file__, "stream", str(port), str(size)], cpu, 600, "stream client")
    return size / float(out) / 1e6


def stop(server: Running) -> None:
    try:
        server.terminate()
    finally:
        server.kill()


# -- web --path ----------------------------------------------------------------------------------------------


def web_specs(docroot: Path, bare: Path) -> list[ServerSpec]:
    listen = "tcp:0:interface=127.0.0.1"
    tapster = (tool("tapster"), "-n", "--pidfile=", "web", "--path", str(docroot), "--listen", listen)
    return [
        ServerSpec("tapster", "asyncio", tapster),
        ServerSpec("tapster --access-log off", "asyncio", (*tapster, "--access-log", "off")),
        ServerSpec(
            "twistd",
            "epoll",
            (tool("twistd"), "-n", "--pidfile=", "web", "--path", str(docroot), "--listen", listen),
        ),
        ServerSpec("bare aiohttp", "asyncio", (PYTHON, str(bare), str(docroot))),
    ]


def web_round(
    specs: Sequence[ServerSpec], work: Path, args: argparse.Namespace, wrk: str | None
) -> dict[tuple[str, str], float]:
    rates = {}
    for label, (name, length) in FILES.items():
        for spec in specs:
            server = start_logged(spec, work / "server.log", http_probe(name, length))
            try:
                pinned = not args.no_pin and pin(server.proc.pid, 0)
                cpu = 1 if pinned else None
                url = f"http://127.0.0.1:{server.port}/{name}"
                if wrk is not None:
                    wrk_rate(wrk, url, args.conns, args.warmup, cpu)
                    rate = wrk_rate(wrk, url, args.conns, args.seconds, cpu)
                else:
                    rate = client_rate(url, length, args.conns, args.warmup, args.seconds, cpu)
            finally:
                stop(server)
            rates[(spec.name, label)] = rate
            print(f"  web {label} {spec.name}: {rate:,.0f} req/s", file=sys.stderr)
    return rates


# -- portforward ---------------------------------------------------------------------------------------------


def forwarders(dest_port: int) -> list[ServerSpec]:
    return [
        ServerSpec(
            "tapster",
            "asyncio",
            (
                tool("tapster"),
                "-n",
                "--pidfile=",
                "portforward",
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--dest",
                f"tcp:127.0.0.1:{dest_port}",
            ),
        ),
        ServerSpec(
            "twistd",
            "epoll",
            (
                tool("twistd"),
                "-n",
                "--pidfile=",
                "portforward",
                "--port",
                "tcp:0:interface=127.0.0.1",
                "--host",
                "127.0.0.1",
                "--dest_port",
                str(dest_port),
            ),
        ),
    ]


def forward_round(dest: Running, work: Path, args: argparse.Namespace) -> dict[tuple[str, str], float]:
    figures = {}
    cpu = None if args.no_pin else 1
    specs = [*forwarders(dest.port), None]
    for spec in specs:
        name = "direct" if spec is None else spec.name
        server = None if spec is None else start_logged(spec, work / "forwarder.log", echo_probe)
        try:
            if server is not None and not args.no_pin:
                pin(server.proc.pid, 0)
            port = dest.port if server is None else server.port
            figures[(name, "stream")] = stream_mb_s(port, args.bytes, cpu)
            figures[(name, "echo")] = run_load(port, args.conns, 64, args.warmup, args.seconds, cpu)
        finally:
            if server is not None:
                stop(server)
        print(
            f"  portforward {name}: {figures[(name, 'stream')]:,.0f} MB/s, "
            f"{figures[(name, 'echo')]:,.0f} round trips/s",
            file=sys.stderr,
        )
    return figures


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def spread(figures: dict[tuple[str, str], list[float]], other: str, column: str) -> str:
    """tapster / ``other`` round by round (each round's pair ran back to back): how much the ratio moved."""
    mine, theirs = figures[("tapster", column)], figures[(other, column)]
    return " ".join(f"{a / b:.2f}" for a, b in zip(mine, theirs, strict=True))


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per load (default 3)")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="warm-up seconds before each load (default 1)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds, servers taking turns (default 3)")
    parser.add_argument("--conns", type=int, default=50, help="keep-alive / echo connections (default 50)")
    parser.add_argument("--bytes", type=int, default=1_000_000_000, help="stream size (default 1 GB)")
    parser.add_argument("--short", action="store_true", help="1 round of 1 s, a 100 MB stream: a quick look")
    parser.add_argument("--no-wrk", action="store_true", help="use the aiohttp client even if wrk is there")
    parser.add_argument("--no-install", action="store_true", help="do not try apt-get install wrk")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and clients to CPUs")
    args = parser.parse_args(argv)
    if args.short:
        args.rounds, args.seconds, args.warmup, args.bytes = 1, 1.0, 0.5, 100_000_000
    if args.rounds < 1 or args.seconds <= 0 or args.conns < 1 or args.bytes < 1:
        parser.error("--rounds, --seconds, --conns and --bytes must be positive")
    raise_fd_limit(4096)
    wrk = None if args.no_wrk else find_wrk(not args.no_install)
    began = time.perf_counter()
    loads = [load_average()]
    with temp_dir("tapster-bench-web-") as tmp:
        work = Path(tmp)
        docroot = work / "docroot"
        docroot.mkdir()
        for name, length in FILES.values():
            (docroot / name).write_bytes(os.urandom(length))
        bare = work / "bare_aiohttp.py"
        bare.write_text(BARE_AIOHTTP)
        destination = work / "destination.py"
        destination.write_text(DESTINATION)
        specs = web_specs(docroot, bare)
        web: dict[tuple[str, str], list[float]] = {}
        forward: dict[tuple[str, str], list[float]] = {}
        dest = start_logged(
            ServerSpec("destination", "uvloop", (PYTHON, str(destination), "uvloop")),
            work / "destination.log",
            echo_probe,
        )
        try:
            if not args.no_pin:
                pin(dest.proc.pid, 1)
            for rnd in range(args.rounds):
                print(f"round {rnd + 1}/{args.rounds}", file=sys.stderr)
                for key, value in web_round(specs, work, args, wrk).items():
                    web.setdefault(key, []).append(value)
                for key, value in forward_round(dest, work, args).items():
                    forward.setdefault(key, []).append(value)
                loads.append(load_average())
        finally:
            stop(dest)
    w = {key: median(values) for key, values in web.items()}
    f = {key: median(values) for key, values in forward.items()}
    load_tool = "wrk -t1" if wrk else "the aiohttp/uvloop client of bench/plugins_web.py"
    print(f"machine: {machine()}")
    print(f"load average (1/5/15 min) at the start and after each round: {' | '.join(loads)}")
    print(
        f"medians of {args.rounds} rounds; {args.seconds:g} s measured after {args.warmup:g} s warm-up; "
        f"load: {load_tool}, {args.conns} keep-alive connections\n"
    )
    print("### web --path: requests/s\n")
    rows = []
    for spec in specs:
        rows.append(
            [spec.name, *(f"{w[(spec.name, label)]:,.0f}" for label in FILES)]
            + [
                f"{ratio(w[('tapster', label)], w[(spec.name, label)])}" if spec.name != "tapster" else "-"
                for label in FILES
            ]
        )
    print(
        table(
            ["server", *(f"{label} req/s" for label in FILES), *(f"tapster / it, {lb}" for lb in FILES)], rows
        )
    )
    size = f"{args.bytes / 1e6:,.0f} MB" if args.bytes < 1e9 else f"{args.bytes / 1e9:g} GB"
    print(f"\n### portforward: one {size} stream (MB/s) and {args.conns} echo clients (64 B round trips/s)\n")
    prow = []
    for name in ("tapster", "twistd", "direct"):
        prow.append(
            [
                name,
                f"{f[(name, 'stream')]:,.0f}",
                f"{f[(name, 'echo')]:,.0f}",
                ratio(f[("tapster", "stream")], f[(name, "stream")]) if name != "tapster" else "-",
                ratio(f[("tapster", "echo")], f[(name, "echo")]) if name != "tapster" else "-",
            ]
        )
    print(
        table(
            ["path", "stream MB/s", "echo round trips/s", "tapster / it, stream", "tapster / it, echo"], prow
        )
    )
    print("\ntargets:")
    for label in FILES:
        vs_twistd = w[("tapster", label)] / w[("twistd", label)]
        vs_bare = w[("tapster", label)] / w[("bare aiohttp", label)]
        print(
            f"  web {label}: vs twistd {vs_twistd:.2f}x >= 2x {verdict(vs_twistd >= 2)}; "
            f"vs bare aiohttp {vs_bare:.2f}x >= 0.9x {verdict(vs_bare >= 0.9)}"
            f"  (rounds: vs twistd {spread(web, 'twistd', label)}; vs bare {spread(web, 'bare aiohttp', label)})"
        )
    for kind in ("stream", "echo"):
        vs_twistd = f[("tapster", kind)] / f[("twistd", kind)]
        direct = f[("tapster", kind)] / f[("direct", kind)]
        print(
            f"  portforward {kind}: vs twistd {vs_twistd:.2f}x >= 2x {verdict(vs_twistd >= 2)}; "
            f"vs direct {direct:.2f}x (reported)  (rounds: vs twistd {spread(forward, 'twistd', kind)})"
        )
    print(f"\n(total {time.perf_counter() - began:.0f} s)")


# -- the clients (each runs in its own process) --------------------------------------------------------------


def _stream_main(argv: Sequence[str]) -> None:
    port, size = int(argv[0]), int(argv[1])
    chunk = b"\0" * (1 << 20)
    view = memoryview(chunk)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        t0 = time.perf_counter()
        sock.sendall(b"S" + struct.pack(">Q", size))
        left = size
        while left > 0:
            sent = sock.send(view[: min(left, len(chunk))])
            left -= sent
        if sock.recv(1) != b"k":
            raise SystemExit("stream: no acknowledgement from the destination")
        print(time.perf_counter() - t0)


def _http_load_main(argv: Sequence[str]) -> None:
    import asyncio

    import aiohttp
    import uvloop

    url, length, conns = argv[0], int(argv[1]), int(argv[2])
    warmup, seconds = float(argv[3]), float(argv[4])
    counts = [0]
    running = [True]

    async def worker(session: aiohttp.ClientSession) -> None:
        while running[0]:
            async with session.get(url) as response:
                body = await response.read()
                if response.status != 200 or len(body) != length:
                    raise SystemExit(f"http-load: status {response.status}, {len(body)} bytes")
            counts[0] += 1

    async def run() -> dict[str, float]:
        connector = aiohttp.TCPConnector(limit=conns)
        async with aiohttp.ClientSession(connector=connector) as session:
            tasks = [asyncio.create_task(worker(session)) for _ in range(conns)]
            await asyncio.sleep(warmup)
            begin_count, begin = counts[0], time.perf_counter()
            await asyncio.sleep(seconds)
            end_count, end = counts[0], time.perf_counter()
            running[0] = False
            await asyncio.gather(*tasks)
        return {"responses": end_count - begin_count, "seconds": end - begin}

    print(json.dumps(uvloop.run(run())))


if __name__ == "__main__":
    commands: dict[str, Callable[[Sequence[str]], None]] = {
        "stream": _stream_main,
        "http-load": _http_load_main,
    }
    if sys.argv[1:2] and sys.argv[1] in commands:
        commands[sys.argv[1]](sys.argv[2:])
    else:
        main(sys.argv[1:])
