"""Asking a list of checkers for each login, with guessing throttled per source address and overall."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from tapster.auth._base import Checker
from tapster.auth._throttle import Throttle, ThrottleLimits, address_key

__all__ = ["Authenticator", "LoginAttempts"]

logger = logging.getLogger("tapster.auth")

_REPORT_EVERY = 10.0  # seconds between two "refused unchecked" summary lines


class Authenticator:
    """The checkers a server accepts, and the throttle that keeps guessing slow.

    A credential is accepted when any checker accepts it. Passwords are throttled per source address and for the
    whole server (see :mod:`tapster.auth._throttle` and :class:`ThrottleLimits`), not per connection, so opening
    many connections does not make guessing faster. Each failed password is answered after ``failure_delay``
    seconds (a fixed delay, as sshd's, so one mistyped password is refused within a second or so).

    Args:
        checkers: the checkers, asked in order.
        failure_delay: seconds a failed password's answer is held back (tests use a small value).
        limits: the throttle's numbers; the documented defaults when None.

    Raises:
        ValueError: no checkers were given, or the delay is negative or not finite.
    """

    def __init__(
        self, checkers: Iterable[Checker], *, failure_delay: float = 1.0, limits: ThrottleLimits | None = None
    ) -> None:
        self.checkers = list(checkers)
        if not self.checkers:
            raise ValueError("no credential checkers given: nobody could log in")
        for checker in self.checkers:
            if not isinstance(checker, Checker):
                raise TypeError(f"{checker!r} is not a tapster.auth.Checker")
        if not 0 <= failure_delay < float("inf"):
            raise ValueError(f"failure_delay must be a finite number >= 0, not {failure_delay!r}")
        self.failure_delay = float(failure_delay)
        self.limits = limits or ThrottleLimits()
        self._reset()

    def _reset(self) -> None:
        self.throttle = Throttle(self.limits)
        self._refused = 0
        self._refused_from: set[str] = set()
        self._reported_at = -_REPORT_EVERY
        self._flush: asyncio.TimerHandle | None = None
        self._flush_loop: asyncio.AbstractEventLoop | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Saved state keeps the checkers and numbers; who guessed what is live state and starts afresh."""
        return {"checkers": self.checkers, "failure_delay": self.failure_delay, "limits": self.limits}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.checkers = state["checkers"]
        self.failure_delay = state["failure_delay"]
        self.limits = state.get("limits") or ThrottleLimits()
        self._reset()

    @property
    def accepts_passwords(self) -> bool:
        return any(checker.accepts_passwords for checker in self.checkers)

    @property
    def accepts_keys(self) -> bool:
        return any(checker.accepts_keys for checker in self.checkers)

    @property
    def accepts_anyone(self) -> bool:
        return any(checker.accepts_anyone for checker in self.checkers)

    def verify_files(self) -> None:
        """Check every checker's files against the StrictModes rules for the user the server runs as now.

        Servers call this after dropping privileges, before they accept logins.

        Raises:
            UnsafeFileError: a file or directory could have been written by another user (the message names it).
        """
        for checker in self.checkers:
            checker.verify_files()

    def attempts(self, peer: str = "-") -> LoginAttempts:
        """The login state of one new connection from ``peer`` (an address: throttling and log lines use it)."""
        return LoginAttempts(self, peer)

    def _note_refused(self, peer: str) -> None:
        """Count an attempt refused unchecked: one log line at once after a quiet spell, then at most one summary
        every ``_REPORT_EVERY`` seconds (a timer makes sure the last count is logged too)."""
        self._refused += 1
        if len(self._refused_from) < 5:
            self._refused_from.add(peer)
        now = time.monotonic()
        if now - self._reported_at >= _REPORT_EVERY:
            self._report_refused()
        elif self._flush is None or self._flush_loop is not asyncio.get_running_loop():
            self._flush_loop = asyncio.get_running_loop()
            delay = self._reported_at + _REPORT_EVERY - now
            self._flush = self._flush_loop.call_later(delay, self._report_refused)

    def _report_refused(self) -> None:
        self._flush = None
        if not self._refused:
            return
        logger.warning(
            "too many failed logins: %d attempt(s) refused without checking the password (from %s)",
            self._refused,
            ", ".join(sorted(self._refused_from)),
        )
        self._reported_at = time.monotonic()
        self._refused = 0
        self._refused_from = set()


class LoginAttempts:
    """The logins tried on one connection: throttles, asks the checkers, logs the outcome."""

    def __init__(self, authenticator: Authenticator, peer: str) -> None:
        self.authenticator = authenticator
        self.peer = peer
        self.source = address_key(peer)
        self.failures = 0

    async def password(self, username: str, password: str) -> bool:
        """Whether any checker accepts ``password`` for ``username``; a failure returns only after the delay.

        When the source address (or the whole server) has used up its guesses, the password is not checked at
        all and the answer is no.
        """
        auth = self.authenticator
        throttle = auth.throttle
        wait = throttle.reserve(self.source)
        if wait is None:
            auth._note_refused(self.source)
            self.failures += 1
            await self._delay()
            return False
        if wait > 0:
            await asyncio.sleep(wait)
        async with throttle.checks():
            accepted = await self._ask(username, password)
        if accepted:
            throttle.refund(self.source)
            return True
        self.failures += 1
        logger.warning("login failed for user %r from %s (password)", username[:64], self.peer)
        await self._delay()
        return False

    async def _ask(self, username: str, password: str) -> bool:
        for checker in self.authenticator.checkers:
            if not (checker.accepts_passwords or checker.accepts_anyone):
                continue
            try:
                if await checker.check_password(username, password):
                    return True
            except Exception:
                logger.exception("credential checker %s failed", checker.description)
        return False

    async def _delay(self) -> None:
        if self.authenticator.failure_delay > 0:
            await asyncio.sleep(self.authenticator.failure_delay)

    async def key(self, username: str, key: bytes) -> bool:
        """Whether any checker accepts the public key blob ``key`` for ``username``.

        A refused key is not delayed: SSH clients offer each of their keys in turn, and a key cannot be guessed.
        """
        for checker in self.authenticator.checkers:
            if not (checker.accepts_keys or checker.accepts_anyone):
                continue
            try:
                if await checker.check_key(username, key):
                    return True
            except Exception:
                logger.exception("credential checker %s failed", checker.description)
        return False
