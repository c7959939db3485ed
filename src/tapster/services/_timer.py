"""TimerService: call a function every N seconds while the service runs."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

from tapster.service import Service
from tapster.services._connection import callable_label

__all__ = ["TimerService"]

logger = logging.getLogger("tapster.services")


class TimerService(Service):
    """Call ``fn(*args)`` at start and then every ``seconds``; ``fn`` may be sync or async.

    Calls keep a fixed rate: a slow call delays the next one, and calls that would have fallen due during it are
    skipped rather than run back to back. An exception is logged with its traceback and the timer goes on.
    Stopping waits for a call in progress to finish (it is not cancelled halfway).
    """

    transient = ("_task", "_stopping")

    def __init__(self, seconds: float, fn: Callable[..., Any], *args: Any, name: str | None = None) -> None:
        if not seconds > 0:
            raise ValueError(f"TimerService needs a positive interval, got {seconds!r}")
        self.seconds = seconds
        self.fn = fn
        self.args = args
        self.name = name
        self.calls = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None

    async def start(self) -> None:
        self._stopping = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(self._stopping))
        await super().start()

    async def _run(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not stopping.is_set():
            await self._call_once()
            now = loop.time()
            due += self.seconds
            if due < now:  # skip the ticks missed while the call ran
                due += ((now - due) // self.seconds + 1) * self.seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), due - now)

    async def _call_once(self) -> None:
        self.calls += 1
        try:
            result = self.fn(*self.args)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("%s raised; the timer goes on", self.name or callable_label(self.fn))

    async def stop(self) -> None:
        await super().stop()
        task, self._task = self._task, None
        if task is not None and self._stopping is not None:
            self._stopping.set()
            await task
