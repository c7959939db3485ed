"""install(): choosing the destination from LogConfig, replacing it, and the LogDestination handle."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import tapster.log
from tapster.errors import StartupError
from tapster.log import LogConfig, LogDestination, RotatingFileHandler, _setup, _syslog, install


@pytest.fixture(autouse=True)
def clean_root() -> Iterator[None]:
    """Whatever a test installs is closed, and the root logger and logging flags are as before."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    flags = (logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    yield
    for destination in list(_setup._installed):
        destination.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.logThreads, logging.logProcesses, logging.logMultiprocessing = flags


def test_file_destination(tmp_path: Path) -> None:
    """A logfile path gives a rotating file handler on the root logger writing twistd lines."""
    path = tmp_path / "app.log"
    destination = install(LogConfig(logfile=str(path), max_bytes=100, keep=1))
    assert isinstance(destination.handler, RotatingFileHandler)
    assert destination.handler in logging.getLogger().handlers
    assert destination.description == str(path)
    logging.getLogger("tapster.test.setup").info("hello %s", "file")
    assert path.read_text().endswith(" [-] hello file\n")
    assert destination.handler.max_bytes == 100
    assert destination.handler.keep == 1


def test_stdout_destination_for_none() -> None:
    """logfile None logs text lines to the given stream (stdout by default); '-' is the option parser's business."""
    for logfile in (None,):
        out = io.StringIO()
        destination = install(LogConfig(logfile=logfile), stream=out)
        assert destination.description == "stdout"
        logging.getLogger("tapster.test.setup").warning("to %s", "stdout")
        assert out.getvalue().endswith(" [-] to stdout\n")
        assert not destination.rotate()
        assert not destination.reopen()


def test_json_format_to_file(tmp_path: Path) -> None:
    """format='json' writes one parseable JSON object per line."""
    path = tmp_path / "app.json"
    install(LogConfig(logfile=str(path), format="json"))
    logger = logging.getLogger("tapster.test.setup")
    logger.info("one")
    try:
        raise KeyError("k")
    except KeyError:
        logger.exception("two")
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert [entry["message"] for entry in entries] == ["one", "two"]
    assert entries[0]["logger"] == "tapster.test.setup"
    assert "exception" not in entries[0]
    assert entries[1]["level"] == "ERROR"
    assert "KeyError: 'k'" in entries[1]["exception"]


def test_json_format_to_stdout() -> None:
    """format='json' applies to stdout as well."""
    out = io.StringIO()
    install(LogConfig(logfile=None, format="json"), stream=out)
    logging.getLogger("tapster.test.setup").info("x")
    assert json.loads(out.getvalue())["message"] == "x"


def test_level_sets_root_level() -> None:
    """config.level is the root logger's level: records below it are not written."""
    out = io.StringIO()
    install(LogConfig(logfile=None, level=logging.WARNING), stream=out)
    logger = logging.getLogger("tapster.test.setup")
    logger.info("quiet")
    logger.warning("loud")
    assert "quiet" not in out.getvalue()
    assert "loud" in out.getvalue()


def test_install_again_replaces_previous_and_keeps_foreign_handlers(tmp_path: Path) -> None:
    """A second install removes and closes the first destination's handler, not handlers others added."""
    foreign = logging.NullHandler()
    logging.getLogger().addHandler(foreign)
    first = install(LogConfig(logfile=str(tmp_path / "a.log")))
    second = install(LogConfig(logfile=str(tmp_path / "b.log")))
    root_handlers = logging.getLogger().handlers
    assert first.handler not in root_handlers
    assert second.handler in root_handlers
    assert foreign in root_handlers
    logging.getLogger("tapster.test.setup").info("where")
    assert (tmp_path / "a.log").read_text() == ""
    assert "where" in (tmp_path / "b.log").read_text()


def test_rotate_reopen_close(tmp_path: Path) -> None:
    """LogDestination.rotate/reopen act on the file and report True; close takes the handler off the root."""
    path = tmp_path / "app.log"
    destination = install(LogConfig(logfile=str(path)))
    logger = logging.getLogger("tapster.test.setup")
    logger.info("one")
    assert destination.rotate() is True
    assert "one" in (tmp_path / "app.log.1").read_text()
    path.rename(tmp_path / "moved")
    assert destination.reopen() is True
    logger.info("two")
    assert "two" in path.read_text()
    destination.close()
    assert destination.handler not in logging.getLogger().handlers
    logger.info("three")
    assert "three" not in path.read_text()
    destination.close()


def test_daily_passed_through(tmp_path: Path) -> None:
    """daily=True reaches the file handler."""
    destination = install(LogConfig(logfile=str(tmp_path / "app.log"), daily=True, max_bytes=None))
    assert isinstance(destination.handler, RotatingFileHandler)
    assert destination.handler.daily
    assert destination.handler.max_bytes == 0


def test_bad_file_is_startup_error_and_previous_stays(tmp_path: Path) -> None:
    """An unopenable log file raises StartupError and leaves the earlier destination installed."""
    first = install(LogConfig(logfile=str(tmp_path / "a.log")))
    with pytest.raises(StartupError, match="cannot open log file"):
        install(LogConfig(logfile=str(tmp_path / "missing" / "b.log")))
    assert first.handler in logging.getLogger().handlers


def test_unknown_format_is_refused_by_the_option() -> None:
    """An unknown --log-format is a usage error naming it, from the option's coercer (checked there only)."""
    from tapster.errors import UsageError
    from tapster.runner._options import ServerOptions

    with pytest.raises(UsageError, match="'xml'"):
        ServerOptions().parse_options(["--log-format", "xml", "-y", "app.tac"])


def test_syslog_destination(monkeypatch: pytest.MonkeyPatch) -> None:
    """syslog=True sends '<pri>prefix[pid]: [context] message' to the syslog socket, ahead of logfile."""
    directory = tempfile.mkdtemp(prefix="tsl")
    path = os.path.join(directory, "log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        server.bind(path)
        server.settimeout(10)
        monkeypatch.setattr(_syslog, "SYSLOG_SOCKET", path)
        destination = install(LogConfig(logfile="/nonexistent/ignored.log", syslog=True, prefix="svc"))
        assert destination.description == "syslog (prefix svc)"
        assert not destination.rotate()
        logging.getLogger("tapster.test.setup").info("via syslog")
        assert server.recv(4096) == f"<30>svc[{os.getpid()}]: [-] via syslog\x00".encode()
    finally:
        server.close()
        shutil.rmtree(directory)


def test_syslog_missing_socket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """syslog=True without a syslog socket is a StartupError naming the socket path."""
    monkeypatch.setattr(_syslog, "SYSLOG_SOCKET", str(tmp_path / "log"))
    with pytest.raises(StartupError, match=f"no syslog socket at {tmp_path / 'log'}"):
        install(LogConfig(logfile=None, syslog=True))


FACTORY_MODULE = """
import logging

class Listing(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(self.format(record))

class Formatted(Listing):
    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("custom %(levelname)s %(message)s"))

class Holder:
    make = Listing

def broken():
    raise RuntimeError("factory exploded")

def not_a_handler():
    return 42

NOT_CALLABLE = 3
"""


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module of handler factories; returns its name."""
    (tmp_path / "tapster_test_factories.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tapster_test_factories", raising=False)
    return "tapster_test_factories"


@pytest.mark.parametrize("spec", ["{m}.Listing", "{m}:Listing", "{m}:Holder.make"])
def test_logger_factory_wins(factories: str, spec: str, tmp_path: Path) -> None:
    """A logger_factory's handler is used over syslog and logfile, and gets the configured format if it has none."""
    name = spec.format(m=factories)
    destination = install(LogConfig(logfile=str(tmp_path / "unused.log"), syslog=True, logger_factory=name))
    assert destination.description == name
    assert not (tmp_path / "unused.log").exists()
    logging.getLogger("tapster.test.setup").info("custom")
    assert destination.handler.lines[-1].endswith(" [-] custom")  # type: ignore[attr-defined]
    assert not destination.rotate()


def test_logger_factory_keeps_its_own_formatter_and_record_fields(factories: str) -> None:
    """A handler with its own formatter keeps it, and process/thread fields stay available to it."""
    destination = install(LogConfig(logfile=None, logger_factory=f"{factories}:Formatted"))
    logging.getLogger("tapster.test.setup").warning("mine")
    assert destination.handler.lines == ["custom WARNING mine"]  # type: ignore[attr-defined]
    assert logging.logProcesses and logging.logThreads


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz.make", r"cannot import log handler factory 'no_such_module_xyz\.make'"),
        ("{m}:missing", r"log handler factory '{m}:missing' not found"),
        ("{m}:NOT_CALLABLE", r"log handler factory '{m}:NOT_CALLABLE' is a int, not callable"),
        ("{m}:broken", r"log handler factory '{m}:broken' failed: RuntimeError: factory exploded"),
        (
            "{m}:not_a_handler",
            r"log handler factory '{m}:not_a_handler' returned a int, not a logging\.Handler",
        ),
        ("nodots", r"bad log handler factory 'nodots'"),
    ],
)
def test_bad_logger_factory(factories: str, spec: str, message: str) -> None:
    """Each way a logger_factory can be wrong is one StartupError naming it."""
    with pytest.raises(StartupError, match=message.format(m=factories)):
        install(LogConfig(logfile=None, logger_factory=spec.format(m=factories)))


def test_record_fields_stay_available_to_other_handlers() -> None:
    """Installing tapster's destination leaves process/thread fields on for handlers an application adds."""
    install(LogConfig(logfile=None), stream=io.StringIO())
    assert logging.logThreads and logging.logProcesses


def test_destination_close_is_idempotent() -> None:
    """Closing a destination twice is harmless."""
    destination = install(LogConfig(logfile=None), stream=io.StringIO())
    assert isinstance(destination, LogDestination)
    destination.close()
    destination.close()


def test_public_names() -> None:
    """The package exports exactly its public API."""
    assert sorted(tapster.log.__all__) == sorted(
        [
            "LogConfig",
            "install",
            "LogDestination",
            "TextFormatter",
            "JsonFormatter",
            "RotatingFileHandler",
            "StreamToLogger",
            "capture_stdio",
            "log_context",
            "follow_log_commands",
            "DEFAULT_CONTEXT",
        ]
    )
    for name in tapster.log.__all__:
        assert hasattr(tapster.log, name)


def test_import_is_cheap() -> None:
    """Importing tapster.log (beyond tapster itself) loads neither json nor logging.handlers."""
    code = (
        "import sys, tapster; before = set(sys.modules); import tapster.log; "
        "print(sorted(m for m in ('json', 'logging.handlers') if m in sys.modules and m not in before))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
