"""Start-up, memory, echo throughput and stop time of tapster against a bare asyncio script and twistd.

    /work/venv/bin/python bench/startup_echo.py [--runs N] [--seconds S]

Five echo servers, each started as its own process: a bare asyncio script (``loop.create_server`` with a
Protocol), the same on uvloop, ``tapster -n -y examples/echo.tac`` on asyncio and on uvloop, and
``twistd -n -y`` on the equivalent Twisted tac (default epoll reactor). For each:

* ready: spawn -> first echoed byte on a fresh connection, median of ``--runs`` starts (one unmeasured start
  first warms the file cache); the servers take turns so drift hits all alike;
* RSS: VmRSS a moment after ready, idle, median of the same starts;
* exit: SIGTERM -> process reaped, idle, median of the same starts;
* echo: round trips per second with ``--conns`` connections playing ping-pong with ``--size``-byte messages,
  driven by a uvloop client in its own process, counted for ``--seconds`` after ``--warmup``; the median of
  ``--rounds`` rounds. On a machine with two or more CPUs the server and the client are pinned to different
  CPUs.

The targets (issue 2): tapster ready <= 1.25x and RSS <= 1.2x the bare script on the same loop, echo throughput
>= 0.95x of it. Failing a target is reported, not an error: the exit status is 0 whenever the run completed.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    Running,
    ServerSpec,
    bytecode_env,
    echo_servers,
    machine,
    median,
    pin,
    run_load,
    start,
    table,
    temp_dir,
    unpin,
    verdict,
)

IDLE_SETTLE = 0.3  # seconds between ready and reading RSS


@dataclass
class Results:
    """Everything measured for one server."""

    ready: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    exit: list[float] = field(default_factory=list)
    echo: list[float] = field(default_factory=list)


Env = dict[str, str | None]


def measure_start(spec: ServerSpec, env: Env, results: Results | None) -> None:
    """One start: ready time, idle RSS, SIGTERM -> exit. ``results=None`` discards them (warm-up)."""
    server: Running = start(spec, env)
    try:
        time.sleep(IDLE_SETTLE)
        rss = server.rss_kib()
        exit_time = server.terminate()
    finally:
        server.kill()
    if results is not None:
        results.ready.append(server.ready)
        results.rss.append(rss)
        results.exit.append(exit_time)


def measure_echo(spec: ServerSpec, env: Env, results: Results, args: argparse.Namespace) -> None:
    """One round of the echo load against a fresh server."""
    server = start(spec, env)
    try:
        pinned = not args.no_pin and pin(server.proc.pid, 0)
        rate = run_load(server.port, args.conns, args.size, args.warmup, args.seconds, 1 if pinned else None)
        if pinned:
            unpin(server.proc.pid)
        server.terminate()
    finally:
        server.kill()
    results.echo.append(rate)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def report(specs: list[ServerSpec], results: dict[str, Results], args: argparse.Namespace) -> str:
    """The results table, the ratios, and the targets with PASS/FAIL."""
    med = {
        name: (median(r.ready) * 1000, median(r.rss) / 1024, median(r.echo), median(r.exit) * 1000)
        for name, r in results.items()
    }
    rows = []
    for spec in specs:
        ready, rss, echo, exit_ms = med[spec.name]
        rows.append([spec.name, spec.loop, f"{ready:.0f}", f"{rss:.1f}", f"{echo:,.0f}", f"{exit_ms:.0f}"])
    out = [
        f"machine: {machine()}",
        f"runs: {args.runs} starts per server; echo: {args.conns} conns x {args.size} B, {args.seconds:g} s after "
        f"{args.warmup:g} s warm-up, median of {args.rounds} rounds",
        "",
        table(["server", "loop", "ready ms", "idle RSS MiB", "echo round trips/s", "SIGTERM->exit ms"], rows),
        "",
    ]
    pairs = [
        ("tapster", "bare asyncio"),
        ("tapster uvloop", "bare uvloop"),
        ("tapster", "twistd"),
        ("tapster uvloop", "twistd"),
    ]
    ratio_rows = []
    for a, b in pairs:
        ra, rb = med[a], med[b]
        ratio_rows.append([f"{a} / {b}", *(ratio(ra[i], rb[i]) for i in range(4))])
    out += [table(["ratio", "ready", "idle RSS", "echo round trips/s", "SIGTERM->exit"], ratio_rows), ""]
    out.append("targets (tapster vs the bare script on the same loop):")
    for a, b in pairs[:2]:
        ra, rb = med[a], med[b]
        out.append(
            f"  {a:<15} ready {ra[0] / rb[0]:.2f}x <= 1.25x {verdict(ra[0] <= 1.25 * rb[0])};"
            f"  RSS {ra[1] / rb[1]:.2f}x <= 1.2x {verdict(ra[1] <= 1.2 * rb[1])};"
            f"  echo {ra[2] / rb[2]:.2f}x >= 0.95x {verdict(ra[2] >= 0.95 * rb[2])}"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--runs", type=int, default=7, help="starts per server for ready/RSS/exit (default 7)"
    )
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="measured seconds per echo round (default 3)"
    )
    parser.add_argument("--warmup", type=float, default=0.5, help="echo warm-up seconds (default 0.5)")
    parser.add_argument("--rounds", type=int, default=3, help="echo rounds per server (default 3)")
    parser.add_argument("--conns", type=int, default=50, help="echo connections (default 50)")
    parser.add_argument("--size", type=int, default=64, help="echo message bytes (default 64)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and load client to CPUs")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="start servers with the caller's bytecode settings instead of a private PYTHONPYCACHEPREFIX",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.rounds < 1 or args.seconds <= 0 or args.conns < 1 or args.size < 1:
        parser.error("--runs, --rounds, --seconds, --conns and --size must be positive")

    began = time.perf_counter()
    with temp_dir("tapster-bench-") as tmp:
        specs = echo_servers(Path(tmp))
        env: Env = {} if args.no_bytecode_cache else bytecode_env(Path(tmp) / "pycache")
        results = {spec.name: Results() for spec in specs}
        for spec in specs:
            measure_start(spec, env, None)
        for run in range(args.runs):
            print(f"starts: run {run + 1}/{args.runs}", file=sys.stderr)
            for spec in specs:
                measure_start(spec, env, results[spec.name])
        for rnd in range(args.rounds):
            print(f"echo: round {rnd + 1}/{args.rounds}", file=sys.stderr)
            for spec in specs:
                measure_echo(spec, env, results[spec.name], args)
    print(report(specs, results, args))
    print(f"\n(total {time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
