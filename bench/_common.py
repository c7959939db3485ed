"""What the benchmarks share: the servers under test, spawning them, reading their port, RSS, the load client.

Every server is started as its own process with its port from the OS (port 0): the server logs or prints
``... starting on PORT``; a reader thread drains its output (so a chatty server never blocks on a full pipe)
and hands the port over. A server counts as *ready* when a probe connection gets its byte echoed back, which
needs both the listening socket and a running event loop.

Run as a script, this module is the load client: ``python bench/_common.py load PORT CONNS SIZE WARMUP SECONDS``
opens CONNS connections on uvloop, plays ping-pong with SIZE-byte messages, and prints one JSON line with the
round trips counted during SECONDS after WARMUP.
"""

from __future__ import annotations

import json
import os
import queue
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
ECHO_TAC = REPO / "examples" / "echo.tac"
PYTHON = sys.executable

_PORT_LINE = re.compile(rb"starting on (\d+)")

TWISTED_ECHO_TAC = '''\
"""Twisted's twin of examples/echo.tac: echo on 127.0.0.1, port from ECHO_PORT (0: any)."""
import os

from twisted.application import internet, service
from twisted.internet import protocol


class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class EchoFactory(protocol.Factory):
    protocol = Echo


application = service.Application("echo")
port = int(os.environ.get("ECHO_PORT", "7001"))
internet.TCPServer(port, EchoFactory(), interface="127.0.0.1").setServiceParent(application)
'''

BARE_ECHO = '''\
"""A bare asyncio echo server: what a hand-written script does, with a graceful SIGTERM."""
import asyncio
import signal
import sys


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        open_transports.add(transport)

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        open_transports.discard(self.transport)


open_transports = set()


async def main():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    print("Echo starting on", server.sockets[0].getsockname()[1], flush=True)
    await stop.wait()
    server.close()
    for transport in list(open_transports):
        transport.close()
    await server.wait_closed()


if sys.argv[1:] == ["uvloop"]:
    import uvloop

    uvloop.run(main())
else:
    asyncio.run(main())
'''


def tool(name: str) -> str:
    """The console script ``name`` installed beside this Python (the venv's), else the one on PATH."""
    beside = Path(PYTHON).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"bench: cannot find the {name!r} command beside {PYTHON} or on PATH")
    return found


@dataclass(frozen=True)
class ServerSpec:
    """One server under test: a short name, the loop it runs on, and the command that starts it."""

    name: str
    loop: str
    argv: tuple[str, ...]


def write_support_files(directory: Path) -> tuple[Path, Path]:
    """Write the Twisted echo tac and the bare asyncio script into ``directory``; returns their paths."""
    tac = directory / "twisted_echo.tac"
    tac.write_text(TWISTED_ECHO_TAC)
    bare = directory / "bare_echo.py"
    bare.write_text(BARE_ECHO)
    return tac, bare


def echo_servers(directory: Path) -> list[ServerSpec]:
    """The five echo servers the benchmarks compare, support files written into ``directory``."""
    twisted_tac, bare = write_support_files(directory)
    tapster = tool("tapster")
    return [
        ServerSpec("bare asyncio", "asyncio", (PYTHON, str(bare))),
        ServerSpec("tapster", "asyncio", (tapster, "-n", "-y", str(ECHO_TAC), "--pidfile=")),
        ServerSpec("bare uvloop", "uvloop", (PYTHON, str(bare), "uvloop")),
        ServerSpec(
            "tapster uvloop",
            "uvloop",
            (tapster, "-n", "-y", str(ECHO_TAC), "--pidfile=", "--reactor", "uvloop"),
        ),
        ServerSpec("twistd", "epoll", (tool("twistd"), "-n", "--pidfile=", "-y", str(twisted_tac))),
    ]


@dataclass
class Running:
    """A started server: its process, its port, and the seconds from spawn to the first echoed byte."""

    spec: ServerSpec
    proc: subprocess.Popen[bytes]
    port: int
    ready: float
    output: list[bytes] = field(default_factory=list)

    def rss_kib(self) -> int:
        """Resident set size now, from /proc/PID/status (kB)."""
        return rss_kib(self.proc.pid)

    def terminate(self, timeout: float = 30.0) -> float:
        """Send SIGTERM and return the seconds until the process has exited (reaped).

        The exit is awaited on a pidfd, which wakes the moment the process is gone: ``Popen.wait(timeout)``
        polls with a doubling sleep and would round every figure up to 15.5, 31.5, 63.5 ... ms.
        """
        pidfd = os.pidfd_open(self.proc.pid)
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            start = time.perf_counter()
            self.proc.send_signal(signal.SIGTERM)
            exited = bool(poller.poll(timeout * 1000))
            elapsed = time.perf_counter() - start
        finally:
            os.close(pidfd)
        if not exited:
            self.proc.kill()
            self.proc.wait()
            raise SystemExit(f"bench: {self.spec.name} did not exit within {timeout} s of SIGTERM")
        self.proc.wait()
        return elapsed

    def kill(self) -> None:
        """Make sure the process is gone (used on the way out after a failure)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in kB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _drain(stream: IO[bytes], lines: list[bytes], ports: queue.Queue[int | None]) -> None:
    found = False
    for line in stream:
        lines.append(line)
        if not found and (match := _PORT_LINE.search(line)):
            found = True
            ports.put(int(match.group(1)))
    ports.put(None)


def bytecode_env(cache_dir: Path) -> dict[str, str | None]:
    """Environment for servers to write and reuse compiled bytecode under ``cache_dir``.

    A shell with ``PYTHONDONTWRITEBYTECODE=1`` (as on the machine these figures come from) makes every start
    of an uninstalled package compile it from source again, which no deployed server does: pip compiles
    what it installs. Pointing ``PYTHONPYCACHEPREFIX`` at a private directory gives every server the same
    treatment (all bytecode, stdlib and site-packages included, is compiled there by the warm-up start and
    read back afterwards) without writing ``__pycache__`` into the source tree.
    """
    return {"PYTHONDONTWRITEBYTECODE": None, "PYTHONPYCACHEPREFIX": str(cache_dir)}


def child_env(env: dict[str, str | None] | None) -> dict[str, str]:
    """``os.environ`` with ``env`` applied (``None`` removes a variable)."""
    full_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    return full_env


def start(spec: ServerSpec, env: dict[str, str | None] | None = None, timeout: float = 20.0) -> Running:
    """Spawn ``spec`` with ``env`` applied, wait for its port, and time spawn -> first echoed probe byte."""
    full_env = child_env({"ECHO_PORT": "0", "PYTHONUNBUFFERED": "1", **(env or {})})
    lines: list[bytes] = []
    ports: queue.Queue[int | None] = queue.Queue()
    t0 = time.perf_counter()
    proc = subprocess.Popen(spec.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env)
    threading.Thread(target=_drain, args=(proc.stdout, lines, ports), daemon=True).start()
    try:
        port = ports.get(timeout=timeout)
    except queue.Empty:
        port = None
    if port is None:
        proc.kill()
        proc.wait()
        text = b"".join(lines).decode(errors="replace")
        raise SystemExit(f"bench: {spec.name} did not report a port:\n{text}")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as probe:
        probe.sendall(b"x")
        if probe.recv(1) != b"x":
            raise SystemExit(f"bench: {spec.name} did not echo the probe byte")
    ready = time.perf_counter() - t0
    return Running(spec, proc, port, ready, lines)


def start_logged(
    spec: ServerSpec,
    log: Path,
    probe: Callable[[int], None],
    env: dict[str, str | None] | None = None,
    timeout: float = 20.0,
) -> Running:
    """Spawn ``spec`` with its output going to the file ``log``, read its port there, and wait for ``probe(port)``.

    For servers that log a line per request (an access log): a file takes the lines without a reader thread in
    this process competing with the server and the load client for the CPUs.
    """
    full_env = child_env({"PYTHONUNBUFFERED": "1", **(env or {})})
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(spec.argv, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    deadline = time.monotonic() + timeout
    while not (match := _PORT_LINE.search(log.read_bytes())):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise SystemExit(f"bench: {spec.name} did not report a port:\n{log.read_text(errors='replace')}")
        time.sleep(0.01)
    port = int(match.group(1))
    probe(port)
    return Running(spec, proc, port, time.perf_counter() - t0)


def raise_fd_limit(wanted: int) -> None:
    """Raise this process's (and so its children's) open-file soft limit to ``wanted`` if the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def pin(pid: int, cpu: int) -> bool:
    """Pin ``pid`` to one CPU if the machine has more than one; returns whether it did."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return False
    os.sched_setaffinity(pid, {cpus[cpu % len(cpus)]})
    return True


def unpin(pid: int) -> None:
    """Let ``pid`` run on every CPU again."""
    os.sched_setaffinity(pid, os.sched_getaffinity(0))


def run_client(argv: Sequence[str], cpu: int | None, timeout: float, what: str) -> bytes:
    """Run a client process (pinned to ``cpu`` unless None) to its end; returns its stdout, exits on failure."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if cpu is not None:
        pin(proc.pid, cpu)
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {what} failed:\n{(out + err).decode(errors='replace')[-2000:]}")
    return out


def run_load(port: int, conns: int, size: int, warmup: float, seconds: float, cpu: int | None) -> float:
    """Run the load client in its own process against ``port``; returns round trips per second."""
    argv = [
        PYTHON,
        str(Path(__file__).resolve()),
        "load",
        str(port),
        str(conns),
        str(size),
        str(warmup),
        str(seconds),
    ]
    result = json.loads(run_client(argv, cpu, warmup + seconds + 60, "load client"))
    if not result["round_trips"]:
        raise SystemExit(f"bench: no echo round trips on port {port}")
    return float(result["round_trips"]) / float(result["seconds"])


def median(values: Sequence[float]) -> float:
    """The median (a thin alias so the scripts read plainly)."""
    return statistics.median(values)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, columns padded so it also reads well in a terminal."""
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    sep = "| " + " | ".join("-" * width for width in widths) + " |"
    return "\n".join([line(headers), sep, *(line(row) for row in rows)])


def verdict(ok: bool) -> str:
    """PASS or FAIL, for the targets lines."""
    return "PASS" if ok else "FAIL"


def temp_dir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary directory for support files and logs, removed at the end."""
    return tempfile.TemporaryDirectory(prefix=prefix)


def machine() -> str:
    """A one-line description of the machine and the software versions, for the report."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = [f"Python {sys.version.split()[0]}"]
    for module in ("uvloop", "twisted"):
        try:
            versions.append(f"{module} {__import__(module).__version__}")
        except ImportError:
            versions.append(f"{module} not installed")
    return f"{os.cpu_count()} CPUs ({cpu}), Linux {os.uname().release}; " + ", ".join(versions)


# -- the load client (runs in its own process) ----------------------------------------------------------------


def _load_main(argv: Sequence[str]) -> None:
    import asyncio

    import uvloop

    port, conns, size = int(argv[0]), int(argv[1]), int(argv[2])
    warmup, seconds = float(argv[3]), float(argv[4])
    payload = b"p" * size
    counts = [0]
    running = [True]

    class PingPong(asyncio.Protocol):
        def __init__(self) -> None:
            self.pending = 0
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # uvloop's transports are not asyncio.Transport subclasses, only look-alikes.
            self.transport = cast(asyncio.Transport, transport)
            self.transport.write(payload)

        def data_received(self, data: bytes) -> None:
            self.pending += len(data)
            while self.pending >= size:
                self.pending -= size
                counts[0] += 1
                if running[0] and self.transport is not None:
                    self.transport.write(payload)

    async def main() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        transports = []
        for _ in range(conns):
            transport, _protocol = await loop.create_connection(PingPong, "127.0.0.1", port)
            transports.append(transport)
        await asyncio.sleep(warmup)
        begin_count, begin = counts[0], time.perf_counter()
        await asyncio.sleep(seconds)
        end_count, end = counts[0], time.perf_counter()
        running[0] = False
        for transport in transports:
            transport.close()
        return {"round_trips": end_count - begin_count, "seconds": end - begin}

    print(json.dumps(uvloop.run(main())))


def _main(argv: Sequence[str]) -> None:
    commands: dict[str, Callable[[Sequence[str]], None]] = {"load": _load_main}
    if not argv or argv[0] not in commands:
        raise SystemExit("usage: _common.py load PORT CONNS SIZE WARMUP SECONDS")
    commands[argv[0]](argv[1:])


if __name__ == "__main__":
    _main(sys.argv[1:])
