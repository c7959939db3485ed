"""StreamToLogger and capture_stdio: print, stderr and warnings end up in the log."""

from __future__ import annotations

import io
import logging
import sys
import threading
import warnings
from collections.abc import Iterator

import pytest

from tapster.log import StreamToLogger, capture_stdio
from tapster.log._context import record_context


class Collect(logging.Handler):
    """Keeps (logger name, level, context, message) of every record."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.name, record.levelno, record_context(record), record.getMessage()))


@pytest.fixture
def collect() -> Iterator[Collect]:
    """A handler on a private logger 'tapster.test.capture' that does not propagate."""
    handler = Collect()
    logger = logging.getLogger("tapster.test.capture")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield handler
    logger.removeHandler(handler)


def stream(level: int = logging.INFO, **kwargs: object) -> StreamToLogger:
    return StreamToLogger(logging.getLogger("tapster.test.capture"), level, "stdout", **kwargs)  # type: ignore[arg-type]


def messages(collect: Collect) -> list[str]:
    return [seen[3] for seen in collect.seen]


def test_complete_lines_are_logged_partial_lines_wait(collect: Collect) -> None:
    """Text is logged line by line once its newline arrives, with the stream's level and context."""
    out = stream(logging.INFO)
    assert out.write("hel") == 3
    assert collect.seen == []
    out.write("lo\nsecond\nthi")
    assert collect.seen == [
        ("tapster.test.capture", logging.INFO, "stdout", "hello"),
        ("tapster.test.capture", logging.INFO, "stdout", "second"),
    ]
    out.write("rd\n")
    assert messages(collect)[-1] == "third"


def test_print_goes_through_as_lines(collect: Collect) -> None:
    """print() (text and newline in separate writes) gives one record per printed line, blank lines kept."""
    out = stream()
    print("a", 1, file=out)
    print(file=out)
    print("x\ny", file=out)
    assert messages(collect) == ["a 1", "", "x", "y"]


def test_percent_signs_are_not_formatting(collect: Collect) -> None:
    """A printed '%s' or '%' is logged literally."""
    out = stream()
    out.write("100% of %s\n")
    assert messages(collect) == ["100% of %s"]


def test_flush_keeps_partial_line_close_logs_it(collect: Collect) -> None:
    """flush() does not cut a line in two; close() logs what is left and later writes fail like a file's."""
    out = stream()
    out.write("part")
    out.flush()
    assert collect.seen == []
    out.close()
    assert messages(collect) == ["part"]
    assert out.closed
    with pytest.raises(ValueError, match="closed"):
        out.write("more\n")
    out.close()


def test_file_like_surface() -> None:
    """isatty is False, fileno raises io.UnsupportedOperation, encoding is utf-8, bytes are refused."""
    out = stream(name="<stdout>")
    assert out.isatty() is False
    with pytest.raises(io.UnsupportedOperation):
        out.fileno()
    assert out.encoding == "utf-8"
    assert out.writable()
    assert not out.readable()
    assert out.name == "<stdout>"
    with pytest.raises(TypeError, match="bytes"):
        out.write(b"x")  # type: ignore[arg-type]


def test_overlong_partial_line_is_not_held_forever(collect: Collect) -> None:
    """Output with no newline at all is logged once it grows past 64 KiB instead of piling up."""
    out = stream()
    out.write("x" * 70_000)
    assert len(collect.seen) == 1
    assert messages(collect)[0] == "x" * 70_000


def test_nested_write_goes_to_fallback(collect: Collect) -> None:
    """A handler that writes to the capturing stream while handling its line does not loop: it hits the fallback."""
    fallback = io.StringIO()
    out = stream(fallback=fallback)

    class Noisy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            out.write(f"handler saw {record.getMessage()}\n")

    noisy = Noisy()
    logger = logging.getLogger("tapster.test.capture")
    logger.addHandler(noisy)
    try:
        out.write("line\n")
    finally:
        logger.removeHandler(noisy)
    assert messages(collect) == ["line"]
    assert fallback.getvalue() == "handler saw line\n"


def test_threads_do_not_mix_lines(collect: Collect) -> None:
    """Concurrent writers lose no text and produce one record per newline."""
    out = stream()
    start = threading.Barrier(4)

    def work(number: int) -> None:
        start.wait()
        for _ in range(200):
            print(f"thread {number}", "piece", file=out)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # print writes 'thread N', ' ', 'piece' and '\n' separately, so pieces of different threads may share a
    # line; what must hold is that no write is lost or torn.
    assert len(collect.seen) == 800
    assert sum(len(message) for message in messages(collect)) == 800 * len("thread 0 piece")


def fake_stdio(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """Throwaway sys.stdout/sys.stderr for this test (inside the test: pytest resets them between phases)."""
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    return err


@pytest.fixture
def captured() -> Iterator[Collect]:
    """The stdout/stderr/py.warnings loggers collected; warnings capture and sys.stdout/stderr restored after."""
    handler = Collect()
    loggers = [logging.getLogger(name) for name in ("stdout", "stderr", "py.warnings")]
    saved = [(logger.propagate, logger.level) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logging.captureWarnings(False)
        for logger, (propagate, level) in zip(loggers, saved, strict=True):
            logger.removeHandler(handler)
            logger.propagate = propagate
            logger.setLevel(level)


def test_capture_stdio_routes_stdout_stderr_and_warnings(
    captured: Collect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """print goes to 'stdout' at INFO, stderr to 'stderr' at ERROR, warnings to py.warnings."""
    original_err = fake_stdio(monkeypatch)
    capture_stdio()
    assert isinstance(sys.stdout, StreamToLogger)
    assert isinstance(sys.stderr, StreamToLogger)
    assert sys.stderr.fallback is original_err
    print("hello")
    print("oops", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("careful", UserWarning, stacklevel=1)
    assert captured.seen[0] == ("stdout", logging.INFO, "stdout", "hello")
    assert captured.seen[1] == ("stderr", logging.ERROR, "stderr", "oops")
    name, level, _, text = captured.seen[2]
    assert (name, level) == ("py.warnings", logging.WARNING)
    assert "UserWarning: careful" in text


def test_capture_stdio_twice_does_not_wrap_twice(captured: Collect, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second capture_stdio() keeps the first wrappers."""
    fake_stdio(monkeypatch)
    capture_stdio()
    out, err = sys.stdout, sys.stderr
    capture_stdio()
    assert sys.stdout is out
    assert sys.stderr is err


def test_logging_error_report_while_captured_does_not_recurse(
    captured: Collect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing handler's error report (written to sys.stderr) while stderr is captured ends, via the fallback."""
    original_err = fake_stdio(monkeypatch)
    capture_stdio()

    class Broken(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                raise RuntimeError("handler broke")
            except RuntimeError:
                self.handleError(record)  # logging's report goes to sys.stderr, i.e. back into the capture

    broken = Broken()
    stderr_logger = logging.getLogger("stderr")
    stderr_logger.addHandler(broken)
    try:
        print("trigger", file=sys.stderr)
    finally:
        stderr_logger.removeHandler(broken)
    assert ("stderr", logging.ERROR, "stderr", "trigger") in captured.seen
    assert "RuntimeError: handler broke" in original_err.getvalue()
