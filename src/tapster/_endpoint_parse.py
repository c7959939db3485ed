"""The endpoint string grammar: splitting a description into fields and checking each value.

Kept apart from :mod:`tapster.endpoints` so the grammar can be read (and changed) without the socket code.
Every problem is reported as a :class:`Fault` carrying one short phrase; :func:`parse` turns it into an
:class:`~tapster.errors.EndpointError` that names the whole description, so a caller sees exactly one
exception type for any malformed string.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from tapster._record import Record
from tapster.errors import EndpointError

__all__ = [
    "CLIENT_GRAMMARS",
    "DEFAULT_BACKLOG",
    "DEFAULT_CONNECT_TIMEOUT",
    "REQUIRED",
    "SERVER_GRAMMARS",
    "SSL_METHODS",
    "Fault",
    "Grammar",
    "Param",
    "PassedSockets",
    "parse",
    "read_listen_env",
    "to_backlog",
    "to_client_port",
    "to_domain",
    "to_fd_index",
    "to_fd_name",
    "to_file",
    "to_flag",
    "to_host",
    "to_interface",
    "to_interface6",
    "to_mode",
    "to_port",
    "to_ssl_method",
    "to_timeout",
    "to_unix_path",
    "unsupported",
]

_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_OCTAL = re.compile(r"(?:0[oO])?([0-7]+)", re.ASCII)
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+", re.ASCII)
_BARE_IPV6 = re.compile(r"(\w+)=\[?[0-9A-Fa-f]{0,4}::", re.ASCII)  # key=::1, key=fe80::1, key=[::1]
_FD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]{1,255}", re.ASCII)  # printable ASCII except ':' (systemd's rule)


class Fault(Exception):
    """One thing wrong with a description, as a phrase; :func:`parse` adds the description in front."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""The default of a parameter that must be given."""


class Param(Record):
    """One parameter: how its text is checked and converted, its default, and its attribute name.

    Attributes:
        convert: ``(name, text) -> value``; raises :class:`Fault` naming the parameter and the text.
        default: the value when absent, or :data:`REQUIRED`.
        attribute: the endpoint attribute it fills, when that differs from the key (``privateKey`` ->
            ``private_key``).
    """

    __slots__ = ("attribute", "convert", "default")

    convert: Final[Callable[[str, str], object]]
    default: Final[object]
    attribute: Final[str | None]

    def __init__(
        self, convert: Callable[[str, str], object], default: object = REQUIRED, attribute: str | None = None
    ) -> None:
        self.convert = convert
        self.default = default
        self.attribute = attribute


class Grammar(Record):
    """What one endpoint type accepts.

    Attributes:
        kind: the kind of endpoint it makes (``tls:`` makes ``ssl`` servers).
        positional: the parameters that may be given without ``key=``, in order.
        params: every accepted parameter, by key.
        finish: a last check or completion of the attribute values, for rules across parameters.
    """

    __slots__ = ("finish", "kind", "params", "positional")

    kind: Final[str]
    positional: Final[tuple[str, ...]]
    params: Final[Mapping[str, Param]]
    finish: Final[Callable[[dict[str, Any]], None] | None]

    def __init__(
        self,
        kind: str,
        positional: tuple[str, ...],
        params: Mapping[str, Param],
        finish: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.kind = kind
        self.positional = positional
        self.params = params
        self.finish = finish


def parse(
    description: str, grammars: Mapping[str, Grammar], *, text: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Parse ``text`` (default: ``description``) into the endpoint kind and its attribute values.

    Args:
        description: what the user wrote; every error names it.
        grammars: the accepted endpoint types, by lower-case name.
        text: the string to parse when it differs from ``description`` (a bare port is parsed as
            ``tcp:PORT``).

    Raises:
        EndpointError: for anything malformed, with a message naming ``description`` and the fault.
    """
    try:
        return _parse(grammars, description if text is None else text)
    except Fault as fault:
        raise EndpointError(f"invalid endpoint {description!r}: {fault}{_ipv6_hint(description)}") from None


def _ipv6_hint(description: str) -> str:
    """A hint when the string failed and holds an IPv6 address with bare colons (``interface=::1``)."""
    match = _BARE_IPV6.search(description)
    if match is None:
        return ""
    key = match.group(1)
    return f" (an IPv6 address needs its colons escaped: {key}=\\:\\:1, in Python source a raw string)"


def _parse(grammars: Mapping[str, Grammar], text: str) -> tuple[str, dict[str, Any]]:
    if not text:
        raise Fault("empty endpoint description")
    fields = _split(text)
    type_key, type_text = fields[0]
    if type_key is not None or not type_text:
        raise Fault("the first field must be the endpoint type, such as tcp")
    type_name = type_text.lower()
    grammar = grammars.get(type_name)
    if grammar is None:
        raise Fault(f"unknown endpoint type {type_text!r} (expected one of: {', '.join(sorted(grammars))})")
    given = _assign(type_name, grammar, fields[1:])
    values: dict[str, Any] = {}
    for name, param in grammar.params.items():
        if name in given:
            values[param.attribute or name] = param.convert(name, given[name])
        elif param.default is REQUIRED:
            raise Fault(f"missing required parameter {name!r} for {type_name}")
        else:
            values[param.attribute or name] = param.default
    if grammar.finish is not None:
        grammar.finish(values)
    return grammar.kind, values


def _assign(type_name: str, grammar: Grammar, fields: list[tuple[str | None, str]]) -> dict[str, str]:
    """Name every field's value: ``key=value`` by its key, then the bare values in order, each to the next
    positional parameter not given by key (Twisted's rule: ``tcp:host=H:1234`` is port 1234)."""
    given: dict[str, str] = {}
    bare: list[str] = []
    for key, text in fields:
        if key is None:
            bare.append(text)
        elif not key:
            raise Fault(f"empty parameter name in {'=' + text!r}")
        elif key not in grammar.params:
            expected = ", ".join(sorted(grammar.params))
            raise Fault(f"unknown parameter {key!r} for {type_name} (expected: {expected})")
        elif key in given:
            raise Fault(f"duplicate parameter {key!r} for {type_name}")
        else:
            given[key] = text
    free = [name for name in grammar.positional if name not in given]
    for index, text in enumerate(bare):
        if index < len(free):
            given[free[index]] = text
        elif index < len(grammar.positional):  # tcp:80:port=81: the bare value is a second port
            raise Fault(f"duplicate parameter {grammar.positional[index]!r} for {type_name}")
        else:
            raise Fault(_extra_positional(type_name, grammar, text))
    return given


def _extra_positional(type_name: str, grammar: Grammar, value: str) -> str:
    if not grammar.positional:
        return f"unexpected value {value!r} for {type_name}: give its parameters as key=value"
    return (
        f"unexpected value {value!r} for {type_name}: only {', '.join(grammar.positional)} may be given "
        "without a key; give the others as key=value"
    )


def _split(text: str) -> list[tuple[str | None, str]]:
    """Split on unescaped ``:``; a field with an unescaped ``=`` is ``(key, value)``, else ``(None, value)``.

    Escapes are resolved here, so callers see plain text; a trailing lone backslash is an error.
    """
    fields: list[tuple[str | None, str]] = []
    key: str | None = None
    chars: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            chars.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append((key, "".join(chars)))
            key, chars = None, []
        elif char == "=" and key is None:
            key, chars = "".join(chars), []
        else:
            chars.append(char)
    if escaped:
        raise Fault("dangling backslash at the end (write \\\\ for a literal backslash)")
    fields.append((key, "".join(chars)))
    return fields


def _bounded_int(name: str, text: str, low: int, high: int) -> int:
    digits = text.lstrip("0") or "0"
    if not _DIGITS.fullmatch(text) or len(digits) > len(str(high)) or not low <= int(digits) <= high:
        raise Fault(f"{name} must be an integer from {low} to {high}, not {text!r}")
    return int(digits)


def to_port(name: str, text: str) -> int:
    """A port to listen on: 0 (any free port) to 65535."""
    return _bounded_int(name, text, 0, 65535)


def to_client_port(name: str, text: str) -> int:
    """A port to connect to: 1 to 65535 (port 0 cannot be connected to)."""
    return _bounded_int(name, text, 1, 65535)


def to_backlog(name: str, text: str) -> int:
    """A listen queue length; the kernel caps it anyway, so anything above 65535 is a typo."""
    return _bounded_int(name, text, 0, 65535)


def to_fd_index(name: str, text: str) -> int:
    """An index into the sockets systemd passed (0 is fd 3)."""
    return _bounded_int(name, text, 0, 65535)


def to_mode(name: str, text: str) -> int:
    """File permission bits in octal (``0660``, ``660`` or ``0o660``)."""
    match = _OCTAL.fullmatch(text)
    digits = match.group(1).lstrip("0") if match else ""
    if match is None or len(digits) > 4:
        raise Fault(f"{name} must be octal permission bits such as 0660, not {text!r}")
    return int(digits or "0", 8)


def to_flag(name: str, text: str) -> bool:
    """A yes/no switch: ``1``/``0`` as in Twisted, or true/false, yes/no."""
    lowered = text.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise Fault(f"{name} must be 1 or 0, not {text!r}")


def to_timeout(name: str, text: str) -> float:
    """A positive, finite number of seconds."""
    seconds = float(text) if _DECIMAL.fullmatch(text) else math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise Fault(f"{name} must be a positive number of seconds, not {text!r}")
    return seconds


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def to_interface(name: str, text: str) -> str:
    """An address to listen on: an IPv4 or IPv6 literal, or empty for the default."""
    if text and _ip(text) is None:
        raise Fault(f"{name} must be an IP address, not {text!r}")
    return text


def to_interface6(name: str, text: str) -> str:
    """An IPv6 address to listen on, or empty for the default."""
    address = _ip(text) if text else None
    if text and (address is None or address.version != 6):
        raise Fault(f"{name} must be an IPv6 address, not {text!r}")
    return text


def to_host(name: str, text: str) -> str:
    """A host to connect to: an IP literal (IPv6 may be in brackets) or a name the resolver and TLS accept."""
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if _ip(host) is not None:
        return host
    valid = bool(host) and host.isprintable() and not host.startswith(".") and " " not in host
    if valid:
        try:
            host.encode("idna")
        except UnicodeError:
            valid = False
    if not valid:
        raise Fault(f"{name} must be a host name or an IP address, not {text!r}")
    return host


def _check_path(name: str, text: str) -> str:
    if not text or "\0" in text:
        raise Fault(f"{name} must be a non-empty path without NUL characters, not {text!r}")
    try:
        os.fsencode(text)
    except UnicodeError:
        raise Fault(f"{name} {text!r} cannot be encoded as a file name") from None
    return text


def to_unix_path(name: str, text: str) -> str:
    """A unix socket path (a lock file path is derived from it, so it must encode as a file name)."""
    return _check_path(name, text)


def to_file(name: str, text: str) -> str:
    """A file to read at listen or connect time; only its spelling is checked here."""
    return _check_path(name, text)


SSL_METHODS: Final[Mapping[str, str | None]] = {
    "SSLv23_METHOD": None,
    "TLS_METHOD": None,
    "TLS_SERVER_METHOD": None,
    "TLSv1_2_METHOD": "TLSv1_2",
}
"""Twisted's ``sslmethod`` names (OpenSSL.SSL constants) that tapster serves, and the one TLS version each pins
(None: any version the system's OpenSSL allows)."""

_OLD_SSL_METHODS: Final = {
    "SSLv2_METHOD": "SSL 2",
    "SSLv3_METHOD": "SSL 3",
    "TLSv1_METHOD": "TLS 1.0",
    "TLSv1_1_METHOD": "TLS 1.1",
}


def to_ssl_method(name: str, text: str) -> str:
    """An OpenSSL method name as Twisted's ``sslmethod=`` takes it; the versions before TLS 1.2 are refused."""
    if text in SSL_METHODS:
        return text
    if text in _OLD_SSL_METHODS:
        raise Fault(
            f"{name}={text} ({_OLD_SSL_METHODS[text]}) is not supported: OpenSSL's default security level "
            "refuses versions before TLS 1.2; use TLSv1_2_METHOD or TLS_METHOD"
        )
    raise Fault(f"{name} must be one of {', '.join(SSL_METHODS)}, not {text!r}")


def unsupported(reason: str) -> Callable[[str, str], object]:
    """A converter for a Twisted parameter tapster recognises but does not offer: it always says why."""

    def refuse(name: str, text: str) -> object:
        raise Fault(f"{name}= is not supported by tapster: {reason}")

    return refuse


def to_domain(name: str, text: str) -> str:
    """A systemd socket family: INET, INET6 or UNIX (any case); returned in upper case."""
    upper = text.upper()
    if upper not in ("INET", "INET6", "UNIX"):
        raise Fault(f"{name} must be INET, INET6 or UNIX, not {text!r}")
    return upper


def to_fd_name(name: str, text: str) -> str:
    """A systemd FileDescriptorName: 1 to 255 printable ASCII characters, no ``:``."""
    if not _FD_NAME.fullmatch(text):
        raise Fault(f"{name} must be 1 to 255 printable ASCII characters without ':', not {text!r}")
    return text


# --------------------------------------------------------------------------------------------------- grammars

DEFAULT_BACKLOG = 128
DEFAULT_CONNECT_TIMEOUT = 30.0  # Twisted's default


def _cert_defaults_to_key(values: dict[str, Any]) -> None:
    if values["cert_key"] is None:
        values["cert_key"] = values["private_key"]


def _index_or_name(values: dict[str, Any]) -> None:
    if (values["index"] is None) == (values["name"] is None):
        raise Fault("systemd needs exactly one of index=N or name=FDNAME")


def _tcp_grammar(kind: str, interface: Callable[[str, str], str]) -> Grammar:
    params = {
        "port": Param(to_port),
        "interface": Param(interface, ""),
        "backlog": Param(to_backlog, DEFAULT_BACKLOG),
    }
    return Grammar(kind, ("port",), params)


_SSL_SERVER = Grammar(
    "ssl",
    ("port",),
    {
        "port": Param(to_port),
        "privateKey": Param(to_file, attribute="private_key"),
        "certKey": Param(to_file, None, "cert_key"),
        "interface": Param(to_interface, ""),
        "backlog": Param(to_backlog, DEFAULT_BACKLOG),
        "sslmethod": Param(to_ssl_method, None, "ssl_method"),
        "extraCertChain": Param(to_file, None, "extra_cert_chain"),
        "dhParameters": Param(to_file, None, "dh_parameters"),
    },
    _cert_defaults_to_key,
)

SERVER_GRAMMARS: Mapping[str, Grammar] = {
    "tcp": _tcp_grammar("tcp", to_interface),
    "tcp6": _tcp_grammar("tcp6", to_interface6),
    "unix": Grammar(
        "unix",
        ("address",),
        {
            "address": Param(to_unix_path, attribute="path"),
            "mode": Param(to_mode, None),
            "lockfile": Param(to_flag, False),
            "backlog": Param(to_backlog, DEFAULT_BACKLOG),
        },
    ),
    "ssl": _SSL_SERVER,
    "tls": _SSL_SERVER,
    "systemd": Grammar(
        "systemd",
        (),
        {"domain": Param(to_domain), "index": Param(to_fd_index, None), "name": Param(to_fd_name, None)},
        _index_or_name,
    ),
    "udp": Grammar("udp", ("port",), {"port": Param(to_port), "interface": Param(to_interface, "")}),
}
"""Server endpoint types; the attribute names match the fields of the endpoint classes."""


def _client_key_needs_certificate(cert_param: str) -> Callable[[dict[str, Any]], None]:
    """The check that a client's ``privateKey`` comes with its certificate (``certKey=`` or ``certificate=``)."""

    def finish(values: dict[str, Any]) -> None:
        values.pop("endpoint", None)  # tls: only ever None here: given, it was refused
        if values["private_key"] is not None and values["cert"] is None:
            raise Fault(
                f"privateKey is the key of a client certificate: give the certificate too ({cert_param}=)"
            )

    return finish


_TIMEOUT = Param(to_timeout, DEFAULT_CONNECT_TIMEOUT)
_BIND = Param(to_host, None, "bind_address")
_TCP_CLIENT_PARAMS: Mapping[str, Param] = {
    "host": Param(to_host),
    "port": Param(to_client_port),
    "timeout": _TIMEOUT,
    "bindAddress": _BIND,
}
_TLS_CLIENT_PARAMS: Mapping[str, Param] = {
    **_TCP_CLIENT_PARAMS,
    "ca": Param(to_file, None),
    "hostname": Param(to_host, None),
    "privateKey": Param(to_file, None, "private_key"),
}

CLIENT_GRAMMARS: Mapping[str, Grammar] = {
    "tcp": Grammar("tcp", ("host", "port"), _TCP_CLIENT_PARAMS),
    # Twisted's ssl: client names its files certKey and caCertsDir, its tls: client certificate and trustRoots.
    "ssl": Grammar(
        "tls",
        ("host", "port"),
        {
            **_TLS_CLIENT_PARAMS,
            "certKey": Param(to_file, None, "cert"),
            "caCertsDir": Param(to_file, None, "ca_dir"),
        },
        _client_key_needs_certificate("certKey"),
    ),
    "tls": Grammar(
        "tls",
        ("host", "port"),
        {
            **_TLS_CLIENT_PARAMS,
            "certificate": Param(to_file, None, "cert"),
            "trustRoots": Param(to_file, None, "ca_dir"),
            "endpoint": Param(unsupported("TLS runs over a tcp connection to host and port only"), None),
        },
        _client_key_needs_certificate("certificate"),
    ),
    "unix": Grammar(
        "unix",
        ("path",),
        {"path": Param(to_unix_path), "timeout": _TIMEOUT, "lockfile": Param(to_flag, False)},
    ),
}
"""Client endpoint types."""


# --------------------------------------------------------------------------------------------------- systemd


class PassedSockets(Record):
    """The sockets systemd passed to this process.

    Attributes:
        fds: the passed file descriptors, in order (the first is 3).
        names: their LISTEN_FDNAMES, when set.
        note: how the environment looked, for error messages ("LISTEN_FDS=2", "LISTEN_FDS is not set").
    """

    __slots__ = ("fds", "names", "note")

    fds: Final[tuple[int, ...]]
    names: Final[tuple[str, ...]]
    note: Final[str]

    def __init__(self, fds: tuple[int, ...], names: tuple[str, ...], note: str) -> None:
        self.fds = fds
        self.names = names
        self.note = note


def read_listen_env(pid: str | None, count: str | None, names: str | None, my_pid: int) -> PassedSockets:
    """Interpret ``LISTEN_PID``, ``LISTEN_FDS``, ``LISTEN_FDNAMES`` (nothing passed unless meant for us)."""
    if count is None:
        return PassedSockets((), (), "LISTEN_FDS is not set")
    if pid is None or pid.strip() != str(my_pid):
        return PassedSockets((), (), f"LISTEN_PID={pid} is not this process, pid {my_pid}")
    if not _DIGITS.fullmatch(count) or len(count) > 5:
        return PassedSockets((), (), f"LISTEN_FDS={count!r} is not a number")
    fds = tuple(range(3, 3 + int(count)))
    return PassedSockets(fds, tuple(names.split(":")) if names else (), f"LISTEN_FDS={len(fds)}")
