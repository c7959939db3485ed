"""ServerState and service_states: the readiness model the runner sets and /readyz reports."""

from __future__ import annotations

import asyncio

from tapster import Application, MultiService, Service
from tapster.runner._state import ServerState, service_states


def test_ready_only_while_running_and_not_draining() -> None:
    """Ready from 'running' until a drain or the stop begins; begin_drain keeps its first time."""
    state = ServerState()
    assert not state.ready
    state.set_phase("running")
    assert state.ready
    state.begin_drain()
    first = state.drain_started
    assert not state.ready and state.draining and first is not None
    state.begin_drain()
    assert state.drain_started == first
    assert state.phase == "running"  # a drain leaves the phase (and the listeners) alone
    state.set_phase("stopping")
    assert not state.ready and state.stop_started is not None


def test_stopping_begins_a_drain() -> None:
    """The stop makes the process unready even without an explicit drain."""
    state = ServerState()
    state.set_phase("running")
    state.set_phase("stopping")
    assert state.draining and not state.ready


def _child(service: Service, name: str, parent: MultiService) -> Service:
    service.set_name(name)
    service.set_parent(parent)
    return service


def test_service_states_follow_the_tree() -> None:
    """A parent is starting until its children run; a service not running in a running tree is 'stopped'."""
    app = Application("app")
    group = MultiService()
    _child(group, "group", app)
    child = _child(Service(), "child", group)
    state = ServerState()
    app.running = group.running = True  # what MultiService.start does before it starts the children
    assert service_states(app, state) == [
        ("app", "starting"),
        ("app/group", "starting"),
        ("app/group/child", "starting"),
    ]
    asyncio.run(child.start())
    state.set_phase("running")
    assert {s for _, s in service_states(app, state)} == {"running"}
    asyncio.run(child.stop())
    assert ("app/group/child", "stopped") in service_states(app, state)
    state.failed_service = "app/group/child"
    assert ("app/group/child", "failed") in service_states(app, state)
