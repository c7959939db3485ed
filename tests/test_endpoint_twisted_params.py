"""Twisted's endpoint parameters that tapster now takes, tried for real on loopback with real certificates.

Server ``ssl:``: ``sslmethod``, ``extraCertChain``, ``dhParameters``. Client ``tcp:``/``ssl:``/``tls:``:
``bindAddress``, client certificates (``certKey``/``certificate`` + ``privateKey``), ``caCertsDir`` /
``trustRoots``, ``hostname``; client ``unix:``: ``lockfile``. And Twisted's rule for a positional value after a
keyword (``tcp:host=H:1234``).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from tapster.endpoints import (
    TCPClientEndpoint,
    TLSClientEndpoint,
    UNIXClientEndpoint,
    parse_client,
    parse_server,
)
from tapster.errors import EndpointError, ListenError

T = TypeVar("T")


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        async with asyncio.timeout(30):
            return await scenario()

    return asyncio.run(main())


# ------------------------------------------------------------------------------------------------- certificates


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not available")
    result = subprocess.run([openssl, *args], capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        pytest.skip(f"openssl {args[0]} failed: {result.stderr.strip()}")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A root CA, an intermediate CA, a server certificate signed by the intermediate (RSA, so DHE-RSA ciphers
    can be tried; names only DNS:localhost), a client CA with a client certificate, DH parameters, and an
    unrelated CA."""
    d = tmp_path_factory.mktemp("pki")

    def path(name: str) -> str:
        return str(d / name)

    def ca(name: str, signer: str | None = None) -> None:
        _openssl(
            "req", "-x509" if signer is None else "-new", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", path(f"{name}.key"),
            "-out", path(f"{name}.pem" if signer is None else f"{name}.csr"), "-subj", f"/CN=tapster test {name}",
            *(["-days", "2", "-addext", "basicConstraints=critical,CA:TRUE",
               "-addext", "keyUsage=critical,keyCertSign,cRLSign"] if signer is None else []),
        )  # fmt: skip
        if signer is not None:
            (d / f"{name}.ext").write_text(
                "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
            )
            _openssl(
                "x509", "-req", "-in", path(f"{name}.csr"), "-CA", path(f"{signer}.pem"), "-CAkey",
                path(f"{signer}.key"), "-CAcreateserial", "-days", "2", "-extfile", path(f"{name}.ext"),
                "-out", path(f"{name}.pem"),
            )  # fmt: skip

    def leaf(name: str, signer: str, key_args: list[str], ext: str) -> None:
        _openssl(
            "req", "-new", *key_args, "-nodes", "-keyout", path(f"{name}.key"), "-out", path(f"{name}.csr"),
            "-subj", f"/CN={name}",
        )  # fmt: skip
        (d / f"{name}.ext").write_text(ext)
        _openssl(
            "x509", "-req", "-in", path(f"{name}.csr"), "-CA", path(f"{signer}.pem"), "-CAkey",
            path(f"{signer}.key"), "-CAcreateserial", "-days", "2", "-extfile", path(f"{name}.ext"),
            "-out", path(f"{name}.pem"),
        )  # fmt: skip

    ca("root")
    ca("intermediate", signer="root")
    leaf("server", "intermediate", ["-newkey", "rsa:2048"], "subjectAltName=DNS:localhost\n")
    ca("clientca")
    leaf("client", "clientca", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"], "")
    ca("stranger")
    _openssl(
        "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "group:ffdhe2048", "-out", path("dh.pem")
    )
    (d / "server-chain.pem").write_bytes(
        (d / "server.pem").read_bytes() + (d / "intermediate.pem").read_bytes()
    )
    (d / "client-both.pem").write_bytes((d / "client.key").read_bytes() + (d / "client.pem").read_bytes())
    roots = d / "roots"
    roots.mkdir()
    shutil.copy(d / "root.pem", roots / "root.pem")
    shutil.copy(d / "stranger.pem", roots / "stranger.PEM")
    (roots / "notes.txt").write_text("not a certificate, and not read: only *.pem files are\n")
    strangers = d / "strangers"
    strangers.mkdir()
    shutil.copy(d / "stranger.pem", strangers / "stranger.pem")
    (d / "empty").mkdir()
    (d / "nocert.pem").write_text("no certificate in here\n")
    return {p.name: p for p in d.iterdir()}


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.data.done():
            self.data.set_result(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.data.done():
            self.data.set_exception(exc or ConnectionResetError("closed before an answer"))


async def echo_once(client: str) -> asyncio.Transport:
    """Connect with the client endpoint string, check an echo, and return the (closed) transport."""
    transport, protocol = await parse_client(client).connect(Collect)
    try:
        transport.write(b"ping")
        assert await asyncio.wait_for(protocol.data, 10) == b"ping"
    finally:
        transport.close()
    return transport


def server_ssl(pki: dict[str, Path], extra: str = "") -> str:
    return f"ssl:0:interface=127.0.0.1:privateKey={pki['server.key']}:certKey={pki['server.pem']}{extra}"


# ------------------------------------------------------------------------------------------------- grammar


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp:host=example.com:1234", {"host": "example.com", "port": 1234}),
        ("tcp:port=80:example.com", {"host": "example.com", "port": 80}),
        ("ssl:host=localhost:443:timeout=3", {"host": "localhost", "port": 443, "timeout": 3.0}),
        ("unix:timeout=2:/run/app.sock", {"path": "/run/app.sock", "timeout": 2.0}),
    ],
)
def test_a_positional_value_after_a_keyword_fills_the_next_free_parameter(
    text: str, expected: dict[str, Any]
) -> None:
    """As in Twisted: bare values go, in order, to the positional parameters not given by keyword."""
    endpoint = parse_client(text)
    for name, value in expected.items():
        assert getattr(endpoint, name) == value


def test_a_positional_value_after_a_keyword_on_a_server() -> None:
    """tcp:interface=I:PORT and ssl:privateKey=K:PORT take the bare value as the port."""
    endpoint = parse_server("tcp:interface=127.0.0.1:8080")
    assert (endpoint.port, endpoint.interface) == (8080, "127.0.0.1")  # type: ignore[attr-defined]
    assert parse_server("ssl:privateKey=k.pem:443").port == 443  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("tcp:80:port=81", "duplicate parameter 'port' for tcp"),
        ("tcp:host=h:port=1:x", "duplicate parameter 'host' for tcp"),
        ("tcp:host=h:a:b", "duplicate parameter 'port' for tcp"),
        ("tcp:a:b:c", "unexpected value 'c' for tcp"),
    ],
)
def test_positional_values_that_find_no_free_parameter_are_refused(text: str, fault: str) -> None:
    parse = parse_server if text.startswith("tcp:80") else parse_client
    with pytest.raises(EndpointError, match=f"invalid endpoint '{text}': {fault}"):
        parse(text)


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("ssl:443:privateKey=k:sslmethod=TLSv1_METHOD", "sslmethod=TLSv1_METHOD .TLS 1.0. is not supported"),
        ("ssl:443:privateKey=k:sslmethod=SSLv3_METHOD", "before TLS 1.2; use TLSv1_2_METHOD or TLS_METHOD"),
        ("ssl:443:privateKey=k:sslmethod=tls", "sslmethod must be one of SSLv23_METHOD, TLS_METHOD"),
        (
            "tls:host=h:port=1:endpoint=tcp\\:h\\:1",
            "endpoint= is not supported by tapster: TLS runs over a tcp",
        ),
        ("ssl:host=h:port=1:privateKey=k.pem", "privateKey is the key of a client certificate: .*certKey="),
        ("tls:host=h:port=1:privateKey=k.pem", "give the certificate too .certificate=."),
        ("ssl:host=h:port=1:trustRoots=d", "unknown parameter 'trustRoots' for ssl"),
        ("tls:host=h:port=1:caCertsDir=d", "unknown parameter 'caCertsDir' for tls"),
        ("tcp:host=h:port=1:bindAddress=", "bindAddress must be a host name or an IP address"),
        ("unix:/x:lockfile=maybe", "lockfile must be 1 or 0"),
    ],
)
def test_twisted_parameters_are_checked_with_a_reason(text: str, fault: str) -> None:
    """A value tapster does not take says why, in one line naming the string."""
    parse = parse_server if text.startswith("ssl:443") else parse_client
    with pytest.raises(EndpointError, match=f"invalid endpoint .*{fault}"):
        parse(text)


def test_client_parameters_reach_the_endpoint() -> None:
    """Twisted's ssl: and tls: client names map to the same attributes."""
    ssl_ep = parse_client(
        "ssl:h:1:caCertsDir=/d:certKey=c.pem:privateKey=k.pem:hostname=n:bindAddress=127.0.0.2"
    )
    tls_ep = parse_client(
        "tls:h:1:trustRoots=/d:certificate=c.pem:privateKey=k.pem:hostname=n:bindAddress=127.0.0.2"
    )
    assert ssl_ep == TLSClientEndpoint(
        description=ssl_ep.description, kind="tls", host="h", port=1, ca_dir="/d", cert="c.pem",
        private_key="k.pem", hostname="n", bind_address="127.0.0.2",
    )  # fmt: skip
    assert isinstance(tls_ep, TLSClientEndpoint)
    assert (tls_ep.ca_dir, tls_ep.cert, tls_ep.private_key, tls_ep.hostname, tls_ep.bind_address) == (
        "/d", "c.pem", "k.pem", "n", "127.0.0.2",
    )  # fmt: skip
    unix = parse_client("unix:/run/x.sock:lockfile=1")
    assert isinstance(unix, UNIXClientEndpoint) and unix.lockfile


def test_an_endpoint_saved_before_the_new_fields_loads_with_their_defaults() -> None:
    """A state pickled by an older tapster (without bind_address, cert, ...) unpickles with the defaults."""
    old_tls = TLSClientEndpoint.__new__(TLSClientEndpoint)
    old_tls.__setstate__(
        {"description": "tls:h:1", "kind": "tls", "timeout": 30.0, "host": "h", "port": 1, "ca": None}
    )
    assert old_tls == parse_client("tls:h:1")
    old_tcp = TCPClientEndpoint.__new__(TCPClientEndpoint)
    old_tcp.__setstate__({"description": "tcp:h:1", "kind": "tcp", "timeout": 30.0, "host": "h", "port": 1})
    assert old_tcp == parse_client("tcp:h:1")
    old_ssl = type(parse_server("ssl:1:privateKey=k")).__new__(type(parse_server("ssl:1:privateKey=k")))
    old_ssl.__setstate__(
        {"description": "ssl:1:privateKey=k", "kind": "ssl", "port": 1, "interface": "", "backlog": 128,
         "private_key": "k", "cert_key": "k"}
    )  # fmt: skip
    assert old_ssl == parse_server("ssl:1:privateKey=k")


# ------------------------------------------------------------------------------------------------- servers


def test_extra_cert_chain_sends_the_intermediate(pki: dict[str, Path]) -> None:
    """A client trusting only the root verifies a server whose certificate the intermediate signed only when
    extraCertChain sends the intermediate."""

    async def scenario() -> None:
        client = "ssl:host=127.0.0.1:port={}:hostname=localhost:ca=" + str(pki["root.pem"])
        without = await parse_server(server_ssl(pki)).listen(Echo)
        try:
            with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
                await echo_once(client.format(without.sockets[0].getsockname()[1]))
        finally:
            without.close()
        with_chain = await parse_server(server_ssl(pki, f":extraCertChain={pki['intermediate.pem']}")).listen(
            Echo
        )
        try:
            await echo_once(client.format(with_chain.sockets[0].getsockname()[1]))
        finally:
            with_chain.close()

    run(scenario)


def test_sslmethod_pins_tls_1_2(pki: dict[str, Path]) -> None:
    """sslmethod=TLSv1_2_METHOD negotiates TLS 1.2 (the default negotiates 1.3); TLS_METHOD is the default."""

    async def version(extra: str) -> str:
        server = await parse_server(
            server_ssl(pki, f":extraCertChain={pki['intermediate.pem']}{extra}")
        ).listen(Echo)
        try:
            port = server.sockets[0].getsockname()[1]
            transport = await echo_once(f"tls:127.0.0.1:{port}:hostname=localhost:ca={pki['root.pem']}")
            return str(transport.get_extra_info("ssl_object").version())
        finally:
            server.close()

    async def scenario() -> None:
        assert await version(":sslmethod=TLSv1_2_METHOD") == "TLSv1.2"
        assert await version("") == "TLSv1.3"
        assert await version(":sslmethod=TLS_METHOD") == "TLSv1.3"

    run(scenario)


def test_dh_parameters_enable_the_dhe_ciphers(pki: dict[str, Path]) -> None:
    """A client that offers only DHE-RSA ciphers is served with dhParameters and refused without."""

    async def handshake(extra: str) -> str:
        server = await parse_server(
            server_ssl(pki, f":extraCertChain={pki['intermediate.pem']}{extra}")
        ).listen(Echo)
        context = ssl.create_default_context(cafile=str(pki["root.pem"]))
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("DHE-RSA-AES128-GCM-SHA256")
        try:
            port = server.sockets[0].getsockname()[1]
            transport, _ = await asyncio.get_running_loop().create_connection(
                asyncio.Protocol, "127.0.0.1", port, ssl=context, server_hostname="localhost"
            )
            cipher = str(transport.get_extra_info("cipher")[0])
            transport.close()
            return cipher
        finally:
            server.close()

    async def scenario() -> None:
        assert await handshake(f":dhParameters={pki['dh.pem']}") == "DHE-RSA-AES128-GCM-SHA256"
        with pytest.raises((ssl.SSLError, ConnectionResetError)):  # no cipher in common: an alert or a reset
            await handshake("")

    run(scenario)


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (":extraCertChain={nocert}", "certificate chain '.*nocert.pem' holds no PEM certificate"),
        (":extraCertChain={missing}", "cannot read certificate chain '.*missing.pem': no such file"),
        (":dhParameters={nocert}", "cannot load DH parameters from '.*nocert.pem'"),
        (":dhParameters={missing}", "cannot read DH parameters '.*missing.pem': no such file"),
    ],
)
def test_bad_chain_or_dh_files_fail_the_listen_naming_them(
    pki: dict[str, Path], extra: str, reason: str
) -> None:
    files = {"nocert": pki["nocert.pem"], "missing": pki["nocert.pem"].with_name("missing.pem")}
    description = server_ssl(pki, extra.format(**files))

    async def scenario() -> None:
        with pytest.raises(ListenError, match=f"cannot listen on .*: {reason}"):
            await parse_server(description).listen(Echo)

    run(scenario)


# ------------------------------------------------------------------------------------------------- clients


def test_bind_address_sets_the_local_address(pki: dict[str, Path]) -> None:
    """bindAddress=127.0.0.2 makes the server see the connection come from 127.0.0.2 (tcp and tls)."""

    async def scenario() -> None:
        peers: list[str] = []

        async def note_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peers.append(writer.get_extra_info("peername")[0])
            writer.write(await reader.read(4))
            await writer.drain()
            writer.close()

        plain = await asyncio.start_server(note_peer, "127.0.0.1", 0)
        secure_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        secure_context.load_cert_chain(pki["server-chain.pem"], pki["server.key"])
        secure = await asyncio.start_server(note_peer, "127.0.0.1", 0, ssl=secure_context)
        try:
            port = plain.sockets[0].getsockname()[1]
            await echo_once(f"tcp:host=127.0.0.1:port={port}:bindAddress=127.0.0.2")
            await echo_once(f"tcp:host=127.0.0.1:port={port}")
            port = secure.sockets[0].getsockname()[1]
            secure_client = f"ssl:127.0.0.1:{port}:hostname=localhost:ca={pki['root.pem']}"
            await echo_once(f"{secure_client}:bindAddress=127.0.0.3")
        finally:
            plain.close()
            secure.close()
        assert peers == ["127.0.0.2", "127.0.0.1", "127.0.0.3"]

    run(scenario)


def test_client_certificates_are_presented(pki: dict[str, Path]) -> None:
    """certKey+privateKey (ssl:), certificate+privateKey (tls:) and one PEM holding both are all presented; a
    server requiring a client certificate refuses a client without one."""

    async def scenario() -> None:
        subjects: list[str] = []

        async def note_subject(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            cert = writer.get_extra_info("peercert")
            subjects.append(dict(item[0] for item in cert["subject"])["commonName"])
            writer.write(await reader.read(4))
            await writer.drain()
            writer.close()

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["clientca.pem"]))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(pki["server-chain.pem"], pki["server.key"])
        server = await asyncio.start_server(note_subject, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        base = f"127.0.0.1:{port}:hostname=localhost:ca={pki['root.pem']}"
        try:
            await echo_once(f"ssl:{base}:certKey={pki['client.pem']}:privateKey={pki['client.key']}")
            await echo_once(f"tls:{base}:certificate={pki['client.pem']}:privateKey={pki['client.key']}")
            await echo_once(f"ssl:{base}:certKey={pki['client-both.pem']}")
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await echo_once(f"ssl:{base}")  # TLS 1.3: the refusal may arrive after the handshake
        finally:
            server.close()
        assert subjects == ["client", "client", "client"]

    run(scenario)


def test_ca_certs_dir_trusts_the_pem_files_in_it(pki: dict[str, Path]) -> None:
    """caCertsDir (ssl:) and trustRoots (tls:) trust the *.pem files of a directory and nothing else; a
    directory of unrelated CAs fails verification; an empty one or a .pem without a certificate is an error."""

    async def scenario() -> None:
        server = await parse_server(server_ssl(pki, f":extraCertChain={pki['intermediate.pem']}")).listen(
            Echo
        )
        port = server.sockets[0].getsockname()[1]
        try:
            await echo_once(f"ssl:127.0.0.1:{port}:hostname=localhost:caCertsDir={pki['roots']}")
            await echo_once(f"tls:127.0.0.1:{port}:hostname=localhost:trustRoots={pki['roots']}")
            with pytest.raises(ssl.SSLCertVerificationError):
                await echo_once(f"ssl:127.0.0.1:{port}:hostname=localhost:caCertsDir={pki['strangers']}")
            with pytest.raises(OSError, match=r"CA directory '.*empty' has no \*.pem file"):
                await echo_once(f"ssl:127.0.0.1:{port}:hostname=localhost:caCertsDir={pki['empty']}")
            with pytest.raises(ssl.SSLCertVerificationError, match=r"Hostname mismatch|IP address mismatch"):
                await echo_once(
                    f"ssl:127.0.0.1:{port}:caCertsDir={pki['roots']}"
                )  # checked against 127.0.0.1
        finally:
            server.close()

    run(scenario)


def test_unix_client_lockfile_connects_only_while_a_server_holds_the_lock(tmp_path: Path) -> None:
    """lockfile=1 (Twisted's checkPID) connects to a server listening with lockfile=1 and refuses a socket
    path nobody holds the lock for, naming the lock file."""
    path = tmp_path / "s"

    async def scenario() -> None:
        server = await parse_server(f"unix:{path}:lockfile=1").listen(Echo)
        try:
            await echo_once(f"unix:{path}:lockfile=1")
        finally:
            server.close()
        plain = await parse_server(f"unix:{path}").listen(Echo)  # listening, but without the lock
        try:
            await echo_once(f"unix:{path}")
            with pytest.raises(ConnectionRefusedError, match=f"no server holds {path}.lock"):
                await echo_once(f"unix:{path}:lockfile=1")
        finally:
            plain.close()

    run(scenario)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("tcp6:8080:interface=::1", "interface"),
        ("udp:53:interface=fe80::1", "interface"),
        ("tcp:host=[::1]:80", "host"),
    ],
)
def test_an_unescaped_ipv6_address_gets_a_hint(text: str, key: str) -> None:
    """The error for an IPv6 address with bare colons says how to write it (the new-user trial's stumble)."""
    parse = parse_client if "host" in text else parse_server
    with pytest.raises(EndpointError) as caught:
        parse(text)
    message = str(caught.value)
    assert message.endswith(
        f"(an IPv6 address needs its colons escaped: {key}=\\:\\:1, in Python source a raw string)"
    )
    assert "\n" not in message


def test_no_ipv6_hint_on_other_errors() -> None:
    with pytest.raises(EndpointError) as caught:
        parse_server("tcp:8080:interfase=x")
    assert "IPv6" not in str(caught.value)
