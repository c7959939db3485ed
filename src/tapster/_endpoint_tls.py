"""TLS contexts from the files an endpoint string names.

Servers: a certificate and its key, an optional chain of intermediate certificates (``extraCertChain``),
optional Diffie-Hellman parameters (``dhParameters``) and an optional pinned protocol version (``sslmethod``).
Clients: the trust roots (a CA file, a directory of ``*.pem`` files, or the system's) and an optional client
certificate. Every file is read when the endpoint listens or connects, never when it is parsed, and every
failure is a :class:`TLSFileError` naming the file; the endpoints turn it into their own error.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
from collections.abc import Iterator

from tapster._endpoint_errors import reason
from tapster._endpoint_parse import SSL_METHODS

__all__ = ["TLSFileError", "client_context", "server_context"]

_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL)


class TLSFileError(Exception):
    """A file a TLS context needs is missing, unreadable or wrong; ``str()`` says which and why."""

    def __init__(self, why: str, cause: OSError | None = None) -> None:
        super().__init__(why)
        self.cause = cause


class _NeedsPassphrase(Exception):
    """Raised from the passphrase callback: a daemon must never stop to prompt on a terminal."""


def _no_passphrase() -> bytes:
    raise _NeedsPassphrase


def _read(role: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise TLSFileError(f"cannot read {role} {path!r}: {reason(exc)}", exc) from exc


def _certificates(role: str, path: str) -> bytes:
    """The PEM certificate blocks of ``path`` (a key in the same file is left out); at least one."""
    blocks = _CERTIFICATE.findall(_read(role, path))
    if not blocks:
        raise TLSFileError(f"{role} {path!r} holds no PEM certificate")
    return b"\n".join(blocks) + b"\n"


@contextlib.contextmanager
def _file_holding(data: bytes) -> Iterator[str]:
    """A path to ``data``, for OpenSSL calls that read only from a file (``load_cert_chain``).

    An anonymous memory file where ``/proc`` is mounted (nothing touches a disk, nothing is left after a crash);
    otherwise a private temporary file (mode 0600), removed as soon as it is read. Only certificates, which are
    public, ever go through here; keys are always read from their own files.
    """
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("tapster-certificates", os.MFD_CLOEXEC)
        try:
            with os.fdopen(os.dup(fd), "wb") as file:
                file.write(data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    import tempfile  # rarely needed, and not cheap to import: only without /proc

    fd, path = tempfile.mkstemp(prefix="tapster-certificates-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _load_pair(context: ssl.SSLContext, cert_file: str, key: str | None, shown_cert: str) -> None:
    files = repr(shown_cert) if key in (None, shown_cert) else f"{shown_cert!r} and {key!r}"
    try:
        context.load_cert_chain(cert_file, key, password=_no_passphrase)
    except _NeedsPassphrase:
        raise TLSFileError(
            f"the private key in {key or shown_cert!r} is encrypted; give an unencrypted key"
        ) from None
    except OSError as exc:
        raise TLSFileError(f"cannot load certificate and key from {files}: {reason(exc)}", exc) from exc


def server_context(
    private_key: str,
    cert_key: str,
    *,
    ssl_method: str | None = None,
    extra_cert_chain: str | None = None,
    dh_parameters: str | None = None,
) -> ssl.SSLContext:
    """A server context: the key pair (with the chain sent after the certificate), DH parameters, version pin.

    Raises:
        TLSFileError: a file is missing, unreadable, encrypted or not what it should be.
    """
    _read("private key", private_key)
    _read("certificate", cert_key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    version = SSL_METHODS.get(ssl_method) if ssl_method is not None else None
    if version is not None:
        context.minimum_version = context.maximum_version = ssl.TLSVersion[version]
    if extra_cert_chain is None:
        _load_pair(context, cert_key, private_key, cert_key)
    else:
        chain = _certificates("certificate chain", extra_cert_chain)
        leaf = _certificates("certificate", cert_key)
        with _file_holding(leaf + chain) as combined:
            _load_pair(context, combined, private_key, cert_key)
    if dh_parameters is not None:
        _read("DH parameters", dh_parameters)
        try:
            context.load_dh_params(dh_parameters)
        except (OSError, ValueError) as exc:
            why = reason(exc) if isinstance(exc, OSError) else str(exc)
            cause = exc if isinstance(exc, OSError) else None
            raise TLSFileError(f"cannot load DH parameters from {dh_parameters!r}: {why}", cause) from exc
    return context


def _load_ca_dir(context: ssl.SSLContext, directory: str) -> None:
    """Trust every ``*.pem`` file of ``directory``, as Twisted's ``caCertsDir`` and ``trustRoots`` do.

    OpenSSL's own ``capath`` needs hash-named links (``c_rehash``); Twisted reads the ``.pem`` files, so this
    does too. A ``.pem`` file that cannot be read or holds no certificate is an error, not skipped.
    """
    try:
        names = sorted(name for name in os.listdir(directory) if name.lower().endswith(".pem"))
    except OSError as exc:
        raise TLSFileError(f"cannot read CA directory {directory!r}: {reason(exc)}", exc) from exc
    if not names:
        raise TLSFileError(f"CA directory {directory!r} has no *.pem file")
    for name in names:
        path = os.path.join(directory, name)
        blocks = _certificates("CA certificate", path)
        try:
            context.load_verify_locations(cadata=blocks.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError) as exc:
            raise TLSFileError(f"CA certificate {path!r} cannot be loaded: {exc}") from exc


def client_context(
    *,
    ca: str | None = None,
    ca_dir: str | None = None,
    cert: str | None = None,
    private_key: str | None = None,
) -> ssl.SSLContext:
    """A client context that checks the server against ``ca`` and ``ca_dir`` (else the system's trust roots),
    optionally presenting the client certificate ``cert`` (with its key in ``private_key`` or in ``cert``).

    Raises:
        TLSFileError: a file is missing, unreadable, encrypted or not what it should be.
    """
    if ca is None and ca_dir is None:
        context = ssl.create_default_context()
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the host name
        if ca is not None:
            try:
                context.load_verify_locations(cafile=ca)
            except OSError as exc:
                raise TLSFileError(f"cannot load CA file {ca!r}: {reason(exc)}", exc) from exc
        if ca_dir is not None:
            _load_ca_dir(context, ca_dir)
    if cert is not None:
        _read("client certificate", cert)
        if private_key is not None:
            _read("client private key", private_key)
        _load_pair(context, cert, private_key, cert)
    return context
