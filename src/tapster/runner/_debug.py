"""``--debug`` and ``--spew``: tools for finding out what a server is doing, slow by design."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

logger = logging.getLogger("tapster")
spew_logger = logging.getLogger("tapster.spew")


def post_mortem(tb: TracebackType | None) -> None:
    """Open pdb on a traceback (``--debug``), on the terminal tapster runs in."""
    import pdb

    if tb is not None:
        pdb.post_mortem(tb)


def break_now() -> None:
    """Enter pdb at once (SIGUSR2 with ``--debug``); ``up`` shows what the loop was doing, ``c`` resumes."""
    import pdb

    logger.info("SIGUSR2: entering the debugger.")
    pdb.Pdb().set_trace(sys._getframe(1))


def install_debug_exception_handler(loop: asyncio.AbstractEventLoop) -> None:
    """Route exceptions nobody handled (a failed callback, a task never awaited) to pdb after logging them."""

    def handler(the_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        the_loop.default_exception_handler(context)
        exc = context.get("exception")
        if isinstance(exc, BaseException):
            post_mortem(exc.__traceback__)

    loop.set_exception_handler(handler)


def start_spewing() -> Callable[[], None]:
    """Log every Python call and line executed (twistd's ``--spew``); returns a function that stops it.

    CPython does not trace the trace function itself, so the logging it does is not spewed in turn.
    """

    def trace(frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        code = frame.f_code
        if event == "call":
            spew_logger.info("call %s (%s:%d)", code.co_qualname, code.co_filename, frame.f_lineno)
        elif event == "line":
            spew_logger.info("line %s:%d in %s", code.co_filename, frame.f_lineno, code.co_name)
        elif event == "return":
            spew_logger.info("return from %s", code.co_qualname)
        return trace

    sys.settrace(trace)
    threading.settrace(trace)

    def stop() -> None:
        sys.settrace(None)
        threading.settrace(None)  # type: ignore[arg-type]

    return stop
