"""The text (twistd) and JSON line formats."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import time
from collections.abc import Iterator
from types import TracebackType

import pytest

from tapster.log import JsonFormatter, TextFormatter, log_context

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

# 2026-11-23 07:38:28.250 UTC
WHEN = 1795419508.25


@pytest.fixture
def tz() -> Iterator[None]:
    """Run the test in a fixed, non-UTC zone (POSIX TZ syntax: needs no tz database), then restore."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "XST-05:30"
    time.tzset()
    yield
    if saved is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = saved
    time.tzset()


def make_record(
    msg: str,
    *args: object,
    level: int = logging.INFO,
    created: float = WHEN,
    exc_info: ExcInfo | None = None,
    extra: dict[str, object] | None = None,
) -> logging.LogRecord:
    record = logging.getLogger("tapster.test").makeRecord(
        "tapster.test", level, __file__, 1, msg, args, exc_info, extra=extra
    )
    record.created = created
    record.msecs = (created - int(created)) * 1000
    return record


def raised() -> ExcInfo:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        return (type(exc), exc, exc.__traceback__)


def test_text_line_is_twistd_format(tz: None) -> None:
    """A record becomes `YYYY-MM-DD HH:MM:SS+HHMM [context] message` in local time, %-args applied."""
    line = TextFormatter().format(make_record("hello %s, %d", "world", 3))
    assert line == "2026-11-23 13:08:28+0530 [-] hello world, 3"


def test_text_line_has_no_level_prefix(tz: None) -> None:
    """Warnings and errors look like any other line, as in twistd's log."""
    formatter = TextFormatter()
    for level in (logging.DEBUG, logging.WARNING, logging.ERROR, logging.CRITICAL):
        assert formatter.format(make_record("x", level=level)) == "2026-11-23 13:08:28+0530 [-] x"


def test_text_time_follows_the_record_across_seconds(tz: None) -> None:
    """The cached time text changes when the record's second changes."""
    formatter = TextFormatter()
    assert formatter.format(make_record("a")).startswith("2026-11-23 13:08:28+0530 ")
    assert formatter.format(make_record("b", created=WHEN + 1)).startswith("2026-11-23 13:08:29+0530 ")
    assert formatter.format(make_record("c", created=WHEN + 0.5)).startswith("2026-11-23 13:08:28+0530 ")


def test_text_multiline_continues_with_tab(tz: None) -> None:
    """Every line after the first of a message starts with a TAB."""
    line = TextFormatter().format(make_record("one\ntwo\nthree"))
    assert line == "2026-11-23 13:08:28+0530 [-] one\n\ttwo\n\tthree"


def test_text_trailing_newlines_dropped(tz: None) -> None:
    """A message ending in newlines (as warnings do) leaves no empty continuation line."""
    assert TextFormatter().format(make_record("a\nb\n\n")) == "2026-11-23 13:08:28+0530 [-] a\n\tb"


def test_text_exception_appended_with_tabs(tz: None) -> None:
    """A record with exc_info carries its traceback on TAB-indented lines after the message."""
    line = TextFormatter().format(make_record("failed", exc_info=raised()))
    first, *rest = line.split("\n")
    assert first == "2026-11-23 13:08:28+0530 [-] failed"
    assert rest[0] == "\tTraceback (most recent call last):"
    assert rest[-1] == "\tValueError: boom"
    assert all(part.startswith("\t") for part in rest)


def test_text_context_from_contextvar() -> None:
    """The current log_context fills the [context] field."""

    def inside() -> str:
        log_context.set("Echo,3,127.0.0.1")
        return TextFormatter().format(make_record("hi"))

    assert " [Echo,3,127.0.0.1] hi" in contextvars.copy_context().run(inside)
    assert " [-] hi" in TextFormatter().format(make_record("hi"))


def test_text_context_from_extra_wins() -> None:
    """An explicit extra={'context': ...} overrides the context variable."""

    def inside() -> str:
        log_context.set("ambient")
        return TextFormatter().format(make_record("hi", extra={"context": "explicit"}))

    assert " [explicit] hi" in contextvars.copy_context().run(inside)


def test_json_line_fields(tz: None) -> None:
    """A JSON line holds time with offset, level, logger, context and message, and no exception key."""
    line = JsonFormatter().format(make_record("hello %s", "wörld", level=logging.WARNING))
    assert "\n" not in line
    assert "wörld" in line  # not \u escaped
    assert json.loads(line) == {
        "time": "2026-11-23T13:08:28.250+05:30",
        "level": "WARNING",
        "logger": "tapster.test",
        "context": "-",
        "message": "hello wörld",
    }


def test_json_exception_and_multiline() -> None:
    """A traceback goes in 'exception'; newlines are escaped, so the record stays on one line."""
    line = JsonFormatter().format(make_record("a\nb", level=logging.ERROR, exc_info=raised()))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "a\nb"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith("ValueError: boom")


def test_json_context_from_contextvar_and_extra() -> None:
    """The JSON context comes from log_context, and extra={'context': ...} wins over it."""

    def inside() -> tuple[str, str]:
        log_context.set("svc")
        formatter = JsonFormatter()
        return (
            formatter.format(make_record("x")),
            formatter.format(make_record("x", extra={"context": "mine"})),
        )

    ambient, explicit = contextvars.copy_context().run(inside)
    assert json.loads(ambient)["context"] == "svc"
    assert json.loads(explicit)["context"] == "mine"


def test_json_time_in_utc_zone() -> None:
    """In UTC the offset is written +00:00 and milliseconds are zero-padded."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        entry = json.loads(JsonFormatter().format(make_record("x", created=1795419508.0625)))
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()
    assert entry["time"] == "2026-11-23T07:38:28.062+00:00"
