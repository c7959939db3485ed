"""The process side of --workers: privileges, TLS files read in each worker, sockets from systemd."""

from __future__ import annotations

import datetime
import ipaddress
import pwd
import shutil
import signal
import socket
import ssl
import threading
from pathlib import Path

import pytest
from workerapp import ask, free_port, write_app


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="switching users needs root")
def test_workers_drop_privileges_the_master_keeps_them(tapster, shared_dir: Path) -> None:
    """-u nobody: each worker runs as nobody after its start; the master stays root to start new workers."""
    nobody = pwd.getpwnam("nobody").pw_uid
    port = free_port()
    args = [
        "-n",
        "--pidfile=",
        "--workers",
        "2",
        "-u",
        "nobody",
        "-y",
        str(write_app(shared_dir / "app.tac")),
    ]
    proc = tapster(args, cwd=shared_dir, env={"PORT": str(port)})
    pids = [int(proc.wait_for(rf"\] worker {n} ready \(pid (\d+)\)")[1]) for n in (1, 2)]
    assert [_uid_of(pid) for pid in pids] == [nobody, nobody]
    assert _uid_of(proc.proc.pid) == 0
    assert ask(port)[1] in pids
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


def _self_signed(folder: Path) -> tuple[Path, Path]:
    crypto = pytest.importorskip("cryptography")
    del crypto
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = folder / "key.pem", folder / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def test_tls_listener_with_workers(tapster, tmp_path: Path) -> None:
    """An ssl: endpoint: the master binds the port, each worker loads the key and certificate and speaks TLS."""
    key, cert = _self_signed(tmp_path)
    tls_port = free_port()
    endpoint = f"ssl:{tls_port}:privateKey={key}:certKey={cert}:interface=127.0.0.1"
    extra = f'StreamServer("{endpoint}", handle).set_parent(application)'
    app = write_app(tmp_path / "app.tac", extra=extra)
    proc = tapster(["-n", "--pidfile=", "--workers", "2", "-y", str(app)], env={"PORT": str(free_port())})
    pids = {int(proc.wait_for(rf"\] worker {n} ready \(pid (\d+)\)")[1]) for n in (1, 2)}
    context = ssl.create_default_context(cafile=str(cert))
    with (
        socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"secret\n")
        version, pid, word = tls.recv(100).decode().split()
    assert (version, word) == ("v1", "secret") and int(pid) in pids
    proc.signal(signal.SIGTERM)
    assert proc.finish()[0] == 0


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate is not installed"
)
def test_socket_activated_master_passes_the_socket_on(tapster, tmp_path: Path) -> None:
    """Under systemd-socket-activate --fdname=web, the master adopts the socket and its workers serve on it."""
    import sys

    port = free_port()
    extra = 'StreamServer("systemd:domain=INET:name=web", handle, name="Web").set_parent(application)'
    app = write_app(tmp_path / "app.tac", extra=extra)
    command = [
        "systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=web", "-E", f"PORT={free_port()}",
        sys.executable, "-m", "tapster", "-n", "--pidfile=", "--workers", "2", "-y", str(app),
    ]  # fmt: skip
    import subprocess

    proc = subprocess.Popen(
        command, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # "Listening on 127.0.0.1:PORT as 3." once it listens
            if line.startswith("Listening on"):
                break
        first = threading.Thread(target=ask, args=(port,), kwargs={"timeout": 30})
        first.start()  # the first connection starts it; it waits in the socket's queue meanwhile
        ready = 0
        for line in proc.stdout:
            seen.append(line)
            ready += " ready (pid " in line
            if ready == 2:
                break
        first.join(timeout=30)
        version, pid = ask(port)
        assert version == "v1"
        answered = {ask(port)[1] for _ in range(30)} | {pid}
        assert proc.pid not in answered  # the workers answer, never the master
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert "master listening on systemd:domain=INET:name=web for 2 worker(s)" in "".join(seen) + out
