"""Which destinations a SOCKS proxy may connect to: ``--allow`` networks, and the public internet by default.

An open proxy that reaches its own host and network is a way in from outside: a client asks for 127.0.0.1:6379
or 169.254.169.254:80 (a cloud's metadata service) and talks to what only the proxy's machine could. So unless
``--allow`` says otherwise, the allowed destinations are the *public* addresses: not private, loopback,
link-local, multicast, unspecified, reserved, shared (100.64.0.0/10) or otherwise non-global, as Python's
:mod:`ipaddress` classifies them. An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) is judged as the IPv4
address it reaches. Hostnames are resolved first and every address checked, so a name that resolves to
127.0.0.1 is refused like the address itself; the proxy then connects to the checked address, never resolving
the name again.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["PUBLIC", "Address", "DestinationPolicy", "Network", "parse_network"]

PUBLIC = "public"
"""The ``--allow`` entry naming every public address (the default when no ``--allow`` is given)."""

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str) -> Network | str:
    """A CIDR network (``10.0.0.0/8``, ``::1/128``, a bare address) or :data:`PUBLIC`.

    Raises:
        ValueError: not a network, or one with host bits set (``10.0.0.1/8``): the message says which.
    """
    text = text.strip()
    if text == PUBLIC:
        return PUBLIC
    try:
        return ipaddress.ip_network(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a network (CIDR such as 10.0.0.0/8, or 'public'): {exc}") from None


def _kind(address: Address) -> str | None:
    """Why ``address`` is not public, or None when it is."""
    for kind in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if address.is_global else "non-global"


class DestinationPolicy:
    """The allowed destinations: the public addresses if ``public``, and every address in ``networks``.

    Args:
        allow: entries as :func:`parse_network` reads them (strings) or networks; None: public only.
    """

    def __init__(self, allow: Iterable[str | Network] | None = None) -> None:
        entries = [PUBLIC] if allow is None else list(allow)
        parsed = [parse_network(entry) if isinstance(entry, str) else entry for entry in entries]
        self.public = PUBLIC in parsed
        self.networks: tuple[Network, ...] = tuple(entry for entry in parsed if not isinstance(entry, str))

    def refusal(self, address: Address) -> str | None:
        """Why a connection to ``address`` is refused (for the log), or None when it is allowed."""
        judged = address
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            judged = address.ipv4_mapped
        if any(judged in network or address in network for network in self.networks):
            return None
        kind = _kind(judged)
        if kind is None and self.public:
            return None
        what = f"a {kind} address, " if kind is not None else ""
        return f"{judged} is {what}not in --allow ({self.description})"

    @property
    def description(self) -> str:
        entries = ([PUBLIC] if self.public else []) + [str(network) for network in self.networks]
        return ", ".join(entries) or "nothing"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DestinationPolicy):
            return NotImplemented
        return (self.public, self.networks) == (other.public, other.networks)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"DestinationPolicy({self.description})"
