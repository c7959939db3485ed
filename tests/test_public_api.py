"""The public API: what `tapster` exports, and what importing it costs."""

from __future__ import annotations

import subprocess
import sys

import pytest

import tapster


def test_export_list() -> None:
    """tapster.__all__ is the documented public API and every name in it resolves."""
    assert sorted(tapster.__all__) == sorted(
        ["Application", "MultiService", "Options", "Service", "ServiceMaker", "__version__"]
    )
    for name in tapster.__all__:
        assert getattr(tapster, name) is not None
    assert tapster.Application.__module__ == "tapster.service"


def test_unknown_attribute_is_an_attribute_error() -> None:
    """A name tapster does not export raises AttributeError, as for any module."""
    with pytest.raises(AttributeError, match="NoSuchThing"):
        tapster.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


def test_help_path_imports_no_asyncio_and_no_extras() -> None:
    """`import tapster` and the CLI module load neither asyncio nor any optional extra."""
    code = (
        "import sys, tapster, tapster.cli, tapster.options, tapster.errors\n"
        "heavy = [m for m in ('asyncio', 'uvloop', 'asyncssh', 'prompt_toolkit', 'ptpython', 'aiohttp', 'bcrypt')"
        " if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_core_imports_no_optional_extra() -> None:
    """The core (service tree, services, runner, log) imports no optional dependency at start-up."""
    code = (
        "import sys, tapster.service, tapster.services, tapster.endpoints, tapster.runner._run, tapster.log,"
        " tapster.plugin\n"
        "print([m for m in ('uvloop', 'asyncssh', 'prompt_toolkit', 'ptpython', 'aiohttp', 'bcrypt', 'argon2')"
        " if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
