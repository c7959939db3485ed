"""`tapster ftp` on the command line: the brief's one-liner works, bad options are one line and exit 2, a taken
port is one line and exit 1, a missing aioftp names the extra, and the help lists every option."""

from __future__ import annotations

import ftplib
import signal
from pathlib import Path

import pytest
from ftp_support import LOOPBACK, fetch, login

from conftest import TapsterProcess, run_tapster
from support import one_line, taken_port


def test_anonymous_one_liner_serves_the_current_directory(
    tapster: type[TapsterProcess], tmp_path: Path
) -> None:
    """`tapster -n ftp --root . --auth anonymous`: anonymous reads the launch directory, cannot write to it."""
    (tmp_path / "file.txt").write_bytes(b"from the cli\n")
    process = tapster(
        ["-n", "-o", "--pidfile=", "ftp", "--root", ".", "--auth", "anonymous", "--listen", LOOPBACK]
    )
    port = process.port("FTPServer")
    client = ftplib.FTP()
    client.connect("127.0.0.1", port, timeout=15)
    client.login()  # ftplib's default: anonymous
    assert fetch(client, "file.txt") == b"from the cli\n"
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        client.mkd("new")
    client.quit()
    process.signal(signal.SIGTERM)
    assert process.finish()[0] == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "give --root DIR"),
        (["--root", "no-such-dir", "--auth", "anonymous"], "--root 'no-such-dir': not a directory"),
        (["--root", "."], "no --auth given"),
        (["--root", ".", "--auth", "bogus:x"], "bogus"),
        (["--root", ".", "--auth", "anonymous", "--passive-ports", "60000-50000"], "--passive-ports"),
        (["--root", ".", "--auth", "anonymous", "--passive-ports", "80-90"], "1024 <= FIRST"),
        (["--root", ".", "--auth", "anonymous", "--passive-ports", "many"], "expected FIRST-LAST"),
        (["--root", ".", "--auth", "anonymous", "--passive-address", "::1"], "expected an IPv4 address"),
        (["--root", ".", "--auth", "anonymous", "--listen", "unix:ftp.sock"], "FTP needs a TCP endpoint"),
        (["--root", ".", "--auth", "anonymous", "--listen", "udp:2121"], "FTP needs a TCP endpoint"),
        (["--root", ".", "--auth", "anonymous", "--listen", "tcpp:80"], "--listen: "),
        (["--root", ".", "--auth", "anonymous", "--bogus"], "--bogus"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    """Every bad option value: one line naming it, exit 2, no traceback."""
    line = one_line(run_tapster(["-n", "-o", "--pidfile=", "ftp", *args], cwd=tmp_path), 2)
    assert expected in line


def test_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """Listening on a port another socket holds: exit 1, one line naming the endpoint."""
    with taken_port() as port:
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        args = ["-n", "-o", "--pidfile=", "ftp", "--root", ".", "--auth", "anonymous", "--listen", endpoint]
        result = run_tapster(args, cwd=tmp_path)
    line = one_line(result, 1)
    assert f"tcp:{port}:interface=127.0.0.1" in line and "in use" in line


def test_help_lists_every_option_with_defaults(tmp_path: Path) -> None:
    """`tapster ftp --help` shows each option and the default endpoint (twistd's port 2121, on loopback only);
    `tapster --help` lists the plugin."""
    result = run_tapster(["ftp", "--help"], cwd=tmp_path)
    assert result.returncode == 0
    for option in ("--root", "--listen", "--passive-ports", "--passive-address", "--auth", "--help-auth"):
        assert option in result.stdout, option
    assert "tcp:2121:interface=127.0.0.1" in result.stdout
    assert " ftp " in run_tapster(["--help"], cwd=tmp_path).stdout


def test_missing_aioftp_names_the_ftp_extra(tmp_path: Path) -> None:
    """Without aioftp, `tapster ftp` fails to start with one line naming `tapster[ftp]`; the plugin still lists
    and its help still shows (its module imports no aioftp)."""
    from test_missing_extras import hidden

    env = hidden(tmp_path, "aioftp")
    args = ["-n", "-o", "--pidfile=", "ftp", "--root", ".", "--auth", "anonymous", "--listen", LOOPBACK]
    line = one_line(run_tapster(args, cwd=tmp_path, env=env), 1)
    assert "needs aioftp" in line and line.endswith("(pip install 'tapster[ftp]')")
    assert run_tapster(["ftp", "--help"], cwd=tmp_path, env=env).returncode == 0


def test_saved_state_runs_again(tapster: type[TapsterProcess], tmp_path: Path) -> None:
    """`tapster --save ftp ...` writes ftp-shutdown.tap at stop; `tapster -f ftp-shutdown.tap` serves the same
    root with the same logins (through the strict state loader: FTPServer's live parts are not saved)."""
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "kept.txt").write_bytes(b"kept\n")
    args = ["--root", "served", "--auth", "memory:alice:secret", "--listen", LOOPBACK]
    first = tapster(["-n", "--pidfile=", "--save", "ftp", *args])
    first.port("FTPServer")
    first.signal(signal.SIGTERM)
    assert first.finish()[0] == 0 and (tmp_path / "ftp-shutdown.tap").exists()
    again = tapster(["-n", "--pidfile=", "-o", "-f", "ftp-shutdown.tap"])
    client = login(again.port("FTPServer"))
    assert fetch(client, "kept.txt") == b"kept\n"
    client.quit()
    again.signal(signal.SIGTERM)
    assert again.finish()[0] == 0
