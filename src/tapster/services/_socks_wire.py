"""The SOCKS 4, 4a and 5 handshakes (RFC 1928, RFC 1929 and the SOCKS4/4a notes), read from a bounded stream.

Written by hand rather than taken from a library: the asyncio SOCKS libraries that are kept up (python-socks,
aiohttp-socks, socksio) are clients only, and the server packages found (soxyproxy, asyncio-socks-server,
asysocks' pentest server, several unmaintained ones) either speak SOCKS5 alone, pin old versions of pydantic and
typer, or bring a toolkit of their own. The handshakes are small, and the whole risk of parsing them is input
that never ends or lies about its length; so every read here has a limit:

- each field is read by its length: fixed sizes, or a length byte (so at most 255 bytes); the NUL-terminated
  fields of SOCKS4 (user id, 4a hostname) are refused past :data:`MAX_FIELD` bytes. The largest handshake there
  is, SOCKS5 with a password and a hostname, is 257 + 513 + 262 bytes;
- the caller bounds the time (a handshake timeout) and the buffer (reading pauses past a few KiB);
- nothing is answered before the part of the request it answers has been read whole.

BIND is answered "command not supported" (SOCKS5 0x07, SOCKS4 0x5B). A UDP ASSOCIATE datagram's header
(RFC 1928 section 7) is read by :func:`parse_datagram`, which checks every length against the datagram's size.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = [
    "MAX_FIELD",
    "HandshakeFailed",
    "HandshakeStream",
    "PasswordCheck",
    "Reply",
    "Request",
    "datagram_header",
    "negotiate",
    "parse_datagram",
]

MAX_FIELD = 255
"""The longest SOCKS4 user id or SOCKS4a hostname accepted (SOCKS5 fields cannot be longer: one length byte)."""

_CONNECT, _BIND, _UDP_ASSOCIATE = 1, 2, 3
_COMMANDS = {_BIND: "BIND"}  # the names of the commands not carried out
_NO_AUTH, _PASSWORD, _NO_ACCEPTABLE = 0x00, 0x02, 0xFF
_IPV4, _NAME, _IPV6 = 1, 3, 4
_V4_GRANTED, _V4_REJECTED = 0x5A, 0x5B


class Reply:
    """SOCKS5 reply codes (RFC 1928 section 6); SOCKS4 has only granted (0x5A) and rejected (0x5B)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class HandshakeFailed(Exception):
    """The client's handshake is refused: ``reason`` for the log, ``reply`` (or None) for the client."""

    def __init__(self, reason: str, reply: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


class HandshakeStream(Protocol):
    """What the handshake reads from and writes to (the connection's protocol, during the handshake)."""

    async def read_exactly(self, count: int) -> bytes: ...

    async def read_until_nul(self, limit: int, what: str) -> bytes: ...

    def write(self, data: bytes) -> None: ...


PasswordCheck = Callable[[str, str], Awaitable[bool]]


class Request:
    """A request read whole: the version spoken, the destination (for UDP ASSOCIATE: where the client says it
    will send datagrams from), and how to answer it."""

    __slots__ = ("host", "is_name", "port", "udp", "version")

    def __init__(self, version: str, host: str, port: int, is_name: bool, udp: bool = False) -> None:
        self.version = version  # "4", "4a" or "5"
        self.host = host  # an IP address, or a hostname to resolve (4a and 5)
        self.port = port
        self.is_name = is_name
        self.udp = udp  # SOCKS5 UDP ASSOCIATE rather than CONNECT

    @property
    def destination(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def reply(self, code: int, bound: tuple[str, int] | None = None) -> bytes:
        """The answer to this request: ``code`` (a :class:`Reply` code) and the address the proxy connected
        from (``bound``), in this request's version."""
        return (_reply4 if self.version != "5" else _reply5)(code, bound)


def _reply4(code: int, bound: tuple[str, int] | None) -> bytes:
    status = _V4_GRANTED if code == Reply.SUCCEEDED else _V4_REJECTED
    address, port = b"\0\0\0\0", 0
    if bound is not None and ":" not in bound[0]:  # SOCKS4 has room for an IPv4 address only
        address, port = socket.inet_aton(bound[0]), bound[1]
    return struct.pack("!BBH", 0, status, port) + address


def _reply5(code: int, bound: tuple[str, int] | None) -> bytes:
    host, port = bound if bound is not None else ("0.0.0.0", 0)
    address = _plain(host)
    kind = _IPV4 if address.version == 4 else _IPV6
    return struct.pack("!BBBB", 5, code, 0, kind) + address.packed + struct.pack("!H", port)


def _plain(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as a client should see it: no scope, and an IPv4-mapped IPv6 address (a dual-stack socket's
    view of an IPv4 peer) as the IPv4 address."""
    address = ipaddress.ip_address(host.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def negotiate(stream: HandshakeStream, check_password: PasswordCheck | None) -> Request:
    """Read one SOCKS handshake up to a CONNECT request and return it (nothing is connected yet).

    ``check_password`` is None when the server needs no login; otherwise SOCKS5 clients must log in with a
    username and password (RFC 1929) and SOCKS4, which has no password, is refused.

    Raises:
        HandshakeFailed: malformed, unsupported or refused; its ``reply`` (if any) is to be sent before closing.
    """
    version = (await stream.read_exactly(1))[0]
    if version == 4:
        return await _socks4(stream, check_password is not None)
    if version == 5:
        return await _socks5(stream, check_password)
    raise HandshakeFailed(f"not a SOCKS request (first byte 0x{version:02x})")


async def _socks4(stream: HandshakeStream, needs_login: bool) -> Request:
    command, port = struct.unpack("!BH", await stream.read_exactly(3))
    address = await stream.read_exactly(4)
    await stream.read_until_nul(MAX_FIELD, "SOCKS4 user id")
    version, is_name = "4", False
    if address[:3] == b"\0\0\0" and address[3] != 0:  # 0.0.0.x: SOCKS4a, a hostname follows the user id
        version, is_name = "4a", True
        host = _hostname(
            await stream.read_until_nul(MAX_FIELD, "SOCKS4a hostname"), _reply4(Reply.NOT_ALLOWED, None)
        )
    else:
        host = socket.inet_ntoa(address)
    refused = _reply4(Reply.NOT_ALLOWED, None)
    if command != _CONNECT:
        name = "BIND" if command == _BIND else f"0x{command:02x}"  # SOCKS4 has no UDP
        raise HandshakeFailed(f"SOCKS{version} command {name} is not supported", refused)
    if needs_login:
        raise HandshakeFailed(f"SOCKS{version} refused: it has no password and --auth is set", refused)
    return Request(version, host, port, is_name)


async def _socks5(stream: HandshakeStream, check_password: PasswordCheck | None) -> Request:
    count = (await stream.read_exactly(1))[0]
    if count == 0:
        raise HandshakeFailed("SOCKS5 greeting offers no authentication method", bytes([5, _NO_ACCEPTABLE]))
    methods = await stream.read_exactly(count)
    wanted = _NO_AUTH if check_password is None else _PASSWORD
    if wanted not in methods:
        offered = ", ".join(f"0x{method:02x}" for method in methods)
        need = "no authentication (0x00)" if check_password is None else "username/password (0x02)"
        raise HandshakeFailed(
            f"SOCKS5 client offers methods {offered}, none acceptable (need {need})",
            bytes([5, _NO_ACCEPTABLE]),
        )
    stream.write(bytes([5, wanted]))
    if check_password is not None:
        await _login(stream, check_password)
    version, command, _, kind = await stream.read_exactly(4)
    failure = _reply5(Reply.GENERAL_FAILURE, None)
    if version != 5:
        raise HandshakeFailed(f"SOCKS5 request has version {version}, not 5", failure)
    if kind == _IPV4:
        host = socket.inet_ntop(socket.AF_INET, await stream.read_exactly(4))
    elif kind == _IPV6:
        host = socket.inet_ntop(socket.AF_INET6, await stream.read_exactly(16))
    elif kind == _NAME:
        length = (await stream.read_exactly(1))[0]
        if length == 0:
            raise HandshakeFailed("SOCKS5 request names an empty hostname", failure)
        host = _hostname(await stream.read_exactly(length), _reply5(Reply.HOST_UNREACHABLE, None))
    else:
        raise HandshakeFailed(
            f"SOCKS5 address type 0x{kind:02x} is not supported",
            _reply5(Reply.ADDRESS_TYPE_NOT_SUPPORTED, None),
        )
    (port,) = struct.unpack("!H", await stream.read_exactly(2))
    if command not in (_CONNECT, _UDP_ASSOCIATE):
        name = _COMMANDS.get(command, f"0x{command:02x}")
        raise HandshakeFailed(
            f"SOCKS5 command {name} is not supported", _reply5(Reply.COMMAND_NOT_SUPPORTED, None)
        )
    return Request("5", host, port, kind == _NAME, udp=command == _UDP_ASSOCIATE)


async def _login(stream: HandshakeStream, check_password: PasswordCheck) -> None:
    """RFC 1929: version 1, then a username and a password of one length byte each."""
    refused = b"\x01\x01"
    version = (await stream.read_exactly(1))[0]
    if version != 1:
        raise HandshakeFailed(f"SOCKS5 login has version {version}, not 1", refused)
    username = await stream.read_exactly((await stream.read_exactly(1))[0])
    password = await stream.read_exactly((await stream.read_exactly(1))[0])
    user = username.decode("utf-8", "surrogateescape")
    if not username:
        raise HandshakeFailed("SOCKS5 login with an empty username", refused)
    if not await check_password(user, password.decode("utf-8", "surrogateescape")):
        raise HandshakeFailed(f"SOCKS5 login failed for user {user[:64]!r}", refused)
    stream.write(b"\x01\x00")


def _hostname(raw: bytes, refused: bytes) -> str:
    """A hostname as the resolver will see it: printable ASCII (IDNA names arrive encoded), no spaces."""
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        raise HandshakeFailed(f"hostname {raw[:64]!r} is not ASCII", refused) from None
    if not name.isprintable() or " " in name:
        raise HandshakeFailed(f"hostname {name[:64]!r} has spaces or control characters", refused)
    return name


def parse_datagram(data: bytes) -> tuple[str, int, bool, bytes] | None:
    """A client's UDP datagram: (host, port, host is a name, payload); None if malformed or a fragment.

    RSV(2) FRAG(1) ATYP(1) DST.ADDR DST.PORT(2) DATA. Fragments (FRAG != 0) are dropped, as RFC 1928 allows a
    server that does not reassemble to do.
    """
    if len(data) < 4 or data[2] != 0:
        return None
    kind = data[3]
    if kind == _IPV4:
        end = 8
        host = socket.inet_ntop(socket.AF_INET, data[4:8]) if len(data) >= end else ""
    elif kind == _IPV6:
        end = 20
        host = socket.inet_ntop(socket.AF_INET6, data[4:20]) if len(data) >= end else ""
    elif kind == _NAME and len(data) >= 5 and data[4]:
        end = 5 + data[4]
        try:
            host = data[5:end].decode("ascii") if len(data) >= end else ""
        except UnicodeDecodeError:
            return None
        if not host.isprintable() or " " in host:
            return None
    else:
        return None
    if not host or len(data) < end + 2:
        return None
    (port,) = struct.unpack_from("!H", data, end)
    return host, port, kind == _NAME, data[end + 2 :]


def datagram_header(host: str, port: int) -> bytes:
    """The header the proxy puts before a datagram it passes back to the client: where it came from."""
    address = _plain(host)
    kind = _IPV4 if address.version == 4 else _IPV6
    return struct.pack("!HBB", 0, 0, kind) + address.packed + struct.pack("!H", port)
