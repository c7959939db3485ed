"""A tac file that only uses a StreamServer must not pay, at every start, for the built-in plugins' servers."""

from __future__ import annotations

import subprocess
import sys

PLUGIN_SERVERS = {
    "FTPServer": "tapster.services._ftp",
    "PortForward": "tapster.services._portforward",
    "ProcessMonitor": "tapster.services._procmon",
    "SOCKSServer": "tapster.services._socks",
    "WebServer": "tapster.services._web",
}


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_importing_the_services_leaves_the_plugin_servers_and_their_dependencies_out() -> None:
    """Importing them all cost ~10 ms and ~3 MiB (tapster.auth and the rest) before they were lazy."""
    out = _run(
        "import sys\n"
        "from tapster.services import StreamServer, ClientService, UDPServer, TimerService\n"
        "print(sorted(m for m in sys.modules if m.startswith(('tapster.services._', 'tapster.auth'))))\n"
    )
    loaded = set(eval(out))
    assert not loaded & {*PLUGIN_SERVERS.values(), "tapster.auth"}, loaded


def test_each_plugin_server_is_still_importable_by_name_and_pickled_under_its_module() -> None:
    """`from tapster.services import WebServer` and `tapster.services.FTPServer` work as before (PEP 562)."""
    out = _run(
        "import tapster.services as services\n"
        "from tapster.services import WebServer\n"
        f"names = {sorted(PLUGIN_SERVERS)!r}\n"
        "print([getattr(services, name).__module__ for name in names], WebServer is services.WebServer,\n"
        "      set(names) <= set(dir(services)))\n"
    )
    modules = [PLUGIN_SERVERS[name] for name in sorted(PLUGIN_SERVERS)]
    assert out.strip() == f"{modules!r} True True"
