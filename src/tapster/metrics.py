"""The Prometheus registry that ``--status ENDPOINT`` serves at ``/metrics``: how services add their own metrics.

A service registers a collector or a metric in :func:`registry` (usually in ``start()``) and ``/metrics`` shows it
next to tapster's own process, listener, service and log metrics (docs/status.md)::

    from prometheus_client import Counter
    import tapster.metrics

    class Jobs(Service):
        async def start(self):
            self.done = Counter("myapp_jobs_done", "Jobs finished", registry=tapster.metrics.registry())
            await super().start()

prometheus_client's own metric types take a lock on every update; a service on the data path can instead keep
plain integers (the loop is single-threaded) and register a collector that reads them at scrape time, as tapster
does itself. Registering the same metric name twice raises (prometheus_client's rule): a service that may be
started again should register once, or unregister in ``stop()``.

This module needs the ``metrics`` extra (``pip install 'tapster[metrics]'``), imported on first call, never at
start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["registry"]

_registry: CollectorRegistry | None = None


def registry() -> CollectorRegistry:
    """The process's registry (one per process, created on first use); ``/metrics`` serves it.

    Raises:
        tapster._extras.MissingExtraError: prometheus_client is not installed (one line naming the extra).
    """
    global _registry
    if _registry is None:
        from tapster._extras import import_extra

        prometheus = import_extra("prometheus_client", "tapster's metrics")
        _registry = prometheus.CollectorRegistry(auto_describe=True)
    return _registry
