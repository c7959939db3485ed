"""Throttling password guesses per source address and overall, whatever the number of connections.

A delay per connection does not slow an attacker who opens two hundred connections at once. What is limited here
is the number of passwords *checked*: each source address has a token bucket (a small burst, then a steady rate),
and so has the whole server. A check takes a token from both buckets; a success gives them back, so only failures
count. When a bucket is empty the check waits for its token, up to ``max_wait`` seconds; if that is not enough,
the attempt is refused without looking at the password at all. So over ``T`` seconds one address gets at most
``burst + rate * T`` passwords checked, however many connections it opens, and the server as a whole at most
``global_burst + global_rate * T``, with at most ``max_concurrent`` hash verifications running at once, so a
distributed attack cannot spend more than that much CPU on bcrypt or argon2.

IPv4 addresses are counted one by one; IPv6 addresses by their /64 prefix (one host usually owns a whole /64),
except link-local ones (every host of a link shares fe80::/64), which count one by one.
The table of addresses is bounded: addresses whose bucket is full again are forgotten, and past ``max_addresses``
the least recently seen are dropped (the global bucket still holds for them).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable

from tapster._record import Record

__all__ = ["Throttle", "ThrottleLimits", "address_key"]


class ThrottleLimits(Record):
    """The numbers of a :class:`Throttle` (the defaults are documented in docs/auth.md).

    Attributes:
        burst: password checks an address may make at once before the rate applies.
        rate: checks per second an address gets back.
        global_burst: checks the whole server may make at once.
        global_rate: checks per second for the whole server.
        max_wait: the longest an attempt waits for its token; beyond that it is refused unchecked.
        max_concurrent: hash verifications running at the same time (each may take a core for 0.1-0.3 s).
        max_addresses: source addresses remembered at most.
    """

    __slots__ = (
        "burst",
        "global_burst",
        "global_rate",
        "max_addresses",
        "max_concurrent",
        "max_wait",
        "rate",
    )

    burst: int
    rate: float
    global_burst: int
    global_rate: float
    max_wait: float
    max_concurrent: int
    max_addresses: int

    def __init__(
        self,
        *,
        burst: int = 5,
        rate: float = 1.0,
        global_burst: int = 20,
        global_rate: float = 10.0,
        max_wait: float = 3.0,
        max_concurrent: int = 1,
        max_addresses: int = 4096,
    ) -> None:
        for name, value in (
            ("burst", burst),
            ("global_burst", global_burst),
            ("max_concurrent", max_concurrent),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value!r}")
        for name, number in (("rate", rate), ("global_rate", global_rate)):
            if not number > 0 or number == float("inf"):
                raise ValueError(f"{name} must be a positive finite number, not {number!r}")
        if not 0 <= max_wait < float("inf"):
            raise ValueError(f"max_wait must be a finite number >= 0, not {max_wait!r}")
        if max_addresses < 1:
            raise ValueError(f"max_addresses must be at least 1, not {max_addresses!r}")
        self.burst = burst
        self.rate = float(rate)
        self.global_burst = global_burst
        self.global_rate = float(global_rate)
        self.max_wait = float(max_wait)
        self.max_concurrent = max_concurrent
        self.max_addresses = max_addresses


def address_key(peer: str) -> str:
    """The bucket a peer address counts against: the IPv4 address, the IPv6 /64, or the text as given."""
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return peer or "-"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if address.is_link_local or address.is_loopback:  # every host of a link shares fe80::/64
            return str(address)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class _Bucket:
    """A token bucket that may go below zero: a negative level is tokens promised to waiting attempts."""

    def __init__(self, capacity: int, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.level = float(capacity)
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for_token(self) -> float:
        """Seconds until the next token (after refill): 0 when one is there now."""
        return 0.0 if self.level >= 1 else (1 - self.level) / self.rate

    def full(self, now: float) -> bool:
        return self.level + (now - self.stamp) * self.rate >= self.capacity


class Throttle:
    """The buckets of one server: one per source address, and one for everything.

    Args:
        limits: the numbers; the defaults when None.
        clock: a monotonic clock (tests may pass their own).
    """

    def __init__(
        self, limits: ThrottleLimits | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits or ThrottleLimits()
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._global = _Bucket(self.limits.global_burst, self.limits.global_rate, clock())
        self._checks: asyncio.Semaphore | None = None
        self._checks_loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        """How many addresses are remembered now."""
        return len(self._buckets)

    def reserve(self, key: str) -> float | None:
        """Take a token for ``key`` and for the server; the seconds to wait before checking, or None: refuse.

        Nothing is taken when the attempt is refused.
        """
        now = self._clock()
        bucket = self._bucket(key, now)
        bucket.refill(now)
        self._global.refill(now)
        wait = max(bucket.wait_for_token(), self._global.wait_for_token())
        if wait > self.limits.max_wait:
            return None
        bucket.level -= 1
        self._global.level -= 1
        return wait

    def refund(self, key: str) -> None:
        """Give back the tokens of a check that succeeded: only failures count."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.refill(now)
            bucket.level = min(bucket.capacity, bucket.level + 1)
        self._global.refill(now)
        self._global.level = min(self._global.capacity, self._global.level + 1)

    def checks(self) -> asyncio.Semaphore:
        """The semaphore that bounds how many verifications run at once, made for the running loop.

        A semaphore belongs to the loop it first waited in; a new loop (a restarted server, a test calling
        ``asyncio.run`` again) gets a new one.
        """
        loop = asyncio.get_running_loop()
        if self._checks is None or self._checks_loop is not loop:
            self._checks = asyncio.Semaphore(self.limits.max_concurrent)
            self._checks_loop = loop
        return self._checks

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets.move_to_end(key)
            return bucket
        if len(self._buckets) >= self.limits.max_addresses:
            self._forget(now)
        bucket = self._buckets[key] = _Bucket(self.limits.burst, self.limits.rate, now)
        return bucket

    def _forget(self, now: float) -> None:
        """Make room: drop the addresses whose bucket is full again, then the least recently seen."""
        for key in [key for key, bucket in self._buckets.items() if bucket.full(now)]:
            del self._buckets[key]
        while len(self._buckets) >= self.limits.max_addresses:
            self._buckets.popitem(last=False)
