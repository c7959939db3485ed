"""The application the --status tests run: an echo server, a loop blocker, and services with gated start/stop.

STATUS_GATES (a directory): when set, a Gated service waits in start() for the file ``start`` there and in stop()
for ``stop``, so a test sees the process starting and stopping for as long as it likes.
"""

import asyncio
import logging
import os
import sys
import time

import tapster.metrics
from tapster import Application, Service
from tapster.services import StreamServer


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class Blocker(asyncio.Protocol):
    """Blocks the whole event loop for the number of seconds it is sent (a bad handler's time.sleep)."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        logging.getLogger("statusapp").info("blocking the loop for %s s", float(data))
        time.sleep(float(data))
        self.transport.write(b"done\n")


async def _wait_for(path):
    while not os.path.exists(path):
        await asyncio.sleep(0.02)


class Gated(Service):
    async def start(self):
        gates = os.environ.get("STATUS_GATES")
        if gates:
            await _wait_for(os.path.join(gates, "start"))
        await super().start()

    async def stop(self):
        await super().stop()
        gates = os.environ.get("STATUS_GATES")
        if gates:
            await _wait_for(os.path.join(gates, "stop"))


class Jobs(Service):
    """Registers its own metric through the documented API."""

    async def start(self):
        from prometheus_client import Counter

        if not hasattr(self, "done"):
            self.done = Counter("myapp_jobs_done", "Jobs finished", registry=tapster.metrics.registry())
        self.done.inc(3)
        await super().start()


class Imports(Service):
    """Logs whether the heavy extras were imported by the time the tree starts."""

    async def start(self):
        loaded = [name for name in ("aiohttp", "prometheus_client") if name in sys.modules]
        print(f"extras imported: {loaded}", flush=True)
        await super().start()


application = Application("statusapp")
imports = Imports()
imports.set_name("imports")
imports.set_parent(application)
StreamServer("tcp:0:interface=127.0.0.1", Echo, name="echo").set_parent(application)
StreamServer("tcp:0:interface=127.0.0.1", Blocker, name="blocker").set_parent(application)
gated = Gated()
gated.set_name("gated")
gated.set_parent(application)
jobs = Jobs()
jobs.set_name("jobs")
jobs.set_parent(application)
