"""SOCKS5 UDP ASSOCIATE (RFC 1928 section 7): datagrams relayed for the life of a TCP connection.

The client's datagrams arrive on a UDP socket bound to the address the client reached the proxy on; each carries
a header naming its destination. The proxy checks that destination against the same
:class:`~tapster.services._socks_policy.DestinationPolicy` as CONNECT (hostnames resolved first), and sends the
payload from a socket of its own; what comes back is passed to the client with a header naming its source.
What is relayed, and what is not:

- only datagrams from the client's IP address (the TCP connection's peer) are taken, and from the port it gave
  in its request, or else the port of its first datagram (RFC 1928: drop any other source);
- only answers from an address and port the client has sent to are passed back (the filtering a NAT does), so
  the relay port is not an open door for anyone who learns it;
- fragments (FRAG != 0) and malformed headers are dropped; a datagram that would go beyond a transport's
  :data:`_WRITE_LIMIT` of unsent bytes is dropped (UDP's way: no queue grows without bound);
- hostnames are resolved at most :data:`_MAX_RESOLVING` at a time per association, the answers kept for
  :data:`_MAX_NAMES` names; what arrives beyond that is dropped;
- refused destinations are logged, the first :data:`_MAX_REPORTED` per association only (a datagram is not a
  connection: one line each could flood the log).

The association ends when its TCP connection ends, or when the server stops.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any

from tapster.services._socks_policy import DestinationPolicy
from tapster.services._socks_wire import datagram_header, parse_datagram

__all__ = ["UDPAssociation"]

logger = logging.getLogger("tapster.services")

_WRITE_LIMIT = 256 * 1024
_MAX_SENT_TO = 1024  # destinations remembered per association: answers are taken from these only
_MAX_NAMES = 64
_MAX_RESOLVING = 8
_MAX_REPORTED = 5

Destination = tuple[int, tuple[Any, ...]]  # (family, sockaddr)


def _queued(transport: asyncio.BaseTransport) -> int:
    """Bytes a datagram transport holds unsent (asyncio's and uvloop's have the method; the type does not)."""
    size = getattr(transport, "get_write_buffer_size", None)
    return int(size()) if size is not None else 0


def _key(sockaddr: tuple[Any, ...]) -> tuple[str, int]:
    """A destination as the association remembers it: the address in one spelling (no scope), and the port."""
    return str(ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])), int(sockaddr[1])


class _Side(asyncio.DatagramProtocol):
    """One UDP socket of an association: hands what it reads to the association."""

    def __init__(self, association: UDPAssociation, from_client: bool) -> None:
        self.association = association
        self.from_client = from_client

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.from_client:
            self.association.from_client(data, addr)
        else:
            self.association.from_destination(data, addr)

    def error_received(self, exc: Exception) -> None:
        """An ICMP error for an earlier datagram: UDP gives no guarantee, nothing to do."""


class UDPAssociation:
    """The UDP relay of one SOCKS5 client (see the module docstring).

    Args:
        policy: the destinations allowed.
        client: the client's IP address (its TCP connection's peer) and the port it said it sends from (0: not
            known yet).
        label: how the log names this association (the client's TCP address).
        resolve_timeout: seconds a hostname's resolution may take.
    """

    def __init__(
        self, policy: DestinationPolicy, client: tuple[str, int], label: str, resolve_timeout: float
    ) -> None:
        self.policy = policy
        self.client_ip = client[0]
        self.client_addr: tuple[Any, ...] | None = client if client[1] else None
        self.label = label
        self.resolve_timeout = resolve_timeout
        self.to_client: asyncio.DatagramTransport | None = None
        self.outbound: dict[int, asyncio.DatagramTransport] = {}
        self.sent_to: dict[tuple[str, int], None] = {}
        self.names: dict[str, list[Destination] | str] = {}  # allowed addresses, or why none is
        self.resolving: set[asyncio.Task[None]] = set()
        self.reported = 0
        self.closed = False

    async def open(self, local_ip: str) -> tuple[str, int]:
        """Bind the client's socket on ``local_ip`` and the outbound sockets; return the client's relay address.

        Raises:
            OSError: the client's socket cannot be bound (the outbound ones are best effort: IPv6 may be off).
        """
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Side(self, True), local_addr=(local_ip, 0)
            )
            self.to_client = transport
            for family, wildcard in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                try:
                    out, _ = await loop.create_datagram_endpoint(
                        lambda: _Side(self, False), local_addr=(wildcard, 0), family=family
                    )
                except OSError:
                    continue
                self.outbound[family] = out
        except BaseException:
            self.close()
            raise
        if self.closed:  # the TCP connection ended while the sockets were being made
            raise OSError("the client's connection ended")
        address = transport.get_extra_info("sockname")
        return str(address[0]), int(address[1])

    def close(self) -> None:
        self.closed = True
        for task in list(self.resolving):
            task.cancel()
        transports = [self.to_client, *self.outbound.values()]
        self.to_client, self.outbound = None, {}
        for transport in transports:
            if transport is not None:
                transport.close()

    # -- client to destinations

    def from_client(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if addr[0] != self.client_ip:
            return
        if self.client_addr is None:
            self.client_addr = addr
        elif addr[1] != self.client_addr[1]:
            return
        parsed = parse_datagram(data)
        if parsed is None:
            return
        host, port, is_name, payload = parsed
        if not is_name:
            address = ipaddress.ip_address(host)
            reason = self.policy.refusal(address)
            if reason is not None:
                self._report(f"{host}:{port}", reason)
                return
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            self._send(family, (host, port), payload)
            return
        known = self.names.get(host)
        if isinstance(known, str):
            self._report(f"{host}:{port}", known)
        elif known is not None:
            resolved_family, sockaddr = known[0]
            self._send(resolved_family, (sockaddr[0], port, *sockaddr[2:]), payload)
        elif len(self.resolving) < _MAX_RESOLVING:
            task = asyncio.ensure_future(self._resolve_and_send(host, port, payload))
            self.resolving.add(task)
            task.add_done_callback(self.resolving.discard)

    async def _resolve_and_send(self, host: str, port: int, payload: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.resolve_timeout):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
        except (OSError, UnicodeError, TimeoutError) as exc:
            self._report(f"{host}:{port}", f"cannot resolve {host!r}: {exc or 'timed out'}")
            return
        allowed: list[Destination] = []
        refusals: list[str] = []
        for family, _, _, _, sockaddr in infos:
            if family not in self.outbound:
                continue
            reason = self.policy.refusal(ipaddress.ip_address(sockaddr[0]))
            if reason is None:
                allowed.append((family, sockaddr))
            elif reason not in refusals:
                refusals.append(reason)
        if len(self.names) >= _MAX_NAMES:
            del self.names[next(iter(self.names))]
        self.names[host] = allowed or ("; ".join(refusals) or f"{host!r} has no address this proxy can reach")
        if not allowed:
            self._report(f"{host}:{port}", str(self.names[host]))
            return
        if not self.closed:
            self._send(*allowed[0], payload)

    def _send(self, family: int, sockaddr: tuple[Any, ...], payload: bytes) -> None:
        transport = self.outbound.get(family)
        if transport is None or _queued(transport) > _WRITE_LIMIT:
            return
        key = _key(sockaddr)
        if key not in self.sent_to:
            if len(self.sent_to) >= _MAX_SENT_TO:
                del self.sent_to[next(iter(self.sent_to))]
            self.sent_to[key] = None
        transport.sendto(payload, sockaddr)

    def _report(self, destination: str, reason: str) -> None:
        if self.reported >= _MAX_REPORTED:
            return
        self.reported += 1
        more = "; later refusals of this association are not logged" if self.reported == _MAX_REPORTED else ""
        logger.warning("SOCKS5 UDP %s -> %s: dropped: %s%s", self.label, destination, reason, more)

    # -- destinations to client

    def from_destination(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if _key(addr) not in self.sent_to:
            return
        transport, client = self.to_client, self.client_addr
        if transport is None or client is None or _queued(transport) > _WRITE_LIMIT:
            return
        transport.sendto(datagram_header(str(addr[0]), addr[1]) + data, client)
