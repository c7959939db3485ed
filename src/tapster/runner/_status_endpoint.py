"""--status ENDPOINT: checked when the command line is read, and kept on loopback unless an address is given."""

from __future__ import annotations

__all__ = ["status_endpoint"]

_LOOPBACK = {"tcp": "127.0.0.1", "tcp6": "::1", "ssl": "127.0.0.1"}


def status_endpoint(text: str) -> str:
    """The endpoint string the status server listens on: ``text``, with loopback as the default interface.

    A bare port or ``tcp:PORT`` (``tcp6:``, ``ssl:`` likewise) without ``interface=`` would listen on every
    address; health and metrics are for the host's own probes and scrapers unless the user says otherwise.

    Raises:
        ValueError: not a server endpoint, or a datagram one (the message says which).
    """
    from tapster.endpoints import parse_server

    text = text.strip()
    if text.isdigit():
        text = f"tcp:{text}"
    endpoint = parse_server(text)  # raises EndpointError (a ValueError) naming the fault
    if endpoint.is_datagram:
        raise ValueError(f"needs a stream endpoint, not {text!r}")
    loopback = _LOOPBACK.get(endpoint.kind)
    if loopback is not None and getattr(endpoint, "interface", None) == "":
        escaped = loopback.replace(":", "\\:")
        text = f"{text}:interface={escaped}"
        parse_server(text)
    return text
