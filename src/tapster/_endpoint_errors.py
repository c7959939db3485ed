"""How endpoint failures are worded: the bare reason of a socket or TLS error, and the ListenError around it."""

from __future__ import annotations

import os
import socket
import ssl

from tapster.errors import ListenError

__all__ = ["listen_error", "reason"]


def reason(exc: OSError) -> str:
    """The bare reason of a socket error ("address already in use"), without asyncio's wording around it."""
    if isinstance(exc, ssl.SSLError):  # its errno is an OpenSSL code, not an errno
        text = str(exc).split(" (_ssl.c:")[0]
    elif isinstance(exc, socket.gaierror) and exc.strerror:
        text = exc.strerror
    elif exc.errno is not None and exc.errno > 0:
        text = os.strerror(exc.errno)
    else:
        text = str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def listen_error(description: str, why: str, cause: OSError | None = None) -> ListenError:
    """``cannot listen on DESCRIPTION: WHY``, carrying the errno of ``cause`` (never an OpenSSL code)."""
    error = ListenError(f"cannot listen on {description}: {why}")
    if cause is not None and not isinstance(cause, ssl.SSLError):
        error.errno = cause.errno
    return error
