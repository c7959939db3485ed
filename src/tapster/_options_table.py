"""The declarations of an :class:`~tapster.options.Options` class, read once into a table the parser uses.

``parameters``, ``flags`` and ``opt_NAME`` methods (with their arities and coercers) become :class:`_Option`
rows, indexed by long name and short letter. Built once per class and cached; a mistake in a declaration (a
coercer that is not callable) is a ``TypeError`` for the author when the class is defined, not a usage error
for the user. options.py holds the scanner and the help text.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tapster.options import Options

__all__ = [
    "_Option",
    "_Table",
    "_canonical",
    "_check_coercer",
    "_first_line",
    "_positional_params",
    "_table_for",
]

_CO_VARARGS = 0x04  # code-object flag: the function takes *args


class _Option:
    """One option as the scanner sees it, whatever declared it (a tuple or ``opt_`` methods)."""

    def __init__(
        self,
        longs: list[str],
        shorts: list[str],
        takes_value: bool,
        help: str,
        key: str | None = None,
        default: Any = None,
        coercer: Callable[[str], Any] | None = None,
        method: str | None = None,
    ) -> None:
        self.longs = longs  # as declared (display form); looked up with dashes and underscores alike
        self.shorts = shorts
        self.takes_value = takes_value
        self.help = help
        self.key = key  # the mapping key; None for an option only an opt_ method handles
        self.default = default
        self.coercer = coercer
        self.method = method  # name of the opt_ method to call instead of storing the value
        self.metavar: str | None = None  # shown in help after the option; default: the option's name

    @property
    def display(self) -> str:
        """How error messages name the option: its first long form, else its short form."""
        return f"--{self.longs[0]}" if self.longs else f"-{self.shorts[0]}"


class _Table:
    """Every option of one :class:`Options` subclass, read from its declarations each time it is needed."""

    def __init__(self) -> None:
        self.options: list[_Option] = []
        self.by_long: dict[str, _Option] = {}  # keyed by the name with underscores turned into dashes
        self.by_short: dict[str, _Option] = {}


def _canonical(name: str) -> str:
    return name.replace("_", "-")


def _first_line(doc: str | None) -> str:
    for line in (doc or "").strip().splitlines():
        return line.strip()
    return ""


def _positional_params(func: Any) -> tuple[list[str], int, str | None] | None:
    """For a plain method: its positional parameter names after self, how many are required, its ``*args``."""
    if not isinstance(func, types.FunctionType):
        return None
    code = func.__code__
    names = list(code.co_varnames[1 : code.co_argcount])
    star = (
        code.co_varnames[code.co_argcount + code.co_kwonlyargcount] if code.co_flags & _CO_VARARGS else None
    )
    return names, len(names) - len(func.__defaults__ or ()), star


def _method_takes_value(owner: type, attr: str, func: Any) -> bool:
    """Whether an ``opt_`` method takes the option's value: it has a parameter besides self."""
    params = _positional_params(func)
    if params is None or (params[2] is not None and not params[0]):  # a wrapper: inspect follows __wrapped__
        import inspect

        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        found = list(inspect.signature(func).parameters.values())[1:]
        names = [p.name for p in found if p.kind in kinds]
        required = sum(1 for p in found if p.kind in kinds and p.default is p.empty)
        star = next((p.name for p in found if p.kind == inspect.Parameter.VAR_POSITIONAL), None)
        params = names, required, star
    names, required, star = params
    if required > 1:
        raise TypeError(f"{owner.__name__}.{attr} must take at most one argument besides self")
    return bool(names) or star is not None


def _check_coercer(cls: type, spec: Any) -> None:
    """A coercer that cannot be called is the plugin author's mistake: a TypeError for them, not a usage error
    shown to the person typing the command line."""
    if isinstance(spec, tuple | list) and len(spec) == 5 and spec[4] is not None and not callable(spec[4]):
        raise TypeError(
            f"{cls.__name__}.parameters: the coercer of {spec[0]!r} is {spec[4]!r}, which is not callable "
            "(give a type such as int, or a function)"
        )


def _table_for(cls: type[Options]) -> _Table:
    """Collect the declared tuples and ``opt_`` methods of ``cls``; a bad declaration raises TypeError."""
    options: list[_Option] = []
    for spec in cls.parameters:
        if not isinstance(spec, tuple | list) or len(spec) not in (4, 5):
            raise TypeError(
                f"{cls.__name__}.parameters: {spec!r} is not (long, short, default, help[, coercer])"
            )
        long, short, default, help_ = spec[:4]
        coercer = spec[4] if len(spec) == 5 else None
        _check_coercer(cls, spec)
        options.append(_Option([long], [short] if short else [], True, help_ or "", long, default, coercer))
    for spec in cls.flags:
        if not isinstance(spec, tuple | list) or len(spec) != 3:
            raise TypeError(f"{cls.__name__}.flags: {spec!r} is not (long, short, help)")
        long, short, help_ = spec
        options.append(_Option([long], [short] if short else [], False, help_ or "", long, False))

    declared = {_canonical(opt.longs[0]): opt for opt in options if isinstance(opt.longs[0], str)}
    by_function: dict[Any, _Option] = {}
    for attr in dir(cls):  # dir() is sorted and includes what mixins define
        if not attr.startswith("opt_") or len(attr) == 4:
            continue
        func = getattr(cls, attr)
        if not callable(func):
            continue
        name = attr[4:]
        takes_value = _method_takes_value(cls, attr, func)
        target = declared.get(_canonical(name))
        if target is not None:  # a method named like a declared option handles that option's values
            if target.takes_value != takes_value:
                raise TypeError(
                    f"{cls.__name__}.{attr} does not match the declared option --{target.longs[0]}"
                )
            target.method = attr
            target.help = target.help or _first_line(func.__doc__)
            by_function.setdefault(func, target)
            continue
        opt = by_function.get(func)  # `opt_l = opt_logfile` makes -l a synonym, as in Twisted
        if opt is None:
            opt = _Option([], [], takes_value, _first_line(func.__doc__), method=attr)
            params = _positional_params(func)
            # def opt_auth(self, spec) shows --auth=SPEC; a generic name (value, arg) shows the option's name
            if takes_value and params and params[0] and params[0][0] not in ("value", "arg", "argument"):
                opt.metavar = params[0][0].strip("_").upper()
            by_function[func] = opt
            options.append(opt)
        (opt.shorts if len(name) == 1 else opt.longs).append(name)

    table = _Table()
    for opt in options:
        if not opt.longs and not opt.shorts:
            raise TypeError(f"{cls.__name__}: an option has neither a long nor a short name")
        for long in opt.longs:
            if not isinstance(long, str) or not long or long.startswith("-"):
                raise TypeError(f"{cls.__name__}: bad long option name {long!r}")
            if _canonical(long) in table.by_long or _canonical(long) == "help":
                raise TypeError(f"{cls.__name__}: option --{long} is declared twice or is reserved")
            table.by_long[_canonical(long)] = opt
        for short in opt.shorts:
            if not isinstance(short, str) or len(short) != 1 or short in "-=":
                raise TypeError(f"{cls.__name__}: bad short option name {short!r}")
            if short in table.by_short or short == "h":
                raise TypeError(f"{cls.__name__}: option -{short} is declared twice or is reserved")
            table.by_short[short] = opt
        table.options.append(opt)
    return table
