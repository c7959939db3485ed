"""The process monitor against twistd's, in one invocation: restart latency and the memory of 50 children.

    python bench/procmon.py [--restarts 20] [--children 50]

- **death -> replacement**: the monitor runs one program, ``/bin/sh -c 'echo $$ >> FILE; exec sleep 300'``.
  Each round waits until the current run has lived past the threshold (0.2 s, so neither monitor backs off),
  kills it with SIGKILL, and times until the next run has written its pid (polled every 0.2 ms). The minimum
  restart delay is 0 for both (twistd restarts at once after a long run whatever its minimum; tapster waits
  its minimum, here 0): the figure is the monitor's own cost: noticing the death, reaping, spawning (tapster's
  exec wrapper included). Median and 90th percentile of ``--restarts`` rounds.
- **RSS of a monitor of N children**: a tac file adds N programs (``sleep 300``) to a ProcessMonitor; once all N
  are running (N pids written), VmRSS and the thread count of the monitor process. The children are not counted.

Needs the ``bench`` extra (Twisted). Tables (Markdown) on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from _common import machine, median, rss_kib, table, temp_dir, tool

TAPSTER = [sys.executable, "-m", "tapster", "-n", "-o", "--pidfile="]
TWISTD = [tool("twistd"), "-n", "--pidfile="]

TAPSTER_TAC = """\
from tapster import Application
from tapster.services import ProcessMonitor

application = Application("bench")
monitor = ProcessMonitor(threshold=0.2, min_restart_delay=0, killtime=2)
for i in range({n}):
    monitor.add_process(f"p{{i}}", ["/bin/sh", "-c", "echo $$ >> {record}; exec sleep 300"])
monitor.set_parent(application)
"""

TWISTED_TAC = """\
from twisted.application import service
from twisted.runner.procmon import ProcessMonitor
import os

application = service.Application("bench")
monitor = ProcessMonitor()
monitor.threshold, monitor.minRestartDelay, monitor.killTime = 0.2, 0, 2
for i in range({n}):
    monitor.addProcess(f"p{{i}}", ["/bin/sh", "-c", "echo $$ >> {record}; exec sleep 300"], env=os.environ)
monitor.setServiceParent(application)
"""


def pids(record: Path) -> list[int]:
    try:
        return [int(word) for word in record.read_text().split()]
    except (OSError, ValueError):
        return []


def wait_pids(record: Path, count: int, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(found := pids(record)) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {count} runs not recorded in {record} within {timeout} s")
        time.sleep(0.0002)
    return found


def start(argv: Sequence[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def restart_latency(argv: Sequence[str], record: Path, cwd: Path, restarts: int) -> list[float]:
    proc = start(argv, cwd)
    try:
        wait_pids(record, 1)
        figures = []
        for round_ in range(restarts):
            current = pids(record)[-1]
            time.sleep(0.3)  # past the threshold: a long run, restarted at the minimum delay
            t0 = time.perf_counter()
            os.kill(current, signal.SIGKILL)
            wait_pids(record, round_ + 2)
            figures.append(time.perf_counter() - t0)
        return figures
    finally:
        stop(proc)


def monitor_memory(argv: Sequence[str], record: Path, cwd: Path, children: int) -> tuple[int, int]:
    proc = start(argv, cwd)
    try:
        wait_pids(record, children)
        time.sleep(0.5)  # let the monitor log the starts and settle
        threads = len(os.listdir(f"/proc/{proc.pid}/task"))
        return rss_kib(proc.pid), threads
    finally:
        stop(proc)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--restarts", type=int, default=20)
    parser.add_argument("--children", type=int, default=50)
    args = parser.parse_args(argv)
    print(machine(), file=sys.stderr)
    with temp_dir("tapster-bench-procmon-") as tmp:
        work = Path(tmp)
        rows = []
        memory_rows = []
        for label, base, tac_text in (
            ("tapster", TAPSTER, TAPSTER_TAC),
            ("tapster uvloop", [*TAPSTER, "--reactor", "uvloop"], TAPSTER_TAC),
            ("twistd", TWISTD, TWISTED_TAC),
        ):
            for n, purpose in ((1, "latency"), (args.children, "memory")):
                record = work / f"{label.replace(' ', '-')}-{purpose}.pids"
                tac = work / f"{label.replace(' ', '-')}-{purpose}.tac"
                tac.write_text(tac_text.format(n=n, record=record))
                argv_ = [*base, "-y", str(tac)]
                print(f"{label}: {purpose} ...", file=sys.stderr)
                if purpose == "latency":
                    figures = sorted(restart_latency(argv_, record, work, args.restarts))
                    p90 = figures[min(len(figures) - 1, int(len(figures) * 0.9))]
                    rows.append((label, median(figures), p90))
                else:
                    memory_rows.append((label, *monitor_memory(argv_, record, work, n)))
        twistd_latency = rows[-1][1]
        print("### death -> replacement (SIGKILL of a run -> the next run has started), minimum delay 0\n")
        print(
            table(
                ["monitor", "median ms", "p90 ms", "vs twistd"],
                [
                    (label, f"{med * 1000:.1f}", f"{p90 * 1000:.1f}", f"{med / twistd_latency:.2f}x")
                    for label, med, p90 in rows
                ],
            )
        )
        twistd_rss = memory_rows[-1][1]
        print(f"\n### the monitor process with {args.children} children running (children not counted)\n")
        print(
            table(
                ["monitor", "RSS MiB", "threads", "vs twistd"],
                [
                    (label, f"{rss / 1024:.1f}", str(threads), f"{rss / twistd_rss:.2f}x")
                    for label, rss, threads in memory_rows
                ],
            )
        )


if __name__ == "__main__":
    main(sys.argv[1:])
