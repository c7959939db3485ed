"""What tapster keeps per connection and per service, against a bare asyncio script on the same loop (issue 14).

    python bench/connections.py [--runs 5] [--conns 1000,10000] [--services 10000] [--plugins 1000]

One invocation measures, each figure the median of ``--runs`` runs, servers taking turns:

- **RSS per idle connection**: an echo server (the five of ``bench/_common.py``: bare asyncio, tapster, bare
  uvloop, tapster uvloop, twistd) is started, its VmRSS read; a holder process (uvloop, pinned to the other CPU)
  opens N connections and has one byte echoed on each (so the server has accepted and set up every one); VmRSS
  again. (after - before) / N.
- **SIGTERM -> exit** with those N idle connections open: SIGTERM -> process gone, awaited on a pidfd. The
  holder closes each connection when it reads end-of-file, as an idle client does (so tapster's lingering close
  ends in about one round trip, and the bare script's plain close costs the same on the client side).
- **stop of a tree of S services**: one MultiService with S plain children, started, then ``stop()`` timed (in a
  fresh process per run); twistd's ``MultiService.stopService()`` the same way.
- **--help with P cached plugins**: ``tapster --help`` wall and CPU time in a folder with P generated plugin files
  and a warm cache (and the listing stored by an earlier run), against a folder with none (the generator of
  ``bench/plugin_listing.py``).
- **echo round trips/s and server CPU per round trip**: the load client of ``bench/_common.py`` (50 connections,
  64-byte ping-pong), the server's user+system CPU read from /proc over the counted window.

Run as ``connections.py hold PORT N`` this is the idle holder, and as ``connections.py tree KIND S`` the
service-tree stop timer (both internal).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PYTHON,
    ServerSpec,
    bytecode_env,
    echo_servers,
    machine,
    median,
    pin,
    raise_fd_limit,
    start,
    table,
    temp_dir,
    tool,
    unpin,
    verdict,
)

Env = dict[str, str | None]
HERE = Path(__file__).resolve()
TICKS = os.sysconf("SC_CLK_TCK")


# -- the idle holder (its own process) ------------------------------------------------------------------------


def _hold_main(argv: Sequence[str]) -> None:
    import asyncio

    import uvloop

    port, count = int(argv[0]), int(argv[1])

    class Idle(asyncio.Protocol):
        def __init__(self) -> None:
            self.echoed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.write(b"x")  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            if not self.echoed.done():
                self.echoed.set_result(None)

        def connection_lost(self, exc: Exception | None) -> None:
            closed.append(1)
            if not self.echoed.done():
                self.echoed.set_result(None)
            if len(closed) == count:
                done.set()

    closed: list[int] = []
    done: asyncio.Event

    async def one(loop: asyncio.AbstractEventLoop) -> None:
        _transport, protocol = await loop.create_connection(Idle, "127.0.0.1", port)
        await protocol.echoed

    async def main() -> None:
        nonlocal done
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        batch = 200
        for first in range(0, count, batch):
            await asyncio.gather(*(one(loop) for _ in range(min(batch, count - first))))
        print("held", count, flush=True)
        await done.wait()  # each connection closes when it reads end-of-file (the default eof_received)

    uvloop.run(main())


class Holder:
    """The holder process: N idle connections to ``port``, each echoed once; exits when all are closed."""

    def __init__(self, port: int, count: int, cpu: int | None) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, str(HERE), "hold", str(port), str(count)], stdout=subprocess.PIPE, text=True
        )
        if cpu is not None:
            pin(self.proc.pid, cpu)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("held"):
            self.proc.kill()
            raise SystemExit(f"bench: the holder could not open {count} connections to port {port}")

    def finish(self) -> None:
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise SystemExit(
                "bench: the holder's connections were not closed by the stopped server"
            ) from None


def measure_idle(spec: ServerSpec, env: Env, count: int, pinned: bool) -> tuple[float, float]:
    """(RSS bytes per idle connection, SIGTERM -> exit seconds) with ``count`` idle connections open."""
    server = start(spec, env)
    try:
        if pinned:
            pin(server.proc.pid, 0)
        time.sleep(0.3)
        before = server.rss_kib()
        holder = Holder(server.port, count, 1 if pinned else None)
        time.sleep(0.3)
        after = server.rss_kib()
        stop = server.terminate()
        holder.finish()
        return (after - before) * 1024 / count, stop
    finally:
        server.kill()


PLAIN_CLOSE_TAC = """\
# examples/echo.tac, except that the stop closes each connection at once instead of the lingering close.
import asyncio
import os

from tapster import Application
from tapster.services import StreamServer


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def stop_requested(self):
        self.transport.close()


application = Application("echo")
StreamServer(f"tcp:{os.environ.get('ECHO_PORT', '7001')}:interface=127.0.0.1", Echo).set_parent(application)
"""


def plain_close_servers(directory: Path) -> list[ServerSpec]:
    """tapster without the lingering close (what the drain costs at stop), on both loops."""
    tac = directory / "echo_plain_close.tac"
    tac.write_text(PLAIN_CLOSE_TAC)
    base = (tool("tapster"), "-n", "-y", str(tac), "--pidfile=")
    return [
        ServerSpec("tapster, plain close", "asyncio", base),
        ServerSpec("tapster uvloop, plain close", "uvloop", (*base, "--reactor", "uvloop")),
    ]


# -- echo throughput and CPU per round trip ----------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def measure_echo(spec: ServerSpec, env: Env, seconds: float, pinned: bool) -> tuple[float, float]:
    """(round trips/s, server CPU microseconds per round trip) with 50 connections of 64-byte ping-pong."""
    warmup = 0.5
    server = start(spec, env)
    try:
        if pinned:
            pin(server.proc.pid, 0)
        argv = [PYTHON, str(HERE.parent / "_common.py"), "load", str(server.port), "50", "64"]
        proc = subprocess.Popen([*argv, str(warmup), str(seconds)], stdout=subprocess.PIPE, text=True)
        if pinned:
            pin(proc.pid, 1)
        cpu: list[float] = []

        def sample() -> None:  # the server's CPU over (about) the client's counted window
            time.sleep(warmup + 0.1)
            first, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
            time.sleep(seconds - 0.2)
            cpu.append((cpu_seconds(server.proc.pid) - first) / (time.perf_counter() - t0))

        sampler = threading.Thread(target=sample)
        sampler.start()
        out, _ = proc.communicate(timeout=warmup + seconds + 60)
        sampler.join()
        import json

        result = json.loads(out)
        rate = result["round_trips"] / result["seconds"]
        if pinned:
            unpin(server.proc.pid)
        server.terminate()
        return rate, cpu[0] / rate * 1e6
    finally:
        server.kill()


# -- stop of a tree of services (its own process) ----------------------------------------------------------


def _tree_main(argv: Sequence[str]) -> None:
    kind, count, override = argv[0], int(argv[1]), argv[2:3] == ["override"]
    if kind == "twistd":
        from twisted.application import service as tservice

        class TwistedChild(tservice.Service):
            def stopService(self) -> None:
                tservice.Service.stopService(self)

        troot = tservice.MultiService()
        for _ in range(count):
            (TwistedChild() if override else tservice.Service()).setServiceParent(troot)
        troot.startService()
        t0 = time.perf_counter()
        troot.stopService()
        elapsed = time.perf_counter() - t0
    else:
        import asyncio

        from tapster.service import MultiService, Service

        class Child(Service):
            async def stop(self) -> None:
                await super().stop()

        async def main() -> float:
            root = MultiService()
            for _ in range(count):
                (Child() if override else Service()).set_parent(root)
            await root.start()
            t0 = time.perf_counter()
            await root.stop()
            return time.perf_counter() - t0

        if kind == "tapster uvloop":
            import uvloop

            elapsed = uvloop.run(main())
        else:
            elapsed = asyncio.run(main())
    print(elapsed)


def measure_tree(kind: str, count: int, override: bool) -> float:
    argv = [PYTHON, str(HERE), "tree", kind, str(count), *(["override"] if override else [])]
    return float(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


# -- --help with cached plugins --------------------------------------------------------------------------------


def measure_help(plugins: int, runs: int, root: Path) -> tuple[float, float, float, float]:
    """Medians of ``tapster --help`` with no plugins and with ``plugins`` cached ones: wall time, then the
    command's user+system CPU time (steadier when other jobs share the machine), all in seconds."""
    from plugin_listing import TAPSTER_PLUGIN, generate

    empty, project = root / "help-empty", root / "help-project"
    empty.mkdir()
    generate(project / "tapster" / "plugins", TAPSTER_PLUGIN, plugins)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    last = f"bench{plugins - 1:03d}"
    for _ in range(2):  # the first run writes the cache (and the bytecode), the second the stored listing
        _help_run(empty, env, "Plugins")
        _help_run(project, env, last)
    none, many = [], []
    for _ in range(runs):
        none.append(_help_run(empty, env, "Plugins"))
        many.append(_help_run(project, env, last))
    return (
        median([wall for wall, _ in none]),
        median([wall for wall, _ in many]),
        median([cpu for _, cpu in none]),
        median([cpu for _, cpu in many]),
    )


def _help_run(cwd: Path, env: dict[str, str], expect: str) -> tuple[float, float]:
    """Wall time and user+system CPU time of one ``tapster --help`` in ``cwd``, its output checked."""
    start = time.perf_counter()
    process = subprocess.Popen([tool("tapster"), "--help"], cwd=cwd, env=env, stdout=subprocess.PIPE)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stdout.close()
    if process.returncode != 0 or expect.encode() not in output:
        sys.exit(f"tapster --help in {cwd}: exit {process.returncode}, {expect!r} not in its output")
    return elapsed, usage.ru_utime + usage.ru_stime


# -- the report --------------------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (default 5)")
    parser.add_argument("--conns", default="1000,10000", help="idle connection counts (default 1000,10000)")
    parser.add_argument("--services", type=int, default=10000, help="children in the stopped tree")
    parser.add_argument("--plugins", type=int, default=1000, help="cached plugins for --help (default 1000)")
    parser.add_argument("--seconds", type=float, default=2.0, help="counted seconds per echo round")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and clients to CPUs")
    parser.add_argument(
        "--only", default="idle,tree,help,echo", help="which parts to run (default idle,tree,help,echo)"
    )
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    counts = [int(c) for c in args.conns.split(",")]
    raise_fd_limit(max(counts) + 1000)
    pinned = not args.no_pin and len(os.sched_getaffinity(0)) > 1
    out: list[str] = [f"Machine: {machine()}; medians of {args.runs} runs.", ""]
    with temp_dir("tapster-bench-conns-") as tmp:
        env: Env = bytecode_env(Path(tmp) / "pycache")
        specs = echo_servers(Path(tmp))
        plain_close = plain_close_servers(Path(tmp))
        for spec in specs:  # fill the bytecode cache
            start(spec, env).terminate()
        if "idle" in parts:
            out += idle_report([*specs, *plain_close], env, counts, args.runs, pinned)
        if "echo" in parts:
            out += echo_report(specs, env, args.runs, args.seconds, pinned)
        if "tree" in parts:
            out += tree_report(args.services, args.runs)
        if "help" in parts:
            none, many, none_cpu, many_cpu = measure_help(args.plugins, args.runs * 3, Path(tmp))
            r, r_cpu = ratio(many, none), ratio(many_cpu, none_cpu)
            out += [
                "| `tapster --help` | no plugins | " + f"{args.plugins:,} cached plugins | ratio | goal |",
                "| --- | --- | --- | --- | --- |",
                f"| wall time | {none * 1e3:.1f} ms | {many * 1e3:.1f} ms | {r:.2f}x "
                f"| <= 1.2x {verdict(r <= 1.2)} |",
                f"| CPU time (user+system) | {none_cpu * 1e3:.1f} ms | {many_cpu * 1e3:.1f} ms | {r_cpu:.2f}x | |",
                f"| per plugin (wall / CPU) | | {(many - none) / args.plugins * 1e6:.1f} / "
                f"{(many_cpu - none_cpu) / args.plugins * 1e6:.1f} us | | |",
                "",
            ]
    print("\n".join(out))
    return 0


def _by_turns(
    specs: Sequence[ServerSpec], runs: int, measure: Callable[[ServerSpec], tuple[float, float]]
) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {spec.name: [] for spec in specs}
    for run in range(runs):
        for spec in specs:
            print(f"  run {run + 1}/{runs}: {spec.name}", file=sys.stderr)
            results[spec.name].append(measure(spec))
    return results


PAIRS = (("tapster", "bare asyncio"), ("tapster uvloop", "bare uvloop"))
PLAIN_PAIRS = (
    ("tapster, plain close", "bare asyncio"),
    ("tapster uvloop, plain close", "bare uvloop"),
)


def idle_report(specs: list[ServerSpec], env: Env, counts: list[int], runs: int, pinned: bool) -> list[str]:
    rss: dict[tuple[str, int], float] = {}
    stop: dict[tuple[str, int], float] = {}
    for count in counts:
        print(f"idle connections: {count}", file=sys.stderr)
        results = _by_turns(specs, runs, lambda spec, count=count: measure_idle(spec, env, count, pinned))
        for name, values in results.items():
            rss[name, count] = median([v[0] for v in values])
            stop[name, count] = median([v[1] for v in values])
    headers = ["server", *(f"RSS/conn {c:,}" for c in counts), *(f"SIGTERM->exit {c:,}" for c in counts)]
    rows = [
        [
            spec.name,
            *(f"{rss[spec.name, c]:,.0f} B" for c in counts),
            *(f"{stop[spec.name, c] * 1e3:.0f} ms" for c in counts),
        ]
        for spec in specs
    ]
    lines = [table(headers, rows), ""]
    goal_rows = []
    names = {spec.name for spec in specs}
    for ours, bare in [*PAIRS, *(pair for pair in PLAIN_PAIRS if pair[0] in names)]:
        cells = [f"{ours} / {bare}"]
        for c in counts:
            r = ratio(rss[ours, c], rss[bare, c])
            cells.append(f"{r:.2f}x {verdict(r <= 1.15)}")
        for c in counts:
            r = ratio(stop[ours, c], stop[bare, c])
            cells.append(f"{r:.2f}x {verdict(r <= 1.15)}")
        goal_rows.append(cells)
    lines += [table(["ratio (goal <= 1.15x)", *headers[1:]], goal_rows), ""]
    return lines


def echo_report(specs: list[ServerSpec], env: Env, runs: int, seconds: float, pinned: bool) -> list[str]:
    print("echo", file=sys.stderr)
    chosen = [spec for spec in specs if spec.name != "twistd"]
    results = _by_turns(chosen, runs, lambda spec: measure_echo(spec, env, seconds, pinned))
    rate = {name: median([v[0] for v in values]) for name, values in results.items()}
    cpu = {name: median([v[1] for v in values]) for name, values in results.items()}
    rows = [[name, f"{rate[name]:,.0f}", f"{cpu[name]:.2f} us"] for name in rate]
    lines = [table(["server", "echo round trips/s", "server CPU per round trip"], rows), ""]
    goal_rows = []
    for ours, bare in PAIRS:
        r_rate, r_cpu = ratio(rate[ours], rate[bare]), ratio(cpu[ours], cpu[bare])
        goal_rows.append(
            [
                f"{ours} / {bare}",
                f"{r_rate:.3f}x {verdict(r_rate >= 0.97)}",
                f"{r_cpu:.3f}x {verdict(r_cpu <= 1.03)}",
            ]
        )
    lines += [table(["ratio (goal within 3%)", "round trips/s", "CPU per round trip"], goal_rows), ""]
    return lines


def tree_report(count: int, runs: int) -> list[str]:
    print(f"stop of {count} services", file=sys.stderr)
    kinds = ["tapster", "tapster uvloop", "twistd"]
    variants = {False: "plain children", True: "children overriding stop"}
    med: dict[tuple[str, bool], float] = {}
    for override in variants:
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(runs):
            for kind in kinds:
                times[kind].append(measure_tree(kind, count, override))
        for kind in kinds:
            med[kind, override] = median(times[kind])
    rows = [
        [
            kind,
            *(
                f"{med[kind, o] * 1e3:.1f} ms ({med[kind, o] / count * 1e6:.2f} us each)"
                + ("" if kind == "twistd" else f", {ratio(med[kind, o], med['twistd', o]):.2f}x twistd")
                for o in variants
            ),
        ]
        for kind in kinds
    ]
    lines = [table([f"stop of {count:,} services", *variants.values()], rows), ""]
    for kind in kinds[:2]:
        r = ratio(med[kind, False], med["twistd", False])
        lines.append(f"{kind} / twistd, plain children: {r:.2f}x (goal <= 1x) {verdict(r <= 1.0)}")
    return [*lines, ""]


if __name__ == "__main__":
    if sys.argv[1:2] == ["hold"]:
        _hold_main(sys.argv[2:])
    elif sys.argv[1:2] == ["tree"]:
        _tree_main(sys.argv[2:])
    else:
        sys.exit(main())
