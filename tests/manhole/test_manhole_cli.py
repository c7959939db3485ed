"""The manhole in real tapster processes: a tac file, `tapster manhole` with OpenSSH, and the echo example."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import asyncssh
import pytest
from manhole_support import TelnetClient, plain, ssh_connect

from conftest import EXAMPLES, TapsterProcess, run_tapster

TAC = """\
from tapster import Application
from tapster.auth import InMemoryChecker
from tapster.manhole import ManholeService

application = Application("mh")
ManholeService(
    {"answer": 42},
    ssh=0,
    telnet=0,
    checkers=[InMemoryChecker({"admin": "secret"})],
    host_key="host_key",
    failure_delay=0.05,
).set_parent(application)
"""


def test_tac_file_manhole_over_ssh_and_telnet(tapster: type[TapsterProcess], tmp_path: Path):
    """A manhole built in a tac file serves SSH and telnet on the ports it logs, and stops cleanly."""
    (tmp_path / "manhole.tac").write_text(TAC)
    process = tapster(["-n", "-y", "manhole.tac"])
    ssh_port = process.port("ManholeSSH")
    telnet_port = process.port("ManholeTelnet")

    async def main() -> None:
        async with await ssh_connect(ssh_port) as conn:
            assert (await conn.run("answer, app.name", check=False)).stdout == "(42, 'mh')\n"
        with pytest.raises(asyncssh.PermissionDenied):
            await ssh_connect(ssh_port, password="nope")
        client = await TelnetClient.open(telnet_port)
        await client.login()
        client.send("app\r\n")
        assert "<Application 'mh'>" in await client.read_until(">>> ")
        client.close()

    asyncio.run(main())
    process.signal(signal.SIGTERM)
    status, out, err = process.finish()
    assert status == 0, err
    assert "manhole: 'admin' logged in over SSH" in out
    assert "login failed for user 'admin'" in out
    assert "nope" not in out
    assert (tmp_path / "host_key").stat().st_mode & 0o777 == 0o600


def _openssh_session(
    port: int, tmp_path: Path, script: list[tuple[str, bytes | Callable[[], None]]]
) -> tuple[bytes, int]:
    """Drive a real OpenSSH client (ssh -tt, password from SSH_ASKPASS): for each (wait-for, action) pair, wait
    until the plain output shows the text, then send the bytes (or call the action). Returns all raw output and
    ssh's exit status."""
    askpass = tmp_path / "askpass.sh"
    askpass.write_text("#!/bin/sh\necho secret\n")
    askpass.chmod(0o700)
    env = {
        **os.environ,
        "SSH_ASKPASS": str(askpass),
        "SSH_ASKPASS_REQUIRE": "force",
        "DISPLAY": ":0",
    }
    command = [
        "ssh", "-tt", "-F", "/dev/null",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        "-o", "PreferredAuthentications=keyboard-interactive,password", "-o", "NumberOfPasswordPrompts=1",
        "-p", str(port), "admin@127.0.0.1",
    ]  # fmt: skip
    ssh = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # no controlling terminal: ssh asks SSH_ASKPASS for the password
    )
    chunks: queue.Queue[bytes] = queue.Queue()

    def pump() -> None:
        assert ssh.stdout is not None
        while chunk := os.read(ssh.stdout.fileno(), 65536):
            chunks.put(chunk)
        chunks.put(b"")

    threading.Thread(target=pump, daemon=True).start()
    output = b""
    try:
        for wanted, reply in script:
            deadline = time.monotonic() + 15
            while wanted not in plain(output):
                try:
                    chunk = chunks.get(timeout=max(deadline - time.monotonic(), 0.01))
                except queue.Empty:
                    pytest.fail(f"no {wanted!r} from ssh within 15 s; got {plain(output)!r}")
                if not chunk:
                    pytest.fail(f"ssh ended before {wanted!r}: {plain(output)!r}")
                output += chunk
            if callable(reply):
                reply()
                continue
            assert ssh.stdin is not None
            ssh.stdin.write(reply)
            ssh.stdin.flush()
        ssh.wait(timeout=15)
        while True:
            try:
                chunk = chunks.get(timeout=5)
            except queue.Empty:
                break
            if not chunk:
                break
            output += chunk
    finally:
        if ssh.poll() is None:
            ssh.kill()
            ssh.wait()
    return output, ssh.returncode


@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH's ssh client is not installed")
def test_manhole_plugin_accepts_openssh(tapster: type[TapsterProcess], tmp_path: Path):
    """`tapster manhole` serves OpenSSH a green prompt with `app`; SIGINT at the prompt still stops it."""
    process = tapster(["-n", "manhole", "--ssh", "0", "--auth", "memory:admin:secret"])
    port = process.port("ManholeSSH")
    output, _ = _openssh_session(
        port,
        tmp_path,
        [
            (">>> ", b"app\r"),
            ("<Application 'manhole'>", b"import asyncio; await asyncio.sleep(0, 'awaited')\r"),
            ("\n'awaited'\n", lambda: process.signal(signal.SIGINT)),
            ("manhole session closed", b""),
        ],
    )
    assert re.search(rb"\x1b\[[0-9;]*32[0-9;]*m>>> ", output), output[:2000]  # a green prompt
    assert "<Application 'manhole'>" in plain(output)
    assert "The server is stopping" in plain(output)
    assert "Permission denied" not in plain(output)
    server_status, out, err = process.finish()
    assert server_status == 0, err
    assert "manhole: 'admin' logged in over SSH" in out
    assert "Server Shut Down." in out
    assert (tmp_path / "manhole_host_key").exists()  # the default host key file, in the launch directory


def test_manhole_plugin_namespace(tapster: type[TapsterProcess], tmp_path: Path):
    """--namespace MODULE:ATTR exposes a dict of names (the working directory is importable)."""
    (tmp_path / "debugnames.py").write_text("names = {'greeting': 'hello from a module'}\n")
    process = tapster(
        ["-n", "manhole", "--ssh", "tcp:0:interface=127.0.0.1", "--auth", "anonymous", "--namespace",
         "debugnames:names", "--host-key", str(tmp_path / "key")]
    )  # fmt: skip
    port = process.port("ManholeSSH")

    async def main() -> str:
        async with await ssh_connect(port, username="anyone", password=None) as conn:
            return str(
                (await conn.run("greeting, sorted(n for n in globals() if not n.startswith('_'))")).stdout
            )

    assert asyncio.run(main()) == "('hello from a module', ['app', 'greeting', 'reload'])\n"
    process.kill()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ssh", "0"], "no --auth given: nobody could log in"),
        (["--auth", "memory:a:b"], "give --ssh PORT, --telnet PORT, or both"),
        (["--ssh", "0", "--auth", "nope:x"], "unknown checker type (valid types: anonymous, file, memory"),
        (["--ssh", "0", "--auth", "file:missing.txt"], "/missing.txt: no such file"),
        (["--ssh", "bogus:1", "--auth", "anonymous"], "--ssh: invalid endpoint 'bogus:1'"),
        (
            ["--ssh", "0", "--auth", "anonymous", "--namespace", "nosuchmodule:x"],
            "cannot import nosuchmodule",
        ),
        (["--ssh", "0", "--auth", "anonymous", "--namespace", "os:sep"], "is a str, not a dict of names"),
        (["--telnet", "0", "--auth", "sshkey"], "--telnet needs a password checker"),
    ],
)
def test_manhole_plugin_usage_errors(tmp_path: Path, args: list[str], message: str):
    """Bad manhole command lines are usage errors (exit 2) saying what is wrong, with no traceback."""
    result = run_tapster(["manhole", *args], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_manhole_plugin_auth_help(tmp_path: Path):
    """`tapster manhole --help-auth` lists the checker types; --help-auth-type shows one; both exit 0."""
    result = run_tapster(["manhole", "--help-auth"], cwd=tmp_path)
    assert result.returncode == 0
    assert "memory:USER:PASS[:USER:PASS...]" in result.stdout and "sshkey[:DIR]" in result.stdout
    result = run_tapster(["manhole", "--help-auth-type", "passwd"], cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: --auth passwd:PATH")


def test_plugin_modules_import_no_optional_dependency(tmp_path: Path):
    """The auth, manhole and plugin modules import no optional dependency (asyncssh, aiohttp, ...)."""
    shutil.copytree(EXAMPLES / "tapster", tmp_path / "tapster", dirs_exist_ok=True)
    code = (
        "import importlib.util, sys\n"
        "import tapster.auth, tapster.manhole\n"
        "import tapster.plugins.manhole\n"
        "spec = importlib.util.spec_from_file_location('echo_example', 'tapster/plugins/echo_plugin.py')\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "heavy = {'asyncssh', 'prompt_toolkit', 'ptpython', 'aiohttp', 'bcrypt', 'argon2', 'passlib', 'jedi'}\n"
        "print(sorted(heavy & {name.partition('.')[0] for name in sys.modules}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


@pytest.fixture
def echo_root(tmp_path: Path) -> Path:
    """A project root holding a copy of the echo example plugin (caches and state files stay in tmp)."""
    folder = tmp_path / "tapster" / "plugins"
    folder.mkdir(parents=True)
    shutil.copy(EXAMPLES / "tapster" / "plugins" / "echo_plugin.py", folder)
    return tmp_path


def test_echo_example(tapster: type[TapsterProcess], echo_root: Path):
    """Seed 000's echo plugin: HTTP /echo, and a manhole where `service` is evaluated, awaited, reloaded."""
    process = tapster(
        ["-n", "-o", "echo", "--port", "0", "--service-port", "0", "--ssh-port", "0",
         "--auth", "memory:admin:secret", "--host-key", str(echo_root / "key")],
        cwd=echo_root,
    )  # fmt: skip
    http_port = process.port("EchoHTTP")
    telnet_port = process.port("ManholeTelnet")
    ssh_port = process.port("ManholeSSH")
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/echo", data=b"hello echo")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.read() == b"hello echo"

    async def main() -> None:
        client = await TelnetClient.open(telnet_port)
        banner = await client.login()
        assert "Names: app, reload, service" in banner
        client.send("service\r\n")
        assert "<EchoService 'echo': 1 request(s)>" in await client.read_until(">>> ")
        client.send("await service.echo(b'from the manhole')\r\n")
        assert "b'from the manhole'" in await client.read_until(">>> ")
        client.send("old = type(service); report = reload(type(service).__module__); report\r\n")
        text = await client.read_until(">>> ")
        assert "reloaded " in text and "instance(s) moved" in text, text
        client.send("type(service) is not old, type(service).__name__, service.requests\r\n")
        assert "(True, 'EchoService', 2)" in await client.read_until(">>> ")
        client.close()

        async with await ssh_connect(ssh_port) as conn:
            assert (await conn.run("service.requests", check=False)).stdout == "2\n"
        with pytest.raises(asyncssh.PermissionDenied):
            await ssh_connect(ssh_port, password="wrong")

    asyncio.run(main())
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/echo?after-reload", timeout=10) as response:
        assert response.read() == b"after-reload"
    process.signal(signal.SIGTERM)
    status, _, err = process.finish()
    assert status == 0, err


def test_echo_example_without_auth_has_no_manhole(tapster: type[TapsterProcess], echo_root: Path):
    """Without --auth the echo plugin serves HTTP only and says the manhole is off."""
    process = tapster(["-n", "-o", "echo", "--port", "0"], cwd=echo_root)
    process.port("EchoHTTP")
    process.wait_for("no --auth given, so no manhole")
    assert not any("Manhole" in line for line in process.lines)
    process.kill()
