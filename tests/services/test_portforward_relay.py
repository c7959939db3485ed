"""PortForward's splice relay inside a running loop: what only an in-process test can see, because a tapster process
exits right after its stop (and the exit would close whatever the relay forgot)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from support import fd_is_open, run_in_child, run_on_loop
from tapster.services import PortForward, _relay_poller

LOOPS = ["asyncio", "uvloop"]


async def ends(reader: asyncio.StreamReader) -> bool:
    """True once the peer's side is gone: end-of-file or a reset."""
    try:
        return await reader.read() == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("loop", LOOPS)
def test_the_drain_deadline_ends_a_relayed_pair_while_the_loop_runs_on(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A relayed pair still open at the drain deadline is aborted, and both its peers see their connection end at
    once, while the loop (and the rest of the application) runs on: the relay let go of its duplicate
    descriptors, which would otherwise keep both sockets open."""

    async def scenario() -> None:
        accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

        async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accepted.put((reader, writer))

        destination = await asyncio.start_server(keep, "127.0.0.1", 0)
        port = destination.sockets[0].getsockname()[1]
        forward = PortForward(
            "tcp:0:interface=127.0.0.1", f"tcp:host=127.0.0.1:port={port}", drain_timeout=0.2
        )
        await forward.privileged_start()
        await forward.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", forward.port)
        far_reader, far_writer = await accepted.get()
        writer.write(b"ping")
        assert await far_reader.readexactly(4) == b"ping"
        far_writer.write(b"pong")
        assert await reader.readexactly(4) == b"pong"
        loop_now = asyncio.get_running_loop()
        epoll = _relay_poller._pollers[loop_now].epoll.fileno()  # the relay's poller is the loop's
        await forward.stop()
        assert await asyncio.wait_for(ends(reader), 5)
        assert await asyncio.wait_for(ends(far_reader), 5)
        # the last relay gone, so is its poller: neither its epoll nor the loop's reader of it is left
        assert loop_now not in _relay_poller._pollers and not fd_is_open(epoll)
        writer.close()
        far_writer.close()
        destination.close()
        await destination.wait_closed()

    with caplog.at_level(logging.INFO):
        run_on_loop(scenario, loop)
    assert "aborted 1 connection(s) still open after 0.2 s" in caplog.text


def test_a_forked_child_never_shares_the_parents_idle_pipes() -> None:
    """A worker forked after the parent relayed has the parent's pooled pipes too: if both used one, each would
    read the other's bytes. The child closes them and starts with an empty pool; the parent keeps its own."""
    from tapster.services import _splice

    pipe = _splice._pipes.take()
    assert pipe is not None
    _splice._pipes.give(pipe)

    def in_child() -> tuple[list[tuple[int, int]], list[bool]]:
        return list(_splice._pipes.idle), [fd_is_open(fd) for fd in pipe]

    assert run_in_child(in_child) == ([], [False, False])
    assert pipe in _splice._pipes.idle and all(fd_is_open(fd) for fd in pipe)


def test_a_forked_child_never_shares_the_parents_poller() -> None:
    """The relays' epoll is the parent's in a child forked while pairs are relayed: registrations made by one
    process would wake the other. The child forgets it (its copy closed); the parent keeps its own."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        poller = _relay_poller.poller_for(loop)
        fd = poller.epoll.fileno()
        try:

            def in_child() -> tuple[bool, bool]:
                return loop in _relay_poller._pollers, fd_is_open(fd)

            assert run_in_child(in_child) == (False, False)
            assert _relay_poller._pollers[loop] is poller and fd_is_open(fd)
        finally:
            poller.release()
        assert not fd_is_open(fd)

    run_on_loop(scenario)
