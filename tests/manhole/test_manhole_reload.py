"""Tests for reload(): new code for a module, and its live objects moved over to it."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tapster.manhole import reload

VERSION_1 = """
class Greeter:
    def greet(self):
        return "hello"

class Slotted:
    __slots__ = ("a",)

def helper():
    return 1

counter = 0
"""

VERSION_2 = """
class Greeter:
    def greet(self):
        return "bonjour, " + self.extra()

    def extra(self):
        return "new method"

class Slotted:
    __slots__ = ("a", "b")

def helper():
    return 2

counter = 100
"""


@pytest.fixture
def module_dir(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [n for n in sys.modules if n.startswith("reloadme_")]:
        del sys.modules[name]


def load(module_dir: Path, name: str, source: str):
    (module_dir / f"{name}.py").write_text(textwrap.dedent(source))
    importlib.invalidate_caches()
    return importlib.import_module(name)


def test_instances_move_to_the_new_class(module_dir: Path):
    """Live instances get the new class: new methods and new behaviour, same state."""
    module = load(module_dir, "reloadme_a", VERSION_1)
    greeter = module.Greeter()
    greeter.name = "kept"
    assert greeter.greet() == "hello"
    (module_dir / "reloadme_a.py").write_text(VERSION_2)
    report = reload(module)
    assert greeter.greet() == "bonjour, new method"
    assert greeter.name == "kept"
    assert type(greeter) is module.Greeter
    assert isinstance(greeter, module.Greeter)
    assert "Greeter" in report.classes
    assert report.instances >= 1
    assert module.counter == 100


def test_references_elsewhere_get_the_new_code(module_dir: Path):
    """Functions and bound methods stored before the reload run the new code; other modules' names follow."""
    module = load(module_dir, "reloadme_b", VERSION_1)
    user = load(module_dir, "reloadme_b_user", "from reloadme_b import helper, Greeter\n")
    stored_function = module.helper
    stored_method = module.Greeter().greet
    (module_dir / "reloadme_b.py").write_text(VERSION_2)
    report = reload("reloadme_b")
    assert stored_function() == 2
    assert stored_method() == "bonjour, new method"
    assert user.Greeter is module.Greeter
    assert user.helper is module.helper
    assert report.references >= 2
    assert "helper" in report.functions


def test_subclasses_elsewhere_are_rebased(module_dir: Path):
    """A class in another module deriving from a reloaded class gets the new base."""
    module = load(module_dir, "reloadme_c", VERSION_1)
    sub_module = load(
        module_dir,
        "reloadme_c_sub",
        "import reloadme_c\n"
        "class Loud(reloadme_c.Greeter):\n"
        "    def shout(self):\n"
        "        return self.greet().upper()\n",
    )
    loud = sub_module.Loud()
    (module_dir / "reloadme_c.py").write_text(VERSION_2)
    reload(module)
    assert sub_module.Loud.__bases__ == (module.Greeter,)
    assert loud.shout() == "BONJOUR, NEW METHOD"


def test_what_cannot_be_moved_is_reported(module_dir: Path):
    """An instance whose class layout changed keeps its old class, and the report says so."""
    module = load(module_dir, "reloadme_d", VERSION_1)
    slotted = module.Slotted()
    (module_dir / "reloadme_d.py").write_text(VERSION_2)
    report = reload(module)
    assert type(slotted) is not module.Slotted
    assert any("Slotted" in problem for problem in report.problems)
    assert "not updated:" in repr(report)
    assert repr(report).startswith("reloaded reloadme_d:")


def test_a_failing_new_source_leaves_the_module_as_it_was(module_dir: Path):
    """If the new source raises, the error propagates and the module keeps its old contents."""
    module = load(module_dir, "reloadme_e", VERSION_1)
    greeter = module.Greeter()
    (module_dir / "reloadme_e.py").write_text("counter = 5\nraise RuntimeError('half-edited')\n")
    with pytest.raises(RuntimeError, match="half-edited"):
        reload(module)
    assert module.counter == 0
    assert greeter.greet() == "hello"
    assert module.Greeter is type(greeter)


def test_reload_sees_an_edit_made_in_the_same_second(module_dir: Path):
    """An edit that keeps the file size and mtime second (which a cached .pyc may hide) is still seen."""
    module = load(module_dir, "reloadme_f", "def value():\n    return 'aaa'\n")
    import os

    path = module_dir / "reloadme_f.py"
    stat = path.stat()
    path.write_text("def value():\n    return 'bbb'\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    reload(module)
    assert module.value() == "bbb"


def test_bad_arguments():
    """reload() names what is wrong with its argument."""
    with pytest.raises(ValueError, match="module 'no_such_module_here' is not loaded"):
        reload("no_such_module_here")
    with pytest.raises(TypeError, match="needs a module or a module name"):
        reload(42)  # type: ignore[arg-type]
