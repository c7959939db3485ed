"""A module that a tapster extra installs is missing: the user's one line names the extra to install.

Each test runs the real command with the module hidden: a ``sitecustomize`` on PYTHONPATH puts a finder first
on ``sys.meta_path`` that answers ``No module named 'X'`` for the names in ``HIDE_MODULES``, exactly as Python does
when a package is not installed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import EXAMPLES, run_tapster

HIDER = """\
import os
import sys

_HIDDEN = set(filter(None, os.environ.get("HIDE_MODULES", "").split(",")))


class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Hide())
"""


def hidden(tmp_path: Path, *modules: str) -> dict[str, str]:
    """The environment that hides ``modules`` from a tapster process."""
    folder = tmp_path / "hide"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(HIDER)
    return {"PYTHONPATH": str(folder), "HIDE_MODULES": ",".join(modules)}


def one_line(result: object, status: int) -> str:
    """The single stderr line of a failed command (no traceback)."""
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert result.returncode == status, stderr  # type: ignore[attr-defined]
    lines = [line for line in stderr.splitlines() if not line.startswith("Usage: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    root = tmp_path / "examples"
    shutil.copytree(EXAMPLES / "tapster", root / "tapster")
    shutil.copytree(EXAMPLES / "poetry", root / "poetry")
    return root


def test_manhole_ssh_without_asyncssh_names_the_ssh_extra(tmp_path: Path) -> None:
    """`tapster manhole --ssh` without asyncssh: exit 1, the line says pip install 'tapster[ssh]'."""
    result = run_tapster(
        ["-n", "-o", "--pidfile=", "manhole", "--ssh", "0", "--auth", "memory:admin:secret"],
        cwd=tmp_path,
        env=hidden(tmp_path, "asyncssh"),
    )
    line = one_line(result, 1)
    assert line == (
        "tapster: the manhole's SSH server needs asyncssh: No module named 'asyncssh' "
        "(pip install 'tapster[ssh]')"
    )


def test_echo_plugin_without_aiohttp_names_the_web_extra(examples: Path, tmp_path: Path) -> None:
    """The echo example's HTTP side without aiohttp: exit 1, the line says pip install 'tapster[web]'."""
    result = run_tapster(
        ["-n", "-o", "--pidfile=", "echo", "--port", "0", "--service-port", "0"],
        cwd=examples,
        env=hidden(tmp_path, "aiohttp"),
    )
    line = one_line(result, 1)
    assert "needs aiohttp" in line and line.endswith("(pip install 'tapster[web]')")


def test_uvloop_reactor_without_uvloop_names_the_uvloop_extra(tmp_path: Path) -> None:
    """--reactor uvloop without uvloop (this one said so already; kept here with the others)."""
    result = run_tapster(
        ["-n", "-o", "--pidfile=", "--reactor", "uvloop", "-y", str(EXAMPLES / "echo.tac")],
        cwd=tmp_path,
        env=hidden(tmp_path, "uvloop"),
    )
    assert one_line(result, 1) == "tapster: reactor 'uvloop' is not installed: pip install 'tapster[uvloop]'"


def test_plugin_module_needing_an_extra_is_listed_and_refused_with_the_extra(tmp_path: Path) -> None:
    """A plugin module that imports aiohttp at the top: --help lists its failure with the extra, and running it
    exits 1 with the same hint. A module no extra installs gets no hint."""
    folder = tmp_path / "tapster" / "plugins"
    folder.mkdir(parents=True)
    (folder / "shop_plugin.py").write_text("import aiohttp\n")
    (folder / "other_plugin.py").write_text("import no_such_module_anywhere\n")
    env = hidden(tmp_path, "aiohttp")
    listing = run_tapster(["--help"], cwd=tmp_path, env=env)
    assert listing.returncode == 0, listing.stderr
    text = " ".join(listing.stdout.split())  # the listing wraps long descriptions
    assert (
        "shop_plugin (failed to load: ModuleNotFoundError: No module named 'aiohttp' (pip install 'tapster[web]'))"
        in text
    )
    assert (
        "other_plugin (failed to load: ModuleNotFoundError: No module named 'no_such_module_anywhere') "
        in text
    )
    line = one_line(run_tapster(["-n", "shop"], cwd=tmp_path, env=env), 1)
    assert line.startswith(
        "tapster: plugin shop_plugin failed to load: ModuleNotFoundError: No module named 'aiohttp'"
    )
    assert "(pip install 'tapster[web]')" in line


def test_hash_package_missing_names_the_ssh_extra(tmp_path: Path) -> None:
    """A bcrypt hash in a password file without the bcrypt package: the usage error names the extra."""
    users = tmp_path / "users"
    users.write_text("admin:$2b$12$" + "a" * 53 + "\n")
    users.chmod(0o600)
    result = run_tapster(
        ["-n", "-o", "--pidfile=", "manhole", "--telnet", "0", "--auth", f"file:{users}"],
        cwd=tmp_path,
        env=hidden(tmp_path, "bcrypt"),
    )
    line = one_line(result, 2)
    assert line.endswith("bcrypt hashes need the bcrypt package (pip install 'tapster[ssh]')")


def test_broken_uvloop_is_not_called_missing(tmp_path: Path) -> None:
    """uvloop present but failing on a module of its own: the line says that, not 'pip install' (which would not
    help)."""
    fake = tmp_path / "shadow" / "uvloop"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import uvloop_own_part_that_is_gone\n")
    result = run_tapster(
        ["-n", "-o", "--pidfile=", "--reactor", "uvloop", "-y", str(EXAMPLES / "echo.tac")],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "shadow")},
    )
    assert one_line(result, 1) == (
        "tapster: reactor 'uvloop' cannot be imported: ModuleNotFoundError: "
        "No module named 'uvloop_own_part_that_is_gone'"
    )


def test_application_file_importing_a_missing_extra_names_it(tmp_path: Path) -> None:
    """A `-y` file that imports aiohttp without the web extra: one line ending in the pip command."""
    (tmp_path / "web.tac").write_text(
        "import aiohttp\nfrom tapster import Application\napplication = Application('w')\n"
    )
    result = run_tapster(["-n", "-y", "web.tac", "--pidfile="], cwd=tmp_path, env=hidden(tmp_path, "aiohttp"))
    line = one_line(result, 1)
    assert "No module named 'aiohttp'" in line
    assert line.endswith("(pip install 'tapster[web]')")


def test_service_importing_a_missing_extra_at_start_names_it(tmp_path: Path) -> None:
    """A service whose start() imports uvloop, which is hidden: the failed start's line names the extra."""
    (tmp_path / "late.tac").write_text(
        "from tapster import Application, Service\n"
        "class Late(Service):\n"
        "    async def start(self):\n"
        "        import uvloop  # noqa: F401\n"
        "        await super().start()\n"
        "application = Application('late')\n"
        "Late().set_parent(application)\n"
    )
    result = run_tapster(["-n", "-y", "late.tac", "--pidfile="], cwd=tmp_path, env=hidden(tmp_path, "uvloop"))
    line = one_line(result, 1)
    assert "No module named 'uvloop'" in line
    assert line.endswith("(pip install 'tapster[uvloop]')")
