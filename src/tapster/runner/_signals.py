"""Signal handling for the serving process: installed through the loop, previous handlers restored after."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

_Handler = Callable[[int, FrameType | None], Any] | int | None


class SignalHandlers:
    """Installs loop signal handlers and puts back whatever handlers were there before."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous: dict[int, _Handler] = {}

    def install(self, signum: int, callback: Callable[[int], None]) -> None:
        if signum not in self._previous:
            self._previous[signum] = signal.getsignal(signum)
        self._loop.add_signal_handler(signum, callback, signum)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            with contextlib.suppress(RuntimeError, ValueError):  # the loop is closed already
                self._loop.remove_signal_handler(signum)
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
