"""The access line's log record is made by copying a first one (cheaper than LogRecord.__init__ per request): it must
still be a whole, fresh, correct record for any handler, follow a record factory a program installs, honour the
logger's filters, and carry the worker's own pid after a fork."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("aiohttp")

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from support import run_in_child
from tapster.services._web_access import CombinedLogFormat


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def access() -> Iterator[tuple[logging.Logger, Keep]]:
    logger = logging.getLogger("tests.web.access_records")
    kept = Keep()
    logger.handlers[:] = [kept]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, kept
    logger.handlers.clear()
    logger.filters.clear()


def log_one(logger: logging.Logger, path: str = "/a", agent: str = "curl") -> None:
    request = make_mocked_request("GET", path, headers={"User-Agent": agent})
    CombinedLogFormat(logger, "").log(request, web.Response(body=b"x" * 10), 0.001)


def test_each_access_record_is_a_whole_fresh_standard_record(access: tuple[logging.Logger, Keep]) -> None:
    logger, kept = access
    before = time.time()
    log_one(logger, "/first", "one")
    kept.records[0].extra_field = "set by a handler"  # a handler changing its record changes no other
    log_one(logger, "/second", "two")
    after = time.time()
    first, second = kept.records
    standard = logger.makeRecord(logger.name, logging.INFO, "f", 0, "m", (), None)
    assert set(vars(standard)) <= set(vars(second))
    assert not hasattr(second, "extra_field")
    assert '"GET /first HTTP/1.1" 200 10 "-" "one"' in first.getMessage()
    assert '"GET /second HTTP/1.1" 200 10 "-" "two"' in second.getMessage()
    for record in (first, second):
        assert before <= record.created <= after
        assert 0 <= (record.created % 1) * 1000 - record.msecs < 1.001
        assert record.levelno == logging.INFO and record.levelname == "INFO" and record.name == logger.name
        assert record.process == os.getpid() and record.thread == threading.get_ident()
        assert record.threadName == threading.current_thread().name
    assert second.created >= first.created


def test_a_record_factory_the_program_installs_makes_the_access_records(
    access: tuple[logging.Logger, Keep],
) -> None:
    logger, kept = access
    standard = logging.getLogRecordFactory()

    def tagged(*args: object, **kwargs: object) -> logging.LogRecord:
        record = standard(*args, **kwargs)  # type: ignore[arg-type]
        record.tag = "from the factory"
        return record

    log_one(logger)  # a template is made before the factory exists: it must not be used after
    logging.setLogRecordFactory(tagged)
    try:
        log_one(logger)
    finally:
        logging.setLogRecordFactory(standard)
    assert getattr(kept.records[1], "tag", None) == "from the factory"


def test_the_access_loggers_filters_and_disabling_still_apply(access: tuple[logging.Logger, Keep]) -> None:
    logger, kept = access
    logger.addFilter(lambda record: "/secret" not in record.getMessage())
    log_one(logger, "/secret")
    log_one(logger, "/public")
    assert [("/public" in record.getMessage()) for record in kept.records] == [True]
    logger.disabled = True
    try:
        log_one(logger, "/public")
    finally:
        logger.disabled = False
    assert len(kept.records) == 1


def test_a_forked_worker_logs_its_own_pid(access: tuple[logging.Logger, Keep]) -> None:
    logger, kept = access
    log_one(logger)  # the parent's template exists before the fork

    def in_child() -> tuple[int, int]:
        log_one(logger)
        return kept.records[-1].process or 0, os.getpid()

    logged, child = run_in_child(in_child)  # type: ignore[misc]
    assert logged == child != os.getpid()


def test_thread_task_and_relative_time_are_each_records_own(access: tuple[logging.Logger, Keep]) -> None:
    """What differs per call is not copied from the first record (found by review): the thread and its name (a
    thread renamed, or a new thread reusing an ident), the asyncio task (Python 3.12+'s ``taskName``), and
    ``relativeCreated`` (nanoseconds since 3.13): each as a standard record made at the same moment has it."""
    import asyncio

    logger, kept = access
    log_one(logger)
    threading.current_thread().name, old_name = "renamed-for-the-test", threading.current_thread().name
    try:
        log_one(logger)
        standard = logger.makeRecord(logger.name, logging.INFO, "f", 0, "m", (), None)
    finally:
        threading.current_thread().name = old_name
    assert kept.records[-1].threadName == "renamed-for-the-test"
    assert abs(kept.records[-1].relativeCreated - standard.relativeCreated) < 1000

    other = threading.Thread(target=log_one, args=(logger,), name="another-thread")
    other.start()
    other.join()
    assert (kept.records[-1].threadName, kept.records[-1].thread) == ("another-thread", other.ident)

    async def log_in_task() -> None:
        log_one(logger)

    async def in_tasks() -> None:
        for name in ("conn-1", "conn-2"):
            await asyncio.create_task(log_in_task(), name=name)

    asyncio.run(in_tasks())
    if hasattr(standard, "taskName"):  # Python 3.12+
        assert [record.taskName for record in kept.records[-2:]] == ["conn-1", "conn-2"]
