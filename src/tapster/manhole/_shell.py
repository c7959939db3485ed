"""One manhole session, whatever carries it: the input loop, the output, and the line between them and a channel.

SSH and telnet each provide a :class:`Channel` (bytes in, text out) and feed input to a :class:`Shell`. With a
terminal the shell runs the prompt_toolkit REPL (:mod:`tapster.manhole._prompt`); without one it runs a plain
line-by-line console, so a script can pipe statements in. Over SSH the plain console sends its prompts to stderr,
so what a script reads on stdout is only what its statements printed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from tapster._extras import install_hint
from tapster.manhole._interpreter import Interpreter, Outcome

if TYPE_CHECKING:
    from tapster.auth import Authenticator

__all__ = ["Channel", "SessionOutput", "Shell", "ShellHost"]

logger = logging.getLogger("tapster.manhole")

_FLUSH_AT = 64 * 1024  # output is sent in pieces of about this size, not one write per print()
_MAX_LINE = 4 * 1024 * 1024  # an input "line" longer than this with no newline is taken as it is


class Channel(Protocol):
    """What a transport offers a shell: text out (with its own newline rules), input is pushed in by the owner."""

    @property
    def terminal(self) -> str | None:
        """The client's terminal type (``xterm-256color``), or None when it has no terminal."""

    @property
    def closed(self) -> bool: ...

    def size(self) -> tuple[int, int]:
        """The terminal's (columns, rows)."""

    def send(self, text: str) -> None:
        """Send standard output."""

    def send_error(self, text: str) -> None:
        """Send standard error (SSH has a channel for it; telnet mixes it in)."""

    def send_prompt(self, text: str) -> None:
        """Send a plain console prompt or banner (to stderr over SSH without a terminal)."""

    async def drain(self) -> None:
        """Wait until the client has taken most of what was sent."""

    def close(self, status: int = 0) -> None:
        """End the session with an exit status."""


class ShellHost(Protocol):
    """What the SSH and telnet servers need from the manhole: who may log in, and a shell for who did."""

    @property
    def authenticator(self) -> Authenticator: ...

    def open_shell(self, channel: Channel, username: str) -> Shell:
        """A new session for ``username`` on ``channel`` (not started yet)."""


class SessionOutput:
    """A session's stdout and stderr: gathers small writes, keeps the two in order, accepts writes from threads.

    Writes from other threads (a ``print`` in code the session sent to a worker thread) are handed to the loop;
    writes after the client left are dropped.
    """

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._pending: list[str] = []
        self._pending_error = False
        self._size = 0
        self._flush_scheduled = False
        self._discarding = False
        self.at_line_start = True

    @property
    def closed(self) -> bool:
        return self._discarding or self.channel.closed

    def discard(self) -> None:
        """Drop all later output: the session is over, whatever is still running."""
        self._discarding = True
        self._pending.clear()
        self._size = 0

    def write(self, text: str) -> None:
        self._add(text, False)

    def write_error(self, text: str) -> None:
        self._add(text, True)

    def _add(self, text: str, error: bool) -> None:
        if not text:
            return
        if threading.get_ident() != self._thread:
            with contextlib.suppress(RuntimeError):  # RuntimeError: the loop is closed
                self._loop.call_soon_threadsafe(self._add, text, error)
            return
        if self.closed:
            self._pending.clear()
            self._size = 0
            return
        if self._pending and error != self._pending_error:
            self.flush()
        self._pending.append(text)
        self._pending_error = error
        self._size += len(text)
        self.at_line_start = text.endswith("\n")
        if self._size >= _FLUSH_AT:
            self.flush()
        elif not self._flush_scheduled:
            # a burst of prints is sent together; output from before an await is sent when it awaits
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send what was gathered."""
        self._flush_scheduled = False
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        self._size = 0
        if self.closed:
            return
        if self._pending_error:
            self.channel.send_error(text)
        else:
            self.channel.send(text)


class _LineBuffer:
    """Input for the plain console: text in, lines out (``\\r\\n``, ``\\r`` and ``\\n`` all end a line)."""

    def __init__(self) -> None:
        self._lines: collections.deque[str] = collections.deque()
        self._partial = ""
        self._eof = False
        self._skip_lf = False
        self._ready = asyncio.Event()

    def feed(self, text: str) -> None:
        if self._skip_lf and text.startswith("\n"):
            text = text[1:]
        self._skip_lf = text.endswith("\r")
        parts = (self._partial + text.replace("\r\n", "\n").replace("\r", "\n")).split("\n")
        self._partial = parts.pop()
        self._lines.extend(parts)
        self._ready.set()

    def feed_eof(self) -> None:
        self._eof = True
        self._ready.set()

    async def readline(self) -> str | None:
        """The next line without its ending; the unterminated rest at end of input; None after that."""
        while not self._lines:
            if len(self._partial) > _MAX_LINE or (self._eof and self._partial):
                line, self._partial = self._partial, ""
                return line
            if self._eof:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._lines.popleft()


class Shell:
    """A logged-in session: runs the REPL (or one command) and ends the channel when done.

    Args:
        channel: the transport's side of the session.
        namespace: the session's own globals (see :func:`~tapster.manhole._interpreter.make_namespace`).
        username: who logged in, for logs and the prompt loop's history.
        history: a prompt_toolkit History shared by this user's sessions, or None.
        banner: the first lines shown by an interactive session.
        on_finish: called with the shell when its task has ended.
    """

    def __init__(
        self,
        channel: Channel,
        namespace: dict[str, Any],
        *,
        username: str,
        history: Any = None,
        banner: str = "",
        on_finish: Callable[[Shell], None] | None = None,
    ) -> None:
        self.channel = channel
        self._on_finish = on_finish
        self.username = username
        self.history = history
        self.banner = banner
        self.output = SessionOutput(channel)
        self.interpreter = Interpreter(namespace, self.output)
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self._lines = _LineBuffer()
        self._sink: Callable[[str], None] | None = None
        self._on_eof: Callable[[], None] | None = None
        self.on_resize: Callable[[], None] | None = None

    # -- input from the transport ---------------------------------------------------------------------------

    def feed(self, text: str) -> None:
        """Input from the client. A Ctrl-C while a statement runs interrupts it instead."""
        if self.closed:
            return
        if "\x03" in text and self.interpreter.busy:
            self.interpreter.interrupt()
            text = text.replace("\x03", "")
            if not text:
                return
        if self._sink is not None:
            self._sink(text)
        else:
            self._lines.feed(text)

    def feed_eof(self) -> None:
        """The client will send no more input (the end of a piped script)."""
        self._lines.feed_eof()
        if self._on_eof is not None:
            self._on_eof()

    def interrupt(self) -> bool:
        """Interrupt the running statement (a telnet IP command, an SSH INT signal)."""
        return self.interpreter.interrupt()

    def resized(self) -> None:
        if self.on_resize is not None:
            self.on_resize()

    def attach_input(self, sink: Callable[[str], None], on_eof: Callable[[], None]) -> None:
        """Route input to ``sink`` instead of the line buffer (the prompt loop's pipe)."""
        self._sink = sink
        self._on_eof = on_eof

    # -- running --------------------------------------------------------------------------------------------

    def start(self, command: str | None = None) -> asyncio.Task[None]:
        """Run the session as a task: the REPL, or ``command`` alone (an SSH exec request)."""
        coro = self._run_command(command) if command is not None else self._run_interactive()
        task = asyncio.get_running_loop().create_task(coro)
        if self._on_finish is not None:
            on_finish = self._on_finish
            task.add_done_callback(lambda _: on_finish(self))
        self.task = task
        return task

    async def execute(self, source: str) -> Outcome:
        """Run one input and send all its output; return how it ended."""
        outcome = await self.interpreter.run(source)
        if not self.output.at_line_start:
            self.output.write("\n")
        self.output.flush()
        await self.channel.drain()
        return outcome

    async def _run_command(self, source: str) -> None:
        status = 1
        try:
            outcome = await self.execute(source)
            status = 0 if outcome is not Outcome.ERROR else 1
        except Exception:
            logger.exception("manhole command failed")
        finally:
            self._finish(status)

    async def _run_interactive(self) -> None:
        try:
            if self.channel.terminal is not None:
                try:
                    from tapster.manhole._prompt import run_prompt
                except ImportError as exc:
                    hint = install_hint(exc)
                    self.channel.send_error(f"(no prompt_toolkit: {exc}{hint}; using the plain console)\n")
                else:
                    await run_prompt(self)
                    return
            await self._run_plain()
        except Exception:
            logger.exception("manhole session failed")
        finally:
            self._finish(0)

    async def _run_plain(self) -> None:
        if self.banner:
            self.channel.send_prompt(self.banner)
        buffer: list[str] = []
        while not self.closed:
            self.output.flush()
            self.channel.send_prompt("... " if buffer else ">>> ")
            line = await self._lines.readline()
            if line is None and not buffer:
                break
            buffer.append(line or "")
            source = "\n".join(buffer)
            if line is not None and self.interpreter.needs_more(source):
                continue
            buffer = []
            if not source.strip():
                continue
            if await self.execute(source) is Outcome.EXIT:
                break

    def _finish(self, status: int) -> None:
        self.output.flush()
        self.interpreter.forget()
        self.closed = True
        if not self.channel.closed:
            self.channel.close(status)

    def close(self, notice: str | None = None) -> None:
        """End the session from the server's side (disconnect, shutdown): a running statement is cancelled."""
        if notice and not self.channel.closed:
            self.output.flush()
            self.channel.send_error(notice)
        self.output.discard()
        self.closed = True
        self._lines.feed_eof()
        if self._on_eof is not None:
            self._on_eof()
        if self.task is not None and not self.task.done():
            self.task.cancel()
