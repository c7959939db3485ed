"""One epoll of the relays' own, which the event loop watches as a single descriptor.

Each readiness event a loop delivers costs a handle, a place in the ready queue and a context switch into the
callback: on the bench machine about as much Python time as the relay's own work for a 64-byte echo. The relays'
descriptors are registered here instead, and the loop calls :meth:`Poller._ready` once per turn whenever any of
them is ready; it reads every ready event with one ``epoll_wait`` and calls each direction directly. Both loops
(asyncio and uvloop) only see one reader.

Level-triggered, as the loops' own: a callback that leaves bytes unread is called again the next turn. A hang-up
or an error wakes both the reader and the writer of the descriptor, as the loops do. A descriptor must be removed
before it is closed: the relays' descriptors are duplicates, and epoll forgets a registration only when the last
descriptor of the open file is closed, so a closed duplicate would otherwise keep reporting.

One poller per event loop, made for the first relay and closed with the last one; a forked child forgets the
parent's (two processes must never share an epoll).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
from collections.abc import Callable

__all__ = ["Poller", "poller_for"]

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_NOT_ONLY_OUT = ~select.EPOLLOUT  # anything but "writable" (readable, hang-up, error) wakes the reader
_NOT_ONLY_IN = ~select.EPOLLIN

Callback = Callable[[], None]


class Poller:
    """The relays' descriptors of one loop, with their reader and writer callbacks."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.epoll = select.epoll()  # close-on-exec
        self.readers: dict[int, Callback] = {}
        self.writers: dict[int, Callback] = {}
        self.masks: dict[int, int] = {}
        self.users = 0
        try:
            loop.add_reader(self.epoll.fileno(), self._ready)
        except BaseException:
            self.epoll.close()
            raise

    def add_reader(self, fd: int, callback: Callback) -> None:
        self.readers[fd] = callback
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self.readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, callback: Callback) -> None:
        self.writers[fd] = callback
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self.writers.pop(fd, None) is not None:
            self._update(fd)

    def _update(self, fd: int) -> None:
        mask = (_IN if fd in self.readers else 0) | (_OUT if fd in self.writers else 0)
        old = self.masks.get(fd, 0)
        if mask == old:
            return
        if not mask:
            del self.masks[fd]
            self.epoll.unregister(fd)
        elif not old:
            self.epoll.register(fd, mask)
            self.masks[fd] = mask
        else:
            self.epoll.modify(fd, mask)
            self.masks[fd] = mask

    def _ready(self) -> None:
        readers, writers = self.readers, self.writers
        for fd, events in self.epoll.poll(0):
            # Looked up per event: a callback before this one may have removed (or closed) this descriptor.
            if events & _NOT_ONLY_OUT and (callback := readers.get(fd)) is not None:
                callback()
            if events & _NOT_ONLY_IN and (callback := writers.get(fd)) is not None:
                callback()

    def release(self) -> None:
        """One relay less; the last one closes the poller."""
        self.users -= 1
        if self.users == 0 and not self.readers and not self.writers:
            _pollers.pop(self.loop, None)
            with contextlib.suppress(RuntimeError):  # a loop closed already
                self.loop.remove_reader(self.epoll.fileno())
            self.epoll.close()


_pollers: dict[asyncio.AbstractEventLoop, Poller] = {}


def poller_for(loop: asyncio.AbstractEventLoop) -> Poller:
    """The loop's poller, made if it has none, counted as used once more (give it back with ``release``).

    Raises:
        OSError: no descriptor for the epoll (the limit): the caller copies instead.
    """
    for closed in [other for other in _pollers if other.is_closed()]:  # a loop closed under a live relay
        _pollers.pop(closed).epoll.close()
    poller = _pollers.get(loop)
    if poller is None:
        poller = _pollers[loop] = Poller(loop)
    poller.users += 1
    return poller


def _forget_in_child() -> None:
    pollers = list(_pollers.values())
    _pollers.clear()
    for poller in pollers:
        poller.epoll.close()


os.register_at_fork(after_in_child=_forget_in_child)
