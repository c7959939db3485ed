"""Tests for the login throttle: token buckets per source address and overall, bounded, refunded on success."""

from __future__ import annotations

import asyncio
import pickle
import time

import pytest

from support import wait_until_async
from tapster.auth import Authenticator, InMemoryChecker, ThrottleLimits
from tapster.auth._throttle import Throttle, address_key


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_gets_its_burst_then_waits_then_is_refused():
    """5 checks at once, then each waits for its token (1 a second) up to max_wait; beyond that: refused."""
    clock = Clock()
    throttle = Throttle(ThrottleLimits(burst=5, rate=1.0, max_wait=3.0), clock=clock)
    assert [throttle.reserve("10.0.0.1") for _ in range(5)] == [0.0] * 5
    assert [throttle.reserve("10.0.0.1") for _ in range(3)] == [1.0, 2.0, 3.0]
    assert throttle.reserve("10.0.0.1") is None  # a 4 s wait is too long: refused, nothing taken
    assert throttle.reserve("10.0.0.2") == 0.0  # another address is not slowed
    clock.now += 4.0
    assert throttle.reserve("10.0.0.1") == 0.0


def test_checks_over_time_never_exceed_burst_plus_rate():
    """However many attempts, over T seconds one address gets at most burst + rate * T checks."""
    clock = Clock()
    throttle = Throttle(ThrottleLimits(burst=5, rate=1.0, max_wait=3.0), clock=clock)
    checked_at: list[float] = []
    for step in range(200):  # 200 attempts spread over 10 s, 20 a second
        clock.now = 1000.0 + step * 0.05
        wait = throttle.reserve("10.0.0.1")
        if wait is not None:
            checked_at.append(clock.now + wait)
    in_window = [t for t in checked_at if t <= 1010.0]
    assert len(in_window) <= 5 + 10 * 1.0 + 1


def test_the_global_bucket_caps_many_addresses():
    """Many addresses, each within its own limit, still share the server's bucket."""
    clock = Clock()
    throttle = Throttle(ThrottleLimits(global_burst=20, global_rate=10.0, max_wait=0.0), clock=clock)
    granted = sum(throttle.reserve(f"10.0.{n // 250}.{n % 250}") is not None for n in range(1000))
    assert granted == 20


def test_success_gives_the_tokens_back():
    """Only failures count: a successful check refunds its tokens."""
    clock = Clock()
    throttle = Throttle(ThrottleLimits(burst=2, rate=0.001, max_wait=0.0), clock=clock)
    for _ in range(10):
        assert throttle.reserve("a") == 0.0
        throttle.refund("a")
    assert throttle.reserve("a") == 0.0
    assert throttle.reserve("a") == 0.0
    assert throttle.reserve("a") is None


def test_the_address_table_is_bounded():
    """Past max_addresses, idle addresses and then the least recently seen are forgotten."""
    clock = Clock()
    throttle = Throttle(
        ThrottleLimits(max_addresses=100, global_burst=10_000, global_rate=10_000.0), clock=clock
    )
    for n in range(10_000):
        throttle.reserve(f"addr-{n}")
    assert len(throttle) <= 100


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::1"),
        ("::1", "::1"),
        ("/run/manhole.sock", "/run/manhole.sock"),
        ("", "-"),
    ],
)
def test_address_keys(peer: str, key: str):
    """IPv4 addresses count one by one, IPv6 by /64 (mapped IPv4 as IPv4); anything else as given."""
    assert address_key(peer) == key


@pytest.mark.parametrize(
    "kwargs",
    [{"burst": 0}, {"rate": 0}, {"rate": float("inf")}, {"rate": float("nan")}, {"max_wait": -1},
     {"max_wait": float("inf")}, {"max_concurrent": 0}, {"max_addresses": 0}, {"global_burst": 0}],
)  # fmt: skip
def test_limits_are_validated(kwargs):
    """Nonsense limits are refused when made, naming the field."""
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ThrottleLimits(**kwargs)


def test_parallel_connections_share_the_address_budget():
    """50 connections from one address guessing at once get burst checks, the rest wait or are refused."""
    calls = 0

    class Counting(InMemoryChecker):
        async def check_password(self, username: str, password: str) -> bool:
            nonlocal calls
            calls += 1
            return await super().check_password(username, password)

    limits = ThrottleLimits(burst=3, rate=2.0, max_wait=0.5)
    authenticator = Authenticator([Counting({"admin": "secret"})], failure_delay=0.01, limits=limits)

    async def main() -> float:
        start = time.monotonic()
        results = await asyncio.gather(
            *(authenticator.attempts("127.0.0.1").password("admin", f"guess{n}") for n in range(50))
        )
        assert not any(results)
        return time.monotonic() - start

    took = asyncio.run(main())
    assert calls <= 3 + 2.0 * took + 1
    assert asyncio.run(authenticator.attempts("127.0.0.2").password("admin", "secret"))


def test_refused_attempts_are_summarised_not_logged_one_by_one(caplog):
    """Attempts refused unchecked make one summary line, not one line each (no log storm)."""
    limits = ThrottleLimits(burst=1, rate=0.001, max_wait=0.0)
    authenticator = Authenticator([InMemoryChecker({"a": "b"})], failure_delay=0, limits=limits)

    async def main() -> None:
        for n in range(100):
            await authenticator.attempts("10.9.9.9").password("a", f"x{n}")

    asyncio.run(main())
    assert caplog.text.count("login failed for user") == 1
    assert caplog.text.count("refused without checking the password") == 1


def test_saved_state_keeps_the_numbers_not_the_counts():
    """Pickling an Authenticator keeps checkers, delay and limits; who guessed what starts afresh."""
    limits = ThrottleLimits(burst=1, rate=0.001, max_wait=0.0)
    authenticator = Authenticator([InMemoryChecker({"a": "b"})], failure_delay=0, limits=limits)
    authenticator.throttle.reserve("10.0.0.1")
    copy = pickle.loads(pickle.dumps(authenticator))
    assert copy.limits == limits and copy.failure_delay == 0
    assert copy.throttle.reserve("10.0.0.1") == 0.0
    assert asyncio.run(copy.attempts("10.0.0.2").password("a", "b"))  # the password survives, hashed


def test_the_last_refusals_are_reported_too(caplog, monkeypatch):
    """Refusals after the first line are summed up in a later line, even when the attack stops."""
    from tapster.auth import _authenticator

    monkeypatch.setattr(_authenticator, "_REPORT_EVERY", 0.2)
    limits = ThrottleLimits(burst=1, rate=0.001, max_wait=0.0)
    authenticator = Authenticator([InMemoryChecker({"a": "b"})], failure_delay=0, limits=limits)

    async def main() -> None:
        for n in range(11):
            await authenticator.attempts("10.9.9.9").password("a", f"x{n}")
        summed = "9 attempt(s) refused without checking"
        await wait_until_async(lambda: summed in caplog.text, 10, "the later summary line")

    asyncio.run(main())
    assert "1 attempt(s) refused without checking" in caplog.text
    assert "9 attempt(s) refused without checking" in caplog.text
