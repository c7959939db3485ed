"""The built-in ``web --path`` and ``portforward`` plugins against twistd's and a bare script, in one invocation.

    python bench/plugins_web.py [--seconds 3] [--rounds 3] [--bytes 1000000000] [--short]

- **web --path**: requests/s for a 1 KiB and a 1 MiB static file with ``--conns`` (50) keep-alive connections,
  ``tapster -n web --path DIR`` (default access log to the main log, and ``--access-log off``) against
  ``twistd -n web --path DIR`` (its access log on stdout) and a bare aiohttp script (``add_static``, no access
  log). The load is ``wrk`` (Debian's; ``apt-get install -y wrk`` is tried once when it is missing and we are
  root) or, failing that, an aiohttp-on-uvloop client in its own process. Every server first answers one GET
  checked for status 200 and the file's length; wrk's non-2xx count must be 0.
- **portforward**: the forwarder in front of a destination, ``tapster -n portforward`` (asyncio, and ``-r
  uvloop``) against ``twistd -n portforward`` and a direct connection to the destination: MB/s of one
  ``--bytes`` stream (client -> destination, acknowledged when the last byte arrived; the client sends with
  sendfile(2) and the destination moves the bytes to /dev/null with splice(2), so the two ends cost little CPU
  and the forwarder sets the pace), and round trips/s of ``--conns`` echo clients (64-byte ping-pong, the load
  client of bench/_common.py, against a uvloop echo server). For each forwarder also its own CPU time: CPU
  seconds per GB of the stream, and the share of a CPU it used under the echo load, hence round trips per CPU
  second: what it would carry with a CPU to itself, which the rate hides when the ends set the pace.

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

# The echo destination behind the forwarders is bare_echo.py on uvloop (BARE_ECHO). The stream's destination is
# this sink: it reads b"S" + an 8-byte length, then moves that many bytes from the socket to /dev/null with
# splice(2) (no copy into the process), and answers b"k". With the client sending with sendfile(2), the two ends
# of the stream cost little CPU, so on two CPUs the forwarder, not the ends sharing the other CPU, sets the pace.
SINK = """\
import fcntl, os, socket, struct, sys, threading

def serve(conn):
    with conn:
        head = conn.recv(9, socket.MSG_WAITALL)
        if len(head) != 9 or head[:1] != b"S":
            return
        left = struct.unpack(">Q", head[1:])[0]
        pipe_r, pipe_w = os.pipe()
        fcntl.fcntl(pipe_w, 1031, 1 << 20)  # F_SETPIPE_SZ
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            while left > 0:
                moved = os.splice(conn.fileno(), pipe_w, min(left, 1 << 20), flags=os.SPLICE_F_MOVE)
                if moved == 0:
                    return
                left -= moved
                while moved:
                    moved -= os.splice(pipe_r, null, moved, flags=os.SPLICE_F_MOVE)
            conn.sendall(b"k")
        finally:
            for fd in (pipe_r, pipe_w, null):
                os.close(fd)

server = socket.create_server(("127.0.0.1", 0))
print("sink starting on", server.getsockname()[1], flush=True)
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

ZEROS = 64 << 20
"""The stream client sends this file (zeros) with sendfile(2), as many times as the stream's size needs."""


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


def stream_mb_s(port: int, size: int, zeros: Path, cpu: int | None) -> float:
    """MB/s of one ``size``-byte stream sent to ``port`` by a client process, until the sink acknowledges."""
    argv = [PYTHON, __file__, "stream", str(port), str(size), str(zeros)]
    out = run_client(argv, cpu, 600, "stream client")
    return size / float(out) / 1e6


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` (all its threads) has used, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stream_sink_probe(port: int) -> None:
    """A 1-byte stream through ``port`` reaches the sink and is acknowledged."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as probe:
        probe.sendall(b"S" + struct.pack(">Q", 1) + b"x")
        if probe.recv(1) != b"k":
            raise SystemExit(f"bench: no acknowledgement through port {port}")


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
        ServerSpec("tapster -r uvloop", "uvloop", (tool("tapster"), "-r", "uvloop", *tapster[1:])),
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


FORWARDERS = ("tapster", "tapster -r uvloop", "tapster --no-splice", "twistd")


def forwarders(dest_port: int) -> list[ServerSpec]:
    tapster = (
        "-n",
        "--pidfile=",
        "portforward",
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--dest",
        f"tcp:127.0.0.1:{dest_port}",
    )
    return [
        ServerSpec("tapster", "asyncio", (tool("tapster"), *tapster)),
        ServerSpec("tapster -r uvloop", "uvloop", (tool("tapster"), "-r", "uvloop", *tapster)),
        ServerSpec("tapster --no-splice", "asyncio", (tool("tapster"), *tapster, "--no-splice")),
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


def forward_round(
    echo: Running, sink: Running, zeros: Path, work: Path, args: argparse.Namespace
) -> dict[tuple[str, str], float]:
    """Each forwarder (and the direct path) once for the stream and once for the echo load.

    Besides the rates, the forwarder's own CPU time over the load: ``stream cpu`` in CPU seconds per GB, and
    ``echo busy`` as the share of one CPU it used. rate / busy is what the forwarder would carry with a whole
    CPU to itself: its capacity, which the rate alone hides when the ends (sharing the other CPU) set the pace.
    """
    figures: dict[tuple[str, str], float] = {}
    cpu = None if args.no_pin else 1
    for name in (*FORWARDERS, "direct"):
        for kind, dest, probe in (("stream", sink, stream_sink_probe), ("echo", echo, echo_probe)):
            spec = next((spec for spec in forwarders(dest.port) if spec.name == name), None)
            server = None if spec is None else start_logged(spec, work / "forwarder.log", probe)
            try:
                if server is not None and not args.no_pin:
                    pin(server.proc.pid, 0)
                port = dest.port if server is None else server.port
                used, began = (cpu_seconds(server.proc.pid) if server else 0.0), time.perf_counter()
                if kind == "stream":
                    figures[(name, kind)] = stream_mb_s(port, args.bytes, zeros, cpu)
                else:
                    figures[(name, kind)] = run_load(port, args.conns, 64, args.warmup, args.seconds, cpu)
                if server is not None:
                    used, wall = cpu_seconds(server.proc.pid) - used, time.perf_counter() - began
                    if kind == "stream":
                        figures[(name, "stream cpu")] = used / (args.bytes / 1e9)
                    else:
                        figures[(name, "echo busy")] = used / wall
            finally:
                if server is not None:
                    stop(server)
        line = f"  portforward {name}: {figures[(name, 'stream')]:,.0f} MB/s"
        if (name, "stream cpu") in figures:
            line += f" ({figures[(name, 'stream cpu')]:.2f} CPU s/GB)"
        line += f", {figures[(name, 'echo')]:,.0f} round trips/s"
        if (name, "echo busy") in figures:
            line += f" ({figures[(name, 'echo busy')]:.0%} of a CPU)"
        print(line, file=sys.stderr)
    return figures


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def spread(
    figures: dict[tuple[str, str], list[float]], other: str, column: str, mine_name: str = "tapster"
) -> str:
    """``mine_name`` / ``other`` round by round (each round's pair ran back to back): how much the ratio moved."""
    mine, theirs = figures[(mine_name, column)], figures[(other, column)]
    return " ".join(f"{a / b:.2f}" for a, b in zip(mine, theirs, strict=True))


def print_web(w: dict[tuple[str, str], float], specs: Sequence[ServerSpec]) -> None:
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


def capacity_ratio(f: dict[tuple[str, str], float], name: str, kind: str) -> float:
    """``name``'s work per CPU second of the forwarder over twistd's: bytes per CPU second for the stream,
    round trips per CPU second for the echo load."""
    if kind == "stream":
        return f[("twistd", "stream cpu")] / f[(name, "stream cpu")]
    return (f[(name, "echo")] / f[(name, "echo busy")]) / (f[("twistd", "echo")] / f[("twistd", "echo busy")])


def print_forward(f: dict[tuple[str, str], float], args: argparse.Namespace) -> None:
    size = f"{args.bytes / 1e6:,.0f} MB" if args.bytes < 1e9 else f"{args.bytes / 1e9:g} GB"
    print(f"\n### portforward: one {size} stream (MB/s) and {args.conns} echo clients (64 B round trips/s)\n")
    rows = []
    for name in (*FORWARDERS, "direct"):
        forwarder = name != "direct"
        rows.append(
            [
                name,
                f"{f[(name, 'stream')]:,.0f}",
                f"{f[(name, 'stream cpu')]:.2f}" if forwarder else "-",
                f"{f[(name, 'echo')]:,.0f}",
                f"{f[(name, 'echo busy')]:.0%}" if forwarder else "-",
                f"{f[(name, 'echo')] / f[(name, 'echo busy')]:,.0f}" if forwarder else "-",
            ]
        )
    print(
        table(
            [
                "path",
                "stream MB/s",
                "forwarder CPU s per GB",
                "echo round trips/s",
                "forwarder busy (echo)",
                "echo round trips per CPU s",
            ],
            rows,
        )
    )


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
    parser.add_argument("--no-web", action="store_true", help="skip the web --path half")
    parser.add_argument("--no-forward", action="store_true", help="skip the portforward half")
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
        (work / "echo.py").write_text(BARE_ECHO)
        (work / "sink.py").write_text(SINK)
        zeros = work / "zeros.bin"
        with open(zeros, "wb") as out:
            out.truncate(ZEROS)
        specs = web_specs(docroot, bare)
        web: dict[tuple[str, str], list[float]] = {}
        forward: dict[tuple[str, str], list[float]] = {}
        echo = start_logged(
            ServerSpec("echo destination", "uvloop", (PYTHON, str(work / "echo.py"), "uvloop")),
            work / "echo.log",
            echo_probe,
        )
        try:
            sink = start_logged(
                ServerSpec("sink", "threads", (PYTHON, str(work / "sink.py"))),
                work / "sink.log",
                stream_sink_probe,
            )
            try:
                if not args.no_pin:
                    pin(echo.proc.pid, 1)
                    pin(sink.proc.pid, 1)
                for rnd in range(args.rounds):
                    print(f"round {rnd + 1}/{args.rounds}", file=sys.stderr)
                    if not args.no_web:
                        for key, value in web_round(specs, work, args, wrk).items():
                            web.setdefault(key, []).append(value)
                    if not args.no_forward:
                        for key, value in forward_round(echo, sink, zeros, work, args).items():
                            forward.setdefault(key, []).append(value)
                    loads.append(load_average())
            finally:
                stop(sink)
        finally:
            stop(echo)
    w = {key: median(values) for key, values in web.items()}
    f = {key: median(values) for key, values in forward.items()}
    load_tool = "wrk -t1" if wrk else "the aiohttp/uvloop client of bench/plugins_web.py"
    print(f"machine: {machine()}")
    print(f"load average (1/5/15 min) at the start and after each round: {' | '.join(loads)}")
    print(
        f"medians of {args.rounds} rounds; {args.seconds:g} s measured after {args.warmup:g} s warm-up; "
        f"load: {load_tool}, {args.conns} keep-alive connections\n"
    )
    if web:
        print_web(w, specs)
    if forward:
        print_forward(f, args)
    print("\ntargets:")
    for name in ("tapster", "tapster -r uvloop") if web else ():
        for label in FILES:
            vs_twistd = w[(name, label)] / w[("twistd", label)]
            vs_bare = w[(name, label)] / w[("bare aiohttp", label)]
            print(
                f"  web {label}, {name}: vs twistd {vs_twistd:.2f}x >= 2x {verdict(vs_twistd >= 2)}; "
                f"vs bare aiohttp {vs_bare:.2f}x >= 0.9x {verdict(vs_bare >= 0.9)}  (rounds: vs twistd "
                f"{spread(web, 'twistd', label, name)}; vs bare {spread(web, 'bare aiohttp', label, name)})"
            )
    for name in FORWARDERS[:2] if forward else ():
        for kind in ("stream", "echo"):
            vs_twistd = f[(name, kind)] / f[("twistd", kind)]
            direct = f[(name, kind)] / f[("direct", kind)]
            capacity = capacity_ratio(f, name, kind)
            print(
                f"  portforward {kind}, {name}: vs twistd {vs_twistd:.2f}x >= 2x {verdict(vs_twistd >= 2)}; "
                f"per CPU second vs twistd {capacity:.2f}x; vs direct {direct:.2f}x (reported)"
                f"  (rounds: vs twistd {spread(forward, 'twistd', kind, name)})"
            )
    print(f"\n(total {time.perf_counter() - began:.0f} s)")


# -- the clients (each runs in its own process) --------------------------------------------------------------


def _stream_main(argv: Sequence[str]) -> None:
    port, size, zeros = int(argv[0]), int(argv[1]), argv[2]
    with socket.create_connection(("127.0.0.1", port)) as sock, open(zeros, "rb") as source:
        whole = os.fstat(source.fileno()).st_size
        t0 = time.perf_counter()
        sock.sendall(b"S" + struct.pack(">Q", size))
        left = size
        while left > 0:  # sendfile(2): the page cache to the socket, no copy through this process
            left -= sock.sendfile(source, 0, min(left, whole))
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
