"""What a saved state may make the unpickler build: an allow-list checked before anything is imported or run.

A pickle is a program: its ``GLOBAL`` opcodes name any attribute of any module (``os.system``,
``builtins.exec``) and its ``REDUCE`` opcode calls what they name. Refusing foreign files (see
:mod:`tapster.persist`) is the first line of defence; this module is the second, so that even a file that
passes those checks (copied in by root, restored from a backup) cannot run code while it is being read.

The rules, applied to every global the pickle names, before its module is imported:

- a short list of plain values and containers: :data:`SAFE_GLOBALS` (``builtins.int``, ``builtins.dict``,
  ``collections.OrderedDict``, ``functools.partial``, ``datetime.datetime``, ...); no other name from
  ``builtins``, and no other standard-library module, ever (no ``os``, ``subprocess``, ``sys``, ``importlib``,
  ``io``, ``pickle``...);
- classes defined in tapster's own modules (``tapster.*``), not its functions;
- classes and functions defined in a module the file's header records (:func:`referenced_modules` wrote that list
  when the state was saved) that is not part of the standard library: the application's and the plugins' code;
- ``builtins.getattr``, which pickle uses for bound methods, is replaced by :func:`bound_method`: only a method
  (not a dunder) of an object already built, whose function comes from an allowed module.

And while loading, only classes are called (``REDUCE``, ``NEWOBJ``, ``INST``, ``OBJ``): a function or a bound
method can be stored in the state (a stream handler, a protocol factory) but never called by the unpickler, and
``BUILD`` never sets attributes on a class, a function or a module.
"""

from __future__ import annotations

import importlib
import pickle
import pickletools
import sys
import types
from collections.abc import Iterable
from typing import Any

__all__ = [
    "SAFE_GLOBALS",
    "StateRefused",
    "StateUnpickler",
    "bound_method",
    "referenced_globals",
    "referenced_modules",
]

SAFE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [
        *(
            ("builtins", name)
            for name in (
                "bool",
                "bytearray",
                "bytes",
                "complex",
                "dict",
                "float",
                "frozenset",
                "int",
                "list",
                "object",
                "set",
                "slice",
                "str",
                "tuple",
            )
        ),
        *(("collections", name) for name in ("Counter", "OrderedDict", "defaultdict", "deque")),
        *(("datetime", name) for name in ("date", "datetime", "time", "timedelta", "timezone")),
        ("decimal", "Decimal"),
        ("fractions", "Fraction"),
        ("functools", "partial"),
        *(
            ("ipaddress", f"IPv{version}{kind}")
            for version in (4, 6)
            for kind in ("Address", "Interface", "Network")
        ),
        *(("pathlib", name) for name in ("Path", "PosixPath", "PurePath", "PurePosixPath")),
        ("uuid", "SafeUUID"),
        ("uuid", "UUID"),
    ]
)
"""The globals any saved state may name: values and containers whose construction runs no outside code."""

_OWN_PREFIX = "tapster."
_PLUGIN_PREFIX = "_tapster_plugin_"


class StateRefused(pickle.UnpicklingError):
    """The state names or calls something the allow-list refuses; the message says what and why."""


def referenced_modules(data: bytes) -> list[str]:
    """The modules whose globals the pickle ``data`` names, sorted: the list a saved state's header records.

    Raises:
        ValueError: see :func:`referenced_globals`.
    """
    return sorted({module for module, _ in referenced_globals(data)})


def referenced_globals(data: bytes) -> set[tuple[str, str]]:
    """Every ``(module, name)`` global the pickle ``data`` names, read from its opcodes without running it.
    ``STACK_GLOBAL`` (protocol 4 and later) takes its module
       and name from the two strings pushed just before it, directly or from the memo.

       Raises:
           ValueError: a global whose module cannot be told from the opcodes (a pickle not written by ``pickle``).
    """
    found: set[tuple[str, str]] = set()
    memo: dict[int, object] = {}
    recent: list[object] = []  # the values of the last string pushes, cleared by any other opcode
    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            recent.append(arg)
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            recent.append(memo.get(int(str(arg))))
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(str(arg))] = recent[-1] if recent else None
        elif name == "FRAME":
            pass
        elif name == "STACK_GLOBAL":
            module, attribute = recent[-2:] if len(recent) >= 2 else (None, None)
            if not isinstance(module, str) or not isinstance(attribute, str):
                raise ValueError("a STACK_GLOBAL whose module and name are not strings pushed just before it")
            found.add((module, attribute))
            recent = []
        elif name in ("GLOBAL", "INST"):
            module, _, attribute = str(arg).partition(" ")
            found.add((module, attribute))
            recent = []
        else:
            recent = []
    return found


def is_standard_library(module: str) -> bool:
    """Whether ``module`` belongs to Python's standard library (by its top-level package)."""
    return module.partition(".")[0] in sys.stdlib_module_names


class StateUnpickler(pickle._Unpickler):
    """An unpickler that builds only what the allow-list admits (see the module's docstring).

    The pure-Python unpickler is used because its opcodes can be overridden: the C one calls whatever ``REDUCE``
    finds on its stack. A saved state is small and read once, so the speed does not matter.

    Args:
        file: The pickle, positioned after the header.
        recorded: The modules the header lists.
    """

    dispatch = dict(pickle._Unpickler.dispatch)
    stack: list[Any]  # the unpickler's working stack and its append, set by load()
    append: Any

    def __init__(self, file: Any, recorded: Iterable[str]) -> None:
        super().__init__(file)
        self.recorded = frozenset(recorded)

        def getattr_method(obj: object, name: str) -> Any:
            return bound_method(obj, name, self.allowed_module)

        self._getattr = getattr_method

    def find_class(self, module: str, name: str) -> Any:
        """Resolve ``module.name`` if the allow-list admits it, importing the module only then."""
        if (module, name) == ("builtins", "getattr"):
            return self._getattr
        if (module, name) in SAFE_GLOBALS:
            return getattr(importlib.import_module(module), name)
        where = _qualified(module, name)
        if module == "builtins":
            raise StateRefused(f"{where}: only plain values and containers are allowed from builtins")
        if is_standard_library(module):
            raise StateRefused(
                f"{where}: the standard library is allowed only for plain values and containers"
            )
        own = module == "tapster" or module.startswith(_OWN_PREFIX)
        if not own and module not in self.recorded:
            raise StateRefused(
                f"{where}: module {_module(module)} is not among those recorded when the state was saved"
            )
        value = _resolve(module, name)
        if isinstance(value, type):
            return value
        if isinstance(value, types.FunctionType) and not own:
            return value
        kind = "a function" if isinstance(value, types.FunctionType) else f"a {type(value).__name__}"
        raise StateRefused(f"{where}: it is {kind}; only classes are allowed from tapster's own modules")

    def allowed_module(self, module: str) -> bool:
        """Whether code from ``module`` may be named by this state (for a bound method's function)."""
        if module == "tapster" or module.startswith(_OWN_PREFIX):
            return True
        return module in self.recorded and not is_standard_library(module)

    def load_reduce(self) -> None:
        """``REDUCE``: call a class, or the getattr stand-in; refuse any other function or method."""
        args = self.stack.pop()
        func = self.stack[-1]
        if func is self._getattr:
            self.stack[-1] = func(*args)
            return
        if not isinstance(func, type):
            raise StateRefused(f"calling {_describe(func)} while loading; only classes are built")
        _check_arguments(func, args)
        self.stack[-1] = func(*args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        _require_class(cls)
        _check_arguments(cls, args)
        self.append(cls.__new__(cls, *args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        _require_class(cls)
        _check_arguments(cls, args)
        self.append(cls.__new__(cls, *args, **kwargs))

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST and OBJ (protocols 0 and 1)
        _require_class(klass)
        _check_arguments(klass, args)
        super()._instantiate(klass, args)  # type: ignore[misc]

    def load_build(self) -> None:
        target = self.stack[-2]
        if isinstance(target, type | types.FunctionType | types.MethodType | types.ModuleType):
            raise StateRefused(f"setting attributes on {_describe(target)}")
        super().load_build()  # type: ignore[misc]


def _override(table: dict[int, Any]) -> None:
    """Route the opcodes that call or build through :class:`StateUnpickler`'s checked versions."""
    table[pickle.REDUCE[0]] = StateUnpickler.load_reduce
    table[pickle.NEWOBJ[0]] = StateUnpickler.load_newobj
    table[pickle.NEWOBJ_EX[0]] = StateUnpickler.load_newobj_ex
    table[pickle.BUILD[0]] = StateUnpickler.load_build


_override(StateUnpickler.dispatch)


def bound_method(obj: object, name: str, allowed_module: Any) -> Any:
    """``getattr(obj, name)`` as pickle uses it for a bound method, and for nothing else.

    Raises:
        StateRefused: ``name`` is not a plain method name (a dunder, not a string), ``obj`` is a class or a
            module, the attribute is not a method bound to ``obj``, or its function comes from a module the
            allow-list does not admit.
    """
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("__"):
        raise StateRefused(f"getattr(..., {name!r}): only a method name is allowed")
    if isinstance(obj, type | types.ModuleType):
        raise StateRefused(f"getattr({_describe(obj)}, {name!r}): only methods of objects are allowed")
    method = getattr(obj, name)
    if not isinstance(method, types.MethodType) or method.__self__ is not obj:
        raise StateRefused(f"getattr({_describe(obj)}, {name!r}): it is not a method of that object")
    module = getattr(method.__func__, "__module__", None) or ""
    if not allowed_module(module):
        raise StateRefused(
            f"getattr({_describe(obj)}, {name!r}): its code is in {_module(module)}, which is not allowed"
        )
    return method


def _check_arguments(cls: type, args: Any) -> None:
    """Refuse ``bytes(n)``/``bytearray(n)``: a few bytes of pickle asking for gigabytes (a saved state stores
    bytes as bytes, never as a size)."""
    if issubclass(cls, bytes | bytearray) and args and isinstance(args[0], int):
        raise StateRefused(f"{cls.__name__}({args[0]}): building bytes from a size")


def _require_class(value: object) -> None:
    if not isinstance(value, type):
        raise StateRefused(f"building an object from {_describe(value)}, which is not a class")


def _resolve(module: str, name: str) -> Any:
    """Import ``module`` (a plugin module through plugin discovery) and walk ``name`` through classes only."""
    parts = name.split(".")
    where = _qualified(module, name)
    if not all(part.isidentifier() and not part.startswith("__") for part in parts):
        raise StateRefused(f"{where}: not a plain name")
    if module.startswith(_PLUGIN_PREFIX):
        from tapster.plugin import import_plugin_module

        loaded = import_plugin_module(module)
    else:
        loaded = importlib.import_module(module)
    value: Any = loaded
    for index, part in enumerate(parts):
        if index and not isinstance(value, type):
            raise StateRefused(f"{where}: {'.'.join(parts[:index])} is not a class")
        try:
            value = getattr(value, part)
        except AttributeError:
            message = f"{_module(module)} has no {name} (changed since the state was saved?)"
            raise AttributeError(message) from None
    defined_in = getattr(value, "__module__", None)
    if defined_in != loaded.__name__:
        raise StateRefused(f"{where}: it is defined in {_module(str(defined_in))}, not in {_module(module)}")
    return value


def _module(module: str) -> str:
    """A module as messages name it: a plugin module by its file, not by its private name."""
    if not module.startswith(_PLUGIN_PREFIX):
        return module
    from tapster._plugin_discovery import describe_module

    return describe_module(module)


def _qualified(module: str, name: str) -> str:
    """``module.name``, or ``name (plugin file x_plugin.py)`` for a plugin module's private name."""
    return f"{name} ({_module(module)})" if module.startswith(_PLUGIN_PREFIX) else f"{module}.{name}"


def _describe(value: object) -> str:
    if isinstance(value, type | types.FunctionType):
        return _qualified(value.__module__, value.__qualname__)
    if isinstance(value, types.MethodType):
        return f"method {value.__func__.__qualname__}"
    if isinstance(value, types.BuiltinFunctionType):
        owner = value.__module__ or type(value.__self__).__name__
        return f"{owner}.{value.__name__}"
    return f"a {type(value).__qualname__}"
