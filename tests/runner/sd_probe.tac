"""The application the systemd tests run: an echo server on each endpoint in PROBE_ENDPOINTS, plus a probe.

PROBE_ENDPOINTS: space-separated server endpoints (default tcp:0:interface=127.0.0.1).
PROBE_SLOW_START / PROBE_BLOCK_START: seconds the start awaits (the loop turns) / blocks the loop (time.sleep).
Sending "block N" to an echo connection blocks the loop for N seconds (a hung handler).

At start, before the listeners, it prints one "probe {...}" line: the process id, and what a child process
started with close_fds=False sees: the systemd variables in its environment and the fds 3..9 it inherited.
"""

import asyncio
import json
import os
import subprocess
import sys
import time

from tapster import Application, Service
from tapster.services import StreamServer

CHILD = r"""
import json, os
fds = []
for fd in range(3, 10):
    try:
        os.fstat(fd)
    except OSError:
        continue
    fds.append(fd)
env = sorted(k for k in os.environ if k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_")))
print(json.dumps({"env": env, "fds": fds}))
"""


class Probe(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if data.startswith(b"block "):
            seconds = float(data.split()[1])
            print(f"blocking the loop for {seconds} s", flush=True)
            time.sleep(seconds)
            print("unblocked", flush=True)
        self.transport.write(data)


class Report(Service):
    async def start(self):
        await super().start()
        child = subprocess.run([sys.executable, "-c", CHILD], close_fds=False, capture_output=True, text=True)
        print("probe " + json.dumps({"pid": os.getpid(), "child": json.loads(child.stdout)}), flush=True)
        if slow := float(os.environ.get("PROBE_SLOW_START", "0")):
            await asyncio.sleep(slow)
        if block := float(os.environ.get("PROBE_BLOCK_START", "0")):
            time.sleep(block)
            print("start unblocked", flush=True)


application = Application("probe")
report = Report()
report.name = "report"
report.set_parent(application)
for description in os.environ.get("PROBE_ENDPOINTS", "tcp:0:interface=127.0.0.1").split():
    StreamServer(description, Probe).set_parent(application)
