"""Running what a manhole user types: compiled with top-level ``await``, run as a task of the server's loop.

Each input runs as its own task, in a context whose :data:`~tapster.manhole._stdio.current_writer` is the session,
so ``print`` inside it (and inside anything it calls or starts) reaches the session. The value of a final
expression is shown with ``repr`` and kept as ``_``. An exception shows its traceback, without the manhole's own
frames, and the session goes on; ``SystemExit`` ends the session, never the server.

Some builtins would block the whole server, because they read the server's own standard input: ``input()``,
``breakpoint()`` and interactive ``help()``. The session's namespace gets harmless replacements.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import codeop
import contextvars
import enum
import inspect
import itertools
import linecache
import sys
import traceback
from collections.abc import Mapping
from types import CodeType, TracebackType
from typing import Any, NoReturn

from tapster.manhole._stdio import SessionWriter, current_writer

__all__ = ["Interpreter", "Outcome", "make_namespace"]

_FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
_PREFIX = "<manhole#"
_KEEP_SOURCES = 200  # inputs whose source stays in linecache, so tracebacks can quote them
_numbers = itertools.count(1)  # numbers inputs across sessions, so each has its own linecache entry


class Outcome(enum.Enum):
    """How running one input ended."""

    OK = "ok"
    ERROR = "error"  # an exception was shown (including an interrupt)
    EXIT = "exit"  # exit(), quit() or SystemExit: the session should end


class _Quitter:
    """``exit`` / ``quit`` in a session: end the session, not the server."""

    def __repr__(self) -> str:
        return "Use exit() or Ctrl-D (i.e. EOF) to end this manhole session"

    def __call__(self, code: object = None) -> NoReturn:
        raise SystemExit(code)


class _Helper:
    """``help`` in a session: ``help(obj)`` prints the documentation; plain ``help()`` would block the server."""

    def __repr__(self) -> str:
        return "Type help(object) for help about object."

    def __call__(self, *args: Any) -> None:
        if not args:
            print(
                "Interactive help() reads the server's own input and would block the server; use help(object)."
            )
            return
        import pydoc

        renderer = getattr(pydoc, "plaintext")  # noqa: B009 - missing from the type stubs
        print(pydoc.render_doc(args[0], title="Help on %s:", renderer=renderer))


def _no_input(prompt: object = "") -> NoReturn:
    raise RuntimeError(
        "input() is not available in the manhole: it would read the server's own stdin and block it"
    )


def _no_breakpoint(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("breakpoint() is not available in the manhole: pdb would block the whole server")


def make_namespace(base: Mapping[str, Any]) -> dict[str, Any]:
    """A session's own namespace: a shallow copy of ``base`` with safe ``input``, ``help``, ``exit``, ``quit``."""
    safe = dict(vars(builtins))
    safe.update(input=_no_input, breakpoint=_no_breakpoint, help=_Helper(), exit=_Quitter(), quit=_Quitter())
    namespace: dict[str, Any] = {"__name__": "__manhole__", "__doc__": None}
    namespace.update(base)
    namespace["__builtins__"] = safe
    return namespace


class Interpreter:
    """Compiles and runs one session's inputs in its namespace.

    Args:
        namespace: the session's globals (see :func:`make_namespace`).
        writer: where output, results and tracebacks go.
    """

    def __init__(self, namespace: dict[str, Any], writer: SessionWriter) -> None:
        self.namespace = namespace
        self.writer = writer
        self._compiler = codeop.CommandCompiler()
        self._compiler.compiler.flags |= _FLAGS
        self._sources: list[str] = []
        self._task: asyncio.Task[Outcome] | None = None
        self._interrupted = False
        self._abandoned = False

    @property
    def busy(self) -> bool:
        """An input is running."""
        return self._task is not None and not self._task.done()

    def needs_more(self, source: str) -> bool:
        """Whether ``source`` is an unfinished statement (the interactive console's rule, as in ``python -i``)."""
        try:
            return self._compiler(source, "<manhole>", "single") is None
        except (SyntaxError, ValueError, OverflowError):
            return False

    def interrupt(self) -> bool:
        """Cancel the running input, as Ctrl-C would; False when nothing runs.

        Only code that awaits can be stopped: a statement that never yields holds the whole event loop.
        """
        if not self.busy:
            return False
        assert self._task is not None
        self._interrupted = True
        self._task.cancel()
        return True

    def _remember(self, source: str) -> str:
        filename = f"{_PREFIX}{next(_numbers)}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        self._sources.append(filename)
        while len(self._sources) > _KEEP_SOURCES:
            linecache.cache.pop(self._sources.pop(0), None)
        return filename

    def forget(self) -> None:
        """Drop this session's sources from linecache (at the end of the session)."""
        for filename in self._sources:
            linecache.cache.pop(filename, None)
        self._sources.clear()

    def _compile(self, source: str, filename: str) -> tuple[CodeType | None, CodeType | None]:
        tree = ast.parse(source, filename, "exec")
        last: ast.expr | None = None
        final = tree.body[-1] if tree.body else None
        if isinstance(final, ast.Expr):
            tree.body.pop()
            last = final.value
        body = compile(tree, filename, "exec", flags=_FLAGS) if tree.body else None
        expr = None
        if last is not None:
            expr = compile(ast.Expression(last), filename, "eval", flags=_FLAGS)
        return body, expr

    async def run(self, source: str) -> Outcome:
        """Compile and run ``source``; show its result or its error. Never raises, except when cancelled."""
        filename = self._remember(source)
        try:
            body, expr = self._compile(source, filename)
        except (SyntaxError, ValueError, OverflowError) as exc:
            self.writer.write_error("".join(traceback.format_exception_only(type(exc), exc)))
            return Outcome.ERROR
        context = contextvars.copy_context()
        context.run(current_writer.set, self.writer)
        self._interrupted = self._abandoned = False
        task = asyncio.get_running_loop().create_task(self._execute(body, expr), context=context)
        self._task = task
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            self._abandoned = True
            task.cancel()
            raise
        finally:
            self._task = None
        if task.cancelled():
            self.writer.write_error("KeyboardInterrupt\n")
            return Outcome.ERROR
        return task.result()

    async def _execute(self, body: CodeType | None, expr: CodeType | None) -> Outcome:
        try:
            if body is not None:
                result = eval(body, self.namespace)
                if body.co_flags & inspect.CO_COROUTINE:
                    await result
            if expr is not None:
                value = eval(expr, self.namespace)
                if expr.co_flags & inspect.CO_COROUTINE:
                    value = await value
                self._display(value)
        except SystemExit:
            return Outcome.EXIT
        except asyncio.CancelledError:
            if self._interrupted or self._abandoned:
                raise
            self._show_traceback(*sys.exc_info())
            return Outcome.ERROR
        except BaseException:  # an error in user code is shown, whatever it is; the server goes on
            self._show_traceback(*sys.exc_info())
            return Outcome.ERROR
        return Outcome.OK

    def _display(self, value: Any) -> None:
        if value is None:
            return
        self.namespace["_"] = value
        self.writer.write(repr(value) + "\n")

    def _show_traceback(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        while tb is not None and not tb.tb_frame.f_code.co_filename.startswith(_PREFIX):
            tb = tb.tb_next
        if exc is None:
            return
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        self.writer.write_error(text)
