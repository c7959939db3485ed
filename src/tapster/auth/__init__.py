"""Credential checkers and the ``--auth TYPE:ARGS`` language.

A :class:`Checker` verifies a username with a password or an SSH public key, and nothing else. An
:class:`Authenticator` asks a list of them on behalf of one server and throttles password guessing per source
address and overall (:class:`ThrottleLimits`). File-based checkers follow OpenSSH's StrictModes.
:class:`AuthOptions` gives a plugin's command line ``--auth``, ``--help-auth`` and ``--help-auth-type``.

Importing this package imports only the standard library; bcrypt, argon2-cffi and passlib are imported when a
hash of theirs is first checked.
"""

from tapster.auth._authenticator import Authenticator, LoginAttempts
from tapster.auth._base import Checker
from tapster.auth._checkers import AnonymousChecker, FileChecker, InMemoryChecker, PasswdChecker, UnixChecker
from tapster.auth._options import AuthOptions
from tapster.auth._spec import AuthType, auth_types, format_auth_type, format_auth_types, parse_auth
from tapster.auth._sshkey import SSHKeyChecker, parse_authorized_keys
from tapster.auth._throttle import ThrottleLimits

__all__ = [
    "AnonymousChecker",
    "AuthOptions",
    "AuthType",
    "Authenticator",
    "Checker",
    "FileChecker",
    "InMemoryChecker",
    "LoginAttempts",
    "PasswdChecker",
    "SSHKeyChecker",
    "ThrottleLimits",
    "UnixChecker",
    "auth_types",
    "format_auth_type",
    "format_auth_types",
    "parse_auth",
    "parse_authorized_keys",
]
