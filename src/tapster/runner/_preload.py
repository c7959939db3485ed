"""Import, before ``chroot`` and before dropping privileges, every module the run would otherwise import later.

Several steps import lazily to keep ``tapster`` fast to start: saving state at stop (pickle, persist), the
profiler, the debugger, uvloop, the ``idna`` codec ``socket.getaddrinfo`` uses for every host name, ``random``
for a reconnecting client's backoff, the thread pool behind ``run_in_executor`` (asyncio's host name lookups,
aiohttp's file responses: without it, a name lookup after ``--uid nobody`` left a forwarded client hanging and
every large static file was a 500). Inside a ``--chroot`` jail the standard library is usually not there, and
after ``--uid nobody`` it may not be readable (an interpreter installed under ``/root``): the import then fails
in the middle of a start or a stop. Importing them here, while the whole file system is reachable as root,
makes the rest of the run independent of both. Modules an application imports lazily are its own business
(docs/running.md, "chroot").
"""

from __future__ import annotations

import importlib

from tapster.runner._config import RunConfig

__all__ = ["preload"]

_ALWAYS = (
    "encodings.idna",  # socket.getaddrinfo() encodes host names with it
    "concurrent.futures.thread",  # run_in_executor's pool: asyncio's getaddrinfo, aiohttp's FileResponse
    "random",
    "traceback",
    "tapster.runner._debug",
)


def preload(config: RunConfig) -> None:
    """Import what ``config``'s run will need after the chroot or the privilege drop."""
    names = list(_ALWAYS)
    if not config.no_save:
        names += ["pickle", "tapster.persist", "tapster._state_pickle"]
    if config.profile:
        names += ["cProfile" if config.profiler == "cprofile" else "profile", "pstats"]
    if config.debug:
        names += ["pdb"]
    if config.reactor == "uvloop":
        names += ["uvloop"]
    if config.status is not None:  # started after the chroot: its HTTP server and metrics are imported then
        names += ["aiohttp.web", "prometheus_client", "tapster.runner._status_metrics", "tapster.metrics"]
    for name in names:
        importlib.import_module(name)
