"""``reload(module)``: run a module's source again and move the live objects over to the new code.

Twisted's ``rebuild`` did this for twistd's manhole; this is the same idea for tapster. Reloading alone
(:func:`importlib.reload`) creates new classes and functions, but every existing instance keeps its old class
and every stored reference keeps the old function, so a running server goes on with the old code. Here:

- each live instance of a class defined in the module gets the new class of the same name (``obj.__class__``),
  found by one pass over the objects the garbage collector tracks;
- classes elsewhere that derive from an old class get the new one as their base;
- old functions, and old methods, whose code has no closure get the new code (``__code__``), so callbacks and
  bound methods stored before the reload run the new code too;
- other modules' globals that named an old class or function name the new one.

What cannot be done is reported, not raised: an instance whose new class has a different layout (``__slots__``
changed), a class or function that is gone from the new source, functions with closures, enum members. Objects the
garbage collector does not track (instances of classes with ``__slots__`` holding no references) are not found.
If the new source raises, the module is put back as it was and the error propagates.
"""

from __future__ import annotations

import enum
import gc
import importlib
import linecache
import os
import sys
from dataclasses import dataclass, field
from types import FunctionType, ModuleType
from typing import Any

__all__ = ["ReloadReport", "reload"]


@dataclass
class ReloadReport:
    """What :func:`reload` did, shown as a short summary in the manhole.

    Attributes:
        module: the module's name.
        classes: names of the classes whose live objects were moved to the new version.
        instances: how many live instances now have a new class.
        functions: names of functions and methods whose old objects now run the new code.
        references: how many globals of other modules were pointed at a new class or function.
        problems: what could not be updated, one sentence each.
    """

    module: str
    classes: list[str] = field(default_factory=list)
    instances: int = 0
    functions: list[str] = field(default_factory=list)
    references: int = 0
    problems: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        lines = [
            f"reloaded {self.module}: {len(self.classes)} class(es), {self.instances} instance(s) moved, "
            f"{len(self.functions)} function(s) updated in place, {self.references} reference(s) elsewhere"
        ]
        if self.problems:
            lines.append("not updated:")
            lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


def _resolve(module: ModuleType | str) -> ModuleType:
    if isinstance(module, ModuleType):
        return module
    if isinstance(module, str):
        found = sys.modules.get(module)
        if found is None:
            raise ValueError(f"module {module!r} is not loaded (import it first)")
        return found
    raise TypeError(f"reload() needs a module or a module name, not {type(module).__name__}")


def _reexecute(module: ModuleType) -> None:
    """Run the module's current source in its own namespace; on an error, restore the namespace and raise.

    Compiling the source directly (rather than through the bytecode cache) sees an edit made within the same
    second as the last import, which a cached ``.pyc`` checked by mtime and size might hide.
    """
    spec = getattr(module, "__spec__", None)
    loader = getattr(spec, "loader", None)
    origin = getattr(spec, "origin", None)
    get_source = getattr(loader, "get_source", None)
    source = None
    if get_source is not None and isinstance(origin, str) and os.path.isfile(origin):
        try:
            source = get_source(module.__name__)
        except (ImportError, OSError):
            source = None
    if source is None:
        importlib.reload(module)
        return
    assert isinstance(origin, str)
    code = compile(source, origin, "exec", dont_inherit=True)
    linecache.checkcache(origin)
    namespace = vars(module)
    saved = dict(namespace)
    try:
        exec(code, namespace)
    except BaseException:
        namespace.clear()
        namespace.update(saved)
        raise


def _same_code_shape(old: FunctionType, new: FunctionType) -> bool:
    return not old.__code__.co_freevars and not new.__code__.co_freevars


def _move_code(old: FunctionType, new: FunctionType) -> None:
    old.__code__ = new.__code__
    old.__defaults__ = new.__defaults__
    old.__kwdefaults__ = new.__kwdefaults__
    old.__doc__ = new.__doc__
    old.__dict__.update(new.__dict__)


def reload(module: ModuleType | str) -> ReloadReport:
    """Reload ``module`` (a module or its name) and move its live instances and references to the new code.

    Raises:
        ValueError: ``module`` names a module that is not loaded.
        Exception: whatever the new source raised; the module is then left as it was.
    """
    module = _resolve(module)
    name = module.__name__
    old_items = dict(vars(module))
    _reexecute(module)
    new_items = vars(module)
    report = ReloadReport(name)

    classes: dict[type, type] = {}
    functions: dict[FunctionType, FunctionType] = {}
    for attr, old in old_items.items():
        new = new_items.get(attr)
        if isinstance(old, type) and old.__module__ == name:
            if new is old:
                continue
            if not isinstance(new, type):
                report.problems.append(f"class {attr} is gone from the new source: its instances keep it")
            elif issubclass(old, enum.Enum):
                report.problems.append(f"enum {attr}: existing members keep the old class")
            else:
                classes[old] = new
        elif isinstance(old, FunctionType) and old.__module__ == name and new is not old:
            if isinstance(new, FunctionType):
                functions[old] = new
            else:
                report.problems.append(f"function {attr} is gone from the new source: references keep it")

    _move_instances(classes, report)
    _rebase_subclasses(classes, report)
    _update_functions(classes, functions, report)
    _update_references(module, {**classes, **functions}, report)
    return report


def _move_instances(classes: dict[type, type], report: ReloadReport) -> None:
    failed: dict[str, str] = {}
    for obj in gc.get_objects():
        new = classes.get(type(obj))
        if new is None:
            continue
        try:
            obj.__class__ = new
        except TypeError as exc:
            failed.setdefault(new.__qualname__, str(exc))
        else:
            report.instances += 1
    report.classes = sorted(old.__qualname__ for old in classes)
    for qualname, reason in failed.items():
        report.problems.append(f"some instances of {qualname} keep the old class: {reason}")


def _rebase_subclasses(classes: dict[type, type], report: ReloadReport) -> None:
    for old, new in classes.items():
        subclasses: list[type] = old.__subclasses__()
        for sub in subclasses:
            if sub in classes or sub is new:
                continue
            try:
                sub.__bases__ = tuple(new if base is old else base for base in sub.__bases__)
            except TypeError as exc:
                report.problems.append(
                    f"subclass {sub.__qualname__} still derives from the old {old.__qualname__}: {exc}"
                )


def _update_functions(
    classes: dict[type, type], functions: dict[FunctionType, FunctionType], report: ReloadReport
) -> None:
    for old, new in functions.items():
        if _same_code_shape(old, new):
            _move_code(old, new)
            report.functions.append(old.__qualname__)
        else:
            report.problems.append(
                f"function {old.__qualname__} has a closure: references made earlier keep the old code"
            )
    for old_class, new_class in classes.items():
        for attr, old_value in vars(old_class).items():
            new_value = vars(new_class).get(attr)
            if (
                isinstance(old_value, FunctionType)
                and isinstance(new_value, FunctionType)
                and _same_code_shape(old_value, new_value)
            ):
                _move_code(old_value, new_value)
                report.functions.append(old_value.__qualname__)


def _update_references(module: ModuleType, replacements: dict[Any, Any], report: ReloadReport) -> None:
    if not replacements:
        return
    by_id = {id(old): (old, new) for old, new in replacements.items()}
    for other in list(sys.modules.values()):
        namespace = getattr(other, "__dict__", None)
        if other is module or not isinstance(namespace, dict):
            continue
        for key, value in list(namespace.items()):
            pair = by_id.get(id(value))
            if pair is not None and pair[0] is value:
                namespace[key] = pair[1]
                report.references += 1
