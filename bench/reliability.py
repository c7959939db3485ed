"""Run the reliability suite's long versions and write what they measured into docs/reliability.md.

    python bench/reliability.py              # the long run (TAPSTER_RELIABILITY_LONG=1): more load, more cases
    python bench/reliability.py --short      # the CI counts, for a quick refresh of the table
    python bench/reliability.py --no-write   # print the table instead of writing it

Each test in tests/reliability/ records its figures through the ``figures`` fixture (case, figure, goal, held) as
JSON lines in the file named by ``TAPSTER_RELIABILITY_RESULTS``. This script runs ``pytest tests/reliability``
with that variable set, reads the rows back, adds a row for every test that recorded nothing (skipped, with
pytest's reason, or failed), and replaces the part of docs/reliability.md between the two marker comments with
the table and the machine it ran on. So the table only ever holds what was measured.

The exit status is pytest's: 0 when every test passed (skips included), non-zero otherwise; the table is written
in both cases, with the failures in it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "reliability.md"
SUITE = "tests/reliability"
BEGIN = "<!-- reliability-table:begin (written by python bench/reliability.py; do not edit by hand) -->"
END = "<!-- reliability-table:end -->"


@dataclass
class Row:
    test: str
    case: str
    figure: str
    goal: str
    held: str

    @property
    def area(self) -> str:
        """The test module without its ``test_`` prefix: ``restarts``, ``rotation_load``, ..."""
        module = self.test.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
        return module.removeprefix("test_")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the CI counts instead of the long versions")
    parser.add_argument("--no-write", action="store_true", help="print the table; leave the document alone")
    parser.add_argument("--workers", default="2", help="pytest -n (default 2, as CI; 0 runs in one process)")
    parser.add_argument("--doc", type=Path, default=DOC, help=f"the document to update (default {DOC})")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --), e.g. -k restarts")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tapster-reliability-") as scratch:
        results = Path(scratch) / "results.jsonl"
        junit = Path(scratch) / "junit.xml"
        env = {
            **os.environ,
            "TAPSTER_RELIABILITY_RESULTS": str(results),
            "TAPSTER_RELIABILITY_LONG": "0" if args.short else "1",
        }
        order = collect(env, args.pytest_args)
        command = [
            sys.executable, "-m", "pytest", SUITE, "-q", "-p", "no:cacheprovider", "-n", args.workers,
            f"--junitxml={junit}", "-o", "junit_family=xunit1", *args.pytest_args,
        ]  # fmt: skip
        if args.workers == "0":
            command[command.index("-n") : command.index("-n") + 2] = []
        print(f"$ {' '.join(command[2:])}  ({'short' if args.short else 'long'} versions)", file=sys.stderr)
        load_before = _load()
        began = time.monotonic()
        status = subprocess.run(command, cwd=REPO, env=env).returncode
        elapsed = time.monotonic() - began
        rows = read_rows(results)
        outcomes = read_junit(junit) if junit.exists() else {}

    rows = complete(rows, outcomes, order)
    text = render(rows, outcomes, status, elapsed, load_before, short=args.short)
    if args.no_write:
        print(text)
    else:
        write(args.doc, text)
        print(f"wrote {len(rows)} rows to {args.doc}", file=sys.stderr)
    return status


def collect(env: dict[str, str], extra: list[str]) -> list[str]:
    """The suite's test ids in collection order (the order of the table)."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", SUITE, "--collect-only", "-q", "-p", "no:cacheprovider", *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    return [line for line in done.stdout.splitlines() if "::" in line]


def read_rows(results: Path) -> list[Row]:
    rows = []
    if results.exists():
        for line in results.read_text(encoding="utf-8").splitlines():
            data = json.loads(line)
            rows.append(
                Row(
                    data["test"],
                    data["case"],
                    data["figure"],
                    data["goal"],
                    "yes" if data["held"] else "**NO**",
                )
            )
    return rows


def read_junit(path: Path) -> dict[str, tuple[str, str]]:
    """test id -> (outcome, message): passed, failed, error or skipped, with pytest's reason."""
    outcomes: dict[str, tuple[str, str]] = {}
    for case in ElementTree.parse(path).iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        test = f"{module}.py::{case.get('name', '')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = child.get("message", "") or (child.text or "")
                break
        outcomes[test] = (outcome, _one_line(message))
    return outcomes


def _one_line(text: str) -> str:
    text = re.sub(r"^Skipped: ", "", text.strip())
    first = text.splitlines()[0] if text else ""
    return first if len(first) <= 160 else first[:157] + "..."


def complete(rows: list[Row], outcomes: dict[str, tuple[str, str]], order: list[str]) -> list[Row]:
    """Add a row for each test that recorded nothing; mark the rows of failed tests; sort by collection order."""
    recorded = {row.test for row in rows}
    for test, (outcome, message) in outcomes.items():
        if test not in recorded and outcome != "passed":
            name = test.split("::", 1)[1]
            held = "skipped" if outcome == "skipped" else "**NO**"
            rows.append(Row(test, name, f"{outcome}: {message}", "", held))
        elif outcome in ("failed", "error"):
            for row in rows:
                if row.test == test and row.held == "yes":
                    row.held = f"yes (test {outcome}: {message})"
    position = {test: index for index, test in enumerate(order)}
    indexed = list(enumerate(rows))
    indexed.sort(
        key=lambda item: (item[1].test.split("::")[0], position.get(item[1].test, len(order)), item[0])
    )
    return [row for _, row in indexed]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _quiet() -> contextlib.suppress:
    """Leave a machine detail out rather than fail the report over it."""
    return contextlib.suppress(
        OSError, ValueError, IndexError, subprocess.SubprocessError, metadata.PackageNotFoundError
    )


def _load() -> str:
    with _quiet():
        return Path("/proc/loadavg").read_text().split()[0]
    return "?"


def machine(load_before: str) -> list[str]:
    """What the figures depend on: CPUs, memory, kernel, Python and the tools' versions."""
    cpu = ""
    with _quiet():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with _quiet():
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GB RAM"
    load = ""
    with _quiet():
        load = f"; 1-minute load average {load_before} before the run, {_load()} after"
    versions = []
    for dist in ("tapster", "pytest", "pytest-xdist", "hypothesis"):
        with _quiet():
            versions.append(f"{dist} {metadata.version(dist)}")
    rotate = shutil.which("logrotate") or shutil.which("logrotate", path="/usr/sbin:/sbin")
    if rotate:
        with _quiet():
            out = subprocess.run([rotate, "--version"], capture_output=True, text=True, timeout=10)
            versions.append((out.stdout or out.stderr).splitlines()[0].strip())
    else:
        versions.append("logrotate not installed")
    return [
        f"- Date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')} (the end of the run)",
        f"- Machine: {os.cpu_count()} CPUs ({cpu or platform.machine()}){memory}, "
        f"{platform.system()} {platform.release()}{load}; running as {'root' if os.geteuid() == 0 else 'a user'}",
        f"- Python {platform.python_version()}; {', '.join(versions)}",
    ]


def render(
    rows: list[Row],
    outcomes: dict[str, tuple[str, str]],
    status: int,
    elapsed: float,
    load_before: str,
    *,
    short: bool,
) -> str:
    counts: dict[str, int] = {}
    for outcome, _ in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "no tests ran"
    held = sum(row.held == "yes" for row in rows)
    mode = "short (CI counts, `--short`)" if short else "long (`TAPSTER_RELIABILITY_LONG=1`)"
    lines = [
        BEGIN,
        "",
        f"Run: {mode}, `python bench/reliability.py{' --short' if short else ''}`: {summary} in "
        f"{elapsed:.0f} s (pytest exit status {status}); {held} of {len(rows)} rows held.",
        "",
        *machine(load_before),
        "",
        "| area | case | figure | goal | held |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {row.area} | {_cell(row.case)} | {_cell(row.figure)} | {_cell(row.goal)} | {_cell(row.held)} |"
        for row in rows
    ]
    lines += ["", END]
    return "\n".join(lines)


def write(doc: Path, table: str) -> None:
    """Replace the text between the markers (or append the markers and the table if they are missing)."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Reliability\n"
    if BEGIN in text and END in text:
        before = text[: text.index(BEGIN)]
        after = text[text.index(END) + len(END) :]
        text = before + table + after
    else:
        text = text.rstrip("\n") + "\n\n" + table + "\n"
    doc.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
