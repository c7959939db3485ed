"""Dropping privileges in a real server: bind port 80 as root, then serve as nobody (needs root, as here)."""

from __future__ import annotations

import os
import signal
import socket
import textwrap
from pathlib import Path

import pytest

from conftest import connect

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")

PRIV_TAC = textwrap.dedent("""
    import asyncio, logging, os
    from tapster import Application, Service
    from tapster.services import StreamServer

    class Probe(Service):
        async def start(self):
            await super().start()
            ids = (os.getuid(), os.geteuid(), os.getgid(), os.getgroups())
            try:
                os.setuid(0)
                regained = "REGAINED ROOT"
            except PermissionError:
                regained = "setuid(0) refused"
            logging.getLogger("probe").info("uid=%d euid=%d gid=%d groups=%s; %s", *ids, regained)

    class Hello(asyncio.Protocol):
        def connection_made(self, transport):
            transport.write(b"hi")
            transport.close()

    application = Application("priv", uid=UID, gid=GID)
    StreamServer("tcp:PORT:interface=127.0.0.1", Hello).set_parent(application)
    Probe().set_parent(application)
""")


def low_port_free(port: int = 80) -> bool:
    with socket.socket() as sock:
        # as the server will: a connection the last run closed may hold the port in TIME_WAIT for a minute
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def write_tac(tmp_path: Path, port: int, uid: str = "None", gid: str = "None") -> str:
    text = PRIV_TAC.replace("UID", uid).replace("GID", gid).replace("PORT", str(port))
    (tmp_path / "priv.tac").write_text(text)
    return "priv.tac"


def test_binds_port_80_then_runs_as_nobody(tapster, tmp_path: Path) -> None:
    """privileged_start binds port 80 as root; after the drop the process is nobody and cannot regain root."""
    if not low_port_free():
        pytest.skip("port 80 on 127.0.0.1 is taken on this machine")
    proc = tapster(["-n", "-y", write_tac(tmp_path, 80), "-u", "nobody", "--pidfile="])
    line = proc.wait_for(r"uid=\d+ euid=\d+ .*; .*").group(0)
    assert line.startswith("uid=65534 euid=65534 gid=65534 groups=[65534]; setuid(0) refused"), line
    with connect(80) as sock:
        assert sock.recv(2) == b"hi"
    proc.signal(signal.SIGTERM)
    status, out, err = proc.finish()
    assert status == 0, (out, err)


def test_application_uid_gid_are_used_without_options(tapster, tmp_path: Path) -> None:
    """Application(uid=, gid=) switches users when -u/-g are not given."""
    proc = tapster(["-n", "-y", write_tac(tmp_path, 0, '"nobody"', '"nogroup"'), "--pidfile="])
    line = proc.wait_for(r"uid=\d+ euid=\d+ .*").group(0)
    assert line.startswith("uid=65534 euid=65534 gid=65534"), line
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def test_euid_switches_only_the_effective_ids(tapster, tmp_path: Path) -> None:
    """--euid keeps the real uid 0 and switches the effective one (so setuid(0) works again)."""
    proc = tapster(["-n", "-y", write_tac(tmp_path, 0), "-u", "nobody", "--euid", "--pidfile="])
    line = proc.wait_for(r"uid=\d+ euid=\d+ .*").group(0)
    assert line.startswith("uid=0 euid=65534"), line
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def test_pid_file_in_root_owned_dir_is_still_cleaned_up_or_reported(tapster, tmp_path: Path) -> None:
    """After dropping to nobody, a pid file the process can no longer remove is emptied and the log says why."""
    tmp_path.chmod(0o755)
    proc = tapster(["-n", "-y", write_tac(tmp_path, 0), "-u", "nobody"])
    proc.wait_for(r"uid=65534")
    proc.signal(signal.SIGTERM)
    status, out, err = proc.finish()
    assert status == 0, (out, err)
    pidfile = tmp_path / "tapster.pid"
    assert not pidfile.exists() or pidfile.read_text() == ""
    assert not pidfile.exists() or "cannot remove pid file" in out
