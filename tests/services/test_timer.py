"""TimerService: calls at start and then every interval; errors are logged and the timer goes on."""

from __future__ import annotations

import asyncio
import logging
import pickle
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from support import wait_until_async
from tapster import Application
from tapster.services import TimerService

T = TypeVar("T")


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        async with asyncio.timeout(15):
            return await scenario()

    return asyncio.run(main())


class Ticks:
    """Counts calls and lets a scenario wait for the n-th one."""

    def __init__(self) -> None:
        self.args: list[tuple[object, ...]] = []
        self._changed: asyncio.Event | None = None

    def record(self, *args: object) -> None:
        self.args.append(args)
        if self._changed is not None:
            self._changed.set()

    async def until(self, count: int) -> None:
        self._changed = asyncio.Event()
        while len(self.args) < count:
            self._changed.clear()
            await self._changed.wait()


def test_sync_function_is_called_at_start_then_every_interval() -> None:
    """The first call comes right after start (not one interval later); then calls repeat with the args."""
    ticks = Ticks()

    async def scenario() -> None:
        slow = TimerService(3600, ticks.record, "first")
        await slow.start()
        await ticks.until(1)
        assert ticks.args == [("first",)]
        await slow.stop()

        fast = TimerService(0.01, ticks.record, "again", 2)
        await fast.start()
        await ticks.until(4)
        await fast.stop()
        assert ticks.args[1:4] == [("again", 2)] * 3
        assert fast.calls == len(ticks.args) - 1
        assert not fast.running

    run(scenario)


def test_async_function_is_awaited_each_time() -> None:
    """An async fn is called and awaited on every tick, with its args."""
    ticks = Ticks()

    async def tick(label: str) -> None:
        await asyncio.sleep(0)
        ticks.record(label)

    async def scenario() -> None:
        timer = TimerService(0.01, tick, "async")
        await timer.start()
        await ticks.until(3)
        await timer.stop()

    run(scenario)
    assert ticks.args[:3] == [("async",)] * 3


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_exception_is_logged_with_traceback_and_the_timer_goes_on(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A raising call is logged with its traceback under the service name, and later calls still happen."""
    ticks = Ticks()

    def flaky_sync() -> None:
        ticks.record()
        if len(ticks.args) == 1:
            raise ValueError("tick failed")

    async def flaky_async() -> None:
        flaky_sync()

    async def scenario() -> None:
        timer = TimerService(0.01, flaky_sync if kind == "sync" else flaky_async, name="janitor")
        await timer.start()
        await ticks.until(3)
        await timer.stop()

    with caplog.at_level(logging.ERROR):
        run(scenario)
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "janitor raised; the timer goes on" in errors[0].getMessage()
    assert errors[0].exc_info is not None and isinstance(errors[0].exc_info[1], ValueError)


def test_stop_waits_for_a_call_in_progress_to_finish() -> None:
    """stop() during an async call lets it complete (it is not cancelled) and returns after it."""
    journal: list[str] = []

    async def scenario() -> None:
        entered = asyncio.Event()
        release = asyncio.Event()

        async def work() -> None:
            journal.append("begin")
            entered.set()
            await release.wait()
            journal.append("end")

        timer = TimerService(3600, work)
        await timer.start()
        await entered.wait()
        stopping = asyncio.create_task(timer.stop())
        done, _ = await asyncio.wait({stopping}, timeout=0.05)
        assert not done, "stop() must wait for the call in progress"
        release.set()
        await stopping
        journal.append("stopped")

    run(scenario)
    assert journal == ["begin", "end", "stopped"]


def test_no_call_after_stop() -> None:
    """Once stop() has returned the function is not called again."""
    ticks = Ticks()

    async def scenario() -> None:
        timer = TimerService(0.005, ticks.record)
        await timer.start()
        await ticks.until(2)
        await timer.stop()
        count = len(ticks.args)
        # Proving that nothing happens needs a bounded wait: 0.05 s is ten intervals, each of which would call.
        await asyncio.sleep(0.05)
        assert len(ticks.args) == count

    run(scenario)


@pytest.mark.parametrize("seconds", [0, -1.5, float("nan")])
def test_a_non_positive_interval_is_refused(seconds: float) -> None:
    """The interval must be a positive number; the message names the value."""
    with pytest.raises(ValueError, match=f"positive interval, got {seconds!r}"):
        TimerService(seconds, print)


calls: list[str] = []


def remember(label: str) -> None:
    """A module-level target, so a TimerService holding it pickles."""
    calls.append(label)


def test_a_started_timer_pickles_and_runs_again_after_loading() -> None:
    """A running timer's tree pickles without its task; the copy is stopped, keeps fn/args, and runs when started."""
    calls.clear()

    async def first_run() -> bytes:
        app = Application("saved")
        TimerService(3600, remember, "tick", name="timer").set_parent(app)
        await app.start()
        await wait_until_async(lambda: calls, 10, "the first tick")
        saved = pickle.dumps(app)
        await app.stop()
        return saved

    saved = run(first_run)

    async def second_run() -> None:
        app = pickle.loads(saved)
        timer = app["timer"]
        assert isinstance(timer, TimerService)
        assert not timer.running and timer.fn is remember and timer.args == ("tick",)
        await app.start()
        await wait_until_async(lambda: len(calls) >= 2, 10, "a tick after loading")
        await app.stop()

    run(second_run)
    assert calls == ["tick", "tick"]
