"""One worker process as the master sees it: its state, its control socket and output, its slot."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import time

from tapster.runner._spawn import SpawnedWorker
from tapster.runner._worker_log import OutputRelay

__all__ = ["Slot", "Worker", "WorkerState"]


class WorkerState(enum.Enum):
    """Where a worker is in its life."""

    BOOTING = "booting"
    READY = "ready"
    STOPPING = "stopping"
    EXITED = "exited"


class Worker:
    """One worker process as the master sees it."""

    def __init__(self, number: int, spawned: SpawnedWorker, loop: asyncio.AbstractEventLoop) -> None:
        self.number = number
        self.pid = spawned.pid
        self.control = spawned.control
        self.output_fd = spawned.output_fd
        self.state = WorkerState.BOOTING
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.ready_at: float | None = None
        self.last_beat = self.started
        self.failure: str | None = None  # why it failed to start or was killed, as the worker or master said
        self.retiring = False  # stopped on purpose (reload, stop): its exit is no crash
        self.ready: asyncio.Future[str | None] = loop.create_future()  # None: ready; a reason: it failed
        self.exited: asyncio.Future[int] = loop.create_future()
        self.relay = OutputRelay(number)
        self._control_buffer = b""
        self.pidfd: int | None = None

    def signal(self, signum: int) -> None:
        if self.state is not WorkerState.EXITED:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def settle_ready(self, reason: str | None) -> None:
        if not self.ready.done():
            self.ready.set_result(reason)

    def read_control(self) -> bool | None:
        """Handle what the worker said; False at end of file, None when there is nothing more to read now."""
        try:
            data = self.control.recv(65536)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            return False
        self._control_buffer += data
        *lines, self._control_buffer = self._control_buffer.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if line == "beat":
                self.last_beat = time.monotonic()
            elif line == "ready" and self.state is WorkerState.BOOTING:
                self.state = WorkerState.READY
                self.ready_at = self.last_beat = time.monotonic()
                self.settle_ready(None)
            elif line.startswith("failed"):
                self.failure = line[len("failed") :].strip() or "the worker failed to start"
                self.settle_ready(self.failure)
        return True

    def read_output(self) -> bool | None:
        """Relay the worker's output to the log; False at end of file, None when there is nothing more now."""
        try:
            data = os.read(self.output_fd, 65536)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            self.relay.close()
            return False
        self.relay.feed(data)
        return True


class Slot:
    """Worker number N: the process filling it now and how often it was replaced."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.current: Worker | None = None
        self.restarts = 0
