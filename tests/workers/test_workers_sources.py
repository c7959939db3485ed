"""--workers with each way of running: a plugin and a saved state (a tac file is every other test's case)."""

from __future__ import annotations

import signal
from pathlib import Path

from workerapp import free_port

from conftest import EXAMPLES, connect, read_all


def test_plugin_with_workers(tapster) -> None:
    """A plugin's service runs in each worker: both ready, the poem served on the master's port."""
    port = free_port()
    proc = tapster(["-n", "--pidfile=", "--workers", "2", "fastpoetry", "--port", str(port)], cwd=EXAMPLES)
    for number in (1, 2):
        proc.wait_for(rf"\] worker {number} ready")
    with connect(port) as sock:
        assert len(read_all(sock)) > 100  # the poem
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def test_saved_state_with_workers(tapster, tmp_path: Path) -> None:
    """-f STATE: each worker loads the saved tree; the master says state is not saved with --workers."""
    port = free_port()
    saving = tapster(
        ["-n", "--pidfile=", "--save", "-d", str(tmp_path), "fastpoetry", "--port", str(port)], cwd=EXAMPLES
    )
    saving.port()
    saving.signal(signal.SIGTERM)
    assert saving.finish()[0] == 0
    state = tmp_path / "fastpoetry-shutdown.tap"
    assert state.exists()
    state.rename(tmp_path / "saved.tap")
    proc = tapster(
        ["-n", "--pidfile=", "--workers", "2", "-d", str(tmp_path), "-f", str(tmp_path / "saved.tap")],
        cwd=EXAMPLES,
    )
    for number in (1, 2):
        proc.wait_for(rf"\] worker {number} ready")
    proc.wait_for("state is not saved at shutdown")
    with connect(port) as sock:
        assert read_all(sock)
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0
    assert not state.exists()
