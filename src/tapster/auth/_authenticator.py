"""Asking a list of checkers, one connection at a time, with a growing delay after each failure."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from tapster.auth._base import Checker

__all__ = ["Authenticator", "LoginAttempts"]

logger = logging.getLogger("tapster.auth")


class Authenticator:
    """The checkers a server accepts, and the failure delay its connections get.

    A credential is accepted when any checker accepts it. Each connection gets its own :class:`LoginAttempts`
    (:meth:`attempts`): after a failed password, the answer on that connection is held back ``failure_delay``
    seconds, doubling with each further failure up to ``max_failure_delay``, so guessing is slow while other
    connections are served as usual.

    Args:
        checkers: the checkers, asked in order.
        failure_delay: the first delay in seconds (tests use a small value).
        max_failure_delay: the longest delay.

    Raises:
        ValueError: no checkers were given, or a delay is negative.
    """

    def __init__(
        self, checkers: Iterable[Checker], *, failure_delay: float = 1.0, max_failure_delay: float = 16.0
    ) -> None:
        self.checkers = list(checkers)
        if not self.checkers:
            raise ValueError("no credential checkers given: nobody could log in")
        for checker in self.checkers:
            if not isinstance(checker, Checker):
                raise TypeError(f"{checker!r} is not a tapster.auth.Checker")
        if failure_delay < 0 or max_failure_delay < 0:
            raise ValueError("failure delays cannot be negative")
        self.failure_delay = failure_delay
        self.max_failure_delay = max(failure_delay, max_failure_delay)

    @property
    def accepts_passwords(self) -> bool:
        return any(checker.accepts_passwords for checker in self.checkers)

    @property
    def accepts_keys(self) -> bool:
        return any(checker.accepts_keys for checker in self.checkers)

    @property
    def accepts_anyone(self) -> bool:
        return any(checker.accepts_anyone for checker in self.checkers)

    def attempts(self, peer: str = "-") -> LoginAttempts:
        """The login state of one new connection from ``peer`` (used in log lines)."""
        return LoginAttempts(self, peer)


class LoginAttempts:
    """The logins tried on one connection: asks the checkers, logs the outcome, delays after failures."""

    def __init__(self, authenticator: Authenticator, peer: str) -> None:
        self.authenticator = authenticator
        self.peer = peer
        self.failures = 0

    @property
    def next_delay(self) -> float:
        """How long the next failure will be held back."""
        auth = self.authenticator
        return float(min(auth.failure_delay * 2**self.failures, auth.max_failure_delay))

    async def password(self, username: str, password: str) -> bool:
        """Whether any checker accepts ``password`` for ``username``; a failure returns only after the delay."""
        for checker in self.authenticator.checkers:
            if not (checker.accepts_passwords or checker.accepts_anyone):
                continue
            try:
                if await checker.check_password(username, password):
                    return True
            except Exception:
                logger.exception("credential checker %s failed", checker.description)
        await self._failed(username, "password")
        return False

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

    async def _failed(self, username: str, what: str) -> None:
        delay = self.next_delay
        self.failures += 1
        logger.warning("login failed for user %r from %s (%s)", username[:64], self.peer, what)
        if delay > 0:
            await asyncio.sleep(delay)
