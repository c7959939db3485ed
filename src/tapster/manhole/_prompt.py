"""The REPL for clients with a terminal: prompt_toolkit's PromptSession with ptpython's colours and completion.

ptpython's own ``embed`` and ``asyncssh_repl`` misbehave inside a server (a crash on connect, lost input between
concurrent sessions, a tight loop of tracebacks after a disconnect), so the loop is ours: ``prompt_async`` for a
line, the :class:`~tapster.manhole._interpreter.Interpreter` to run it. From ptpython only passive pieces are used:
its Python completer and its ANSI colour scheme; highlighting is Pygments' Python lexer.

prompt_toolkit assumes it owns the process: it would install SIGINT and SIGWINCH handlers and the loop's
exception handler while a prompt runs. A server must keep its own, so the prompt is run without them (the SIGWINCH
one is skipped for manhole prompts only; resizes come from the client instead).

Everything here imports prompt_toolkit, so the module is imported only when a terminal session starts.

The session it runs is described by :class:`PromptShell`, which :class:`~tapster.manhole._shell.Shell` satisfies;
this module does not import ``_shell`` (``_shell`` imports this one, lazily), so the two never import each other.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TextIO, cast

from prompt_toolkit import PromptSession
from prompt_toolkit.application import current as _current
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.data_structures import Size
from prompt_toolkit.filters import completion_is_selected
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.lexers import PygmentsLexer
from prompt_toolkit.output.vt100 import Vt100_Output
from prompt_toolkit.styles import BaseStyle, Style, merge_styles

from tapster.manhole._interpreter import Interpreter, Outcome

__all__ = ["PromptShell", "new_history", "run_prompt"]


class _PromptChannel(Protocol):
    """The part of a session's channel the REPL uses: its terminal, its size, and text out."""

    @property
    def terminal(self) -> str | None: ...

    @property
    def closed(self) -> bool: ...

    def size(self) -> tuple[int, int]: ...

    def send(self, text: str) -> None: ...


class _Output(Protocol):
    def write(self, text: str) -> None: ...

    def flush(self) -> None: ...


class PromptShell(Protocol):
    """What :func:`run_prompt` needs of a session (a :class:`~tapster.manhole._shell.Shell`)."""

    on_resize: Callable[[], None] | None  # set by run_prompt: the client's terminal changed size

    @property
    def channel(self) -> _PromptChannel: ...

    @property
    def interpreter(self) -> Interpreter: ...

    @property
    def output(self) -> _Output: ...

    @property
    def history(self) -> Any: ...

    @property
    def banner(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    def attach_input(self, sink: Callable[[str], None], on_eof: Callable[[], None]) -> None: ...

    async def execute(self, source: str) -> Outcome: ...


_PROMPT_STYLE = {"prompt": "bold ansigreen", "prompt.dots": "ansigreen"}


def new_history() -> Any:
    """An in-memory history, shared by one user's sessions for the life of the server."""
    return InMemoryHistory()


class _ChannelStdout:
    """The file-like object prompt_toolkit's Vt100 output writes to: straight into the session's channel."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, shell: PromptShell) -> None:
        self._shell = shell

    def write(self, data: str) -> int:
        if not self._shell.channel.closed:
            self._shell.channel.send(data)
        return len(data)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        raise OSError("a manhole session has no file descriptor")


def _style() -> BaseStyle:
    styles: list[BaseStyle] = []
    try:
        from ptpython.style import default_ansi_code_style, default_ui_style
    except ImportError:  # an older or newer ptpython: plain Pygments colours still work
        pass
    else:
        styles += [Style.from_dict(default_ansi_code_style), Style.from_dict(default_ui_style)]
    styles.append(Style.from_dict(_PROMPT_STYLE))
    return merge_styles(styles)


def _completer(namespace: dict[str, Any]) -> Any:
    """ptpython's completer, without the parts that run code of live objects from the completion thread.

    Completion runs in a worker thread. ptpython's dictionary completion evaluates expressions, and jedi by
    default calls property getters while it completes: either would run the server's code outside its loop.
    """
    try:
        from ptpython.completer import PythonCompleter
    except ImportError:
        return None
    try:
        settings: Any = importlib.import_module("jedi.settings")
    except ImportError:
        pass
    else:
        settings.allow_unsafe_interpreter_executions = False
    return PythonCompleter(lambda: namespace, lambda: namespace, lambda: False)


def _key_bindings(shell: PromptShell) -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("enter", filter=~completion_is_selected)
    def _enter(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        text = buffer.text
        if buffer.document.is_cursor_at_the_end:
            last_line = text.rsplit("\n", 1)[-1]
            if "\n" in text and not last_line.strip():
                buffer.text = text.rstrip()  # a blank line ends a block
                buffer.validate_and_handle()
                return
            if "\n" not in text and not shell.interpreter.needs_more(text):
                buffer.validate_and_handle()
                return
        current = buffer.document.current_line_before_cursor
        indent = current[: len(current) - len(current.lstrip())]
        if current.rstrip().endswith(":"):
            indent += "    "
        buffer.insert_text("\n" + indent)

    @bindings.add("escape", "enter")
    def _accept(event: KeyPressEvent) -> None:
        event.current_buffer.validate_and_handle()

    return bindings


def _continuation(width: int, line_number: int, wrap_count: int) -> StyleAndTextTuples:
    return [("class:prompt.dots", "...".rjust(width - 1) + " ")]


def _skip_winch_handler_for_manhole() -> None:
    """Make prompt_toolkit skip its SIGWINCH handler for manhole prompts (it would replace the server's).

    Applications other than manhole prompts keep the handler; installed once per process.
    """
    from prompt_toolkit.application import application as module

    original = getattr(module, "attach_winch_signal_handler", None)
    if original is None or getattr(original, "_tapster_wrapped", False):
        return

    @contextlib.contextmanager
    def attach(handler: Callable[[], None]) -> Iterator[None]:
        if getattr(getattr(handler, "__self__", None), "_tapster_manhole", False):
            yield
            return
        with original(handler):
            yield

    attach._tapster_wrapped = True  # type: ignore[attr-defined]
    module.attach_winch_signal_handler = attach


async def run_prompt(shell: PromptShell) -> None:
    """Run the interactive loop of ``shell`` until the client leaves, sends EOF (Ctrl-D) or calls exit()."""
    channel = shell.channel

    def get_size() -> Size:
        columns, rows = channel.size()
        return Size(rows=max(rows, 1), columns=max(columns, 1))

    output = Vt100_Output(
        cast(TextIO, _ChannelStdout(shell)), get_size, term=channel.terminal, enable_cpr=False
    )
    _skip_winch_handler_for_manhole()
    with create_pipe_input() as pipe:
        shell.attach_input(pipe.send_text, pipe.close)
        if shell.closed:
            return
        with _current.create_app_session(input=pipe, output=output):
            session: PromptSession[str] = PromptSession(
                message=[("class:prompt", ">>> ")],
                multiline=True,
                prompt_continuation=_continuation,
                lexer=PygmentsLexer.from_filename("manhole.py"),
                completer=_completer(shell.interpreter.namespace),
                complete_in_thread=True,
                complete_while_typing=False,
                auto_suggest=AutoSuggestFromHistory(),
                history=shell.history if shell.history is not None else new_history(),
                style=_style(),
                include_default_pygments_style=False,
                key_bindings=_key_bindings(shell),
                enable_suspend=False,
                enable_open_in_editor=False,
                enable_system_prompt=False,
            )
            app = session.app
            app._tapster_manhole = True  # type: ignore[attr-defined]

            def on_resize() -> None:
                if app.is_running:
                    resize = getattr(app, "_on_resize", None)
                    if resize is not None:
                        resize()
                    else:
                        app.invalidate()

            shell.on_resize = on_resize
            if shell.banner:
                shell.output.write(shell.banner)
                shell.output.flush()
            while not shell.closed:
                try:
                    text = await session.prompt_async(handle_sigint=False, set_exception_handler=False)
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    break
                if not text.strip():
                    continue
                if await shell.execute(text) is Outcome.EXIT:
                    break
