"""The SOCKS destination policy (which addresses are refused by default, what --allow changes) and a
SOCKSServer's saved state (it goes through tapster's allow-listed unpickler)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from tapster.auth import InMemoryChecker
from tapster.persist import load_state, save_state
from tapster.service import Application
from tapster.services import SOCKSServer
from tapster.services._socks_policy import DestinationPolicy, parse_network

REFUSED_BY_DEFAULT = {
    "127.0.0.1": "loopback",
    "::1": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "fc00::1": "private",
    "169.254.169.254": "link-local",
    "fe80::1": "link-local",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "100.64.0.1": "non-global",
    "240.0.0.1": "reserved",
    "::ffff:127.0.0.1": "loopback",  # judged as the IPv4 address it reaches
    "::ffff:10.0.0.1": "private",
}


@pytest.mark.parametrize(("address", "kind"), REFUSED_BY_DEFAULT.items())
def test_non_public_addresses_are_refused_by_default(address: str, kind: str) -> None:
    reason = DestinationPolicy().refusal(ipaddress.ip_address(address))
    assert reason is not None and f"a {kind} address, not in --allow (public)" in reason


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed_by_default(address: str) -> None:
    assert DestinationPolicy().refusal(ipaddress.ip_address(address)) is None


def test_allow_replaces_the_default_and_public_adds_it_back() -> None:
    only_lan = DestinationPolicy(["10.0.0.0/8"])
    assert only_lan.refusal(ipaddress.ip_address("10.9.9.9")) is None
    assert only_lan.refusal(ipaddress.ip_address("::ffff:10.9.9.9")) is None
    assert only_lan.refusal(ipaddress.ip_address("8.8.8.8")) == "8.8.8.8 is not in --allow (10.0.0.0/8)"
    assert "loopback" in (only_lan.refusal(ipaddress.ip_address("127.0.0.1")) or "")
    both = DestinationPolicy(["public", "127.0.0.1/32"])
    assert both.refusal(ipaddress.ip_address("8.8.8.8")) is None
    assert both.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert both.refusal(ipaddress.ip_address("127.0.0.2")) is not None
    assert DestinationPolicy([]).description == "nothing"


@pytest.mark.parametrize("text", ["10.0.0.1/8", "public-ish", "300.1.1.1", "", "::1/129"])
def test_bad_networks_say_what(text: str) -> None:
    with pytest.raises(ValueError, match="is not a network"):
        parse_network(text)


def test_server_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="handshake_timeout"):
        SOCKSServer(0, handshake_timeout=0)
    with pytest.raises(ValueError, match="connect_timeout"):
        SOCKSServer(0, connect_timeout=float("inf"))
    with pytest.raises(ValueError, match="not a network"):
        SOCKSServer(0, allow=["bogus"])


def test_saved_state_round_trips(tmp_path: Path) -> None:
    """A SOCKSServer with a policy and logins saves and loads through the allow-listed unpickler."""
    app = Application("socksapp")
    server = SOCKSServer(
        "tcp:0:interface=127.0.0.1",
        allow=["public", "10.0.0.0/8"],
        checkers=[InMemoryChecker({"alice": "secret"})],
        handshake_timeout=3,
    )
    server.set_parent(app)
    path = tmp_path / "socksapp-shutdown.tap"
    save_state(app, str(path))
    loaded = load_state(str(path))
    (copy,) = list(loaded)  # type: ignore[call-overload]
    assert isinstance(copy, SOCKSServer)
    assert copy.policy == server.policy and copy.handshake_timeout == 3
    assert copy.authenticator is not None and copy.authenticator.accepts_passwords
