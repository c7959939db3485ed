"""`tapster web` on the command line: bad options are one line and exit 2, a taken port is one line and exit 1,
a missing aiohttp names the extra, the help lists every option, and WebServer works from a tac file."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest
from web_support import request

from conftest import TapsterProcess, run_tapster
from support import one_line, taken_port


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "give exactly one of --path DIR, --wsgi MODULE:APP, --asgi MODULE:APP (got none)"),
        (["--path", ".", "--wsgi", "app:x"], "(got --path and --wsgi)"),
        (["--path", "no-such-dir"], "--path 'no-such-dir': not a directory"),
        (["--wsgi", "no_such_module_xyz:app"], "--wsgi 'no_such_module_xyz:app': "),
        (["--wsgi", "nocolon"], "--wsgi 'nocolon': expected MODULE:APP"),
        (["--asgi", "os:sep"], "--asgi 'os:sep' is a str, not an application"),
        (["--path", ".", "--threads", "0"], "--threads"),
        (["--path", ".", "--add-header", "Bad Name: x"], "--add-header 'Bad Name: x': expected NAME:VALUE"),
        (["--path", ".", "--listen", "udp:0"], "HTTP needs a stream endpoint"),
        (["--path", ".", "--listen", "tcpp:80"], "--listen: "),
        (["--path", ".", "--bogus"], "--bogus"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    """Every bad option value: one line naming it, exit 2, no traceback."""
    line = one_line(run_tapster(["-n", "-o", "--pidfile=", "web", *args], cwd=tmp_path), 2)
    assert expected in line


def test_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """Listening on a port another socket holds: exit 1, one line naming the endpoint."""
    with taken_port() as port:
        result = run_tapster(
            ["-n", "-o", "--pidfile=", "web", "--path", ".", "--listen", f"tcp:{port}:interface=127.0.0.1"],
            cwd=tmp_path,
        )
    line = one_line(result, 1)
    assert f"tcp:{port}:interface=127.0.0.1" in line and "in use" in line


def test_help_lists_every_option_with_defaults(tmp_path: Path) -> None:
    """`tapster web --help` shows each option; `tapster --help` lists the plugin."""
    result = run_tapster(["web", "--help"], cwd=tmp_path)
    assert result.returncode == 0
    for option in ("--listen", "--path", "--wsgi", "--asgi", "--threads", "--add-header", "--access-log"):
        assert option in result.stdout, option
    assert "tcp:8080" in result.stdout and "10" in result.stdout
    listing = run_tapster(["--help"], cwd=tmp_path)
    assert " web " in listing.stdout


def test_missing_aiohttp_names_the_web_extra(tmp_path: Path) -> None:
    """Without aiohttp, `tapster web --path .` fails to start with one line naming `tapster[web]`; the
    plugin still lists (its module imports no aiohttp)."""
    from test_missing_extras import hidden

    env = hidden(tmp_path, "aiohttp")
    line = one_line(
        run_tapster(
            ["-n", "-o", "--pidfile=", "web", "--path", ".", "--listen", "tcp:0"], cwd=tmp_path, env=env
        ),
        1,
    )
    assert "needs aiohttp" in line and line.endswith("(pip install 'tapster[web]')")
    assert run_tapster(["web", "--help"], cwd=tmp_path, env=env).returncode == 0


TAC = """\
from tapster import Application
from tapster.services import WebServer

application = Application("site")
WebServer(["tcp:0:interface=127.0.0.1"], path="site", headers=[("X-Served-By", "tac")]).set_parent(application)
"""


def test_web_server_in_a_tac_file(tapster: type[TapsterProcess], tmp_path: Path) -> None:
    """WebServer built in a tac file serves its directory and stops cleanly."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "hello.txt").write_text("hi from tac\n")
    (tmp_path / "web.tac").write_text(TAC)
    process = tapster(["-n", "-o", "--pidfile=", "-y", "web.tac"])
    port = process.port("WebServer")
    response, body = request(port, "/hello.txt")
    assert body == b"hi from tac\n" and response.headers["X-Served-By"] == "tac"
    process.signal(signal.SIGTERM)
    assert process.finish()[0] == 0


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A key and a self-signed certificate for 127.0.0.1 (cryptography comes with the ssh extra)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def test_https_through_an_ssl_endpoint(tapster: type[TapsterProcess], tmp_path: Path) -> None:
    """--listen ssl:...: the same server speaks HTTPS, and a second --listen serves plain HTTP beside it."""
    import http.client
    import ssl

    key, cert = _self_signed(tmp_path)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "a.txt").write_text("secure\n")
    process = tapster(
        [
            "-n",
            "-o",
            "--pidfile=",
            "web",
            "--path",
            "site",
            "--listen",
            f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1",
            "--listen",
            "tcp:0:interface=127.0.0.1",
        ]
    )
    ssl_port = process.port("WebServer")  # the listeners start in the order given
    tcp_port = int(process.wait_for(rf"WebServer starting on (?!{ssl_port}$)(\d+)$").group(1))
    context = ssl.create_default_context(cafile=str(cert))
    secure = http.client.HTTPSConnection("127.0.0.1", ssl_port, context=context, timeout=10)
    secure.request("GET", "/a.txt")
    assert secure.getresponse().read() == b"secure\n"
    secure.close()
    assert request(tcp_port, "/a.txt")[1] == b"secure\n"


def test_the_core_never_imports_aiohttp(tmp_path: Path) -> None:
    """Listing plugins, `tapster web --help` and importing tapster.services load no aiohttp."""
    import subprocess
    import sys

    code = (
        "import sys, runpy\n"
        "sys.argv = ['tapster', 'web', '--help']\n"
        "import tapster.services\n"
        "try:\n    runpy.run_module('tapster', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "assert 'aiohttp' not in sys.modules and 'a2wsgi' not in sys.modules, 'aiohttp imported'\n"
        "print('clean')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.rstrip().endswith("clean"), result.stderr


ACTIVATE = r"""
import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.execv(sys.executable, [sys.executable, "-m", "tapster", *sys.argv[2:]])
"""


def test_socket_activated_listener(tmp_path: Path) -> None:
    """--listen systemd:domain=INET:index=0 serves on the socket passed as systemd passes it (fd 3)."""
    import fcntl
    import os
    import subprocess
    import sys

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "a.txt").write_text("activated\n")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        high = fcntl.fcntl(listener.fileno(), fcntl.F_DUPFD_CLOEXEC, 20)
        env = {name: value for name, value in os.environ.items() if not name.startswith("LISTEN_")}
        args = ["-n", "-o", "--pidfile=", "web", "--path", "site", "--listen", "systemd:domain=INET:index=0"]
        child = subprocess.Popen(
            [sys.executable, "-c", ACTIVATE, str(high), *args],
            pass_fds=[high],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        os.close(high)
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if "WebServer starting on" in line:
                break
        else:
            pytest.fail("the activated server never started")
        assert request(port, "/a.txt")[1] == b"activated\n"
    finally:
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=15) == 0
        if child.stdout is not None:
            child.stdout.close()
