"""The manhole over telnet, with a client on a real socket: the login prompt, both shells, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest
from manhole_support import TelnetClient, running_manhole

from support import wait_until_async
from tapster.manhole import ManholeService, manhole_endpoint


class Service:
    def __init__(self) -> None:
        self.state = "running"

    async def fetch(self) -> str:
        await asyncio.sleep(0)
        return "fetched"

    def __repr__(self) -> str:
        return f"<Service {self.state}>"


def test_login_and_evaluate(tmp_path: Path):
    """Username and password prompts, then `service`, top-level await, a traceback, and the session goes on."""

    async def main() -> None:
        async with running_manhole(tmp_path, ssh=False, namespace={"service": Service()}) as manhole:
            client = await TelnetClient.open(manhole.telnet.port)
            banner = await client.login()
            assert "Names: app, reload, service" in banner
            client.send("service\r\n")
            assert (await client.read_until(">>> ")).startswith("<Service running>\n")
            client.send("await service.fetch()\r\n")
            assert "'fetched'" in await client.read_until(">>> ")
            client.send("service.nope\r\n")
            error = await client.read_until(">>> ")
            assert "Traceback (most recent call last):" in error
            assert "AttributeError" in error
            client.send("for i in range(2):\r\n    print('line', i)\r\n\r\n")
            assert "line 0\nline 1\n" in await client.read_until("line 1\n>>> ")
            client.send("exit()\r\n")
            await client.read_to_end()
            client.close()

    asyncio.run(main())


def test_password_is_not_echoed_by_the_client(tmp_path: Path):
    """The server announces WILL ECHO for the password (the client stops echoing) and WONT ECHO after."""

    async def main() -> None:
        async with running_manhole(tmp_path, ssh=False) as manhole:
            client = await TelnetClient.open(manhole.telnet.port)
            await client.login()
            assert client.options[:2] == [(253, 24), (253, 31)]  # DO TTYPE, DO NAWS
            assert (251, 1) in client.options and (252, 1) in client.options  # WILL ECHO, then WONT ECHO
            assert client.options.index((251, 1)) < client.options.index((252, 1))
            client.close()

    asyncio.run(main())


def test_wrong_password_and_unknown_user(tmp_path: Path, caplog):
    """Bad logins get 'Login incorrect.' and no shell; three failures close the connection."""

    async def main() -> None:
        async with running_manhole(tmp_path, ssh=False) as manhole:
            client = await TelnetClient.open(manhole.telnet.port)
            for username, password in (("admin", "wrong-guess"), ("nobody", "secret"), ("admin", "")):
                await client.read_until("Username: ")
                client.send(f"{username}\r\n")
                await client.read_until("Password: ")
                client.send(f"{password}\r\n")
                assert "Login incorrect." in await client.read_until("Login incorrect.")
            rest = await client.read_to_end()
            assert "Too many failed logins." in rest
            assert ">>> " not in rest
            assert not manhole._shells
            client = await TelnetClient.open(manhole.telnet.port)
            await client.login()
            client.close()

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    assert "login failed for user 'nobody'" in caplog.text
    assert "wrong-guess" not in caplog.text


def test_terminal_clients_get_the_coloured_repl(tmp_path: Path):
    """A client that names its terminal gets the prompt_toolkit REPL in character mode, with colours."""

    async def main() -> None:
        async with running_manhole(tmp_path, ssh=False) as manhole:
            client = await TelnetClient.open(manhole.telnet.port, terminal="XTERM")
            await client.login()
            assert b"\x1b[0;32;1m>>> " in client.raw
            assert (251, 3) in client.options  # WILL SGA: character mode
            client.send("6 * 7\r\n")
            await client.read_until("42")
            client.send("\x04")
            await client.read_to_end()

    asyncio.run(main())


def test_megabytes_of_output(tmp_path: Path):
    """A statement printing megabytes reaches the client whole; the session then goes on."""

    async def main() -> None:
        async with running_manhole(tmp_path, ssh=False) as manhole:
            client = await TelnetClient.open(manhole.telnet.port)
            await client.login()
            client.send("print('y' * 6_000_000)\r\n")
            text = await client.read_until("\n>>> ", timeout=30)
            assert text.count("y") == 6_000_000
            client.send("'after'\r\n")
            assert "'after'" in await client.read_until(">>> ")
            client.close()

    asyncio.run(main())


def test_disconnects_leave_the_server_healthy(tmp_path: Path, caplog):
    """Clients that leave during login, at the prompt, or mid-statement leave nothing behind and log no error."""

    async def main() -> None:
        async with running_manhole(tmp_path, ssh=False) as manhole:
            port = manhole.telnet.port
            client = await TelnetClient.open(port)
            await client.read_until("Username: ")
            client.send("adm")
            client.close()

            client = await TelnetClient.open(port)
            await client.read_until("Username: ")
            client.send("admin\r\n")
            await client.read_until("Password: ")
            client.writer.write_eof()  # half-close at the password prompt

            client = await TelnetClient.open(port, terminal="xterm")
            await client.login()
            client.send("1 + ")
            client.close()

            client = await TelnetClient.open(port)
            await client.login()
            client.send("import asyncio\r\nawait asyncio.sleep(3600)\r\n")
            await client.read_until(">>> ")
            client.close()

            await wait_until_async(lambda: not manhole._shells, 10, "every broken session ended")
            client = await TelnetClient.open(port)
            await client.login()
            client.send("'healthy'\r\n")
            assert "'healthy'" in await client.read_until(">>> ")
            client.close()

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_flood_before_login_is_cut_off(tmp_path: Path):
    """A client sending megabytes before logging in is disconnected instead of buffered."""

    async def main() -> None:
        async with running_manhole(tmp_path, ssh=False) as manhole:
            client = await TelnetClient.open(manhole.telnet.port)
            await client.read_until("Username: ")
            client.send("a" * 200_000)
            rest = ""
            with contextlib.suppress(ConnectionError):  # closed with unread data: a reset is likely
                await client.writer.drain()
                rest = await client.read_to_end()
            assert ">>> " not in rest
            assert not manhole._shells
            assert manhole.telnet.open_connections == 0

    asyncio.run(main())


def test_interrupt_command_stops_a_statement(tmp_path: Path):
    """The telnet Interrupt Process command (what a client sends for Ctrl-C in line mode) cancels a statement."""

    async def main() -> None:
        async with running_manhole(tmp_path, ssh=False) as manhole:
            client = await TelnetClient.open(manhole.telnet.port)
            await client.login()
            client.send("import asyncio; print('started'); await asyncio.sleep(3600)\r\n")
            await client.read_until("started\n")
            client.writer.write(bytes((255, 244)))  # IAC IP
            assert "KeyboardInterrupt" in await client.read_until(">>> ")
            client.close()

    asyncio.run(main())


def test_anonymous_skips_the_login(tmp_path: Path):
    """With the anonymous checker there is no login prompt."""
    from tapster.auth import AnonymousChecker

    async def main() -> None:
        async with running_manhole(tmp_path, ssh=False, checkers=[AnonymousChecker()]) as manhole:
            client = await TelnetClient.open(manhole.telnet.port)
            text = await client.read_until(">>> ")
            assert "Username:" not in text
            client.close()

    asyncio.run(main())


def test_bare_port_means_loopback():
    """A bare port binds 127.0.0.1; any other endpoint string is used as given."""
    assert manhole_endpoint(2222) == "tcp:2222:interface=127.0.0.1"
    assert manhole_endpoint("2222") == "tcp:2222:interface=127.0.0.1"
    assert manhole_endpoint("tcp:2222:interface=0.0.0.0") == "tcp:2222:interface=0.0.0.0"
    assert manhole_endpoint("unix:/run/m.sock") == "unix:/run/m.sock"


@pytest.mark.parametrize(
    ("endpoint", "warned"),
    [
        ("tcp:0:interface=0.0.0.0", True),
        ("tcp:0", True),
        ("tcp6:0:interface=\\:\\:1", False),
        ("0", False),
        ("tcp:0:interface=127.0.0.2", False),
        ("unix:/tmp/manhole-test.sock", False),
    ],
)
def test_telnet_off_loopback_warns(endpoint: str, warned: bool, caplog, capsys):
    """A telnet manhole reachable from the network says passwords travel in clear text: on stderr when made,
    and in the log when it starts (check_exposure runs first in privileged_start; nothing is bound here)."""
    from tapster.auth import InMemoryChecker

    manhole = ManholeService({}, telnet=endpoint, checkers=[InMemoryChecker({"a": "b"})])
    assert ("cross the network in clear text" in capsys.readouterr().err) is warned
    manhole.check_exposure()
    assert ("cross the network in clear text" in caplog.text) is warned
