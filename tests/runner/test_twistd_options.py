"""The rest of twistd's options with real processes: -f/-o saved state, --profile, --debug, --spew, the title."""

from __future__ import annotations

import os
import pstats
import pty
import select
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES, REPO, TAPSTER, connect, read_all, run_tapster
from support import make_state

FIXTURES = str(REPO / "tests" / "persist")
ENV = {"PYTHONPATH": FIXTURES}


def fetch(port: int) -> bytes:
    with connect(port) as sock:
        return read_all(sock)


def test_state_survives_a_stop_and_a_dash_f_start(tapster, tmp_path: Path) -> None:
    """A -f application keeps its connection count across a stop (NAME-shutdown.tap) and a -f start."""
    proc = tapster(["-n", "-f", make_state(tmp_path), "--pidfile="], env=ENV)
    port = proc.port("listener")
    assert [fetch(port), fetch(port)] == [b"1\n", b"2\n"]
    proc.signal(signal.SIGTERM)
    status, out, err = proc.finish()
    assert status == 0, err
    assert "Saved application state to counting-shutdown.tap." in out
    saved = tmp_path / "counting-shutdown.tap"
    assert saved.stat().st_mode & 0o777 == 0o600
    again = tapster(["-n", "-f", "counting-shutdown.tap", "--pidfile="], env=ENV)
    assert fetch(again.port("listener")) == b"3\n"
    again.signal(signal.SIGTERM)
    assert again.finish()[0] == 0


def test_no_save_and_python_files_leave_no_state(tapster, tmp_path: Path) -> None:
    """-o disables saving for -f; -y implies -o."""
    proc = tapster(["-n", "-o", "-f", make_state(tmp_path), "--pidfile="], env=ENV)
    proc.port("listener")
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0
    tac = tapster(["-n", "-y", str(EXAMPLES / "echo.tac"), "--pidfile="], env={"ECHO_PORT": "0"})
    tac.port("Echo")
    tac.signal(signal.SIGTERM)
    assert tac.finish()[0] == 0
    assert not list(tmp_path.glob("*-shutdown.tap"))


def test_default_state_file_is_tapster_tap(tapster, tmp_path: Path) -> None:
    """With no application source, tapster.tap in the current directory is loaded, as twistd loads twistd.tap."""
    make_state(tmp_path, "tapster.tap")
    proc = tapster(["-n", "--pidfile="], env=ENV)
    assert fetch(proc.port("listener")) == b"1\n"
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["-f", "missing.tap"], "cannot read saved state missing.tap: No such file or directory"),
        (b"not a state", ["-f", "foreign.tap"], "foreign.tap is not a tapster saved state"),
        (
            "group-writable",
            ["-f", "counting.tap"],
            "refusing to load counting.tap: it is writable by its group",
        ),
    ],
)
def test_bad_state_files_are_one_line(tmp_path: Path, setup: object, args: list[str], message: str) -> None:
    """Missing, foreign and unsafe state files are refused with one line and exit 1."""
    if isinstance(setup, bytes):
        (tmp_path / args[1]).write_bytes(setup)
    elif setup == "group-writable":
        make_state(tmp_path)
        (tmp_path / "counting.tap").chmod(0o660)
    result = run_tapster(["-n", *args], cwd=tmp_path, env=ENV)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == f"tapster: {message}" or message in result.stderr.splitlines()[0]
    assert "Traceback" not in result.stderr


def test_trust_state_file_overrides_the_safety_check(tapster, tmp_path: Path) -> None:
    """--trust-state-file loads a group-writable state the user vouches for."""
    make_state(tmp_path)
    (tmp_path / "counting.tap").chmod(0o660)
    proc = tapster(["-n", "-f", "counting.tap", "--trust-state-file", "-o", "--pidfile="], env=ENV)
    proc.port("listener")
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


@pytest.mark.parametrize("profiler", ["cprofile", "profile"])
def test_profile_writes_stats_pstats_can_load(tapster, tmp_path: Path, profiler: str) -> None:
    """--profile with --savestats writes raw stats that pstats loads; they include the serving loop."""
    proc = tapster(
        [
            "-n",
            "-y",
            str(EXAMPLES / "echo.tac"),
            "--pidfile=",
            "-p",
            "run.prof",
            "--profiler",
            profiler,
            "--savestats",
        ],
        env={"ECHO_PORT": "0"},
    )
    proc.port("Echo")
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0
    stats = pstats.Stats(str(tmp_path / "run.prof"))
    assert any(func[2] == "run_until_complete" for func in stats.stats)  # type: ignore[attr-defined]


def test_profile_text_report(tapster, tmp_path: Path) -> None:
    """Without --savestats the profile is a readable text report."""
    proc = tapster(
        ["-n", "-y", str(EXAMPLES / "echo.tac"), "--pidfile=", "--profile", "run.txt"], env={"ECHO_PORT": "0"}
    )
    proc.port("Echo")
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0
    report = (tmp_path / "run.txt").read_text()
    assert "function calls" in report and "cumulative" in report


def test_spew_logs_calls_and_lines(tapster, tmp_path: Path) -> None:
    """--spew logs the Python calls the server makes, with file and line."""
    (tmp_path / "spewed.tac").write_text(
        textwrap.dedent("""
        from tapster import Application, Service

        class Marker(Service):
            async def start(self):
                await super().start()
                self.distinctive_helper()

            def distinctive_helper(self):
                return 42

        application = Application("spewed")
        Marker().set_parent(application)
    """)
    )
    proc = tapster(["-n", "-y", "spewed.tac", "--spew", "--pidfile="])
    proc.wait_for(r"call Marker\.distinctive_helper \(.*spewed\.tac:\d+\)")
    proc.wait_for(r"line .*spewed\.tac:\d+ in distinctive_helper")
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def test_process_title_names_the_application(tapster, tmp_path: Path) -> None:
    """The process is titled 'tapster: NAME'; --originalname leaves the command line alone."""
    proc = tapster(["-n", "-y", str(EXAMPLES / "echo.tac"), "--pidfile="], env={"ECHO_PORT": "0"})
    proc.port("Echo")
    assert cmdline(proc.proc.pid) == "tapster: echo"
    plain = tapster(
        ["-n", "--originalname", "-y", str(EXAMPLES / "echo.tac"), "--pidfile="], env={"ECHO_PORT": "0"}
    )
    plain.port("Echo")
    assert "-m tapster" in cmdline(plain.proc.pid)
    for p in (proc, plain):
        p.signal(signal.SIGTERM)
        assert p.finish()[0] == 0


class PtySession:
    """A tapster process on a pseudo-terminal, so pdb talks to it as to a user."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [*TAPSTER, *args],
            cwd=cwd,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        os.close(slave)
        self.seen = b""

    def expect(self, text: bytes, timeout: float = 15) -> bytes:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.master], [], [], remaining)[0]:
                pytest.fail(f"{text!r} not seen; got:\n{self.seen.decode(errors='replace')}")
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                pytest.fail(f"pty closed before {text!r}; got:\n{self.seen.decode(errors='replace')}")
            self.seen += chunk
        return self.seen

    def send(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=15)
        finally:
            os.close(self.master)


def test_debug_opens_pdb_post_mortem_on_a_failed_start(tmp_path: Path) -> None:
    """-b drops into pdb at the exception of a service whose start fails; quitting exits 1."""
    (tmp_path / "fails.tac").write_text(
        textwrap.dedent("""
        from tapster import Application, Service

        class Broken(Service):
            async def start(self):
                secret_value = 6 * 7
                raise RuntimeError("start failed")

        application = Application("fails")
        Broken().set_parent(application)
    """)
    )
    session = PtySession(["-b", "-y", "fails.tac", "--pidfile="], tmp_path)
    session.expect(b"(Pdb)")
    session.send("p secret_value")
    session.expect(b"42")
    session.send("q")
    assert session.close() == 1
    assert b"start failed" in session.seen


def test_debug_sigusr2_enters_pdb_and_continue_resumes(tmp_path: Path) -> None:
    """With -b, SIGUSR2 opens pdb in the running server; 'c' resumes serving."""
    session = PtySession(
        ["-b", "-y", str(EXAMPLES / "echo.tac"), "--pidfile="], tmp_path, env={"ECHO_PORT": "0"}
    )
    port = int(session.expect(b"starting on ").split(b"starting on ")[1].split()[0])
    session.proc.send_signal(signal.SIGUSR2)
    session.expect(b"(Pdb)")
    session.send("c")
    with connect(port) as sock:
        sock.sendall(b"still alive")
        assert sock.recv(100) == b"still alive"
    session.proc.send_signal(signal.SIGTERM)
    assert session.close() == 0


def test_plugin_run_saves_state_and_dash_f_serves_the_same_poem_on_the_same_port(
    tapster, tmp_path: Path
) -> None:
    """`tapster --save fastpoetry` leaves NAME-shutdown.tap; `-f` on it serves the same poem on the same port."""
    import socket

    with socket.socket() as probe:  # a port the OS says is free, fixed for both runs
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    poem = EXAMPLES / "poetry" / "ecstasy.txt"
    env = {"PYTHONPATH": str(EXAMPLES)}
    first = tapster(
        ["-n", "--pidfile=", "--save", "fastpoetry", "--port", str(port), "--poem", str(poem)], env=env
    )
    assert first.port("PoetryProtocol") == port
    assert fetch(port) == poem.read_bytes()
    first.signal(signal.SIGTERM)
    status, out, err = first.finish()
    assert status == 0, err
    assert (tmp_path / "fastpoetry-shutdown.tap").exists(), out
    second = tapster(["-n", "--pidfile=", "-f", "fastpoetry-shutdown.tap"], env=env)
    assert second.port("PoetryProtocol") == port
    assert fetch(port) == poem.read_bytes()
    second.signal(signal.SIGTERM)
    assert second.finish()[0] == 0


def test_saved_plugin_state_loads_after_the_project_moves(tapster, tmp_path: Path) -> None:
    """A plugin's saved state still loads when the plugin folder is somewhere else (a new release directory)."""
    import shutil

    for release in ("v1", "v2"):
        shutil.copytree(EXAMPLES / "tapster", tmp_path / release / "tapster")
    poem = EXAMPLES / "poetry" / "ecstasy.txt"
    first = tapster(
        ["-n", "--pidfile=", "--save", "fastpoetry", "--port", "0", "--poem", str(poem)], cwd=tmp_path / "v1"
    )
    first.port("PoetryProtocol")
    first.signal(signal.SIGTERM)
    assert first.finish()[0] == 0
    shutil.move(tmp_path / "v1" / "fastpoetry-shutdown.tap", tmp_path / "v2")
    shutil.rmtree(tmp_path / "v1")
    second = tapster(["-n", "--pidfile=", "-o", "-f", "fastpoetry-shutdown.tap"], cwd=tmp_path / "v2")
    assert fetch(second.port("PoetryProtocol")) == poem.read_bytes()
    second.signal(signal.SIGTERM)
    assert second.finish()[0] == 0
