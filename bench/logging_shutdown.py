"""Log throughput into a rotating file, and SIGTERM-to-exit time with many idle connections open.

    /work/venv/bin/python bench/logging_shutdown.py [--lines N] [--rounds R] [--conns C] [--runs N]

(a) Log lines per second into a file rotated at 1,000,000 bytes, each logger in its own fresh process, the
    same number of lines, timing only the logging loop (imports and set-up excluded):

    * tapster: ``tapster.log.install(LogConfig(logfile=...))``, then ``logging.getLogger("x").info("line %d", i)``;
    * twistd: ``twisted.python.log.startLogging(LogFile(..., rotateLength=1000000))``, then
      ``log.msg("line %d" % i)``;
    * for reference, the stdlib's ``logging.handlers.RotatingFileHandler`` with a twistd-like format.

    Every line is then counted in the log and its rotated files, so a logger that drops lines cannot win.
    The median of ``--rounds`` rounds is reported.

(b) SIGTERM -> process reaped for an echo server holding ``--conns`` idle connections (each has echoed one
    byte, so the server has accepted and registered it): ``tapster -n -y examples/echo.tac`` on asyncio and on
    uvloop, ``twistd -n -y`` on the equivalent Twisted tac, and the bare asyncio script for reference. The
    median of ``--runs`` runs.

Targets (issue 3): tapster logs >= 2x as many lines per second as twistd; it exits <= 100 ms after SIGTERM
with 1,000 idle connections. A missed target is reported; the exit status is 0 whenever the run completed.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    PYTHON,
    ServerSpec,
    bytecode_env,
    child_env,
    echo_servers,
    machine,
    median,
    raise_fd_limit,
    start,
    table,
    temp_dir,
    verdict,
)

ROTATE_BYTES = 1_000_000

_TIMED_LOOP = """
import json, sys, time
n = int(sys.argv[2])
start = time.perf_counter()
for i in range(n):
    LOG_CALL
elapsed = time.perf_counter() - start
FINISH
print(json.dumps({"lines": n, "seconds": elapsed}))
"""

LOGGERS: dict[str, tuple[str, str, str]] = {
    # name: (set-up, one log call with i, what to do after the loop)
    "tapster": (
        "import logging, os\n"
        "from tapster.log import LogConfig, install\n"
        "destination = install(LogConfig(logfile=sys.argv[1], max_bytes=ROTATE))\n"
        "logger = logging.getLogger('x')\n",
        'logger.info("line %d", i)',
        "destination.close()",
    ),
    "twistd": (
        "import os\n"
        "from twisted.python import log\n"
        "from twisted.python.logfile import LogFile\n"
        "logfile = LogFile(os.path.basename(sys.argv[1]), os.path.dirname(sys.argv[1]), rotateLength=ROTATE)\n"
        "log.startLogging(logfile, setStdout=False)\n",
        'log.msg("line %d" % i)',
        "logfile.close()",
    ),
    "stdlib RotatingFileHandler": (
        "import logging, logging.handlers\n"
        "handler = logging.handlers.RotatingFileHandler(sys.argv[1], maxBytes=ROTATE, backupCount=100000)\n"
        "handler.setFormatter(logging.Formatter('%(asctime)s [%(name)s] %(message)s'))\n"
        "logging.getLogger().addHandler(handler)\n"
        "logging.getLogger().setLevel(logging.INFO)\n"
        "logger = logging.getLogger('x')\n",
        'logger.info("line %d", i)',
        "handler.close()",
    ),
}

_LINE = re.compile(rb"line (\d+)$", re.MULTILINE)


def logger_script(name: str) -> str:
    """The program that sets up logger ``name``, logs ``argv[2]`` lines to ``argv[1]`` and prints its timing."""
    setup, call, finish = LOGGERS[name]
    body = _TIMED_LOOP.replace("LOG_CALL", call).replace("FINISH", finish)
    return "import sys\n" + setup.replace("ROTATE", str(ROTATE_BYTES)) + body


def count_lines(directory: Path, n: int) -> tuple[int, int]:
    """(distinct line numbers 0..n-1 found, files) in the log and its rotated files in ``directory``."""
    seen: set[int] = set()
    files = 0
    for path in directory.iterdir():
        files += 1
        seen.update(int(m.group(1)) for m in _LINE.finditer(path.read_bytes()))
    return len(seen & set(range(n))), files


def measure_logger(name: str, lines: int, workdir: Path, env: dict[str, str | None]) -> tuple[float, int]:
    """One run of logger ``name`` in a fresh process; returns (lines per second, files written)."""
    workdir.mkdir()
    logfile = workdir / "bench.log"
    proc = subprocess.run(
        [PYTHON, "-c", logger_script(name), str(logfile), str(lines)],
        capture_output=True,
        env=child_env(env),
        timeout=600,
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench: the {name} logger failed:\n{proc.stderr.decode(errors='replace')}")
    result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    found, files = count_lines(workdir, lines)
    if found != lines:
        raise SystemExit(f"bench: the {name} logger wrote {found} of {lines} lines")
    return lines / float(result["seconds"]), files


def hold_connections(port: int, count: int) -> list[socket.socket]:
    """Open ``count`` connections to ``port``, each having had one byte echoed."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"x")
        if sock.recv(1) != b"x":
            raise SystemExit("bench: a held connection did not echo")
        socks.append(sock)
    return socks


def measure_shutdown(spec: ServerSpec, conns: int, env: dict[str, str | None]) -> float:
    """SIGTERM -> exit of a fresh ``spec`` server holding ``conns`` idle connections."""
    server = start(spec, env)
    socks: list[socket.socket] = []
    try:
        socks = hold_connections(server.port, conns)
        time.sleep(0.2)  # let the server settle back to idle
        return server.terminate()
    finally:
        server.kill()
        for sock in socks:
            sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--lines", type=int, default=200_000, help="log lines per run (default 200000)")
    parser.add_argument("--rounds", type=int, default=3, help="log runs per logger (default 3)")
    parser.add_argument("--conns", type=int, default=1000, help="idle connections at SIGTERM (default 1000)")
    parser.add_argument("--runs", type=int, default=5, help="shutdown runs per server (default 5)")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="start servers with the caller's bytecode settings instead of a private PYTHONPYCACHEPREFIX",
    )
    args = parser.parse_args(argv)
    if args.lines < 1 or args.rounds < 1 or args.conns < 0 or args.runs < 1:
        parser.error("--lines, --rounds and --runs must be positive, --conns not negative")
    raise_fd_limit(2 * args.conns + 256)

    began = time.perf_counter()
    out = [f"machine: {machine()}", ""]
    with temp_dir("tapster-bench-") as tmp_name:
        tmp = Path(tmp_name)
        env: dict[str, str | None] = {} if args.no_bytecode_cache else bytecode_env(tmp / "pycache")

        rates: dict[str, list[float]] = {name: [] for name in LOGGERS}
        files: dict[str, int] = {}
        for rnd in range(args.rounds):
            print(f"logging: round {rnd + 1}/{args.rounds}", file=sys.stderr)
            for number, name in enumerate(LOGGERS):
                rate, files[name] = measure_logger(name, args.lines, tmp / f"log-{rnd}-{number}", env)
                rates[name].append(rate)
        med = {name: median(values) for name, values in rates.items()}
        out.append(
            f"(a) {args.lines:,} lines into a file rotated at {ROTATE_BYTES:,} bytes; median of {args.rounds} rounds"
        )
        out.append("")
        out.append(
            table(
                ["logger", "lines/s", "vs twistd", "files written"],
                [
                    [name, f"{med[name]:,.0f}", f"{med[name] / med['twistd']:.2f}x", str(files[name])]
                    for name in LOGGERS
                ],
            )
        )
        out.append("")

        specs = [
            s for s in echo_servers(tmp) if s.name in ("tapster", "tapster uvloop", "twistd", "bare asyncio")
        ]
        exits: dict[str, list[float]] = {spec.name: [] for spec in specs}
        for spec in specs:
            measure_shutdown(spec, 0, env)  # warm-up: fills the bytecode cache
        for run in range(args.runs):
            print(f"shutdown: run {run + 1}/{args.runs}", file=sys.stderr)
            for spec in specs:
                exits[spec.name].append(measure_shutdown(spec, args.conns, env))
        out.append(f"(b) SIGTERM -> exit with {args.conns:,} idle connections; median of {args.runs} runs")
        out.append("")
        out.append(
            table(
                ["server", "loop", "median ms", "min ms", "max ms"],
                [
                    [
                        spec.name,
                        spec.loop,
                        f"{median(exits[spec.name]) * 1000:.0f}",
                        f"{min(exits[spec.name]) * 1000:.0f}",
                        f"{max(exits[spec.name]) * 1000:.0f}",
                    ]
                    for spec in specs
                ],
            )
        )
        out.append("")
        out.append("targets:")
        log_ratio = med["tapster"] / med["twistd"]
        out.append(f"  log rate tapster / twistd {log_ratio:.2f}x >= 2x {verdict(log_ratio >= 2)}")
        for name in ("tapster", "tapster uvloop"):
            ms = median(exits[name]) * 1000
            out.append(f"  {name:<15} SIGTERM->exit {ms:.0f} ms <= 100 ms {verdict(ms <= 100)}")
    print("\n".join(out))
    print(f"\n(total {time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
