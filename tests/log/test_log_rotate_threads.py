"""Rotation under load: concurrent writers, size rotation and rotate() from another thread lose and reorder nothing."""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path

import pytest

from tapster.log import JsonFormatter, RotatingFileHandler, TextFormatter

WRITERS = 2
LINES = 15_000  # per writer
MAX_BYTES = 20_000
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4} \[w(\d)\] line (\d+) of writer \d\n")


def read_in_order(directory: Path, name: str) -> list[str]:
    """All lines of NAME.N (oldest first) ... NAME.1, NAME, checking that no file passed MAX_BYTES."""
    numbers = sorted((int(p.name.rsplit(".", 1)[1]) for p in directory.glob(f"{name}.*")), reverse=True)
    lines: list[str] = []
    for path in [*(directory / f"{name}.{n}" for n in numbers), directory / name]:
        data = path.read_bytes()
        assert len(data) <= MAX_BYTES, f"{path.name} has {len(data)} bytes"
        assert not data or data.endswith(b"\n"), f"{path.name} ends in a partial line"
        lines.extend(data.decode("utf-8").splitlines(keepends=True))
    return lines


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_line_lost_or_reordered_across_rotations(tmp_path: Path, fmt: str) -> None:
    """Two threads logging numbered lines while the file rotates by size and by rotate() calls from a third."""
    handler = RotatingFileHandler(str(tmp_path / "app.log"), max_bytes=MAX_BYTES)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger = logging.getLogger(f"tapster.test.rotate_threads.{fmt}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)

    rotate_wanted = threading.Event()
    writers_done = threading.Event()
    manual_rotations = 0
    failures: list[BaseException] = []

    def rotator() -> None:
        nonlocal manual_rotations
        try:
            while not writers_done.is_set():
                if rotate_wanted.wait(0.05):
                    rotate_wanted.clear()
                    handler.rotate()
                    manual_rotations += 1
        except BaseException as exc:
            failures.append(exc)

    def writer(number: int) -> None:
        context = {"context": f"w{number}"}
        for seq in range(LINES):
            logger.info("line %d of writer %d", seq, number, extra=context)
            if number == 0 and seq % 1000 == 500:
                rotate_wanted.set()

    rotating = threading.Thread(target=rotator)
    rotating.start()
    writing = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    try:
        for thread in writing:
            thread.start()
        for thread in writing:
            thread.join()
    finally:
        writers_done.set()
        rotating.join()
        logger.removeHandler(handler)
        handler.close()
    assert not failures

    seen: dict[int, list[int]] = {n: [] for n in range(WRITERS)}
    for line in read_in_order(tmp_path, "app.log"):
        if fmt == "json":
            entry = json.loads(line)
            writer_number = int(entry["context"][1:])
            seq = int(entry["message"].split()[1])
        else:
            match = TEXT_LINE.fullmatch(line)
            assert match, f"malformed line {line!r}"
            writer_number, seq = int(match[1]), int(match[2])
        seen[writer_number].append(seq)
    for number in range(WRITERS):
        assert seen[number] == list(range(LINES)), f"writer {number}: lines lost or out of order"
    assert manual_rotations >= 5
    assert len(list(tmp_path.iterdir())) > 30  # size rotations happened as well
