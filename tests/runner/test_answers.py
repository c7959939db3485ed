"""The answer file between a server and `tapster ctl rotate/reopen` (runner/_answers.py), on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tapster.runner._answers import AnswerFile, read_answer, wait_for_answer


def test_answers_replace_each_other_and_carry_sequence_pid_and_reason(tmp_path: Path) -> None:
    """Each answer replaces the line; a shorter answer leaves nothing of the longer one behind."""
    answers = AnswerFile(str(tmp_path / "x.pid.answer"))
    answers.open()
    answers.answer("rotate", "failed", "[Errno 13] Permission denied: '/var/log/app/.x.new'")
    first = read_answer(answers.path)
    assert first is not None and (first.pid, first.outcome) == (os.getpid(), "failed")
    assert first.reason == "[Errno 13] Permission denied: '/var/log/app/.x.new'"
    answers.answer("reopen", "ok")
    assert (tmp_path / "x.pid.answer").read_text() == f"{first.sequence + 1} {os.getpid()} reopen ok\n"
    answers.remove(None)
    assert not (tmp_path / "x.pid.answer").exists()


def test_a_process_that_re_executed_itself_answers_with_a_new_sequence(tmp_path: Path) -> None:
    """Same pid, a new image (ctl upgrade): its first answer is not taken for the old image's last one."""
    old = AnswerFile(str(tmp_path / "x.pid.answer"))
    old.open()
    old.answer("upgrade", "ok")
    before = read_answer(old.path)
    old.close()
    new = AnswerFile(str(tmp_path / "x.pid.answer"))
    new.open()
    new.answer("upgrade", "ok")
    assert wait_for_answer(new.path, os.getpid(), before, 1) is not None
    new.remove(None)


def test_wait_returns_only_a_newer_answer_and_gives_up_at_the_timeout(tmp_path: Path) -> None:
    """An answer already there before the signal is not taken for the new one; none within the timeout is None."""
    answers = AnswerFile(str(tmp_path / "x.pid.answer"))
    answers.open()
    answers.answer("rotate", "ok")
    before = read_answer(answers.path)
    assert wait_for_answer(answers.path, os.getpid(), before, 0.05) is None
    answers.answer("rotate", "skipped", "the log is not a file")
    newer = wait_for_answer(answers.path, os.getpid(), before, 1)
    assert before is not None and newer is not None
    assert newer.sequence == before.sequence + 1 and newer.outcome == "skipped"
    answers.remove(None)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file another user's")
def test_an_answer_file_of_another_owner_is_ignored(tmp_path: Path) -> None:
    """ctl ignores an answer file not owned by the pid file's owner: someone else planted it."""
    path = tmp_path / "x.pid.answer"
    path.write_text(f"1 {os.getpid()} rotate ok\n")
    os.chown(path, 65534, 65534)
    assert read_answer(str(path)) is not None
    assert read_answer(str(path), owner=0) is None
