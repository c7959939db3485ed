"""``ManholeService``: a Python shell inside the running server, over SSH, telnet, or both."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from tapster._extras import missing
from tapster.auth import Authenticator, Checker, ThrottleLimits
from tapster.endpoints import ServerEndpoint, TCPServerEndpoint
from tapster.errors import StartupError
from tapster.manhole import _stdio
from tapster.manhole._interpreter import make_namespace
from tapster.manhole._reload import reload
from tapster.manhole._shell import Channel, Shell
from tapster.service import MultiService, Service
from tapster.services import StreamServer

__all__ = ["ManholeService", "exposure", "manhole_endpoint"]

logger = logging.getLogger("tapster.manhole")

SSH_NAME = "ManholeSSH"
TELNET_NAME = "ManholeTelnet"


def manhole_endpoint(endpoint: str | int) -> str:
    """The endpoint string for a manhole listener: a bare port means that port on 127.0.0.1 only.

    Anything else is an ordinary endpoint string (``tcp:2222:interface=0.0.0.0``, ``unix:/run/app/manhole``).
    """
    if isinstance(endpoint, int) and not isinstance(endpoint, bool):
        return f"tcp:{endpoint}:interface=127.0.0.1"
    if isinstance(endpoint, str) and endpoint.isascii() and endpoint.isdigit():
        return f"tcp:{endpoint}:interface=127.0.0.1"
    return str(endpoint)


def _reachable_from_network(endpoint: ServerEndpoint) -> bool:
    """Whether others than this machine's users may connect (TCP on anything but a loopback address).

    A host name or an empty interface (every address) counts as reachable. A socket systemd passes in is not
    judged (its address is systemd's configuration).
    """
    if not isinstance(endpoint, TCPServerEndpoint):
        return False
    host = endpoint.interface
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # empty: every address
        return True


def exposure(
    listeners: Iterable[tuple[str, ServerEndpoint]], *, anonymous: bool, allow_remote_anonymous: bool
) -> tuple[str | None, list[str]]:
    """What the manhole's listeners expose: a reason to refuse starting (or None), and the warnings to give.

    Anonymous access on an address others can reach is refused unless ``allow_remote_anonymous``, and warned
    about when allowed; telnet (not TLS) on such an address is warned about, since passwords cross in clear text.

    Args:
        listeners: (``"ssh"`` or ``"telnet"``, endpoint) pairs.
        anonymous: a checker lets anyone in.
        allow_remote_anonymous: the explicit override (``--allow-remote-anonymous``).
    """
    refusal: str | None = None
    warnings: list[str] = []
    for kind, endpoint in listeners:
        if not _reachable_from_network(endpoint):
            continue
        where = endpoint.description
        if anonymous and not allow_remote_anonymous:
            refusal = refusal or (
                f"manhole on {where}: --auth anonymous on an address others can reach would let anyone run code "
                "in this server; bind 127.0.0.1 or a unix socket, or allow it with --allow-remote-anonymous "
                "(allow_remote_anonymous=True)"
            )
        elif anonymous:
            warnings.append(
                f"manhole on {where} lets anyone in (anonymous, allowed by --allow-remote-anonymous): "
                "whoever connects runs code in this server"
            )
        if kind == "telnet" and endpoint.kind != "ssl":
            warnings.append(
                f"telnet manhole on {where}: passwords and everything typed cross the network in clear text; "
                "use SSH, or bind 127.0.0.1"
            )
    return refusal, warnings


class ManholeService(MultiService):
    """A remote Python shell that runs in the server's own event loop and sees its live objects.

    Code typed in the shell runs as a task of the server's loop: top-level ``await`` works, and ``print`` goes to
    the session. Each session has its own copy of the namespace, which always holds ``app`` (the root of the
    service tree) and ``reload`` (see :func:`~tapster.manhole.reload`), plus what ``namespace`` gives.

    Args:
        namespace: names to expose, e.g. ``{"service": echo_service}``.
        ssh: endpoint for SSH logins, or None. A bare port (``2222``) binds 127.0.0.1 only.
        telnet: endpoint for telnet logins, or None. Passwords cross the network in clear: a non-loopback
            address is allowed but logged as a warning.
        checkers: who may log in (see :mod:`tapster.auth`); at least one.
        host_key: the SSH host key file, created (mode 0600) if missing; None: a new key each run.
        failure_delay: seconds the answer to a failed password is held back (guessing is also throttled per
            source address and overall: see :class:`~tapster.auth.Authenticator`).
        allow_remote_anonymous: let an ``anonymous`` checker serve an address others can reach (by default that
            is refused at start, before anything is bound).
        throttle: the numbers of the login throttle; the documented defaults when None.
        name: the service name.

    Raises:
        ValueError: no listener, no checker, a telnet manhole with only key checkers.
        EndpointError: an endpoint string is malformed.

    Security warnings (telnet in clear text, anonymous access allowed off loopback) go to stderr when the
    service is made (the terminal, when started from the command line) and to the log when it starts.
    """

    transient = ("_shells", "_histories", "_installed")  # type: ignore[assignment]

    def __init__(
        self,
        namespace: Mapping[str, Any] | None = None,
        *,
        ssh: str | int | None = None,
        telnet: str | int | None = None,
        checkers: Iterable[Checker] = (),
        host_key: str | os.PathLike[str] | None = None,
        failure_delay: float = 1.0,
        allow_remote_anonymous: bool = False,
        throttle: ThrottleLimits | None = None,
        name: str = "manhole",
    ) -> None:
        super().__init__()
        self.name = name
        self.namespace = dict(namespace or {})
        self.authenticator = Authenticator(checkers, failure_delay=failure_delay, limits=throttle)
        self.allow_remote_anonymous = allow_remote_anonymous
        self.host_key = None if host_key is None else os.path.abspath(os.fspath(host_key))
        if ssh is None and telnet is None:
            raise ValueError("a manhole needs ssh=, telnet= or both")
        if telnet is not None and not (
            self.authenticator.accepts_passwords or self.authenticator.accepts_anyone
        ):
            raise ValueError("telnet logins need a password checker: SSH keys work over SSH only")
        self._shells: set[Shell] | None = set()
        self._histories: dict[str, Any] | None = {}
        self._installed = False
        self.ssh: _ManholeListener | None = None
        self.telnet: _ManholeListener | None = None
        if ssh is not None:
            self.ssh = _ManholeListener(manhole_endpoint(ssh), self, "ssh", name=SSH_NAME)
            self.add_service(self.ssh)
        if telnet is not None:
            self.telnet = _ManholeListener(manhole_endpoint(telnet), self, "telnet", name=TELNET_NAME)
            self.add_service(self.telnet)
        for warning in self.exposure()[1]:
            print(f"tapster: warning: {warning}", file=sys.stderr)

    def exposure(self) -> tuple[str | None, list[str]]:
        """The refusal (or None) and the warnings for this manhole's listeners (see :func:`exposure`)."""
        listeners = [(listener.kind, listener.endpoint) for listener in (self.ssh, self.telnet) if listener]
        return exposure(
            listeners,
            anonymous=self.authenticator.accepts_anyone,
            allow_remote_anonymous=getattr(self, "allow_remote_anonymous", False),
        )

    def check_exposure(self) -> None:
        """Refuse an anonymous manhole that others could reach, and log the security warnings.

        Runs in :meth:`privileged_start`, before any socket is bound.

        Raises:
            StartupError: anonymous access on an address others can reach, without the override.
        """
        refusal, warnings = self.exposure()
        if refusal is not None:
            raise StartupError(refusal)
        for warning in warnings:
            logger.warning("%s", warning)

    # -- what the SSH and telnet servers use -------------------------------------------------------------------

    def root(self) -> Service:
        """The root of the service tree this manhole is in (the application)."""
        node: Service = self
        while node.parent is not None:
            node = node.parent
        return node

    def base_namespace(self) -> dict[str, Any]:
        """The names every new session starts with."""
        names: dict[str, Any] = {"app": self.root(), "reload": reload}
        names.update(self.namespace)
        return names

    def banner(self) -> str:
        names = ", ".join(sorted(name for name in self.base_namespace() if not name.startswith("_")))
        version = sys.version.split()[0]
        return f"tapster manhole on {self.root()!r}, Python {version}\nNames: {names}\n"

    def open_shell(self, channel: Channel, username: str) -> Shell:
        """A new session for ``username`` on ``channel``, tracked so that stopping the manhole ends it."""
        history = None
        if channel.terminal is not None:
            if self._histories is None:
                self._histories = {}
            history = self._histories.get(username)
            if history is None:
                try:
                    from tapster.manhole._prompt import new_history
                except ImportError:
                    history = None
                else:
                    history = self._histories[username] = new_history()
        if self._shells is None:
            self._shells = set()
        shell = Shell(
            channel,
            make_namespace(self.base_namespace()),
            username=username,
            history=history,
            banner=self.banner(),
            on_finish=self._session_ended,
        )
        self._shells.add(shell)
        return shell

    def _session_ended(self, shell: Shell) -> None:
        if self._shells is not None:
            self._shells.discard(shell)
        logger.info("manhole: session of %r ended", shell.username)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def privileged_start(self) -> None:
        self.check_exposure()
        if self.ssh is not None:
            await self.ssh.prepare()  # the host key is read (or written) before privileges are dropped
        await super().privileged_start()

    async def start(self) -> None:
        if not self._installed:
            _stdio.install()
            self._installed = True
        try:
            # Privileges are dropped by now: StrictModes judges the files for the user the server runs as.
            self.authenticator.verify_files()
            await super().start()
        except BaseException:
            self._uninstall()
            raise

    async def stop(self) -> None:
        shells = list(self._shells or ())
        for shell in shells:
            shell.close("\nThe server is stopping: manhole session closed.\n")
        tasks = [shell.task for shell in shells if shell.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        try:
            await super().stop()
        finally:
            self._uninstall()

    def _uninstall(self) -> None:
        if self._installed:
            _stdio.uninstall()
            self._installed = False


class _ManholeListener(StreamServer):
    """A StreamServer whose protocol factory is made when it starts (SSH needs its key and options first)."""

    transient = ("_factory",)  # type: ignore[assignment]

    def __init__(self, endpoint: str, manhole: ManholeService, kind: str, *, name: str) -> None:
        super().__init__(endpoint, self._make_protocol, name=name)
        self.manhole = manhole
        self.kind = kind
        self._factory: Any = None

    def _make_protocol(self) -> Any:
        if self._factory is None:
            raise RuntimeError(f"{self.label} accepted a connection before it was prepared")
        return self._factory()

    async def prepare(self) -> None:
        """Build the protocol factory: for SSH, read or create the host key and set up asyncssh."""
        if self._factory is not None:
            return
        if self.kind == "ssh":
            try:
                from tapster.manhole._ssh import ssh_protocol_factory
            except ImportError as exc:
                raise missing(exc, "the manhole's SSH server") from exc
            from tapster.manhole._hostkey import load_host_key

            key = load_host_key(self.manhole.host_key)
            self._factory = await ssh_protocol_factory(self.manhole, key)
        else:
            from tapster.manhole._telnet import telnet_protocol_factory

            self._factory = telnet_protocol_factory(self.manhole)

    async def start(self) -> None:
        await self.prepare()
        await super().start()
