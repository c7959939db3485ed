"""How long ``tapster --help`` takes to list plugins, against ``twistd --help``, in one invocation.

    python bench/plugin_listing.py [--plugins 200] [--runs 15]

Scenarios (wall time of the whole command, median of ``--runs`` runs, each in a fresh process):

- tapster, no generated plugins, warm cache (the baseline);
- tapster, N generated plugin files in a project's ``tapster/plugins/`` folder: cold (no cache and no bytecode:
  the first listing after the files appeared) and warm (the cache written by an earlier run);
- twistd, N generated plugins in a ``twisted/plugins/`` folder on ``PYTHONPATH``: cold (no ``dropin.cache``, no
  bytecode) and warm.

Each generated plugin is a realistic module: an Options class and a service maker, importing the framework.
Targets (docs/architecture.md, issue 4): warm with N plugins within 1.2x of warm with none, and at least three
times as fast as twistd's warm listing. twistd comes from the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

TAPSTER_PLUGIN = """\
from tapster.options import Options
from tapster.service import Service


class BenchOptions(Options):
    parameters = [("port", "p", 8000, "The port number to listen on.", int)]


class BenchServiceMaker:
    tapname = "bench{n:03d}"
    description = "Generated plugin number {n}."
    options = BenchOptions

    def make_service(self, options):
        return Service()


service_maker = BenchServiceMaker()
"""

TWISTED_PLUGIN = """\
from twisted.application.service import IServiceMaker, Service
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class BenchOptions(usage.Options):
    optParameters = [["port", "p", 8000, "The port number to listen on.", int]]


@implementer(IServiceMaker, IPlugin)
class BenchServiceMaker:
    tapname = "bench{n:03d}"
    description = "Generated plugin number {n}."
    options = BenchOptions

    def makeService(self, options):
        return Service()


service_maker = BenchServiceMaker()
"""


def command(name: str, module_fallback: list[str]) -> list[str]:
    """The console script next to this interpreter, as a user runs it, or ``python -m``-style fallback."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.exists() else [sys.executable, *module_fallback]


def generate(folder: Path, template: str, count: int) -> None:
    folder.mkdir(parents=True)
    for n in range(count):
        (folder / f"bench{n:03d}_plugin.py").write_text(template.format(n=n))


def clear(folder: Path, cache: str) -> None:
    """Make the next run cold: no cache file and no bytecode for the generated plugins."""
    (folder / cache).unlink(missing_ok=True)
    shutil.rmtree(folder / "__pycache__", ignore_errors=True)


def timed(argv: Sequence[str], cwd: Path, env: dict[str, str], expect: str) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if expect not in result.stdout:
        sys.exit(
            f"{' '.join(argv)} in {cwd}: {expect!r} not in its output:\n{result.stdout}\n{result.stderr}"
        )
    return elapsed


def measure(runs: int, run: Callable[[], float], before: Callable[[], None] | None = None) -> list[float]:
    """``runs`` timings; ``before`` runs untimed ahead of each (to make it cold), else one warm-up run first."""
    if before is None:
        run()
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        times.append(run())
    return times


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plugins", type=int, default=200, help="generated plugins (default 200)")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per scenario (default 15)")
    args = parser.parse_args(argv)
    n = args.plugins
    last = f"bench{n - 1:03d}"

    tapster = [*command("tapster", ["-m", "tapster"]), "--help"]
    twistd = [*command("twistd", ["-c", "from twisted.scripts.twistd import run; run()"]), "--help"]
    # As installed: bytecode is written (pip compiles it at install time; twisted's is there already).
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="tapster-bench-") as tmp:
        root = Path(tmp)
        empty, project, twisted_path = root / "empty", root / "project", root / "twisted-path"
        empty.mkdir()
        tapster_folder = project / "tapster" / "plugins"
        generate(tapster_folder, TAPSTER_PLUGIN, n)
        twisted_folder = twisted_path / "twisted" / "plugins"
        generate(twisted_folder, TWISTED_PLUGIN, n)

        def tap_empty() -> float:
            return timed(tapster, empty, env, "Plugins")

        def tap_many() -> float:
            return timed(tapster, project, env, last)

        results["tapster --help, 0 plugins, warm"] = measure(args.runs, tap_empty)
        results[f"tapster --help, {n} plugins, cold"] = measure(
            args.runs, tap_many, lambda: clear(tapster_folder, ".tapster-plugins.json")
        )
        results[f"tapster --help, {n} plugins, warm"] = measure(args.runs, tap_many)

        try:
            import twisted  # noqa: F401
        except ImportError:
            print("twisted is not installed (pip install -e '.[bench]'): skipping twistd", file=sys.stderr)
        else:
            twisted_env = {
                **env,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(twisted_path), env.get("PYTHONPATH")])),
            }

            def twistd_many() -> float:
                return timed(twistd, root, twisted_env, last)

            results[f"twistd --help, {n} plugins, cold"] = measure(
                args.runs, twistd_many, lambda: clear(twisted_folder, "dropin.cache")
            )
            results[f"twistd --help, {n} plugins, warm"] = measure(args.runs, twistd_many)

    report(results, n)


def report(results: dict[str, list[float]], n: int) -> None:
    medians = {name: statistics.median(times) for name, times in results.items()}
    base = medians["tapster --help, 0 plugins, warm"]
    width = max(len(name) for name in results)
    print(f"python {sys.version.split()[0]}, {len(next(iter(results.values())))} runs each, median wall time")
    print(f"{'scenario':<{width}}  {'median':>9}  {'min':>9}  {'vs tapster 0 warm':>17}")
    for name, times in results.items():
        print(
            f"{name:<{width}}  {medians[name] * 1000:>7.1f}ms  {min(times) * 1000:>7.1f}ms  "
            f"{medians[name] / base:>16.2f}x"
        )
    warm = medians[f"tapster --help, {n} plugins, warm"]
    print()
    print(f"tapster warm, {n} plugins / 0 plugins: {warm / base:.2f}x (target <= 1.2x)")
    twistd_warm = medians.get(f"twistd --help, {n} plugins, warm")
    if twistd_warm is not None:
        twistd_cold = medians[f"twistd --help, {n} plugins, cold"]
        cold = medians[f"tapster --help, {n} plugins, cold"]
        print(f"twistd warm / tapster warm, {n} plugins: {twistd_warm / warm:.2f}x faster (target >= 3x)")
        print(f"twistd cold / tapster cold, {n} plugins: {twistd_cold / cold:.2f}x faster")


if __name__ == "__main__":
    main()
