"""What every credential checker is: something that answers "is this user who they claim to be?"."""

from __future__ import annotations

__all__ = ["Checker"]


class Checker:
    """Verifies a username with a password, or with an SSH public key, and nothing else.

    A checker knows nothing of connections, delays or sessions (the :class:`~tapster.auth.Authenticator` adds
    those). Both checks are coroutines because verifying a hash is CPU work that a checker runs in a thread, and
    reading a key file is I/O. Neither raises for a wrong credential; they answer False.

    Attributes:
        accepts_passwords: :meth:`check_password` can answer True.
        accepts_keys: :meth:`check_key` can answer True.
        accepts_anyone: every user is let in without any credential (the ``anonymous`` checker).
        description: how logs and messages name this checker, e.g. ``file:/etc/tapster/users``.
    """

    accepts_passwords: bool = False
    accepts_keys: bool = False
    accepts_anyone: bool = False
    description: str = "checker"

    async def check_password(self, username: str, password: str) -> bool:
        """Whether ``password`` is ``username``'s password."""
        return False

    async def check_key(self, username: str, key: bytes) -> bool:
        """Whether the SSH public key ``key`` (its wire-format blob) may log in as ``username``."""
        return False

    def verify_files(self) -> None:
        """Refuse the files this checker trusts if another user could have written them (StrictModes).

        Called by the server after it has dropped privileges and before it accepts logins, so "the user the
        server runs as" is the current effective uid. Checkers without files do nothing.

        Raises:
            UnsafeFileError: one line naming the file or directory and the fault.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"
