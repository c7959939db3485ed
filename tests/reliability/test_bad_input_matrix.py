"""The bad-input matrix: every wrong command line, file or setting is one line, exit 1 (2 for usage), no traceback.

Each case is one real ``tapster`` run in its own empty directory. Every case checks the same promise: the exit
status; stderr is one line (two for a usage error: the message, then the usage line); that line names the
offending value; there is no "Traceback" on stdout or stderr; and nothing is left behind (no pid file, no other
new file except a log the case asked for).

The saved-state and file-safety cases (``-f DIR``, a ``.tap`` whose unpickling raises, ``--logfile /dev/full``, files
that are directories, FIFOs or links) are in ``FILE_CASES``; test_symlink_attacks.py tries the links and planted
files in depth.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

TAPSTER = [sys.executable, "-m", "tapster"]

OK_TAC = "from tapster import Application\napplication = Application('ok')\n"

SERVICE_TAC = """\
import sys
from tapster import Application, MultiService, Service

class Broken(Service):
    name = "broken"
    async def {method}(self):
        {body}

application = Application("app")
group = MultiService()
group.name = "group"
group.set_parent(application)
Broken().set_parent(group)
"""

ENDPOINT_TAC = """\
from tapster import Application
from tapster.services import StreamServer

async def handle(reader, writer):
    writer.close()

application = Application("app")
StreamServer({endpoint!r}, handle).set_parent(application)
"""

Files = dict[str, "str | bytes | None"]  # relative path -> content; None: a directory


class Case:
    """One row of the matrix: run ``tapster ARGS`` with ``files`` in an empty directory."""

    def __init__(
        self,
        name: str,
        args: list[str],
        status: int,
        fragments: tuple[str, ...],
        files: Files,
        env: dict[str, str],
        allowed: tuple[str, ...],
    ) -> None:
        self.name = name
        self.args = args
        self.status = status
        self.fragments = fragments
        self.files = files
        self.env = env
        self.allowed = allowed


def case(
    name: str,
    args: list[str],
    status: int,
    *fragments: str,
    files: Files | None = None,
    env: dict[str, str] | None = None,
    allowed: tuple[str, ...] = (),
) -> Case:
    """A case: the exit status it must give and the fragments its one line must contain (the offending value)."""
    return Case(name, args, status, fragments, files or {}, env or {}, allowed)


def tac(source: str) -> Files:
    return {"app.tac": source}


def service_tac(method: str, body: str) -> Files:
    return tac(SERVICE_TAC.format(method=method, body=body))


def endpoint_tac(endpoint: str) -> Files:
    return tac(ENDPOINT_TAC.format(endpoint=endpoint))


RUN_OK = ["-n", "-y", "app.tac"]

# --- the command line: values each option cannot parse, unknown options, wrong combinations (exit 2) ---------

USAGE_CASES = [
    *(
        case(
            f"shutdown-timeout={value}",
            ["--shutdown-timeout", value, *RUN_OK],
            2,
            "--shutdown-timeout",
            value,
        )
        for value in (
            "nan",
            "NaN",
            "inf",
            "-inf",
            "Infinity",
            "-1",
            "-0.5",
            "x",
            "1e9",
            "86401",
            "1,5",
            "0x10",
        )
    ),
    case("shutdown-timeout empty", ["--shutdown-timeout", "", *RUN_OK], 2, "--shutdown-timeout", "''"),
    *(
        case(f"log-max-size={value}", ["--log-max-size", value, *RUN_OK], 2, "--log-max-size", value)
        for value in ("-1", "x", "1.5", "1e3", "ten")
    ),
    *(
        case(f"log-keep={value}", ["--log-keep", value, *RUN_OK], 2, "--log-keep", value)
        for value in ("-1", "x", "2.5")
    ),
    *(
        case(f"log-format={value}", ["--log-format", value, *RUN_OK], 2, "--log-format", value)
        for value in ("xml", "TEXT", "syslog")
    ),
    case("profiler=hotshot", ["--profiler", "hotshot", *RUN_OK], 2, "--profiler", "hotshot"),
    *(
        case(f"unknown option {option}", [option, *RUN_OK], 2, option)
        for option in ("--nodaemonn", "--foo", "-Z", "--pid-file", "--daemon", "--log-size", "--timeout")
    ),
    *(
        case(f"missing value {option}", [option], 2, option.lstrip("-")[:3], "expected one argument")
        for option in (
            "-y",
            "-f",
            "--pidfile",
            "--logfile",
            "--shutdown-timeout",
            "-u",
            "-g",
            "--umask",
            "-r",
        )
    ),
    *(
        case(f"flag with a value {flag}", [f"{flag}=1", *RUN_OK], 2, flag, "takes no value")
        for flag in ("--nodaemon", "--syslog", "--no_save", "--traceback", "--euid", "--log-daily")
    ),
    case("-y and -f", ["-y", "a.tac", "-f", "b.tap"], 2, "-y and -f"),
    case(
        "-y and a plugin",
        ["-n", "-y", "app.tac", "manhole", "--telnet", "0", "--auth", "anonymous"],
        2,
        "-y",
        "a plugin",
    ),
    case("nothing to run", ["-n"], 2, "nothing to run"),
    case("unknown plugin", ["-n", "nosuchplugin"], 2, "nosuchplugin"),
    case("misspelt plugin", ["-n", "manhol"], 2, "manhol", "Did you mean manhole?"),
    case("tac file as a plugin name", ["-n", "app.tac"], 2, "app.tac", "-y app.tac", files=tac(OK_TAC)),
    case("py file as a plugin name", ["-n", "server.py"], 2, "server.py", "-y server.py"),
]

# --- process settings the process cannot use (exit 1) --------------------------------------------------------

PROCESS_CASES = [
    *(
        case(f"umask={value}", ["--umask", value, *RUN_OK], 1, f"invalid umask {value!r}", files=tac(OK_TAC))
        for value in ("99x", "8", "10000", "-1", "0o", "abc", "")
    ),
    case("unknown user", ["-u", "no-such-user-xyz", *RUN_OK], 1, "no-such-user-xyz", files=tac(OK_TAC)),
    case("unknown group", ["-g", "no-such-group-xyz", *RUN_OK], 1, "no-such-group-xyz", files=tac(OK_TAC)),
    case("uid out of range", ["-u", "4294967296", *RUN_OK], 1, "4294967296", files=tac(OK_TAC)),
    case("gid out of range", ["-g", "4294967296", *RUN_OK], 1, "4294967296", files=tac(OK_TAC)),
    case("negative uid", ["-u", "-5", *RUN_OK], 1, "-5", files=tac(OK_TAC)),
    case("negative gid", ["-g", "-5", *RUN_OK], 1, "-5", files=tac(OK_TAC)),
    case("empty user", ["-u", "", *RUN_OK], 1, "''", files=tac(OK_TAC)),
    case(
        "chroot missing", ["--chroot", "/nonexistent-dir", *RUN_OK], 1, "/nonexistent-dir", files=tac(OK_TAC)
    ),
    case(
        "chroot to a file",
        ["--chroot", "plain", *RUN_OK],
        1,
        "plain",
        files={**tac(OK_TAC), "plain": "x"},
    ),
    case("rundir missing", ["-d", "/nonexistent-dir", *RUN_OK], 1, "/nonexistent-dir", files=tac(OK_TAC)),
    case("rundir is a file", ["-d", "plain", *RUN_OK], 1, "plain", files={**tac(OK_TAC), "plain": "x"}),
    case("unknown reactor", ["-r", "twisted", *RUN_OK], 1, "'twisted'", files=tac(OK_TAC)),
    case("empty reactor", ["-r", "", *RUN_OK], 1, "''", files=tac(OK_TAC)),
    case("logger without a dot", ["--logger", "nodots", *RUN_OK], 1, "'nodots'", files=tac(OK_TAC)),
    case(
        "logger module missing", ["--logger", "nosuchmod.f", *RUN_OK], 1, "'nosuchmod.f'", files=tac(OK_TAC)
    ),
    case("logger attribute missing", ["--logger", "os.nope", *RUN_OK], 1, "'os.nope'", files=tac(OK_TAC)),
    case("logger not callable", ["--logger", "os.sep", *RUN_OK], 1, "'os.sep'", files=tac(OK_TAC)),
    case(
        "logger returns no handler",
        ["--logger", "badlog.make", *RUN_OK],
        1,
        "'badlog.make'",
        files={**tac(OK_TAC), "badlog.py": "def make():\n    return 42\n"},
        env={"PYTHONPATH": "."},
        allowed=("__pycache__",),
    ),
    case(
        "logger factory raises",
        ["--logger", "badlog.make", *RUN_OK],
        1,
        "'badlog.make'",
        "ValueError",
        files={**tac(OK_TAC), "badlog.py": "def make():\n    raise ValueError('no handler today')\n"},
        env={"PYTHONPATH": "."},
        allowed=("__pycache__",),
    ),
    case("syslog without a daemon", ["--syslog", *RUN_OK], 1, "syslog", files=tac(OK_TAC)),
    case("daemon with stdout log", ["-y", "app.tac", "-l", "-"], 1, "no standard output", files=tac(OK_TAC)),
    case(
        "logfile in a missing dir",
        ["-l", "/nonexistent-dir/x.log", *RUN_OK],
        1,
        "/nonexistent-dir/x.log",
        files=tac(OK_TAC),
    ),
    case(
        "logfile under a file",
        ["-l", "plain/x.log", *RUN_OK],
        1,
        "plain/x.log",
        files={**tac(OK_TAC), "plain": "x"},
    ),
    case(
        "logfile in /proc",
        ["-l", "/proc/tapster-x.log", *RUN_OK],
        1,
        "/proc/tapster-x.log",
        files=tac(OK_TAC),
    ),
    case(
        "logfile in /sys", ["-l", "/sys/tapster-x.log", *RUN_OK], 1, "/sys/tapster-x.log", files=tac(OK_TAC)
    ),
    case(
        "daemon logfile in a missing dir",
        ["-y", "app.tac", "-l", "/nonexistent-dir/x.log"],
        1,
        "/nonexistent-dir/x.log",
        files=tac(OK_TAC),
    ),
    case(
        "pidfile in a missing dir",
        ["--pidfile", "/nonexistent-dir/x.pid", *RUN_OK],
        1,
        "/nonexistent-dir/x.pid",
        files=tac(OK_TAC),
    ),
    case(
        "pidfile under a file",
        ["--pidfile", "plain/x.pid", *RUN_OK],
        1,
        "plain/x.pid",
        files={**tac(OK_TAC), "plain": "x"},
    ),
    case(
        "pidfile is a directory",
        ["--pidfile", "piddir", *RUN_OK],
        1,
        "piddir",
        files={**tac(OK_TAC), "piddir": None},
    ),
    case(
        "pidfile in /proc",
        ["--pidfile", "/proc/tapster-x.pid", *RUN_OK],
        1,
        "/proc/tapster-x.pid",
        files=tac(OK_TAC),
    ),
    case(
        "pidfile in /sys",
        ["--pidfile", "/sys/tapster-x.pid", *RUN_OK],
        1,
        "/sys/tapster-x.pid",
        files=tac(OK_TAC),
    ),
    case(
        "daemon pidfile in a missing dir",
        ["-y", "app.tac", "-l", "app.log", "--pidfile", "/nonexistent-dir/x.pid"],
        1,
        "/nonexistent-dir/x.pid",
        files=tac(OK_TAC),
        allowed=("app.log",),
    ),
]

# --- application files: broken, missing, wrong, raising at import or in start() (exit 1) ---------------------

APP_FILE_CASES = [
    case(
        "syntax error", RUN_OK, 1, "app.tac:2", "syntax error", files=tac("x = 1\ndef broken(:\n    pass\n")
    ),
    case("indentation error", RUN_OK, 1, "app.tac:2", files=tac("x = 1\n    y = 2\n")),
    case("unterminated string", RUN_OK, 1, "app.tac:1", files=tac("x = 'abc\n")),
    case("null byte", RUN_OK, 1, "app.tac", files={"app.tac": b"x = 1\x00\n"}),
    case("not utf-8", RUN_OK, 1, "app.tac", files={"app.tac": b"x = '\xff\xfe'\n"}),
    case("binary garbage", RUN_OK, 1, "app.tac", files={"app.tac": bytes(range(256))}),
    case("import error", RUN_OK, 1, "app.tac:1", "nosuchmodule", files=tac("import nosuchmodule\n")),
    case("from-import error", RUN_OK, 1, "app.tac:1", "Nope", files=tac("from tapster import Nope\n")),
    case("name error", RUN_OK, 1, "app.tac:2", "NameError", files=tac("x = 1\nundefined_name\n")),
    case("zero division", RUN_OK, 1, "app.tac:1", "ZeroDivisionError", files=tac("x = 1 / 0\n")),
    case(
        "runtime error",
        RUN_OK,
        1,
        "app.tac:1",
        "RuntimeError: boom",
        files=tac("raise RuntimeError('boom')\n"),
    ),
    case("assert", RUN_OK, 1, "app.tac:1", "AssertionError", files=tac("assert False, 'nope'\n")),
    case("recursion", RUN_OK, 1, "app.tac", "RecursionError", files=tac("def f():\n    f()\nf()\n")),
    case(
        "BaseException at import",
        RUN_OK,
        1,
        "app.tac:1",
        "BaseException: boo",
        files=tac("raise BaseException('boo')\n"),
    ),
    case(
        "KeyboardInterrupt at import",
        RUN_OK,
        1,
        "app.tac:1",
        "KeyboardInterrupt",
        files=tac("raise KeyboardInterrupt\n"),
    ),
    case(
        "GeneratorExit at import", RUN_OK, 1, "app.tac:1", "GeneratorExit", files=tac("raise GeneratorExit\n")
    ),
    case("SystemExit at import", RUN_OK, 1, "app.tac", "sys.exit(3)", files=tac("import sys\nsys.exit(3)\n")),
    case(
        "sys.exit() at import", RUN_OK, 1, "app.tac", "sys.exit(None)", files=tac("import sys\nsys.exit()\n")
    ),
    case(
        "sys.exit(msg) at import",
        RUN_OK,
        1,
        "app.tac",
        "sys.exit('bye')",
        files=tac("import sys\nsys.exit('bye')\n"),
    ),
    case("empty file", RUN_OK, 1, "app.tac", "no 'application'", files=tac("")),
    case("comments only", RUN_OK, 1, "app.tac", "no 'application'", files=tac("# nothing\n")),
    case("application = 42", RUN_OK, 1, "app.tac", "an int", files=tac("application = 42\n")),
    case("application = None", RUN_OK, 1, "app.tac", "NoneType", files=tac("application = None\n")),
    case("application = str", RUN_OK, 1, "app.tac", "a str", files=tac("application = 'app'\n")),
    case(
        "application = the class",
        RUN_OK,
        1,
        "app.tac",
        "not a tapster Service",
        files=tac("from tapster import Application\napplication = Application\n"),
    ),
    case(
        "application = a function",
        RUN_OK,
        1,
        "app.tac",
        "a function",
        files=tac("def application():\n    pass\n"),
    ),
    case("missing file", RUN_OK, 1, "app.tac", "No such file"),
    case("directory as -y", RUN_OK, 1, "app.tac", files={"app.tac": None}),
    case(
        "empty application name",
        RUN_OK,
        1,
        "app.tac:2",
        "non-empty name",
        files=tac("from tapster import Application\napplication = Application('')\n"),
    ),
    case(
        "application name not a str",
        RUN_OK,
        1,
        "app.tac:2",
        "non-empty name",
        files=tac("from tapster import Application\napplication = Application(42)\n"),
    ),
    case(
        "duplicate child name",
        RUN_OK,
        1,
        "app.tac:6",
        "'twin'",
        files=tac(
            "from tapster import Application, Service\n"
            "class S(Service):\n    name = 'twin'\n"
            "application = Application('app')\n"
            "S().set_parent(application)\n"
            "S().set_parent(application)\n"
        ),
    ),
    case(
        "second parent",
        RUN_OK,
        1,
        "app.tac:5",
        "already has a parent",
        files=tac(
            "from tapster import Application, MultiService, Service\n"
            "application = Application('app')\n"
            "s = Service()\n"
            "s.set_parent(application)\n"
            "s.set_parent(MultiService())\n"
        ),
    ),
    # a service that fails to start, in every way a service can
    case(
        "start raises OSError",
        RUN_OK,
        1,
        "app/group/broken",
        "OSError: disk",
        files=service_tac("start", "raise OSError('disk')"),
    ),
    case(
        "start raises ValueError",
        RUN_OK,
        1,
        "app/group/broken",
        "ValueError: bad",
        files=service_tac("start", "raise ValueError('bad')"),
    ),
    case(
        "start calls sys.exit(4)",
        RUN_OK,
        1,
        "app/group/broken",
        "sys.exit(4)",
        files=service_tac("start", "sys.exit(4)"),
    ),
    case(
        "start calls sys.exit()",
        RUN_OK,
        1,
        "app/group/broken",
        "sys.exit(None)",
        files=service_tac("start", "sys.exit()"),
    ),
    case(
        "start raises KeyboardInterrupt",
        RUN_OK,
        1,
        "app/group/broken",
        "KeyboardInterrupt",
        files=service_tac("start", "raise KeyboardInterrupt"),
    ),
    case(
        "start raises BaseException",
        RUN_OK,
        1,
        "app/group/broken",
        "BaseException: odd",
        files=service_tac("start", "raise BaseException('odd')"),
    ),
    case(
        "start raises GeneratorExit",
        RUN_OK,
        1,
        "app/group/broken",
        "GeneratorExit",
        files=service_tac("start", "raise GeneratorExit"),
    ),
    case(
        "start raises RecursionError",
        RUN_OK,
        1,
        "app/group/broken",
        "RecursionError",
        files=service_tac("start", "raise RecursionError('deep')"),
    ),
    case(
        "privileged_start raises",
        RUN_OK,
        1,
        "PermissionError: low port",
        files=service_tac("privileged_start", "raise PermissionError('low port')"),
    ),
    case(
        "privileged_start calls sys.exit",
        RUN_OK,
        1,
        "sys.exit(5)",
        files=service_tac("privileged_start", "sys.exit(5)"),
    ),
    case(
        "start fails in a daemon",
        ["-y", "app.tac", "-l", "app.log"],
        1,
        "app/group/broken",
        "ValueError: bad",
        files=service_tac("start", "raise ValueError('bad')"),
        allowed=("app.log",),
    ),
    case(
        "start calls sys.exit in a daemon",
        ["-y", "app.tac", "-l", "app.log"],
        1,
        "app/group/broken",
        "sys.exit(4)",
        files=service_tac("start", "sys.exit(4)"),
        allowed=("app.log",),
    ),
    case(
        "start raises BaseException in a daemon",
        ["-y", "app.tac", "-l", "app.log"],
        1,
        "app/group/broken",
        "BaseException",
        files=service_tac("start", "raise BaseException('odd')"),
        allowed=("app.log",),
    ),
]

# --- endpoints a tac file gives a server (exit 1; the line names the endpoint string) ------------------------

BAD_ENDPOINTS = [
    "tcpp:80",
    "tcp:notaport",
    "tcp:99999",
    "tcp:-1",
    "tcp",
    "",
    ":",
    "tcp:0:bogus=1",
    "tcp:0:interface=999.1.1.1",
    "tcp:0:backlog=x",
    "tcp6:0:interface=127.0.0.1",
    "unix:",
    "unix:/nonexistent-dir/s.sock",
    "unix:s.sock:mode=99",
    "ssl:0",
    "ssl:0:privateKey=missing.pem",
    "systemd:domain=INET:index=0",
    "systemd:domain=BOGUS:index=0",
    "udp:0",
    "tcp:0:interface=::",
]

ENDPOINT_CASES = [
    case(f"endpoint {text!r}", RUN_OK, 1, text or "''", files=endpoint_tac(text)) for text in BAD_ENDPOINTS
]

# --- tapster ctl misused ---------------------------------------------------------------------------------

CTL_CASES = [
    case("ctl without command", ["ctl"], 2, "give a command"),
    case("ctl unknown command", ["ctl", "restart"], 2, "restart"),
    *(
        case(f"ctl stop --timeout {value}", ["ctl", "stop", "--timeout", value], 2, "--timeout", repr(value))
        for value in ("nan", "inf", "-inf", "-1", "x", "1e9", "")
    ),
    case("ctl stop unknown option", ["ctl", "stop", "--force"], 2, "--force"),
    case("ctl status extra argument", ["ctl", "status", "now"], 2, "'now'"),
    case("ctl stop missing pidfile value", ["ctl", "stop", "--pidfile"], 2, "--pidfile"),
    *(
        case(
            f"ctl {command} --pidfile DIR",
            ["ctl", command, "--pidfile", "piddir"],
            1,
            "piddir",
            "a directory",
            files={"piddir": None},
        )
        for command in ("status", "stop", "rotate", "reopen")
    ),
    case(
        "ctl status --pidfile /dev/null",
        ["ctl", "status", "--pidfile", "/dev/null"],
        1,
        "/dev/null",
        "not a regular file",
    ),
    case("ctl rotate with no server", ["ctl", "rotate"], 1, "tapster.pid", "not running"),
    case("ctl reopen with no server", ["ctl", "reopen"], 1, "tapster.pid", "not running"),
    case(
        "ctl rotate on a stale pid file",
        ["ctl", "rotate", "--pidfile", "old.pid"],
        1,
        "old.pid",
        files={"old.pid": "999999"},
    ),
]

# --- the manhole plugin: its endpoints, --auth specs, --namespace (exit 2) -----------------------------------

MANHOLE = ["-n", "-o", "manhole"]

AUTH_CASES = [
    *(
        case(f"auth {spec!r}", [*MANHOLE, "--telnet", "0", "--auth", spec], 2, "--auth", fragment)
        for spec, fragment in (
            ("nosuch:x", "nosuch"),
            ("memory:", "memory"),
            ("memory:user", "memory"),
            ("memory:a:b:c", "memory"),
            ("file:/nonexistent-file", "/nonexistent-file"),
            ("file:", "file"),
            ("passwd:/nonexistent-file", "/nonexistent-file"),
            ("sshkey:/nonexistent-dir", "/nonexistent-dir"),
            ("", "''"),
            (":", ":"),
            ("anonymous:extra", "anonymous"),
            ("unix:extra", "unix"),
        )
    ),
    case("manhole without a listener", MANHOLE, 2, "--ssh", "--telnet"),
    case("manhole without --auth", [*MANHOLE, "--telnet", "0"], 2, "--auth"),
    case(
        "manhole bad telnet endpoint", [*MANHOLE, "--telnet", "tcpp:0", "--auth", "anonymous"], 2, "'tcpp:0'"
    ),
    case("manhole bad telnet port", [*MANHOLE, "--telnet", "99999", "--auth", "anonymous"], 2, "99999"),
    case("manhole unknown option", [*MANHOLE, "--telnett", "0"], 2, "--telnett"),
    case("manhole help-auth-type unknown", [*MANHOLE, "--help-auth-type", "nosuch"], 2, "nosuch"),
]


def _port_in_use_cases() -> list[Any]:
    # the port is filled in by the test (a socket it holds); the line must name the endpoint and say "in use"
    return [
        case(
            "port in use (tac)",
            RUN_OK,
            1,
            "tcp:{port}",
            "in use",
            files=endpoint_tac("tcp:{port}:interface=127.0.0.1"),
        ),
        case(
            "port in use (manhole)",
            [*MANHOLE, "--telnet", "tcp:{port}:interface=127.0.0.1", "--auth", "anonymous"],
            1,
            "tcp:{port}",
            "in use",
        ),
        case(
            "port in use (daemon)",
            ["-y", "app.tac", "-l", "app.log"],
            1,
            "tcp:{port}",
            "in use",
            files=endpoint_tac("tcp:{port}:interface=127.0.0.1"),
            allowed=("app.log",),
        ),
    ]


# --- saved state and the files tapster opens: unusable or unsafe (exit 1; the line names the path) -----------


def _state(body: bytes, modules: str = "builtins") -> bytes:
    """A format-2 saved state around ``body`` (a pickle, or anything)."""
    return b"TAPSTER-STATE 2\nmodules: " + modules.encode() + b"\n" + body


def _pickle_calling(func: object, *args: object) -> bytes:
    """A pickle that calls ``func(*args)`` when loaded (``int('x')`` raises ValueError)."""

    class Call:
        def __reduce__(self) -> tuple[object, tuple[object, ...]]:
            return func, args

    return pickle.dumps(Call(), protocol=5)


FILE_CASES = [
    case("-f a directory", ["-n", "-f", "state"], 1, "state", files={"state": None}),
    case("-f a missing file", ["-n", "-f", "missing.tap"], 1, "missing.tap"),
    case("-f an empty file", ["-n", "-f", "empty.tap"], 1, "empty.tap", files={"empty.tap": b""}),
    case("-f a foreign file", ["-n", "-f", "x.tap"], 1, "x.tap", files={"x.tap": b"not a state at all"}),
    case(
        "-f a pickle that raises when loaded",
        ["-n", "-f", "raises.tap"],
        1,
        "raises.tap",
        files={"raises.tap": _state(_pickle_calling(int, "x"))},
    ),
    case(
        "-f a pickle that raises when loaded, trusted",
        ["-n", "--trust-state-file", "-f", "raises.tap"],
        1,
        "raises.tap",
        files={"raises.tap": _state(_pickle_calling(int, "x"))},
    ),
    case(
        "-f a pickle cut short",
        ["-n", "-f", "cut.tap"],
        1,
        "cut.tap",
        files={"cut.tap": _state(_pickle_calling(int, "x")[:9])},
    ),
    case(
        "-f a pickle that is not a Service",
        ["-n", "-f", "list.tap"],
        1,
        "list.tap",
        files={"list.tap": _state(pickle.dumps([1, 2, 3], protocol=5))},
    ),
    case(
        "-f a module list that is not names",
        ["-n", "-f", "mods.tap"],
        1,
        "mods.tap",
        files={"mods.tap": _state(b"", modules="os;rm -rf")},
    ),
    case("logfile /dev/full", ["-l", "/dev/full", *RUN_OK], 1, "/dev/full", files=tac(OK_TAC)),
    case("logfile /dev/zero", ["-l", "/dev/zero", *RUN_OK], 1, "/dev/zero", files=tac(OK_TAC)),
    case("logfile a directory", ["-l", "logs", *RUN_OK], 1, "logs", files={**tac(OK_TAC), "logs": None}),
    case("pidfile a directory", ["--pidfile", "run", *RUN_OK], 1, "run", files={**tac(OK_TAC), "run": None}),
    case("daemon logfile /dev/full", ["-y", "app.tac", "-l", "/dev/full"], 1, "/dev/full", files=tac(OK_TAC)),
]

ALL_CASES = [
    *USAGE_CASES,
    *PROCESS_CASES,
    *APP_FILE_CASES,
    *ENDPOINT_CASES,
    *CTL_CASES,
    *AUTH_CASES,
    *FILE_CASES,
    *_port_in_use_cases(),
]


def _write(root: Path, files: Files, port: int) -> None:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content.replace("{port}", str(port)))


def _listing(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def check(row: Case, work: Path, port: int) -> tuple[list[str], bool, bool]:
    """Run one case in the empty directory ``work``; return the broken promises, and one-line / traceback seen."""
    work.mkdir()
    _write(work, row.files, port)
    before = _listing(work)
    try:
        done = subprocess.run(
            [*TAPSTER, *(arg.replace("{port}", str(port)) for arg in row.args)],
            cwd=work,
            env={**os.environ, **row.env},
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return ["still running after 30 s (the bad input was accepted)"], False, False
    problems: list[str] = []
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    traceback = "Traceback" in done.stderr or "Traceback" in done.stdout
    if row.status == 2:
        one_line = len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("Usage:"))
    else:
        one_line = len(lines) == 1
    if done.returncode != row.status:
        problems.append(f"exit status {done.returncode}, expected {row.status}")
    if traceback:
        problems.append("a traceback")
    if not one_line:
        problems.append(f"{len(lines)} lines on stderr")
    first = lines[0] if lines else ""
    missing = [f for f in (f.replace("{port}", str(port)) for f in row.fragments) if f not in first]
    if missing:
        problems.append(f"the line does not name {missing}")
    left = {
        name
        for name in _listing(work) - before
        if not any(name == a or name.startswith(a + "/") for a in row.allowed)
    }
    if left:
        problems.append(f"left behind: {sorted(left)}")
    if problems:
        problems.append(f"stderr: {done.stderr.strip()[:600]!r}; stdout tail: {done.stdout[-300:]!r}")
    return problems, one_line, traceback


def test_every_bad_input_is_one_line(tmp_path: Path, figures: Any) -> None:
    """Every case: exit 1 (2 for usage), one line naming the value (+ the usage line), no traceback, no leftovers.

    The cases run two at a time (each one is a real ``tapster`` process); every failure is listed, not only
    the first.
    """
    assert len(ALL_CASES) >= 150, len(ALL_CASES)
    assert len({row.name for row in ALL_CASES}) == len(ALL_CASES), "case names must be unique"
    with socket.socket() as holder:  # the port of the "port in use" cases
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(
                pool.map(lambda ir: check(ir[1], tmp_path / f"case{ir[0]}", port), enumerate(ALL_CASES))
            )
    failures = [
        f"{row.name}: {'; '.join(problems)}"
        for row, (problems, _, _) in zip(ALL_CASES, results, strict=True)
        if problems
    ]
    one_line = sum(1 for _, ok, _ in results if ok)
    tracebacks = sum(1 for _, _, seen in results if seen)
    figures.record(
        "bad-input matrix (options, files, process settings, endpoints, ctl, --auth)",
        f"{len(ALL_CASES)} cases, {one_line} one-line, {tracebacks} tracebacks, {len(failures)} failing",
        ">= 150 cases, all one line with the right status, 0 tracebacks, nothing left behind",
        not failures and len(ALL_CASES) >= 150,
    )
    assert not failures, f"{len(failures)} of {len(ALL_CASES)} cases failed:\n" + "\n".join(failures)
