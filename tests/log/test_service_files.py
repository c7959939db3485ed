"""A service's own log file under --workers: the master writes only the files its own tree names, whatever a worker
sends (a worker runs as the unprivileged user; the master is root)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tapster.log._service_files import close_files_for_workers, open_files_for_workers
from tapster.runner._worker import RECORD_MARK
from tapster.runner._worker_log import OutputRelay


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def main_log() -> Iterator[Keep]:
    kept = Keep()
    logging.getLogger().addHandler(kept)
    yield kept
    logging.getLogger().removeHandler(kept)
    close_files_for_workers()


def worker_line(message: str, file: str) -> bytes:
    entry = {
        "time": 1.0,
        "level": logging.INFO,
        "logger": "tapster.web.access.1",
        "message": message,
        "file": file,
    }
    return RECORD_MARK + json.dumps(entry).encode() + b"\n"


def test_a_line_for_a_file_of_the_tree_is_written_there_bare(tmp_path: Path, main_log: Keep) -> None:
    access = tmp_path / "access.log"
    open_files_for_workers([str(access)])
    OutputRelay(1).feed(worker_line('127.0.0.1 - - [x] "GET / HTTP/1.1" 200 5 "-" "-"', str(access)))
    assert access.read_text() == '127.0.0.1 - - [x] "GET / HTTP/1.1" 200 5 "-" "-"\n'
    assert main_log.messages == []


def test_a_worker_naming_another_file_never_makes_the_master_write_it(tmp_path: Path, main_log: Keep) -> None:
    access, elsewhere = tmp_path / "access.log", tmp_path / "cron-job"
    open_files_for_workers([str(access)])
    OutputRelay(1).feed(worker_line("* * * * * root sh -c evil", str(elsewhere)))
    OutputRelay(1).feed(worker_line("not a path", 42))  # type: ignore[arg-type]
    assert not elsewhere.exists() and access.read_text() == ""
    assert main_log.messages == ["* * * * * root sh -c evil", "not a path"]  # logged as any worker line
