"""Socket activation with the real ``systemd-socket-activate`` (Debian package systemd): tcp and unix sockets,
by index and by name (with and without ``--fdname``), the listen backlog kept, the variables and fds not leaked.

A small wrapper hands the test's own listening sockets (created with a known backlog) to
systemd-socket-activate as fds 3, 4, ... (which it passes through, as documented), so the test keeps a copy of
each socket and reads its backlog after tapster adopted it. systemd-socket-activate execs tapster on the first
connection, as a socket unit does.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from conftest import TapsterProcess
from tapster._listen_backlog import listen_backlog

PROBE = Path(__file__).resolve().parent / "sd_probe.tac"
ACTIVATE = shutil.which("systemd-socket-activate") or (
    "/usr/bin/systemd-socket-activate" if Path("/usr/bin/systemd-socket-activate").exists() else None
)

pytestmark = pytest.mark.skipif(
    ACTIVATE is None, reason="systemd-socket-activate is not installed (Debian package: systemd)"
)

# Moves the inherited sockets to 3, 4, ..., tells systemd-socket-activate they are its own (LISTEN_PID is its pid
# after exec), and execs it with the rest of the command line.
WRAPPER = r"""
import os, sys
high = [int(fd) for fd in sys.argv[1].split(",")]
for index, fd in enumerate(high):
    os.dup2(fd, 3 + index)
for fd in high:
    os.close(fd)
os.environ["LISTEN_FDS"] = str(len(high))
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""

BACKLOG = 7  # not a default anywhere: asyncio's repeated listen() would make it 4096 (SOMAXCONN)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for unix socket paths (108 bytes at most)."""
    path = Path(tempfile.mkdtemp(prefix="tapster-sa-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def tcp_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(BACKLOG)
    return sock


def unix_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen(BACKLOG)
    return sock


def activate(
    tapster,
    sockets: Sequence[socket.socket],
    tapster_args: Sequence[str],
    *,
    fdnames: str | None = None,
    env: dict[str, str],
) -> TapsterProcess:
    """Run ``tapster TAPSTER_ARGS`` under systemd-socket-activate with ``sockets`` and ``env`` (via -E)."""
    assert ACTIVATE is not None
    high = [fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 20) for sock in sockets]
    options = [f"--fdname={fdnames}"] if fdnames is not None else []
    options += [f"-E{name}={value}" for name, value in env.items()]
    prefix = [sys.executable, "-c", WRAPPER, ",".join(map(str, high)), ACTIVATE, *options]
    try:
        return tapster(tapster_args, prefix=prefix, pass_fds=high)
    finally:
        for fd in high:
            os.close(fd)


def echo(conn: socket.socket, data: bytes) -> None:
    conn.settimeout(15)
    conn.sendall(data)
    assert conn.recv(100) == data


def probe_report(proc: TapsterProcess) -> dict[str, object]:
    report: dict[str, object] = json.loads(proc.wait_for(r"^probe (\{.*\})$").group(1))
    return report


def reactor_args(reactor: str) -> list[str]:
    if reactor == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed (pip install 'tapster[uvloop]')")
    return ["--reactor", reactor]


@pytest.mark.parametrize("reactor", ["asyncio", "uvloop"])
def test_tcp_by_index_without_fdname(tapster, reactor: str) -> None:
    """No --fdname: systemd:domain=INET:index=0 serves the socket, its backlog stays 7, and a child process of
    the server sees neither LISTEN_* nor the fd."""
    args = reactor_args(reactor)
    with tcp_socket() as listener:
        proc = activate(
            tapster,
            [listener],
            ["-n", "-y", str(PROBE), "--pidfile=", *args],
            env={"PROBE_ENDPOINTS": "systemd:domain=INET:index=0"},
        )
        with socket.create_connection(listener.getsockname(), timeout=15) as conn:  # activates
            assert probe_report(proc)["child"] == {"env": [], "fds": []}
            proc.wait_for("Probe starting on")
            echo(conn, b"by index")
        assert listen_backlog(listener) == BACKLOG
        proc.signal(signal.SIGTERM)
        assert proc.finish()[0] == 0


@pytest.mark.parametrize("reactor", ["asyncio", "uvloop"])
def test_tcp_and_unix_by_name_with_fdname(tapster, sock_dir: Path, reactor: str) -> None:
    """--fdname=admin:web: name=web is the unix socket, name=admin the tcp one; both keep backlog 7."""
    args = reactor_args(reactor)
    path = sock_dir / "web.sock"
    with tcp_socket() as admin, unix_socket(path) as web:
        if listen_backlog(web) is None:
            pytest.skip("this kernel does not report unix socket backlogs (no unix_diag)")
        proc = activate(
            tapster,
            [admin, web],
            ["-n", "-y", str(PROBE), "--pidfile=", *args],
            fdnames="admin:web",
            env={"PROBE_ENDPOINTS": "systemd:domain=UNIX:name=web systemd:domain=INET:name=admin"},
        )
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(15)
            conn.connect(str(path))  # activates
            assert probe_report(proc)["child"] == {"env": [], "fds": []}
            echo(conn, b"web")
        with socket.create_connection(admin.getsockname(), timeout=15) as conn:
            echo(conn, b"admin")
        assert listen_backlog(admin) == BACKLOG
        assert listen_backlog(web) == BACKLOG
        proc.signal(signal.SIGTERM)
        assert proc.finish()[0] == 0


@pytest.mark.parametrize("fdnames", [None, "admin:web"])
def test_index_picks_by_position_with_or_without_names(tapster, sock_dir: Path, fdnames: str | None) -> None:
    """index=1 is the second socket (here a unix one), whether the sockets were named or not."""
    path = sock_dir / "second.sock"
    with tcp_socket() as first, unix_socket(path) as second:
        proc = activate(
            tapster,
            [first, second],
            ["-n", "-y", str(PROBE), "--pidfile="],
            fdnames=fdnames,
            env={"PROBE_ENDPOINTS": "systemd:domain=UNIX:index=1"},
        )
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(15)
            conn.connect(str(path))
            echo(conn, b"second")
        proc.signal(signal.SIGTERM)
        assert proc.finish()[0] == 0


def test_app_without_systemd_endpoint_leaks_nothing(tapster) -> None:
    """The passed sockets are claimed before the app loads, even when no endpoint uses them: a child process of
    the server sees no LISTEN_* and no inherited fd 3."""
    with tcp_socket() as listener:
        proc = activate(tapster, [listener], ["-n", "-y", str(PROBE), "--pidfile="], env={})
        with socket.create_connection(listener.getsockname(), timeout=15):
            assert probe_report(proc)["child"] == {"env": [], "fds": []}
        proc.signal(signal.SIGTERM)
        assert proc.finish()[0] == 0


def test_daemon_serves_the_passed_socket(tapster, tmp_path: Path) -> None:
    """Without -n the server daemonizes (a new pid): the sockets were claimed before, so it still serves them."""
    pidfile = tmp_path / "tapster.pid"
    with tcp_socket() as listener:
        proc = activate(
            tapster,
            [listener],
            ["-y", str(PROBE), "--pidfile", str(pidfile), "--logfile", str(tmp_path / "tapster.log")],
            env={"PROBE_ENDPOINTS": "systemd:domain=INET:index=0"},
        )
        with socket.create_connection(listener.getsockname(), timeout=15) as conn:
            assert proc.finish(timeout=30)[0] == 0  # the launcher exits once the daemon serves
            daemon = int(pidfile.read_text())
            assert daemon != proc.proc.pid
            try:
                echo(conn, b"daemon")
            finally:
                os.kill(daemon, signal.SIGTERM)


@pytest.mark.parametrize(("fdnames", "name", "names"), [("web", "nope", "web"), (None, "web", "not set")])
def test_wrong_name_is_one_line(tapster, fdnames: str | None, name: str, names: str) -> None:
    """A name= that was not passed: exit 1 and one line naming the endpoint and what was passed, no traceback."""
    description = f"systemd:domain=INET:name={name}"
    with tcp_socket() as listener:
        proc = activate(
            tapster,
            [listener],
            ["-n", "-y", str(PROBE), "--pidfile="],
            fdnames=fdnames,
            env={"PROBE_ENDPOINTS": description},
        )
        with socket.create_connection(listener.getsockname(), timeout=15):
            status, _out, err = proc.finish(timeout=30)
    assert status == 1
    ours = [line for line in err.splitlines() if line.startswith("tapster:")]
    assert ours == [
        f"tapster: cannot listen on {description}: no socket named {name!r} passed by systemd "
        f"(LISTEN_FDS=1, LISTEN_FDNAMES={names})"
    ]
    assert "Traceback" not in err
