"""Tests for the manhole interpreter: top-level await, results, tracebacks, interrupts, and where print goes."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from support import wait_until_async
from tapster.manhole import _stdio
from tapster.manhole._interpreter import Interpreter, Outcome, make_namespace


class Collect:
    """A SessionWriter that keeps what was written."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.err: list[str] = []
        self.closed = False

    def write(self, text: str) -> None:
        self.out.append(text)

    def write_error(self, text: str) -> None:
        self.err.append(text)

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def interpreter(**names: Any) -> tuple[Interpreter, Collect]:
    writer = Collect()
    return Interpreter(make_namespace(names), writer), writer


def test_expression_value_is_shown_and_kept_as_underscore():
    """The value of a final expression is shown with repr and kept as _; None is not shown."""
    interp, out = interpreter(answer=41)

    async def main() -> None:
        assert await interp.run("answer + 1") is Outcome.OK
        assert await interp.run("_ * 2") is Outcome.OK
        assert await interp.run("None") is Outcome.OK

    run(main())
    assert out.stdout == "42\n84\n"


def test_top_level_await_runs_in_the_loop():
    """await works at top level, including inside several statements, and sees the running loop."""
    interp, out = interpreter()

    async def main() -> asyncio.AbstractEventLoop:
        await interp.run(
            "import asyncio\nloop = asyncio.get_running_loop()\nv = await asyncio.sleep(0, 'ok')"
        )
        await interp.run("v, loop is asyncio.get_running_loop()")
        await interp.run("async def f():\n    return 7\n")
        await interp.run("await f()")
        return asyncio.get_running_loop()

    loop = run(main())
    assert out.stdout == "('ok', True)\n7\n"
    assert interp.namespace["loop"] is loop


def test_errors_show_a_traceback_without_manhole_frames():
    """An exception shows its traceback (quoting the input line) and the next input runs normally."""
    interp, out = interpreter()

    async def main() -> None:
        assert await interp.run("def boom():\n    raise ValueError('bad value')\n") is Outcome.OK
        assert await interp.run("boom()") is Outcome.ERROR
        assert await interp.run("1 + 1") is Outcome.OK

    run(main())
    assert "Traceback (most recent call last):" in out.stderr
    assert "raise ValueError('bad value')" in out.stderr
    assert "ValueError: bad value" in out.stderr
    assert "_interpreter.py" not in out.stderr
    assert out.stdout == "2\n"


def test_syntax_errors_are_shown():
    """A syntax error is reported without running anything."""
    interp, out = interpreter()
    assert run(interp.run("1 +")) is Outcome.ERROR
    assert "SyntaxError" in out.stderr


def test_exit_ends_the_session_not_the_process():
    """exit(), quit() and raise SystemExit end the session; the process goes on."""
    interp, _ = interpreter()

    async def main() -> list[Outcome]:
        return [
            await interp.run("exit()"),
            await interp.run("quit(3)"),
            await interp.run("raise SystemExit"),
            await interp.run("import sys; sys.exit(1)"),
        ]

    assert run(main()) == [Outcome.EXIT] * 4


def test_keyboardinterrupt_raised_by_code_is_just_an_error():
    """A KeyboardInterrupt raised by user code is shown like any error and does not stop the loop."""
    interp, out = interpreter()
    assert run(interp.run("raise KeyboardInterrupt")) is Outcome.ERROR
    assert "KeyboardInterrupt" in out.stderr


def test_interrupt_cancels_an_awaiting_statement():
    """interrupt() stops a statement that is awaiting, shows KeyboardInterrupt, and the session goes on."""
    interp, out = interpreter()

    async def main() -> Outcome:
        task = asyncio.ensure_future(interp.run("import asyncio\nawait asyncio.sleep(60)"))
        await wait_until_async(lambda: interp.busy, 10, "the statement running")
        assert interp.interrupt()
        outcome = await asyncio.wait_for(task, 5)
        assert not interp.interrupt()
        assert await interp.run("'still here'") is Outcome.OK
        return outcome

    assert run(main()) is Outcome.ERROR
    assert out.stderr.endswith("KeyboardInterrupt\n")
    assert out.stdout == "'still here'\n"


def test_cancelled_error_from_user_code_is_shown():
    """A CancelledError raised by the code itself is an error shown in the session, not an interrupt."""
    interp, out = interpreter()
    assert run(interp.run("import asyncio\nraise asyncio.CancelledError('mine')")) is Outcome.ERROR
    assert "CancelledError: mine" in out.stderr


def test_blocking_builtins_are_replaced():
    """input(), breakpoint() and interactive help() would block the server: they explain instead."""
    interp, out = interpreter()

    async def main() -> None:
        _stdio.install()
        try:
            await interp.run("input('x')")
            await interp.run("breakpoint()")
            await interp.run("help()")
            await interp.run("help(len)")
            await interp.run("exit")
        finally:
            _stdio.uninstall()

    run(main())
    assert "input() is not available in the manhole" in out.stderr
    assert "breakpoint() is not available" in out.stderr
    assert "use help(object)" in out.stdout
    assert "Help on built-in function len" in out.stdout
    assert "Use exit() or Ctrl-D" in out.stdout


def test_needs_more_follows_the_interactive_console():
    """An unfinished statement asks for more input; a complete one or a syntax error does not."""
    interp, _ = interpreter()
    assert interp.needs_more("if True:")
    assert interp.needs_more("foo(")
    assert interp.needs_more("if True:\n    x = 1")
    assert not interp.needs_more("if True:\n    x = 1\n")
    assert not interp.needs_more("await thing")
    assert not interp.needs_more("1 +")


def test_print_goes_to_the_session_that_ran_it(capsys):
    """print() reaches the session whose statement (or task) ran it; other prints reach stdout."""
    first, out1 = interpreter()
    second, out2 = interpreter()

    async def main() -> None:
        _stdio.install()
        try:
            await first.run("import asyncio")
            await second.run("import asyncio")
            await asyncio.gather(
                first.run("for i in range(3):\n    print('one', i)\n    await asyncio.sleep(0)\n"),
                second.run("for i in range(3):\n    print('two', i)\n    await asyncio.sleep(0)\n"),
            )
            print("server line")
            await first.run("async def later():\n    print('from a task')\n")
            await first.run("await asyncio.create_task(later())")
        finally:
            _stdio.uninstall()

    run(main())
    assert out1.stdout == "one 0\none 1\none 2\nfrom a task\n"
    assert out2.stdout == "two 0\ntwo 1\ntwo 2\n"
    assert "server line" in capsys.readouterr().out
    assert not isinstance(sys.stdout, _stdio._SessionStream)


def test_sessions_have_their_own_namespaces():
    """Each session gets its own copy of the namespace: the same live objects, separate variables."""
    shared = {"items": []}
    first, _ = interpreter(**shared)
    second, _out2 = interpreter(**shared)

    async def main() -> None:
        await first.run("x = 1; items.append('first')")
        await second.run("x = 2; items.append('second')")
        await first.run("y = x")

    run(main())
    assert first.namespace["y"] == 1
    assert shared["items"] == ["first", "second"]
    assert second.namespace["x"] == 2
