"""The service tree's lifecycle promises (docs/architecture.md, "The service tree")."""

from __future__ import annotations

import asyncio
import logging
import pickle

import pytest

from support import wait_until_async
from tapster import Application, MultiService, Service
from tapster.errors import ServiceTreeError
from tapster.service import service_path, still_stopping


class Recorder(Service):
    """A service that records lifecycle calls into a shared journal."""

    def __init__(
        self,
        name: str,
        journal: list[str],
        *,
        start_delay: float = 0,
        fail_start: bool = False,
        fail_stop: bool = False,
        stop_gate: asyncio.Event | None = None,
    ) -> None:
        self.name = name
        self.journal = journal
        self.start_delay = start_delay
        self.fail_start = fail_start
        self.fail_stop = fail_stop
        self.stop_gate = stop_gate

    async def privileged_start(self) -> None:
        self.journal.append(f"priv {self.name}")

    async def start(self) -> None:
        self.journal.append(f"start {self.name}")
        await asyncio.sleep(self.start_delay)
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")
        await super().start()
        self.journal.append(f"started {self.name}")

    async def stop(self) -> None:
        await super().stop()
        self.journal.append(f"stop {self.name}")
        if self.stop_gate is not None:
            await self.stop_gate.wait()
        await asyncio.sleep(0)
        if self.fail_stop:
            raise RuntimeError(f"{self.name} cannot stop")
        self.journal.append(f"stopped {self.name}")


class Holder(Service):
    """A service with configuration (count) and a live object that must not be pickled."""

    transient = ("live",)

    def __init__(self) -> None:
        self.name = "holder"
        self.count = 3
        self.live: object | None = object()


def build(journal: list[str], **kwargs: dict[str, object]) -> Application:
    app = Application("demo")
    for name in ("a", "b", "c"):
        Recorder(name, journal, **kwargs.get(name, {})).set_parent(app)  # type: ignore[arg-type]
    return app


def test_start_runs_children_in_insertion_order_each_awaited() -> None:
    """A child starts only after the previous child's start() has returned."""
    journal: list[str] = []
    app = build(journal, a={"start_delay": 0.01})
    asyncio.run(app.start())
    assert journal == ["start a", "started a", "start b", "started b", "start c", "started c"]
    assert app.running and all(child.running for child in app)


def test_stop_is_called_in_reverse_and_stops_run_concurrently() -> None:
    """stop() is entered for c, b, a before any of them finishes, and the parent waits for all."""
    journal: list[str] = []

    async def scenario() -> None:
        gate = asyncio.Event()
        app = build(journal, a={"stop_gate": gate}, b={"stop_gate": gate}, c={"stop_gate": gate})
        await app.start()
        journal.clear()
        stopping = asyncio.create_task(app.stop())
        await wait_until_async(lambda: len(journal) >= 3, 10, "three stops entered")
        assert journal == ["stop c", "stop b", "stop a"]
        assert not stopping.done()
        gate.set()
        await stopping

    asyncio.run(scenario())
    assert sorted(journal[3:]) == ["stopped a", "stopped b", "stopped c"]


def test_named_children_are_found_by_name() -> None:
    """tree["name"] returns the child with that name; a missing name raises KeyError naming both."""
    app = Application("demo")
    child = Service()
    child.name = "web"
    child.set_parent(app)
    assert app["web"] is child
    assert "web" in app and child in app
    assert list(app) == [child]
    with pytest.raises(KeyError, match="'nope'"):
        app["nope"]


def test_second_parent_is_refused_naming_both() -> None:
    """A service with a parent cannot be given another; the message names the service and both parents."""
    first, second = Application("first"), Application("second")
    child = Service()
    child.name = "web"
    child.set_parent(first)
    with pytest.raises(
        ServiceTreeError, match=r"Service 'web' already has a parent, Application 'first'.*'second'"
    ):
        child.set_parent(second)


def test_renaming_a_service_with_a_parent_is_refused_and_the_index_stays_right() -> None:
    """As in twistd (setName raises while a parent exists): assigning name or set_name() under a parent raises,
    naming the service, the new name and the parent; after disown_parent() the rename is allowed."""
    app = Application("demo")
    child = Service()
    child.set_name("web")
    child.set_parent(app)
    with pytest.raises(ServiceTreeError, match=r"cannot rename Service 'web' to 'api'.*Application 'demo'"):
        child.name = "api"
    with pytest.raises(ServiceTreeError, match="disown_parent"):
        child.set_name(None)
    child.name = "web"  # the same name again changes nothing and is fine
    assert child.name == "web" and app["web"] is child and "api" not in app
    child.disown_parent()
    child.name = "api"
    child.set_parent(app)
    assert app["api"] is child and "web" not in app
    assert Service.name is None and Service().name is None


def test_a_named_service_pickles_with_its_name() -> None:
    """The name is stored as before (an instance attribute): a saved tree loads with its names and index."""
    app = Application("demo")
    child = Service()
    child.name = "web"
    child.set_parent(app)
    copy = pickle.loads(pickle.dumps(app))
    assert copy["web"].name == "web" and copy["web"].parent is copy
    assert "name" in vars(copy["web"])


def test_duplicate_child_name_is_refused_naming_both() -> None:
    """Two children with one name under one parent is an error naming the parent and the name."""
    app = Application("demo")
    for _ in range(2):
        child = Service()
        child.name = "web"
        if _ == 0:
            child.set_parent(app)
    with pytest.raises(ServiceTreeError, match=r"Application 'demo' already has a child named 'web'"):
        child.set_parent(app)
    assert child.parent is None


def test_adding_to_a_running_parent_starts_the_child() -> None:
    """A child added to a running parent gets privileged_start and start; awaiting set_parent waits for it."""
    journal: list[str] = []

    async def scenario() -> None:
        app = Application("demo")
        await app.start()
        late = Recorder("late", journal)
        await late.set_parent(app)
        assert late.running

    asyncio.run(scenario())
    assert journal == ["priv late", "start late", "started late"]


def test_removing_from_a_running_parent_stops_the_child() -> None:
    """disown_parent on a running child stops it and detaches it."""
    journal: list[str] = []

    async def scenario() -> None:
        app = build(journal)
        await app.start()
        child = app["b"]
        await child.disown_parent()
        assert not child.running and child.parent is None and "b" not in app

    asyncio.run(scenario())
    assert journal[-2:] == ["stop b", "stopped b"]


def test_failing_child_start_stops_started_siblings_in_reverse_and_reraises() -> None:
    """When c fails to start, b then a are stopped, and the error reaches the caller."""
    journal: list[str] = []
    app = build(journal, c={"fail_start": True})
    with pytest.raises(RuntimeError, match="c cannot start"):
        asyncio.run(app.start())
    assert journal[journal.index("start c") + 1 :] == ["stop b", "stopped b", "stop a", "stopped a"]
    assert not app.running


def test_cancelled_start_stops_what_already_started() -> None:
    """Cancelling a start in progress (a signal during start-up) stops the started children in reverse."""
    journal: list[str] = []

    async def scenario() -> None:
        app = build(journal, b={"start_delay": 10})
        task = asyncio.create_task(app.start())
        await wait_until_async(lambda: "start b" in journal, 10, "b's start entered")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert journal[-2:] == ["stop a", "stopped a"]


def test_failing_child_stop_is_logged_and_other_stops_still_run(caplog: pytest.LogCaptureFixture) -> None:
    """A child whose stop raises is logged with its path; its siblings still stop."""
    journal: list[str] = []
    app = build(journal, b={"fail_stop": True})

    async def scenario() -> None:
        await app.start()
        await app.stop()

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert "stopped a" in journal and "stopped c" in journal
    assert any("demo/b" in record.getMessage() and record.exc_info for record in caplog.records)


def test_privileged_start_reaches_every_node_before_any_start() -> None:
    """privileged_start walks the whole tree (nested too) before start() is called anywhere."""
    journal: list[str] = []
    app = Application("demo")
    group = MultiService()
    group.set_parent(app)
    Recorder("a", journal).set_parent(app)
    Recorder("b", journal).set_parent(group)

    async def scenario() -> None:
        await app.privileged_start()
        await app.start()

    asyncio.run(scenario())
    assert journal[:2] == ["priv a", "priv b"] or journal[:2] == ["priv b", "priv a"]
    assert all(entry.startswith(("start", "started")) for entry in journal[2:])


def test_still_stopping_names_the_blocking_service() -> None:
    """While a nested child's stop hangs, still_stopping() lists that child and not its parents."""
    journal: list[str] = []

    async def scenario() -> None:
        gate = asyncio.Event()
        app = Application("demo")
        group = MultiService()
        group.name = "group"
        group.set_parent(app)
        Recorder("slow", journal, stop_gate=gate).set_parent(group)
        Recorder("quick", journal).set_parent(app)
        await app.start()
        stopping = asyncio.create_task(app.stop())
        await wait_until_async(lambda: "stopped quick" in journal, 10, "the quick service stopped")
        assert [service_path(s) for s in still_stopping(app)] == ["demo/group/slow"]
        gate.set()
        await stopping
        assert still_stopping(app) == []

    asyncio.run(scenario())


def test_pickled_service_comes_back_not_running_without_transients() -> None:
    """A pickled running tree loads with running false and transient attributes reset to None."""

    async def scenario() -> Application:
        app = Application("demo")
        Holder().set_parent(app)
        await app.start()
        return app

    app = asyncio.run(scenario())
    copy = pickle.loads(pickle.dumps(app))
    holder = copy["holder"]
    assert not copy.running and not holder.running
    assert holder.count == 3 and holder.live is None  # type: ignore[attr-defined]
    assert holder.parent is copy


def test_application_requires_a_name() -> None:
    """An Application without a usable name is refused (the name makes the state file name)."""
    with pytest.raises(ValueError, match="non-empty name"):
        Application("")
