"""Bad input gets one clear line on stderr and exit status 1 (2 for usage), never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import EXAMPLES, run_tapster


def check_one_line(result, status: int, *fragments: str) -> None:
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, result
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(textwrap.dedent(text))
    return name


@pytest.mark.parametrize(
    ("name", "source", "fragments"),
    [
        ("syntax.tac", "x = 1\ndef broken(:\n    pass\n", ["syntax error in syntax.tac:2: invalid syntax"]),
        ("noapp.tac", "x = 1\n", ["noapp.tac defines no 'application' variable"]),
        (
            "notservice.tac",
            "application = 42\n",
            ["'application' in notservice.tac is an int, not a tapster Service"],
        ),
        (
            "raises.tac",
            "import os\n\nraise RuntimeError('boom')\n",
            ["error in application file raises.tac:3", "RuntimeError: boom"],
        ),
        (
            "badendpoint.tac",
            """
            from tapster import Application
            from tapster.services import StreamServer
            application = Application("x")
            StreamServer("tcpp:80", lambda: None).set_parent(application)
         """,
            ["badendpoint.tac:5", "'tcpp:80'", "unknown endpoint type 'tcpp'"],
        ),
    ],
)
def test_broken_application_file_is_one_line(
    tmp_path: Path, name: str, source: str, fragments: list[str]
) -> None:
    """Each broken application file gives one line naming the file (and line) and exit status 1."""
    write(tmp_path, name, source)
    result = run_tapster(["-n", "-y", name], cwd=tmp_path)
    check_one_line(result, 1, *fragments)
    assert not (tmp_path / "tapster.pid").exists()


def test_missing_application_file(tmp_path: Path) -> None:
    """A missing file is named with the reason."""
    check_one_line(
        run_tapster(["-n", "-y", "nope.tac"], cwd=tmp_path),
        1,
        "cannot read application file nope.tac: No such file or directory",
    )


def test_traceback_flag_shows_the_traceback(tmp_path: Path) -> None:
    """--traceback prints the full traceback of the failure."""
    write(tmp_path, "raises.tac", "raise RuntimeError('boom')\n")
    result = run_tapster(["-n", "-y", "raises.tac", "--traceback"], cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: boom" in result.stderr


def test_port_in_use_names_the_endpoint(tmp_path: Path) -> None:
    """A port held by another socket fails the start with the endpoint named, and no pid file is left."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_tapster(
            ["-n", "-y", str(EXAMPLES / "echo.tac")], cwd=tmp_path, env={"ECHO_PORT": str(port)}
        )
    check_one_line(result, 1, f"cannot listen on tcp:{port}:interface=127.0.0.1", "in use")
    assert not (tmp_path / "tapster.pid").exists()


def test_start_failure_in_a_service_is_one_line(tmp_path: Path) -> None:
    """An exception raised by a service's start() is reported as its type and message."""
    write(
        tmp_path,
        "failing.tac",
        """
        from tapster import Application, Service
        class Broken(Service):
            async def start(self):
                raise FileNotFoundError("poetry/missing.txt")
        application = Application("x")
        Broken().set_parent(application)
    """,
    )
    check_one_line(
        run_tapster(["-n", "-y", "failing.tac"], cwd=tmp_path),
        1,
        "x/Broken: FileNotFoundError: poetry/missing.txt",
    )


def test_unknown_reactor(tmp_path: Path) -> None:
    """An unknown --reactor names the valid ones."""
    check_one_line(
        run_tapster(["-n", "-r", "twisted", "-y", str(EXAMPLES / "echo.tac")], cwd=tmp_path),
        1,
        "unknown reactor 'twisted'",
        "asyncio, uvloop",
    )


def test_uninstalled_reactor_names_the_extra(tmp_path: Path) -> None:
    """A reactor whose module cannot be imported says which extra installs it."""
    fake = tmp_path / "shadow" / "uvloop"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('not here')\n")
    result = run_tapster(
        ["-n", "-r", "uvloop", "-y", str(EXAMPLES / "echo.tac")],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "shadow")},
    )
    check_one_line(result, 1, "reactor 'uvloop' is not installed: pip install 'tapster[uvloop]'")


def test_usage_errors_exit_2_with_usage_line(tmp_path: Path) -> None:
    """A wrong option is a usage error: message, usage line, exit status 2."""
    result = run_tapster(["--nodaemonn", "-y", "x.tac"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(
        "tapster: error: unrecognized option: --nodaemonn (did you mean --nodaemon?)"
    )
    assert "Usage: tapster" in result.stderr


def test_nothing_to_run_is_a_usage_error(tmp_path: Path) -> None:
    """tapster with no application source says what to give."""
    result = run_tapster(["-n"], cwd=tmp_path)
    assert result.returncode == 2 and "nothing to run" in result.stderr


def test_version_and_help_reactors(tmp_path: Path) -> None:
    """--version prints the version; --help-reactors lists every loop with its install state."""
    version = run_tapster(["--version"], cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("tapster 0.1.0 (python 3.")
    reactors = run_tapster(["--help-reactors"], cwd=tmp_path)
    assert reactors.returncode == 0
    assert "asyncio" in reactors.stdout and "uvloop" in reactors.stdout and "installed" in reactors.stdout


def test_help_lists_every_global_option_with_its_default(tmp_path: Path) -> None:
    """--help shows each global option and the defaults that matter."""
    result = run_tapster(["--help"], cwd=tmp_path)
    assert result.returncode == 0
    for option in (
        "--nodaemon",
        "--python",
        "--file",
        "--no_save",
        "--logfile",
        "--pidfile",
        "--syslog",
        "--prefix",
        "--uid",
        "--gid",
        "--euid",
        "--chroot",
        "--rundir",
        "--umask",
        "--reactor",
        "--shutdown-timeout",
        "--log-max-size",
        "--log-keep",
        "--log-daily",
        "--log-format",
        "--logger",
        "--help-reactors",
        "--version",
        "--traceback",
    ):
        assert option in result.stdout, option
    for default in ("[default: tapster.pid]", "[default: asyncio]", "[default: 10.0]", "Default: 1000000"):
        assert default in result.stdout, default


SYS_EXIT_IN_START = """
import sys
from tapster import Application, Service
class Quits(Service):
    name = "quits"
    async def start(self):
        sys.exit(4)
application = Application("x")
Quits().set_parent(application)
"""


@pytest.mark.parametrize("daemon", [False, True], ids=["foreground", "daemon"])
def test_sys_exit_in_start_is_one_line(tmp_path: Path, daemon: bool) -> None:
    """sys.exit(4) in a service's start() is a failed start: one line naming the service, exit 1."""
    write(tmp_path, "quits.tac", SYS_EXIT_IN_START)
    args = ["-y", "quits.tac"] + (["-l", "quits.log"] if daemon else ["-n"])
    result = run_tapster(args, cwd=tmp_path)
    assert result.stderr.strip() == "tapster: x/quits: sys.exit(4) called while starting"
    check_one_line(result, 1)
    assert "never retrieved" not in result.stdout and "destroyed" not in result.stdout
    assert not (tmp_path / "tapster.pid").exists()


def test_sys_exit_in_start_traceback_only_with_the_flag(tmp_path: Path) -> None:
    """--traceback shows where start() called sys.exit."""
    write(tmp_path, "quits.tac", SYS_EXIT_IN_START)
    result = run_tapster(["-n", "-y", "quits.tac", "--traceback"], cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "SystemExit: 4" in result.stderr


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("raise BaseException('boo')\n", "error in application file app.tac:1: BaseException: boo"),
        ("raise KeyboardInterrupt\n", "error in application file app.tac:1: KeyboardInterrupt"),
        ("import sys\nsys.exit(3)\n", "application file app.tac called sys.exit(3) while loading"),
    ],
)
def test_base_exceptions_at_import_are_one_line(tmp_path: Path, source: str, message: str) -> None:
    """A tac raising BaseException, KeyboardInterrupt or SystemExit at import: one line, exit 1."""
    write(tmp_path, "app.tac", source)
    result = run_tapster(["-n", "-y", "app.tac"], cwd=tmp_path)
    check_one_line(result, 1, message)
    assert result.stderr.strip() == f"tapster: {message}"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "86401"])
def test_shutdown_timeout_must_be_finite(tmp_path: Path, value: str) -> None:
    """--shutdown-timeout nan|inf|-1 is a usage error: it would make the stop unbounded."""
    result = run_tapster(["-n", "--shutdown-timeout", value, "-y", "x.tac"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"tapster: error: --shutdown-timeout: expected a number of seconds from 0 to 86400, got {value!r}\n"
    )


def test_a_line_break_in_the_input_is_escaped_not_printed(tmp_path: Path) -> None:
    """An unknown plugin name holding a line break: still one line, the break shown as \\n."""
    result = run_tapster(["foo\nInjected: line"], cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[1].startswith("Usage: "), result.stderr
    assert "Unknown command: foo\\nInjected: line" in lines[0]


@pytest.mark.parametrize(
    "args", [["--help"], ["socks", "--help-auth"], ["ctl", "status", "--pidfile", "x.pid"]]
)
def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path: Path, args: list[str]) -> None:
    """`tapster --help | head -1`: the closed pipe ends the command quietly (status 141, as a shell reports)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tapster", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == ""
