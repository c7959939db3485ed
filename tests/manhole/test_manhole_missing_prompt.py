"""A terminal session without prompt_toolkit falls back to the plain console and says which extra brings the REPL.

A real `tapster manhole --telnet` runs with prompt_toolkit hidden (a sitecustomize finder answering ``No module
named 'prompt_toolkit'``, as Python does when it is not installed); a telnet client that names its terminal logs in.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from manhole_support import TelnetClient

HIDER = """\
import sys


class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "prompt_toolkit":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Hide())
"""


def test_terminal_session_without_prompt_toolkit_names_the_ssh_extra(tapster: Any, tmp_path: Path) -> None:
    (tmp_path / "hide").mkdir()
    (tmp_path / "hide" / "sitecustomize.py").write_text(HIDER)
    process = tapster(
        ["-n", "-o", "--pidfile=", "manhole", "--telnet", "0", "--auth", "memory:admin:secret"],
        env={"PYTHONPATH": str(tmp_path / "hide")},
    )
    port = process.port("ManholeTelnet")

    async def session() -> str:
        client = await TelnetClient.open(port, terminal="xterm")
        try:
            await client.read_until("Username: ")
            client.send("admin\r\n")
            await client.read_until("Password: ")
            client.send("secret\r\n")
            seen = await client.read_until(">>> ")
            client.send("6 * 7\r\n")
            await client.read_until("42")  # the plain console works
            return seen
        finally:
            client.close()

    seen = asyncio.run(session())
    assert (
        "(no prompt_toolkit: No module named 'prompt_toolkit' (pip install 'tapster[ssh]'); "
        "using the plain console)" in seen
    )
    process.signal(signal.SIGTERM)
    assert process.finish()[0] == 0
