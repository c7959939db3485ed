"""The manhole over SSH, with a real asyncssh client on loopback: logins, the shells, bad input."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from pathlib import Path

import asyncssh
import pytest
from manhole_support import read_until, running_manhole, ssh_connect

from support import wait_until_async
from tapster.auth import AnonymousChecker, InMemoryChecker, SSHKeyChecker


class Widget:
    """A live object for the namespace."""

    def __init__(self) -> None:
        self.hits = 0

    async def poke(self) -> str:
        await asyncio.sleep(0)
        self.hits += 1
        return f"poked {self.hits}"


def test_exec_evaluates_in_the_live_server(tmp_path: Path):
    """An exec request runs its code in the server's loop: namespace names, app, await; exit status 0."""
    widget = Widget()

    async def main() -> None:
        async with (
            running_manhole(tmp_path, telnet=False, namespace={"service": widget}) as manhole,
            await ssh_connect(manhole.ssh.port) as conn,
        ):
            result = await conn.run("service is not None, app.name, reload.__name__", check=False)
            assert result.stdout == "(True, 'testapp', 'reload')\n"
            assert result.exit_status == 0
            result = await conn.run("await service.poke()", check=False)
            assert result.stdout == "'poked 1'\n"
        assert widget.hits == 1

    asyncio.run(main())


def test_exec_error_shows_traceback_and_fails(tmp_path: Path):
    """A command that raises shows its traceback on stderr and exits 1; the next command works."""

    async def main() -> None:
        async with (
            running_manhole(tmp_path, telnet=False) as manhole,
            await ssh_connect(manhole.ssh.port) as conn,
        ):
            result = await conn.run("{}['missing']", check=False)
            assert result.exit_status == 1
            assert "Traceback (most recent call last):" in result.stderr
            assert "KeyError: 'missing'" in result.stderr
            assert (await conn.run("6 * 7", check=False)).stdout == "42\n"

    asyncio.run(main())


def test_piped_script_without_terminal(tmp_path: Path):
    """Without a terminal, piped statements run in order: results on stdout, prompts and errors on stderr."""
    script = (
        "import asyncio\n"
        "x = await asyncio.sleep(0, 21)\n"
        "def double(n):\n"
        "    return n * 2\n"
        "\n"
        "1 / 0\n"
        "print('after error')\n"
        "double(x)\n"
    )

    async def main() -> None:
        async with (
            running_manhole(tmp_path, telnet=False) as manhole,
            await ssh_connect(manhole.ssh.port) as conn,
        ):
            result = await conn.run(input=script, check=False)
            assert result.stdout == "after error\n42\n"
            assert "ZeroDivisionError" in result.stderr
            assert ">>> " in result.stderr and "... " in result.stderr
            assert "Names: app, reload" in result.stderr
            assert result.exit_status == 0

    asyncio.run(main())


def test_terminal_session_has_a_coloured_prompt(tmp_path: Path):
    """With a terminal the REPL is prompt_toolkit's: coloured prompt, await, Tab completion, blocks, Ctrl-D."""

    async def main() -> None:
        async with (
            running_manhole(tmp_path, telnet=False, namespace={"widget": Widget()}) as manhole,
            await ssh_connect(manhole.ssh.port) as conn,
        ):
            process = await conn.create_process(
                term_type="xterm-256color", term_size=(100, 30), encoding=None
            )
            first = b""
            while b">>> " not in first:
                first += await asyncio.wait_for(process.stdout.read(65536), 10)
            assert b"\x1b[0;32;1m>>> " in first  # bold green, in ANSI codes
            process.stdin.write(b"app\r")
            assert "<Application 'testapp'>" in await read_until(process.stdout, "<Application 'testapp'>")
            process.stdin.write(b"await widget.poke()\r")
            await read_until(process.stdout, "'poked 1'")
            process.stdin.write(b"widget.hi\t")  # Tab completes from the live object
            await read_until(process.stdout, "ts")  # the completion, drawn after what was typed
            process.stdin.write(b"\r")
            await read_until(process.stdout, "\n1\n")
            process.stdin.write(b"def f(a):\r")  # a block: Enter indents, a blank line ends it
            process.stdin.write(b"return a + 1\r\r")
            process.stdin.write(b"f(41)\r")
            await read_until(process.stdout, "42")
            process.stdin.write(b"\x04")
            await asyncio.wait_for(process.wait(), 10)
            assert process.exit_status == 0

    asyncio.run(main())


def test_ctrl_c_interrupts_an_awaiting_statement(tmp_path: Path):
    """Ctrl-C while a statement awaits cancels it (KeyboardInterrupt shown) and the prompt comes back."""

    async def main() -> None:
        async with (
            running_manhole(tmp_path, telnet=False) as manhole,
            await ssh_connect(manhole.ssh.port) as conn,
        ):
            process = await conn.create_process(term_type="xterm", encoding=None)
            await read_until(process.stdout, ">>> ")
            process.stdin.write(b"import asyncio; print('started'); await asyncio.sleep(3600)\r")
            await read_until(
                process.stdout, "\nstarted\n"
            )  # the statement runs: output before an await is sent
            process.stdin.write(b"\x03")
            await read_until(process.stdout, "KeyboardInterrupt")
            process.stdin.write(b"'alive'\r")
            await read_until(process.stdout, "'alive'")
            process.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("username", "password"), [("admin", "wrong-guess"), ("nobody", "secret"), ("admin", "")]
)
def test_bad_passwords_get_no_shell(tmp_path: Path, username: str, password: str, caplog):
    """A wrong password or an unknown user is refused; the failure is logged without the password."""

    async def main() -> None:
        async with running_manhole(tmp_path, telnet=False) as manhole:
            with pytest.raises(asyncssh.PermissionDenied):
                await ssh_connect(manhole.ssh.port, username=username, password=password)
            assert not manhole._shells

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    assert f"login failed for user {username!r}" in caplog.text
    if password:
        assert password not in caplog.text


def test_public_keys(tmp_path: Path):
    """A key listed in DIR/USER.keys logs in; a key that is not listed gets no shell."""
    good = asyncssh.generate_private_key("ssh-ed25519")
    other = asyncssh.generate_private_key("ssh-ed25519")
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "admin.keys").write_bytes(good.export_public_key())

    async def main() -> None:
        async with (
            running_manhole(tmp_path, telnet=False, checkers=[SSHKeyChecker(keys)]) as manhole,
            await ssh_connect(manhole.ssh.port, password=None, client_keys=[good]) as conn,
        ):
            assert (await conn.run("'key login'", check=False)).stdout == "'key login'\n"
            with pytest.raises(asyncssh.PermissionDenied):
                await ssh_connect(manhole.ssh.port, password=None, client_keys=[other])
            with pytest.raises(asyncssh.PermissionDenied):
                await ssh_connect(manhole.ssh.port, username="root", password=None, client_keys=[good])

    asyncio.run(main())


def test_anonymous_needs_no_credentials(tmp_path: Path):
    """With the anonymous checker, SSH asks for no authentication at all."""

    async def main() -> None:
        async with (
            running_manhole(tmp_path, telnet=False, checkers=[AnonymousChecker()]) as manhole,
            await ssh_connect(manhole.ssh.port, username="whoever", password=None) as conn,
        ):
            assert (await conn.run("1", check=False)).stdout == "1\n"

    asyncio.run(main())


def test_disconnect_mid_prompt_leaves_the_server_healthy(tmp_path: Path, caplog):
    """Clients vanishing at the prompt, mid-statement or mid-handshake leave no session and no error."""

    async def main() -> None:
        async with running_manhole(tmp_path, telnet=False) as manhole:
            port = manhole.ssh.port
            conn = await ssh_connect(port)
            process = await conn.create_process(term_type="xterm", encoding=None)
            await read_until(process.stdout, ">>> ")
            process.stdin.write(b"1 + ")  # half a line typed
            conn.abort()

            conn = await ssh_connect(port)
            process = await conn.create_process(term_type="xterm", encoding=None)
            await read_until(process.stdout, ">>> ")
            process.stdin.write(b"import asyncio; await asyncio.sleep(3600)\r")
            await read_until(process.stdout, "sleep(3600)")
            conn.abort()

            conn = await ssh_connect(port)
            process = await conn.create_process(encoding=None)  # plain console
            process.stdin.write(b"import asyncio\n")
            conn.abort()

            _reader, writer = await asyncio.open_connection("127.0.0.1", port)  # not even SSH
            writer.write(b"SSH-2.0-half\r\n")
            writer.close()

            await wait_until_async(lambda: not manhole._shells, 10, "every broken session ended")
            async with await ssh_connect(port) as conn:
                assert (await conn.run("'healthy'", check=False)).stdout == "'healthy'\n"

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_megabytes_of_output(tmp_path: Path):
    """A statement printing megabytes (in one print or many) delivers them all and the server goes on."""

    async def main() -> None:
        async with (
            running_manhole(tmp_path, telnet=False) as manhole,
            await ssh_connect(manhole.ssh.port) as conn,
        ):
            result = await conn.run("print('x' * 8_000_000)", check=False)
            assert len(result.stdout) == 8_000_001
            result = await conn.run("for i in range(200_000):\n    print(i)\n", check=False)
            lines = result.stdout.splitlines()
            assert len(lines) == 200_000 and lines[-1] == "199999"
            assert (await conn.run("'next'", check=False)).stdout == "'next'\n"

    asyncio.run(main())


def test_concurrent_sessions_keep_their_output_apart(tmp_path: Path):
    """Two sessions running at once each get only their own prints."""
    code = "import asyncio\nfor i in range(5):\n    print({tag!r}, i)\n    await asyncio.sleep(0.01)\n"

    async def main() -> None:
        async with (
            running_manhole(tmp_path, telnet=False) as manhole,
            await ssh_connect(manhole.ssh.port) as one,
            await ssh_connect(manhole.ssh.port) as two,
        ):
            first, second = await asyncio.gather(
                one.run(code.format(tag="one"), check=False), two.run(code.format(tag="two"), check=False)
            )
            assert first.stdout == "".join(f"one {i}\n" for i in range(5))
            assert second.stdout == "".join(f"two {i}\n" for i in range(5))

    asyncio.run(main())


def test_stopping_closes_open_sessions(tmp_path: Path):
    """Stopping the manhole tells open sessions and closes them, without waiting on the clients."""

    async def main() -> None:
        async with running_manhole(tmp_path, telnet=False) as manhole:
            conn = await ssh_connect(manhole.ssh.port)
            process = await conn.create_process(term_type="xterm", encoding=None)
            await read_until(process.stdout, ">>> ")
            app = manhole.root()
            await asyncio.wait_for(app.stop(), 10)
            rest = await read_until(process.stdout, "manhole session closed")
            assert "The server is stopping" in rest
            await asyncio.wait_for(conn.wait_closed(), 10)
            await app.start()  # so the context manager's stop has something to stop

    asyncio.run(main())


def test_host_key_is_created_private_and_reused(tmp_path: Path):
    """The host key file is made with mode 0600 on first start and the same key is served after a restart."""

    async def fingerprint() -> str:
        async with (
            running_manhole(tmp_path, telnet=False) as manhole,
            await ssh_connect(manhole.ssh.port) as conn,
        ):
            return str(conn.get_server_host_key().get_fingerprint())

    first = asyncio.run(fingerprint())
    key_file = tmp_path / "host_key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert asyncio.run(fingerprint()) == first


def test_bad_host_key_file_is_a_clear_error(tmp_path: Path):
    """A host key file that holds no key stops the start with an error naming the file."""
    from tapster.errors import StartupError

    (tmp_path / "host_key").write_text("not a key\n")

    async def main() -> None:
        async with running_manhole(tmp_path, telnet=False):
            pass

    with pytest.raises(StartupError, match=f"cannot load SSH host key {tmp_path}/host_key"):
        asyncio.run(main())


def test_reload_from_a_session(tmp_path: Path, monkeypatch):
    """reload(module) called in the shell moves live objects to the module's new code."""
    (tmp_path / "livecode_mod.py").write_text("class Thing:\n    def what(self):\n        return 'old'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import livecode_mod  # type: ignore[import-not-found]

    thing = livecode_mod.Thing()

    async def main() -> None:
        async with (
            running_manhole(tmp_path, telnet=False, namespace={"thing": thing}) as manhole,
            await ssh_connect(manhole.ssh.port) as conn,
        ):
            (tmp_path / "livecode_mod.py").write_text(
                "class Thing:\n    def what(self):\n        return 'new!'\n"
            )
            result = await conn.run("reload('livecode_mod')", check=False)
            assert result.stdout.startswith("reloaded livecode_mod: 1 class(es), 1 instance(s) moved")
            assert (await conn.run("thing.what()", check=False)).stdout == "'new!'\n"

    asyncio.run(main())
    assert thing.what() == "new!"


def test_constructor_checks():
    """A manhole needs a listener and a checker; telnet needs a password checker."""
    from tapster.manhole import ManholeService

    with pytest.raises(ValueError, match="needs ssh=, telnet= or both"):
        ManholeService({}, checkers=[InMemoryChecker({"a": "b"})])
    with pytest.raises(ValueError, match="no credential checkers"):
        ManholeService({}, ssh=0)
    with pytest.raises(ValueError, match="telnet logins need a password checker"):
        ManholeService({}, telnet=0, checkers=[SSHKeyChecker()])


def test_manhole_survives_a_saved_state(tmp_path: Path):
    """A pickled manhole keeps namespace and checkers, drops live parts, and serves again when loaded."""
    import pickle

    from tapster import Application
    from tapster.manhole import ManholeService

    async def main() -> None:
        app = Application("saved")
        ManholeService(
            {"setting": [1, 2]},
            ssh="tcp:0:interface=127.0.0.1",
            checkers=[InMemoryChecker({"admin": "secret"})],
            host_key=tmp_path / "key",
        ).set_parent(app)
        await app.privileged_start()
        await app.start()
        data = pickle.dumps(app)
        await app.stop()
        restored = pickle.loads(data)
        await restored.privileged_start()
        await restored.start()
        try:
            async with await ssh_connect(restored["manhole"].ssh.port) as conn:
                assert (await conn.run("setting, app.name", check=False)).stdout == "([1, 2], 'saved')\n"
        finally:
            await restored.stop()

    asyncio.run(main())
