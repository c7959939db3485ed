"""Declarative command-line options: what a plugin and the ``tapster`` command line declare and parse.

An :class:`Options` subclass lists its ``parameters`` (options taking a value), ``flags`` (options that are
present or not) and ``subcommands`` as class attributes, and may add ``opt_NAME`` methods for options that
need code (Twisted's method options; mixins contribute theirs through ordinary inheritance). After
:meth:`Options.parse_options` the instance is a mapping from each declared long name to its value.

The scanner is hand-written rather than delegated to :mod:`argparse`, because the rules users expect from
twistd do not fit argparse's model: the first positional naming a subcommand ends this level (everything
after it, options included, belongs to the subcommand), and short flags group with a final short parameter
that takes the next argument (``-noy app.tac``). It is also cheaper to import and run, which matters for
start-up time.

Nothing here prints or exits: a bad command line raises :class:`~tapster.errors.UsageError` carrying the
program name and usage line, and ``--help`` raises :class:`~tapster.errors.HelpRequested` carrying the help.
"""

from __future__ import annotations

import collections.abc
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

from tapster._options_table import _canonical, _check_coercer, _Option, _positional_params, _Table, _table_for
from tapster.errors import HelpRequested, TapsterError, UsageError

__all__ = ["Options"]

_WIDTH = 100  # help text is wrapped to this many columns
_MAX_INVOCATION = 30  # wider option invocations put their help on the next line


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _looks_like_option(token: str) -> bool:
    """Whether ``token`` may not serve as the next-argument value of a parameter (argparse's rule)."""
    return token.startswith("-") and token != "-" and not _is_number(token)


def _suggest(word: str, candidates: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean --{close[0]}?)" if close else ""


def _wrap(text: str, width: int, indent: str = "") -> list[str]:
    """Wrap lines longer than ``width``, keeping line breaks and indentation the author chose."""
    import textwrap

    out: list[str] = []
    for line in text.splitlines():
        if len(indent) + len(line) <= width:
            out.append(indent + line if line else "")
            continue
        lead = line[: len(line) - len(line.lstrip())]
        out.extend(textwrap.wrap(line, width, initial_indent=indent, subsequent_indent=indent + lead))
    return out


class Options(collections.abc.MutableMapping[str, Any]):
    """Base class of a command line: declare options as class attributes, then call :meth:`parse_options`.

    Attributes:
        parameters: ``(long, short or None, default, help[, coercer])`` for options taking a value. The
            coercer (``int``, ``float`` or any callable raising ValueError or TypeError) converts the given
            string; a default is converted only when it is a string.
        flags: ``(long, short or None, help)`` for options that are ``False`` unless given.
        subcommands: ``(name, shortcut or None, options factory, help)``, read through
            :meth:`get_subcommands`.
        default_subcommand: the subcommand used when no positional argument is given.
        synopsis: replaces the generated usage line.
        description: shown in the help above the options.
        long_description: shown in the help after the options and subcommands.
        prog: the program name used in messages; a subcommand's is ``"<parent prog> <name>"``.
        subcommand: the subcommand's name after parsing, or None.
        sub_options: the subcommand's parsed options, or None.
        parent: the options whose subcommand this is, or None.

    Method options: ``def opt_NAME(self, value)`` is an option ``--NAME VALUE`` (underscores in NAME may be
    given as dashes), ``def opt_NAME(self)`` one without a value. Each is called in command-line order, as
    often as given; the first docstring line is its help. A one-letter NAME is a short option, and one
    function bound to several ``opt_`` names makes them synonyms. A method named like a declared parameter or
    flag is called with the raw value instead of the value being stored.

    The class attributes are read once per class, on first use.
    """

    parameters: ClassVar[Sequence[tuple[Any, ...]]] = ()
    flags: ClassVar[Sequence[tuple[Any, ...]]] = ()
    subcommands: ClassVar[Sequence[tuple[Any, ...]]] = ()
    default_subcommand: ClassVar[str | None] = None
    synopsis: ClassVar[str | None] = None
    description: ClassVar[str] = ""
    long_description: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Check the coercers this class declares when the class is defined, so the author sees the mistake."""
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("parameters", ())
        if isinstance(declared, tuple | list):
            for spec in declared:
                _check_coercer(cls, spec)

    def __init__(self, prog: str = "tapster") -> None:
        """Set every declared parameter and flag to its default.

        Raises:
            TypeError: the class declares an option badly (wrong tuple shape, a name used twice, ...).
            UsageError: a string default is rejected by its coercer.
        """
        self.prog = prog
        self.subcommand: str | None = None
        self.sub_options: Options | None = None
        self.parent: Options | None = None
        self._values: dict[str, Any] = {}
        self._args: list[str] = []
        self._subcommand_lookup: dict[str, tuple[str, Callable[[], Options]]] | None = None
        for opt in _table_for(type(self)).options:
            if opt.key is not None:
                default = opt.default
                if isinstance(default, str) and opt.coercer is not None:
                    default = self._coerce(opt, default)
                self._values[opt.key] = default

    # -- the mapping: declared long name -> value ------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._values[key] = value

    def __delitem__(self, key: str) -> None:
        del self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._values!r})"

    # -- hooks for subclasses --------------------------------------------------------------------------------

    def post_options(self) -> None:
        """Check the parsed options as a whole; raise UsageError(message) to reject the command line."""

    def parse_args(self, *args: str) -> None:
        """Receive the positional arguments; the default accepts none.

        Raises:
            UsageError: any argument was given.
        """
        if not args:
            return
        names = [name for name, *_ in self.get_subcommands()]
        if names:
            import difflib

            close = difflib.get_close_matches(args[0], names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"unknown subcommand {args[0]!r}{hint}")
        raise UsageError(f"too many arguments: {', '.join(map(repr, args))}")

    def get_subcommands(self) -> Sequence[tuple[Any, ...]]:
        """Return the subcommands as ``(name, shortcut, options factory, help)``; override to compute them.

        Called at most once per parse, and only when a positional argument or a default subcommand needs it.
        """
        return self.subcommands

    def unknown_subcommand(self, name: str, rest: list[str]) -> None:
        """Handle a positional argument that names no subcommand; by default it goes to :meth:`parse_args`.

        Args:
            name: the argument.
            rest: the arguments after it. Parsing of this level continues with what the hook leaves in this
                list, unless the hook started a subcommand (see :meth:`parse_subcommand`), which ends it.
        """
        self._args.append(name)

    def parse_subcommand(self, name: str, factory: Callable[[], Options], rest: Sequence[str]) -> None:
        """Make ``factory()`` the subcommand ``name`` and let it parse ``rest``."""
        sub = factory()
        sub.prog = f"{self.prog} {name}"
        sub.parent = self
        self.subcommand = name
        self.sub_options = sub
        sub.parse_options(rest)

    # -- parsing ---------------------------------------------------------------------------------------------

    def parse_options(self, argv: Sequence[str]) -> None:
        """Parse ``argv`` (without the program name), call the hooks, and fill in the mapping.

        Order: options and ``opt_`` methods in command-line order; the subcommand, which parses the rest;
        :meth:`parse_args` (skipped when a subcommand was given and no positional came before it); then
        :meth:`post_options`.

        Raises:
            UsageError: the command line is wrong; ``prog`` and ``usage`` are set.
            HelpRequested: ``--help`` or ``-h`` was given at this level.
        """
        table = _table_for(type(self))
        self._args = []
        self._subcommand_lookup = None
        self.subcommand = None
        self.sub_options = None
        args = list(argv)
        i = 0
        while i < len(args):
            token = args[i]
            i += 1
            if token == "--":
                self._args.extend(args[i:])
                break
            if token.startswith("--"):
                i = self._parse_long(table, token, args, i)
            elif (
                token.startswith("-")
                and token != "-"
                and (token[1] in table.by_short or not _is_number(token))
            ):
                i = self._parse_shorts(table, token, args, i)
            else:
                entry = self._find_subcommand(token)
                if entry is not None:
                    self.parse_subcommand(entry[0], entry[1], args[i:])
                    break
                rest = args[i:]
                self._call(self.unknown_subcommand, token, rest)
                if self.sub_options is not None:
                    break
                args, i = rest, 0

        if self.sub_options is None and not self._args and self.default_subcommand is not None:
            entry = self._find_subcommand(self.default_subcommand)
            if entry is None:
                raise TypeError(f"{type(self).__name__}.default_subcommand names no subcommand")
            self.parse_subcommand(entry[0], entry[1], [])
        if self.sub_options is None or self._args:
            self._call_parse_args()
        self._call(self.post_options)

    def _parse_long(self, table: _Table, token: str, args: list[str], i: int) -> int:
        name, eq, value = token[2:].partition("=")
        if name == "help":
            if eq:
                raise self._error("--help takes no value")
            raise HelpRequested(self.format_help())
        opt = table.by_long.get(_canonical(name))
        if opt is None:
            raise self._error(f"unrecognized option: --{name}{_suggest(name, self._long_names(table))}")
        if not opt.takes_value:
            if eq:
                raise self._error(f"{opt.display} takes no value")
            self._apply(opt, None)
            return i
        if not eq:
            if i >= len(args) or _looks_like_option(args[i]):
                raise self._error(f"{opt.display}: expected one argument")
            value = args[i]
            i += 1
        self._apply(opt, value)
        return i

    def _parse_shorts(self, table: _Table, token: str, args: list[str], i: int) -> int:
        for j in range(1, len(token)):
            letter = token[j]
            if letter == "h":
                raise HelpRequested(self.format_help())
            opt = table.by_short.get(letter)
            if opt is None:
                hint = _suggest(token[1:], self._long_names(table)) if len(token) > 2 else ""
                raise self._error(f"unrecognized option: -{letter}{hint}")
            if not opt.takes_value:
                if token[j + 1 : j + 2] == "=":
                    raise self._error(f"{opt.display} takes no value")
                self._apply(opt, None)
                continue
            value = token[j + 1 :]
            if value.startswith("="):
                value = value[1:]
            elif not value:
                if i >= len(args) or _looks_like_option(args[i]):
                    raise self._error(f"{opt.display}: expected one argument")
                value = args[i]
                i += 1
            self._apply(opt, value)
            break
        return i

    def _apply(self, opt: _Option, value: str | None) -> None:
        if opt.method is not None:
            method = getattr(self, opt.method)
            try:
                if opt.takes_value:
                    method(value)
                else:
                    method()
            except UsageError as err:
                raise self._fill(err) from None
            except ValueError as err:
                raise self._error(f"{opt.display}: {err}") from err
        elif opt.key is not None:
            self._values[opt.key] = self._coerce(opt, value) if opt.takes_value else True

    def _coerce(self, opt: _Option, value: Any) -> Any:
        if opt.coercer is None:
            return value
        try:
            return opt.coercer(value)
        except (ValueError, TypeError, ArithmeticError) as err:
            if isinstance(err, TapsterError):
                message = str(err)
            elif isinstance(opt.coercer, type):
                message = f"invalid {opt.coercer.__name__} value {value!r}"
            else:
                message = str(err) or f"invalid value {value!r}"
            raise self._error(f"{opt.display}: {message}") from err

    def _find_subcommand(self, name: str) -> tuple[str, Callable[[], Options]] | None:
        if self._subcommand_lookup is None:
            lookup: dict[str, tuple[str, Callable[[], Options]]] = {}
            for spec in self.get_subcommands():
                cmd, shortcut, factory = spec[:3]
                lookup[cmd] = (cmd, factory)
                if shortcut:
                    lookup.setdefault(shortcut, (cmd, factory))
            self._subcommand_lookup = lookup
        return self._subcommand_lookup.get(name)

    def _call_parse_args(self) -> None:
        args = self._args
        try:
            self.parse_args(*args)
        except TypeError as err:
            if err.__traceback__ is None or err.__traceback__.tb_next is not None:
                raise  # raised inside parse_args: a bug, not a wrong argument count
            raise self._error(self._arity_message(args)) from None
        except UsageError as err:
            raise self._fill(err) from None

    def _arity_message(self, args: Sequence[str]) -> str:
        params = _positional_params(type(self).parse_args)
        if params is not None:
            names, required, star = params
            if len(args) < required:
                return f"missing argument: {' '.join(n.upper() for n in names[len(args) : required])}"
            if star is None and len(args) > len(names):
                return f"too many arguments: {', '.join(map(repr, args[len(names) :]))}"
        return f"wrong number of arguments: {len(args)}"

    def _call(self, hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except UsageError as err:
            raise self._fill(err) from None

    def _fill(self, err: UsageError) -> UsageError:
        if err.prog is None:
            err.prog = self.prog
        if err.usage is None:
            err.usage = self.format_usage()
        return err

    def _error(self, message: str) -> UsageError:
        return UsageError(message, prog=self.prog, usage=self.format_usage())

    @staticmethod
    def _long_names(table: _Table) -> list[str]:
        return [long for opt in table.options for long in opt.longs] + ["help"]

    # -- help ------------------------------------------------------------------------------------------------

    def format_usage(self) -> str:
        """Return the one usage line, e.g. ``Usage: tapster fastpoetry [options]``."""
        if self.synopsis:
            return self.synopsis
        usage = f"Usage: {self.prog} [options]"
        if self.get_subcommands():
            usage += " COMMAND ..."
        parse_args = type(self).parse_args
        params = _positional_params(parse_args)
        if parse_args is not Options.parse_args and params is not None:
            names, required, star = params
            words = [n.upper() for n in names[:required]] + [f"[{n.upper()}]" for n in names[required:]]
            if star is not None:
                words.append(f"[{star.upper()} ...]")
            usage += "".join(f" {word}" for word in words)
        return usage

    def format_help(self) -> str:
        """Return the full help: usage, description, every option, the subcommands, the long description."""
        lines = [self.format_usage(), ""]
        if self.description:
            lines += [*_wrap(self.description.strip(), _WIDTH), ""]
        rows: list[tuple[str, str]] = []
        for opt in _table_for(type(self)).options:
            rows.append((self._invocation(opt), self._option_help(opt)))
        rows.append(("-h, --help", "Show this help and exit."))
        lines += ["Options:", *self._table_lines(rows), ""]
        subcommands = self.get_subcommands()
        if subcommands:
            rows = [
                (f"{cmd}, {short}" if short else cmd, help_ or "") for cmd, short, _, help_ in subcommands
            ]
            lines += ["Commands:", *self._table_lines(rows), ""]
        if self.long_description:
            lines += [*_wrap(self.long_description.strip("\n").rstrip(), _WIDTH), ""]
        return "\n".join(lines).rstrip("\n") + "\n"

    @staticmethod
    def _invocation(opt: _Option) -> str:
        # an opt_ method's name has underscores only because Python needs them; show it as users type it
        longs = (
            [long.replace("_", "-") for long in opt.longs] if opt.method and opt.key is None else opt.longs
        )
        names = [f"-{s}" for s in opt.shorts] + [f"--{long}" for long in longs]
        text = ", ".join(names) if opt.shorts else "    " + ", ".join(names)
        if opt.takes_value:
            metavar = (
                opt.metavar
                or _canonical(opt.longs[0] if opt.longs else opt.shorts[0]).replace("-", "_").upper()
            )
            text += f"={metavar}" if opt.longs else f" {metavar}"
        return text

    @staticmethod
    def _option_help(opt: _Option) -> str:
        text = opt.help.strip()
        if opt.takes_value and opt.key is not None and opt.default is not None:
            shown = "''" if opt.default == "" else str(opt.default)
            # non-breaking spaces keep "[default: X]" on one line when the help wraps
            marker = f"[default:\u00a0{shown.replace(' ', chr(0xA0))}]"
            text = f"{text} {marker}" if text else marker
        return text

    @staticmethod
    def _table_lines(rows: list[tuple[str, str]]) -> list[str]:
        import textwrap

        column = min(max(len(left) for left, _ in rows), _MAX_INVOCATION)
        indent = " " * (2 + column + 2)
        lines: list[str] = []
        for left, text in rows:
            wrapped = textwrap.wrap(
                text, _WIDTH - len(indent), break_on_hyphens=False, break_long_words=False
            ) or [""]
            if len(left) > column:
                lines.append(f"  {left}")
                lines += [indent + part for part in wrapped if part]
            else:
                lines.append(f"  {left.ljust(column)}  {wrapped[0]}".rstrip())
                lines += [indent + part for part in wrapped[1:]]
        return [line.replace("\u00a0", " ") for line in lines]
