"""The saved states real plugins write still load under the allow-list: fastpoetry, echo, the manhole.

Each test runs the plugin in a real tapster process, stops it with SIGTERM (which saves NAME-shutdown.tap), then
starts ``tapster -f`` on that file and talks to the restored server.
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def fetch(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return sock.recv(64)


def save_then_load(tapster: Any, tmp_path: Path, args: list[str], label: str, name: str) -> tuple[Any, Path]:
    """Run the plugin, stop it (the state is saved), check the file, and start -f on it; return the new server."""
    first = tapster(["-n", "--pidfile=", "--save", "-d", str(tmp_path), *args], cwd=EXAMPLES)
    first.port(label)
    first.signal(signal.SIGTERM)
    status, out, err = first.finish()
    assert status == 0, err
    saved = tmp_path / f"{name}-shutdown.tap"
    assert f"Saved application state to {saved.name}." in out
    assert "will load only with --trust-state-file" not in out
    header, modules, _ = saved.read_bytes().split(b"\n", 2)
    assert header == b"TAPSTER-STATE 2" and modules.startswith(b"modules: ")
    again = tapster(["-n", "--pidfile=", "-o", "-d", str(tmp_path), "-f", str(saved)], cwd=EXAMPLES)
    return again, saved


def test_fastpoetry_state_round_trip(tapster: Any, tmp_path: Path) -> None:
    """The fastpoetry plugin's state (plugin classes, functools.partial) loads and serves the same poem."""
    again, saved = save_then_load(
        tapster, tmp_path, ["fastpoetry", "--port", "0"], "PoetryProtocol", "fastpoetry"
    )
    assert b"_fastpoetry_plugin" in saved.read_bytes().split(b"\n")[1]
    poem = (EXAMPLES / "poetry" / "ecstasy.txt").read_bytes()
    assert fetch(again.port("PoetryProtocol")) == poem
    again.signal(signal.SIGTERM)
    assert again.finish()[0] == 0


def test_echo_plugin_state_round_trip(tapster: Any, tmp_path: Path) -> None:
    """The echo plugin's state holds a bound method of a plugin class (getattr in the pickle): it loads."""
    again, _ = save_then_load(tapster, tmp_path, ["echo", "--port", "0"], "EchoHTTP", "echo")
    again.port("EchoHTTP")
    again.signal(signal.SIGTERM)
    assert again.finish()[0] == 0


def test_manhole_state_round_trip(tapster: Any, tmp_path: Path) -> None:
    """The manhole's state (its auth checkers, a bound method of a tapster class) loads; SSH answers again."""
    again, _ = save_then_load(
        tapster,
        tmp_path,
        ["manhole", "--ssh", "tcp:0:interface=127.0.0.1", "--auth", "memory:admin:secret"],
        "",
        "manhole",
    )
    assert banner(again.port("")).startswith(b"SSH-2.0-")
    again.signal(signal.SIGTERM)
    assert again.finish()[0] == 0
