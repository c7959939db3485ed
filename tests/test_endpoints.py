r"""Endpoint strings: the grammar, its error messages, and real listeners and connectors on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import fcntl
import json
import os
import pickle
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from support import self_signed_cert
from tapster import endpoints
from tapster._record import FrozenInstanceError
from tapster.endpoints import (
    ClientEndpoint,
    ServerEndpoint,
    SystemdServerEndpoint,
    TCPServerEndpoint,
    parse_client,
    parse_server,
)
from tapster.errors import EndpointError, ListenError

SRC = Path(__file__).resolve().parent.parent / "src"


# ------------------------------------------------------------------------------------------------- helpers


class Echo(asyncio.Protocol):
    """Send every byte back."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Collect(asyncio.Protocol):
    """Gather what arrives; ``full`` completes once ``size`` bytes are in."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data = b""
        self.full: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.size and not self.full.done():
            self.full.set_result(self.data)


class Silent(asyncio.Protocol):
    """Accept and never answer (a TLS client waits for a handshake that never comes)."""


async def round_trip(client: ClientEndpoint, payload: bytes = b"hello endpoint") -> bytes:
    """Connect with ``client``, send ``payload`` and return what the echo server sent back."""
    transport, protocol = await client.connect(lambda: Collect(len(payload)))
    try:
        transport.write(payload)
        return await asyncio.wait_for(protocol.full, 10)
    finally:
        transport.close()


async def close(server: asyncio.AbstractServer) -> None:
    server.close()
    await server.wait_closed()


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: unix socket paths are limited to about 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="tapster-ep-", dir="/tmp") as name:
        yield Path(name)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed certificate for 127.0.0.1/localhost: key and cert, one PEM with both, an encrypted key."""
    folder = tmp_path_factory.mktemp("certs")
    key, cert = self_signed_cert(folder)
    both = folder / "both.pem"
    both.write_bytes(key.read_bytes() + cert.read_bytes())
    encrypted = folder / "encrypted.pem"
    openssl = shutil.which("openssl")
    assert openssl is not None  # self_signed_cert skips without it
    command = [openssl, "pkey", "-in", str(key), "-aes256", "-passout", "pass:secret", "-out", str(encrypted)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        pytest.skip(f"openssl cannot encrypt a test key: {result.stderr.strip()}")
    return {"key": key, "cert": cert, "both": both, "encrypted": encrypted}


# ------------------------------------------------------------------------------------------------- parsing

VALID_SERVERS: list[tuple[str | int, dict[str, Any]]] = [
    ("tcp:8080", {"kind": "tcp", "port": 8080, "interface": "", "backlog": 128}),
    ("TCP:port=80:interface=127.0.0.1:backlog=5",
     {"kind": "tcp", "port": 80, "interface": "127.0.0.1", "backlog": 5}),
    ("8080", {"kind": "tcp", "port": 8080, "description": "8080"}),
    (8080, {"kind": "tcp", "port": 8080, "description": "tcp:8080"}),
    (0, {"kind": "tcp", "port": 0}),
    ("tcp:80:interface=\\:\\:1", {"kind": "tcp", "interface": "::1"}),
    ("tcp6:8080:interface=\\:\\:1", {"kind": "tcp6", "port": 8080, "interface": "::1"}),
    ("tcp6:8080", {"kind": "tcp6", "interface": ""}),
    ("unix:/run/app.sock", {"kind": "unix", "path": "/run/app.sock", "mode": None, "lockfile": False}),
    ("unix:address=/tmp/x:mode=0660:lockfile=1:backlog=7",
     {"kind": "unix", "path": "/tmp/x", "mode": 0o660, "lockfile": True, "backlog": 7}),
    ("unix:/tmp/a\\:b\\\\c\\=d:mode=0o600", {"path": "/tmp/a:b\\c=d", "mode": 0o600}),
    ("ssl:443:privateKey=server.pem",
     {"kind": "ssl", "port": 443, "private_key": "server.pem", "cert_key": "server.pem"}),
    ("tls:443:privateKey=k.pem:certKey=c.pem:interface=127.0.0.1",
     {"kind": "ssl", "private_key": "k.pem", "cert_key": "c.pem", "interface": "127.0.0.1"}),
    ("systemd:domain=INET:index=0", {"kind": "systemd", "domain": "INET", "index": 0, "name": None}),
    ("systemd:domain=unix:name=web", {"kind": "systemd", "domain": "UNIX", "index": None, "name": "web"}),
    ("udp:5353:interface=127.0.0.1",
     {"kind": "udp", "port": 5353, "interface": "127.0.0.1", "is_datagram": True}),
]  # fmt: skip


@pytest.mark.parametrize(("description", "expected"), VALID_SERVERS)
def test_parse_server_fields(description: str | int, expected: dict[str, Any]) -> None:
    """Each server form yields the documented kind and values, with escapes resolved."""
    endpoint = parse_server(description)
    assert isinstance(endpoint, ServerEndpoint)
    assert {name: getattr(endpoint, name) for name in expected} == expected
    assert endpoint.is_datagram == (endpoint.kind == "udp")


VALID_CLIENTS: list[tuple[str, dict[str, Any]]] = [
    ("tcp:host=example.com:port=80", {"kind": "tcp", "host": "example.com", "port": 80, "timeout": 30.0}),
    ("tcp:localhost:8080:timeout=2.5", {"kind": "tcp", "host": "localhost", "port": 8080, "timeout": 2.5}),
    ("tcp:host=\\:\\:1:port=1", {"host": "::1"}),
    ("tcp:host=[\\:\\:1]:port=1", {"host": "::1"}),
    ("unix:path=/run/app.sock:timeout=1", {"kind": "unix", "path": "/run/app.sock", "timeout": 1.0}),
    ("unix:/run/app.sock", {"kind": "unix", "path": "/run/app.sock"}),
    ("tls:host=example.com:port=443:ca=ca.pem",
     {"kind": "tls", "host": "example.com", "port": 443, "ca": "ca.pem"}),
    ("SSL:example.com:443", {"kind": "tls", "ca": None}),
]  # fmt: skip


@pytest.mark.parametrize(("description", "expected"), VALID_CLIENTS)
def test_parse_client_fields(description: str, expected: dict[str, Any]) -> None:
    """Each client form yields the documented kind and values."""
    endpoint = parse_client(description)
    assert endpoint.description == description
    assert {name: getattr(endpoint, name) for name in expected} == expected


BAD_SERVERS: list[tuple[str, str]] = [
    ("", "empty endpoint description"),
    ("tcpp:80", "unknown endpoint type 'tcpp' (expected one of: ssl, systemd, tcp, tcp6, tls, udp, unix)"),
    (
        "tcp:80:interfase=1.2.3.4",
        "unknown parameter 'interfase' for tcp (expected: backlog, interface, port)",
    ),
    ("tcp", "missing required parameter 'port' for tcp"),
    ("tcp:interface=127.0.0.1", "missing required parameter 'port' for tcp"),
    ("tcp:80:port=81", "duplicate parameter 'port' for tcp"),
    ("tcp:80:backlog=1:backlog=2", "duplicate parameter 'backlog' for tcp"),
    ("tcp:http", "port must be an integer from 0 to 65535, not 'http'"),
    ("tcp:65536", "port must be an integer from 0 to 65535, not '65536'"),
    ("tcp:-1", "port must be an integer from 0 to 65535, not '-1'"),
    ("tcp:+80", "not '+80'"),
    ("tcp: 80", "not ' 80'"),
    ("tcp:", "not ''"),
    ("99999", "port must be an integer from 0 to 65535, not '99999'"),
    ("tcp:80:80", "unexpected value '80' for tcp"),
    ("tcp:80:backlog=-1", "backlog must be an integer from 0 to 65535, not '-1'"),
    ("tcp:80:backlog=many", "backlog must be an integer"),
    ("tcp:80:interface=localhost", "interface must be an IP address, not 'localhost'"),
    ("tcp:80:interface=1.2.3.256", "interface must be an IP address"),
    ("tcp6:80:interface=127.0.0.1", "interface must be an IPv6 address, not '127.0.0.1'"),
    ("tcp:80\\", "dangling backslash"),
    ("tcp:80:=1", "empty parameter name"),
    ("=tcp:80", "the first field must be the endpoint type"),
    (":80", "the first field must be the endpoint type"),
    ("tcp:80\n", "not '80\\n'"),
    ("unix", "missing required parameter 'address' for unix"),
    ("unix:", "address must be a non-empty path"),
    ("unix:/tmp/x:mode=0999", "mode must be octal permission bits such as 0660, not '0999'"),
    ("unix:/tmp/x:mode=rw", "mode must be octal"),
    ("unix:/tmp/x:mode=17777", "mode must be octal"),
    ("unix:/tmp/x:lockfile=maybe", "lockfile must be 1 or 0, not 'maybe'"),
    ("unix:/tmp/x:interface=1.2.3.4", "unknown parameter 'interface' for unix"),
    ("unix:/tmp/x\x00y", "without NUL characters"),
    ("ssl:443", "missing required parameter 'privateKey' for ssl"),
    ("tls:443:certKey=c.pem", "missing required parameter 'privateKey' for tls"),
    ("ssl:443:privateKey=", "privateKey must be a non-empty path"),
    ("ssl:443:private_key=k.pem", "unknown parameter 'private_key' for ssl"),
    ("systemd", "missing required parameter 'domain' for systemd"),
    ("systemd:domain=INET", "systemd needs exactly one of index=N or name=FDNAME"),
    ("systemd:domain=INET:index=0:name=web", "systemd needs exactly one of index=N or name=FDNAME"),
    ("systemd:domain=IPX:index=0", "domain must be INET, INET6 or UNIX, not 'IPX'"),
    ("systemd:domain=INET:index=-1", "index must be an integer"),
    ("systemd:domain=INET:name=a b", "name must be 1 to 255 printable ASCII characters"),
    ("systemd:0", "unexpected value '0' for systemd: give its parameters as key=value"),
    ("udp", "missing required parameter 'port' for udp"),
    ("udp:53:backlog=5", "unknown parameter 'backlog' for udp (expected: interface, port)"),
]


@pytest.mark.parametrize(("description", "fault"), BAD_SERVERS)
def test_parse_server_rejects(description: str, fault: str) -> None:
    """A malformed server string raises EndpointError naming the whole string (repr) and the fault."""
    with pytest.raises(EndpointError) as caught:
        parse_server(description)
    message = str(caught.value)
    assert message.startswith(f"invalid endpoint {description!r}: ")
    assert fault in message
    assert "\n" not in message
    assert isinstance(caught.value, ValueError)


BAD_CLIENTS: list[tuple[str, str]] = [
    ("", "empty endpoint description"),
    ("80", "a client endpoint needs a type and a host"),
    ("udp:host=h:port=1", "unknown endpoint type 'udp' (expected one of: ssl, tcp, tls, unix)"),
    ("tcp:host=h", "missing required parameter 'port' for tcp"),
    ("tcp:port=80", "missing required parameter 'host' for tcp"),
    ("tcp:h:80:x", "unexpected value 'x' for tcp: only host, port may be given without a key"),
    ("tcp:host=h:port=0", "port must be an integer from 1 to 65535, not '0'"),
    ("tcp:host=h:port=http", "port must be an integer from 1 to 65535"),
    ("tcp:host=:port=80", "host must be a host name or an IP address, not ''"),
    ("tcp:host=a..b:port=80", "host must be a host name or an IP address, not 'a..b'"),
    ("tcp:host=h:port=80:timeout=0", "timeout must be a positive number of seconds, not '0'"),
    ("tcp:host=h:port=80:timeout=-1", "timeout must be a positive number of seconds"),
    ("tcp:host=h:port=80:timeout=soon", "timeout must be a positive number of seconds"),
    ("tcp:host=h:port=80:timeout=nan", "timeout must be a positive number of seconds"),
    ("tcp:host=h:port=80:timeout=1e3", "timeout must be a positive number of seconds"),
    ("tcp:host=h:port=80:ca=x", "unknown parameter 'ca' for tcp (expected: bindAddress, host, port,"),
    ("tcp:host=h:host=i:port=80", "duplicate parameter 'host' for tcp"),
    ("unix", "missing required parameter 'path' for unix"),
    ("unix:path=", "path must be a non-empty path"),
    ("tls:host=h:port=1:ca=", "ca must be a non-empty path"),
    ("tls:host=h:port=1:timeout=1\\", "dangling backslash"),
]


@pytest.mark.parametrize(("description", "fault"), BAD_CLIENTS)
def test_parse_client_rejects(description: str, fault: str) -> None:
    """A malformed client string raises EndpointError naming the whole string and the fault."""
    with pytest.raises(EndpointError) as caught:
        parse_client(description)
    assert str(caught.value).startswith(f"invalid endpoint {description!r}: ")
    assert fault in str(caught.value)


def test_bad_port_numbers_name_the_tcp_form() -> None:
    """An int port out of range (or a bool) is refused, naming the tcp: form it stands for."""
    with pytest.raises(EndpointError, match=r"^invalid endpoint 'tcp:70000': port must be"):
        parse_server(70000)
    with pytest.raises(EndpointError, match="expected a string or a port number"):
        parse_server(True)


def test_endpoints_print_as_their_description() -> None:
    """str() of an endpoint is the string it came from, so logs show what the user wrote."""
    assert str(parse_server("tcp:80:interface=127.0.0.1")) == "tcp:80:interface=127.0.0.1"
    assert str(parse_client("unix:/x")) == "unix:/x"


def parse_any(description: str | int) -> ServerEndpoint | ClientEndpoint:
    """Parse ``description`` as a client endpoint if it is one of VALID_CLIENTS, else as a server."""
    if any(description == client for client, _ in VALID_CLIENTS):
        return parse_client(cast(str, description))
    return parse_server(description)


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("description", [d for d, _ in VALID_SERVERS] + [d for d, _ in VALID_CLIENTS])
def test_parsed_endpoints_pickle_round_trip(description: str | int, protocol: int) -> None:
    """Every kind of parsed endpoint survives pickling (saved application state) as an equal endpoint."""
    endpoint = parse_any(description)
    loaded = pickle.loads(pickle.dumps(endpoint, protocol=protocol))
    assert type(loaded) is type(endpoint)
    assert loaded == endpoint
    assert loaded == parse_any(description)
    assert repr(loaded) == repr(endpoint)


def test_endpoints_are_immutable_values() -> None:
    """Endpoints compare and hash by class and fields, show their fields in repr, and refuse changes."""
    text = "tcp:80:interface=127.0.0.1"
    endpoint = parse_server(text)
    assert isinstance(endpoint, TCPServerEndpoint)
    assert endpoint == parse_server(text)
    assert hash(endpoint) == hash(parse_server(text))
    assert len({endpoint, parse_server(text)}) == 1
    assert endpoint != parse_server("tcp:81:interface=127.0.0.1")
    assert endpoint != parse_server("udp:80:interface=127.0.0.1")

    class Sub(TCPServerEndpoint):
        __slots__ = ()

    fields: dict[str, Any] = {"description": text, "kind": "tcp", "port": 80, "interface": "127.0.0.1"}
    assert TCPServerEndpoint(**fields) == endpoint
    assert Sub(**fields) != endpoint  # same fields, another class
    assert repr(endpoint) == (
        f"TCPServerEndpoint(description={text!r}, kind='tcp', port=80, interface='127.0.0.1', backlog=128)"
    )
    with pytest.raises(FrozenInstanceError, match="cannot assign to field 'port'"):
        endpoint.port = 81  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError, match="cannot delete field 'description'"):
        del endpoint.description
    with pytest.raises(AttributeError):
        endpoint.extra = 1
    assert endpoint.port == 80
    assert issubclass(FrozenInstanceError, AttributeError)


def test_endpoint_pickled_by_the_dataclass_version_still_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A state saved when endpoints were dataclasses (pickled with a __dict__) loads as the same endpoint."""

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class OldTCPServerEndpoint:
        description: str
        kind: str
        port: int
        interface: str = ""
        backlog: int = 128

    OldTCPServerEndpoint.__module__ = "tapster.endpoints"
    OldTCPServerEndpoint.__qualname__ = "TCPServerEndpoint"
    old = OldTCPServerEndpoint(description="tcp:80", kind="tcp", port=80)
    with monkeypatch.context() as patch:
        patch.setattr(endpoints, "TCPServerEndpoint", OldTCPServerEndpoint)
        data = pickle.dumps(old, protocol=pickle.HIGHEST_PROTOCOL)
    assert pickle.loads(data) == parse_server("tcp:80")


# ------------------------------------------------------------------------------------------------- tcp


def test_tcp_round_trip_and_bound_address() -> None:
    """A tcp endpoint on port 0 serves, and bound_address shows the real port."""

    async def scenario() -> None:
        endpoint = parse_server("tcp:0:interface=127.0.0.1")
        server = await endpoint.listen(Echo)
        try:
            address = endpoint.bound_address(server)
            host, _, port = address.rpartition(":")
            assert host == "127.0.0.1"
            assert int(port) != 0
            assert (
                await round_trip(parse_client(f"tcp:host=127.0.0.1:port={port}:timeout=5"))
                == b"hello endpoint"
            )
        finally:
            await close(server)

    asyncio.run(scenario())


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_tcp6_round_trip_on_ipv6_loopback() -> None:
    """tcp6 binds ::1 and shows it as [::1]:PORT; a client reaches it by an escaped IPv6 host."""

    async def scenario() -> None:
        endpoint = parse_server("tcp6:0:interface=\\:\\:1")
        server = await endpoint.listen(Echo)
        try:
            address = endpoint.bound_address(server)
            assert address.startswith("[::1]:")
            port = address.rpartition(":")[2]
            assert await round_trip(parse_client(f"tcp:host=\\:\\:1:port={port}")) == b"hello endpoint"
        finally:
            await close(server)

    asyncio.run(scenario())


def test_port_in_use_is_a_listen_error_naming_the_endpoint() -> None:
    """Binding a taken port raises ListenError: one line with the endpoint and the reason, errno kept."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        description = f"tcp:{port}:interface=127.0.0.1"
        with pytest.raises(ListenError) as caught:
            asyncio.run(parse_server(description).listen(Echo))
    assert str(caught.value) == f"cannot listen on {description}: address already in use"
    assert caught.value.errno == errno.EADDRINUSE
    assert isinstance(caught.value, OSError)
    assert isinstance(caught.value.__cause__, OSError)


def test_listen_without_start_serving_waits_for_start() -> None:
    """listen(start_serving=False) binds now and accepts only once start_serving() is called."""

    async def scenario() -> None:
        endpoint = parse_server("tcp:0:interface=127.0.0.1")
        server = await endpoint.listen(Echo, start_serving=False)
        try:
            assert not server.is_serving()
            await server.start_serving()
            assert server.is_serving()
            port = endpoint.bound_address(server).rpartition(":")[2]
            assert await round_trip(parse_client(f"tcp:127.0.0.1:{port}")) == b"hello endpoint"
        finally:
            await close(server)

    asyncio.run(scenario())


def test_stream_and_datagram_listen_are_not_interchangeable() -> None:
    """listen() on udp and listen_datagram() on tcp raise EndpointError saying which to use."""
    with pytest.raises(EndpointError, match=r"'udp:0' is a datagram endpoint: use listen_datagram\(\)"):
        asyncio.run(parse_server("udp:0").listen(Echo))
    with pytest.raises(EndpointError, match=r"'tcp:0' is a stream endpoint: use listen\(\)"):
        asyncio.run(parse_server("tcp:0").listen_datagram(asyncio.DatagramProtocol))


# ------------------------------------------------------------------------------------------------- unix


def test_unix_mode_round_trip_and_cleanup(short_dir: Path) -> None:
    """unix applies mode= to the socket file, serves, shows the path, and removes the file on close."""
    path = short_dir / "app.sock"

    async def scenario() -> None:
        endpoint = parse_server(f"unix:{path}:mode=0600")
        server = await endpoint.listen(Echo)
        try:
            assert path.stat().st_mode & 0o7777 == 0o600
            assert endpoint.bound_address(server) == str(path)
            assert await round_trip(parse_client(f"unix:path={path}")) == b"hello endpoint"
        finally:
            await close(server)
        assert not path.exists()

    asyncio.run(scenario())


def test_unix_existing_path_without_lockfile_is_refused(short_dir: Path) -> None:
    """Without lockfile, an existing socket file is "address already in use" and is left alone."""
    path = short_dir / "app.sock"
    with socket.socket(socket.AF_UNIX) as old:
        old.bind(str(path))
    description = f"unix:{path}"
    with pytest.raises(ListenError) as caught:
        asyncio.run(parse_server(description).listen(Echo))
    assert str(caught.value) == f"cannot listen on {description}: address already in use"
    assert path.exists()


def test_unix_lockfile_takes_over_a_stale_socket(short_dir: Path) -> None:
    """With lockfile=1 and no live holder, a leftover socket file is replaced; the lock goes on close."""
    path = short_dir / "app.sock"
    lock = short_dir / "app.sock.lock"
    with socket.socket(socket.AF_UNIX) as old:
        old.bind(str(path))

    async def scenario() -> None:
        endpoint = parse_server(f"unix:{path}:lockfile=1")
        server = await endpoint.listen(Echo)
        try:
            assert lock.read_text().strip() == str(os.getpid())
            assert await round_trip(parse_client(f"unix:{path}")) == b"hello endpoint"
        finally:
            await close(server)
        assert not path.exists()
        assert not lock.exists()
        server = await endpoint.listen(Echo)  # the lock was released: listening again works
        await close(server)

    asyncio.run(scenario())


def test_unix_lockfile_held_elsewhere_is_refused(short_dir: Path) -> None:
    """A lock held through another open file makes listen fail naming the lock file; the socket stays."""
    path = short_dir / "app.sock"
    lock = short_dir / "app.sock.lock"
    with socket.socket(socket.AF_UNIX) as old:
        old.bind(str(path))
    with open(lock, "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        description = f"unix:{path}:lockfile=1"
        with pytest.raises(ListenError) as caught:
            asyncio.run(parse_server(description).listen(Echo))
    assert str(caught.value).startswith(
        f"cannot listen on {description}: {lock} is locked by another process"
    )
    assert caught.value.errno == errno.EADDRINUSE
    assert path.exists()
    assert lock.exists()


def test_unix_lockfile_refuses_a_second_live_server(short_dir: Path) -> None:
    """While one server holds the lock, a second listen on the same path fails and the first keeps serving."""
    path = short_dir / "app.sock"

    async def scenario() -> None:
        endpoint = parse_server(f"unix:{path}:lockfile=1")
        server = await endpoint.listen(Echo)
        try:
            with pytest.raises(ListenError, match="is locked by another process"):
                await endpoint.listen(Echo)
            assert await round_trip(parse_client(f"unix:{path}")) == b"hello endpoint"
        finally:
            await close(server)

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------------------- tls


@pytest.mark.parametrize("layout", ["one-pem", "key-and-cert"])
def test_ssl_server_and_tls_client(certs: dict[str, Path], layout: str) -> None:
    """An ssl server (one PEM, or key plus certKey) serves a tls client that trusts the cert via ca=."""
    keys = (
        f"privateKey={certs['both']}"
        if layout == "one-pem"
        else f"privateKey={certs['key']}:certKey={certs['cert']}"
    )

    async def scenario() -> None:
        endpoint = parse_server(f"ssl:0:{keys}:interface=127.0.0.1")
        server = await endpoint.listen(Echo)
        try:
            port = endpoint.bound_address(server).rpartition(":")[2]
            client = parse_client(f"tls:host=127.0.0.1:port={port}:ca={certs['cert']}:timeout=10")
            assert await round_trip(client) == b"hello endpoint"
            with pytest.raises(
                ssl.SSLCertVerificationError
            ):  # without ca=, the system store does not know it
                await round_trip(parse_client(f"tls:host=127.0.0.1:port={port}:timeout=10"))
        finally:
            await close(server)

    asyncio.run(scenario())


def test_ssl_missing_key_names_the_file(tmp_path: Path) -> None:
    """A key file that cannot be read fails the listen, naming the file and the reason."""
    missing = tmp_path / "missing.pem"
    description = f"ssl:0:privateKey={missing}:interface=127.0.0.1"
    with pytest.raises(ListenError) as caught:
        asyncio.run(parse_server(description).listen(Echo))
    assert str(caught.value) == (
        f"cannot listen on {description}: cannot read private key {str(missing)!r}: no such file or directory"
    )


def test_ssl_bad_key_names_the_file(tmp_path: Path) -> None:
    """A file that is not a PEM key and certificate fails the listen, naming the file."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    description = f"tls:0:privateKey={junk}:interface=127.0.0.1"
    with pytest.raises(ListenError) as caught:
        asyncio.run(parse_server(description).listen(Echo))
    assert str(caught.value).startswith(
        f"cannot listen on {description}: cannot load certificate and key from {str(junk)!r}: "
    )


def test_ssl_encrypted_key_is_refused_without_prompting(certs: dict[str, Path]) -> None:
    """An encrypted private key fails the listen with a message, instead of prompting for a passphrase."""
    description = f"ssl:0:privateKey={certs['encrypted']}:certKey={certs['cert']}:interface=127.0.0.1"
    with pytest.raises(ListenError) as caught:
        asyncio.run(parse_server(description).listen(Echo))
    assert str(caught.value) == (
        f"cannot listen on {description}: the private key in {str(certs['encrypted'])!r} is encrypted; "
        "give an unencrypted key"
    )


def test_tls_bad_ca_file_names_the_file(tmp_path: Path) -> None:
    """A tls client whose ca= file is unreadable raises OSError naming the file."""
    missing = tmp_path / "ca.pem"

    async def scenario() -> None:
        with socket.socket() as bound:
            bound.bind(("127.0.0.1", 0))
            port = bound.getsockname()[1]
            with pytest.raises(OSError, match=f"cannot load CA file {str(missing)!r}"):
                await parse_client(f"tls:host=127.0.0.1:port={port}:ca={missing}").connect(asyncio.Protocol)

    asyncio.run(scenario())


def test_client_timeout_names_the_endpoint() -> None:
    """A tls handshake that never completes ends after timeout= with a TimeoutError naming the endpoint."""

    async def scenario() -> None:
        server = await asyncio.get_running_loop().create_server(Silent, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            description = f"tls:host=127.0.0.1:port={port}:timeout=0.2"
            with pytest.raises(
                TimeoutError, match=f"timed out connecting to {description} \\(timeout 0.2s\\)"
            ):
                await parse_client(description).connect(asyncio.Protocol)
        finally:
            await close(server)

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------------------- clients


def test_connect_to_a_closed_port_is_refused() -> None:
    """Connecting to a bound but not listening port raises ConnectionRefusedError as-is."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            asyncio.run(parse_client(f"tcp:127.0.0.1:{port}:timeout=5").connect(asyncio.Protocol))


def test_connect_to_a_missing_unix_path_fails(short_dir: Path) -> None:
    """A unix client to a path with no socket raises FileNotFoundError."""
    with pytest.raises(FileNotFoundError):
        asyncio.run(parse_client(f"unix:{short_dir / 'none.sock'}").connect(asyncio.Protocol))


# ------------------------------------------------------------------------------------------------- udp


class DatagramEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(
            asyncio.DatagramTransport, transport
        )  # asyncio's own class does not subclass it

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.transport.sendto(data, addr)


class DatagramCollect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if not self.received.done():
            self.received.set_result(data)


def test_udp_round_trip() -> None:
    """A udp endpoint binds a datagram socket that answers, and bound_address takes its transport."""

    async def scenario() -> None:
        endpoint = parse_server("udp:0:interface=127.0.0.1")
        transport, _ = await endpoint.listen_datagram(DatagramEcho)
        try:
            address = endpoint.bound_address(transport)
            host, _, port = address.rpartition(":")
            assert host == "127.0.0.1"
            client, collect = await asyncio.get_running_loop().create_datagram_endpoint(
                DatagramCollect, remote_addr=("127.0.0.1", int(port))
            )
            try:
                client.sendto(b"ping")
                assert await asyncio.wait_for(collect.received, 10) == b"ping"
            finally:
                client.close()
        finally:
            transport.close()

    asyncio.run(scenario())


def test_udp_port_in_use_is_a_listen_error() -> None:
    """A taken udp port raises ListenError naming the endpoint."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        description = f"udp:{taken.getsockname()[1]}:interface=127.0.0.1"
        with pytest.raises(ListenError, match=f"^cannot listen on {description}: address already in use$"):
            asyncio.run(parse_server(description).listen_datagram(asyncio.DatagramProtocol))


# ------------------------------------------------------------------------------------------------- systemd

SYSTEMD_CHILD = r"""
import asyncio, json, os, sys
from tapster.endpoints import parse_server
from tapster.errors import ListenError

async def main():
    done = asyncio.get_running_loop().create_future()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
        def data_received(self, data):
            self.transport.write(data)
            self.transport.close()
        def connection_lost(self, exc):
            done.set_result(None)

    endpoint = parse_server(sys.argv[1])
    env = sorted(name for name in os.environ if name.startswith("LISTEN_"))
    try:
        server = await endpoint.listen(Echo)
    except ListenError as exc:
        print(json.dumps({"error": str(exc), "env": env}), flush=True)
        return
    print(json.dumps({"bound": endpoint.bound_address(server), "env": env}), flush=True)
    await done
    server.close()
    await server.wait_closed()

asyncio.run(main())
"""


ACTIVATE = r"""
import os, sys
fds, pid, child, description = sys.argv[1:]
for index, fd in enumerate(int(fd) for fd in fds.split(",")):
    os.dup2(fd, 3 + index)
os.environ["LISTEN_PID"] = str(os.getpid()) if pid == "own" else pid
os.execv(sys.executable, [sys.executable, "-c", child, description])
"""


def start_activated(
    description: str, sockets: list[socket.socket], *, names: str | None = None, own_pid: bool = True
) -> subprocess.Popen[str]:
    """Start a child as systemd would: ``sockets`` on fds 3, 4, ... and LISTEN_PID set to its own pid.

    A small wrapper moves the sockets to 3, 4, ..., sets LISTEN_PID to its pid and execs the child (same pid).
    """
    high = [fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 20) for sock in sockets]  # clear of 3, 4, ...
    env = {name: value for name, value in os.environ.items() if not name.startswith("LISTEN_")}
    env.update(PYTHONPATH=str(SRC), LISTEN_FDS=str(len(sockets)))
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    args = [",".join(map(str, high)), "own" if own_pid else "1", SYSTEMD_CHILD, description]
    try:
        return subprocess.Popen(
            [sys.executable, "-c", ACTIVATE, *args], pass_fds=high, env=env, stdout=subprocess.PIPE, text=True
        )
    finally:
        for fd in high:
            os.close(fd)


def stop(child: subprocess.Popen[str]) -> None:
    """Make sure the child is gone and its pipe closed, whatever the test saw."""
    if child.poll() is None:
        child.kill()
    child.wait()
    if child.stdout is not None:
        child.stdout.close()


def first_report(child: subprocess.Popen[str]) -> dict[str, Any]:
    """The child's JSON line: what it bound, or the ListenError it got."""
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.wait(timeout=10)
        pytest.fail(f"the child exited with status {child.returncode} without a report")
    report: dict[str, Any] = json.loads(line)
    return report


def tcp_listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_systemd_socket_serves() -> None:
    """A child with a socket on fd 3 serves it via systemd:domain=INET:index=0; LISTEN_* are cleared."""
    with tcp_listener() as listener:
        port = listener.getsockname()[1]
        child = start_activated("systemd:domain=INET:index=0", [listener])
    try:
        report = first_report(child)
        assert report == {"bound": f"127.0.0.1:{port}", "env": []}
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"activated")
            assert conn.recv(100) == b"activated"
        assert child.wait(timeout=10) == 0
    finally:
        stop(child)


def test_systemd_socket_by_name(short_dir: Path) -> None:
    """name= picks the socket whose LISTEN_FDNAMES entry matches; a unix socket is served as unix."""
    path = short_dir / "web.sock"
    with tcp_listener() as admin, socket.socket(socket.AF_UNIX) as web:
        web.bind(str(path))
        web.listen()
        child = start_activated("systemd:domain=UNIX:name=web", [admin, web], names="admin:web")
    try:
        assert first_report(child) == {"bound": str(path), "env": []}
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(10)
            conn.connect(str(path))
            conn.sendall(b"by name")
            assert conn.recv(100) == b"by name"
        assert child.wait(timeout=10) == 0
    finally:
        stop(child)


@pytest.mark.parametrize(
    ("description", "own_pid", "reason"),
    [
        ("systemd:domain=INET:index=2", True, "no socket passed by systemd at index 2 (LISTEN_FDS=1)"),
        ("systemd:domain=INET:name=web", True, "no socket named 'web' passed by systemd (LISTEN_FDS=1"),
        ("systemd:domain=INET6:index=0", True, "is AF_INET/SOCK_STREAM, not a stream socket of domain INET6"),
        ("systemd:domain=INET:index=0", False, "no socket passed by systemd at index 0 (LISTEN_PID=1 is not"),
    ],
)
def test_systemd_errors(description: str, own_pid: bool, reason: str) -> None:
    """A missing, unnamed, mismatched or not-ours systemd socket is a ListenError naming the endpoint."""
    with tcp_listener() as listener:
        child = start_activated(description, [listener], own_pid=own_pid)
    try:
        report = first_report(child)
        assert report["error"].startswith(f"cannot listen on {description}: ")
        assert reason in report["error"]
        assert report["env"] == []
        assert child.wait(timeout=10) == 0
    finally:
        stop(child)


def test_systemd_without_listen_fds_in_this_process() -> None:
    """With no LISTEN_FDS at all, a systemd endpoint fails to listen with a clear reason."""
    if "LISTEN_FDS" in os.environ:
        pytest.skip("this test run itself was socket-activated")
    endpoint = parse_server("systemd:domain=INET:index=0")
    assert isinstance(endpoint, SystemdServerEndpoint)
    with pytest.raises(
        ListenError, match=r"no socket passed by systemd at index 0 \(LISTEN_FDS is not set\)"
    ):
        asyncio.run(endpoint.listen(Echo))
