"""``--profile``: run the whole serving loop under cProfile (or profile) and write the result at shutdown."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from tapster.errors import StartupError

T = TypeVar("T")
logger = logging.getLogger("tapster")


def run_profiled(path: str, profiler: str, savestats: bool, body: Callable[[], T]) -> T:
    """Call ``body`` under the named profiler; write raw stats (``savestats``) or a text report to ``path``.

    The report is written even when ``body`` raises, since a profile of a failing run is often the point.
    """
    prof: Any
    if profiler == "cprofile":
        import cProfile

        prof = cProfile.Profile()
    elif profiler == "profile":
        import profile

        prof = profile.Profile()
    else:
        raise StartupError(f"unknown profiler {profiler!r} (choose from: cprofile, profile)")
    try:
        return prof.runcall(body)  # type: ignore[no-any-return]
    finally:
        _write(prof, path, savestats)


def _write(prof: Any, path: str, savestats: bool) -> None:
    try:
        if savestats:
            prof.dump_stats(path)
        else:
            import pstats

            with open(path, "w", encoding="utf-8") as report:
                pstats.Stats(prof, stream=report).sort_stats("cumulative", "time").print_stats()
    except OSError as exc:
        logger.error("cannot write the profile to %s: %s", path, exc.strerror)
        return
    logger.info("Profile written to %s.", path)
