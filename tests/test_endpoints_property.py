"""Endpoint parsing under random input: it returns an endpoint or raises EndpointError, nothing else."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tapster.endpoints import ClientEndpoint, ServerEndpoint, parse_client, parse_server
from tapster.errors import EndpointError

SERVER_TYPES = ["tcp", "tcp6", "unix", "ssl", "tls", "systemd", "udp"]
CLIENT_TYPES = ["tcp", "unix", "tls", "ssl"]
SERVER_KEYS = [
    "port",
    "interface",
    "backlog",
    "address",
    "mode",
    "lockfile",
    "privateKey",
    "certKey",
    "domain",
]
SERVER_KEYS += ["index", "name"]
CLIENT_KEYS = ["host", "port", "timeout", "path", "ca"]
GOOD_VALUES = [
    "0", "80", "65535", "127.0.0.1", "\\:\\:1", "0660", "0o600", "1", "0", "yes", "INET", "inet6", "UNIX",
    "/tmp/x.sock", "key.pem", "localhost", "example.com", "2.5", "web",
]  # fmt: skip
BAD_VALUES = [
    "",
    "65536",
    "-1",
    "+1",
    "0x50",
    "1e3",
    "nan",
    "inf",
    "::1",
    "0999",
    "\\",
    "a\\",
    "=",
    "\x00",
    "\udc80",
]

values = st.one_of(st.sampled_from(GOOD_VALUES + BAD_VALUES), st.text(max_size=12))


def descriptions(types: list[str], keys: list[str]) -> st.SearchStrategy[str]:
    """Strings shaped like descriptions: a (mostly) known type, then known or junk keys and values."""
    type_field = st.one_of(st.sampled_from(types), st.sampled_from(types).map(str.upper), st.text(max_size=6))
    key = st.one_of(st.sampled_from(keys), st.text(max_size=6))
    field = st.one_of(values, st.builds(lambda k, v: f"{k}={v}", key, values))
    return st.builds(lambda t, fields: ":".join([t, *fields]), type_field, st.lists(field, max_size=5))


SERVER_TYPE_KEYS = {
    "tcp": ["port", "interface", "backlog"],
    "tcp6": ["port", "interface", "backlog"],
    "unix": ["address", "mode", "lockfile", "backlog"],
    "ssl": ["port", "privateKey", "certKey", "interface", "backlog"],
    "systemd": ["domain", "index", "name"],
    "udp": ["port", "interface"],
}
CLIENT_TYPE_KEYS = {
    "tcp": ["host", "port", "timeout"],
    "tls": ["host", "port", "ca", "timeout"],
    "unix": ["path"],
}


def near_valid(type_keys: dict[str, list[str]]) -> st.SearchStrategy[str]:
    """Strings made only of a type's own keys and plausible values, so many of them parse."""

    def build(type_name: str) -> st.SearchStrategy[str]:
        keyword = st.builds(
            lambda k, v: f"{k}={v}", st.sampled_from(type_keys[type_name]), st.sampled_from(GOOD_VALUES)
        )
        positional = st.lists(st.sampled_from(GOOD_VALUES), max_size=2)
        return st.builds(
            lambda pos, kws: ":".join([type_name, *pos, *kws]), positional, st.lists(keyword, max_size=4)
        )

    return st.sampled_from(sorted(type_keys)).flatmap(build)


def outcome(parse: Callable[[str], object], description: str) -> object:
    """Parse, allowing only EndpointError, whose message must name the string and fit on one line."""
    try:
        return parse(description)
    except EndpointError as exc:
        message = str(exc)
        assert message.startswith(f"invalid endpoint {description!r}: ")
        assert "\n" not in message
        return exc


@given(st.text())
@example("tcp:80\\")
@example("\\")
@example(":")
@example("=")
def test_random_text_server(description: str) -> None:
    """Any text given to parse_server yields a server endpoint or an EndpointError naming it."""
    result = outcome(parse_server, description)
    if isinstance(result, ServerEndpoint):
        assert result.description == description


@given(st.text())
def test_random_text_client(description: str) -> None:
    """Any text given to parse_client yields a client endpoint or an EndpointError naming it."""
    result = outcome(parse_client, description)
    if isinstance(result, ClientEndpoint):
        assert result.description == description


@given(st.one_of(descriptions(SERVER_TYPES, SERVER_KEYS), near_valid(SERVER_TYPE_KEYS)))
def test_structured_server_strings(description: str) -> None:
    """Description-shaped server strings from valid and junk parts parse or raise EndpointError only."""
    result = outcome(parse_server, description)
    if isinstance(result, ServerEndpoint):
        assert result.kind in {"tcp", "tcp6", "unix", "ssl", "systemd", "udp"}
        assert result.is_datagram == (result.kind == "udp")


@given(st.one_of(descriptions(CLIENT_TYPES, CLIENT_KEYS), near_valid(CLIENT_TYPE_KEYS)))
def test_structured_client_strings(description: str) -> None:
    """Description-shaped client strings from valid and junk parts parse or raise EndpointError only."""
    result = outcome(parse_client, description)
    if isinstance(result, ClientEndpoint):
        assert result.kind in {"tcp", "unix", "tls"}
        assert result.timeout > 0


@given(st.integers())
def test_integer_ports(port: int) -> None:
    """An int is a tcp port: accepted exactly when it is 0 to 65535."""
    if 0 <= port <= 65535:
        endpoint = parse_server(port)
        assert (endpoint.description, endpoint.kind, getattr(endpoint, "port", None)) == (
            f"tcp:{port}",
            "tcp",
            port,
        )
        assert getattr(parse_server(str(port)), "port", None) == port
    else:
        with pytest.raises(EndpointError, match=f"^invalid endpoint 'tcp:{port}': port must be"):
            parse_server(port)


def escape(text: str) -> str:
    """Make ``text`` one literal field: backslash-escape the characters the grammar gives meaning to."""
    return "".join("\\" + char if char in "\\:=" else char for char in text)


def encodable(text: str) -> bool:
    try:
        os.fsencode(text)
    except UnicodeError:
        return False
    return True


@given(st.text(min_size=1).filter(lambda text: "\0" not in text and encodable(text)))
def test_escaped_paths_round_trip(path: str) -> None:
    """Any file name, escaped, comes back unchanged as the unix path (positionally and as address=)."""
    assert getattr(parse_server(f"unix:{escape(path)}"), "path", None) == path
    assert getattr(parse_server(f"unix:address={escape(path)}:mode=0600"), "path", None) == path
    assert getattr(parse_client(f"unix:path={escape(path)}"), "path", None) == path


@given(st.integers(min_value=1, max_value=10**9), st.integers(min_value=0, max_value=999))
def test_timeouts_round_trip(whole: int, thousandths: int) -> None:
    """A decimal number of seconds (above zero) is the client's timeout."""
    text = f"{whole}.{thousandths:03d}"
    assert parse_client(f"tcp:localhost:80:timeout={text}").timeout == float(text)
