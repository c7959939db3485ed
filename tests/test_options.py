"""Tests for tapster.options: declarative parsing, method options, subcommands, errors and help."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tapster.errors import EndpointError, HelpRequested, UsageError
from tapster.options import Options


class PoetryOptions(Options):
    description = "Serve a poem to anyone who connects."
    parameters = [
        ("port", "p", 10000, "The port number to listen on.", int),
        ("poem", None, None, "The file containing the poem."),
        ("iface", None, "localhost", "The interface to listen on."),
    ]


class ServerOptions(Options):
    flags = [("nodaemon", "n", "Don't daemonize."), ("no_save", "o", "Don't save state on shutdown.")]
    parameters = [
        ("python", "y", None, "Read the application from this Python file."),
        ("service-port", None, "80", "Port of the service.", int),
        ("logfile", "l", None, "Log to this file."),
        ("offset", None, 0, "An offset.", int),
    ]


class GlobalOptions(ServerOptions):
    synopsis = "Usage: tapster [options] PLUGIN ..."
    subcommands = [("fastpoetry", "fp", PoetryOptions, "A fast poetry server.")]
    long_description = "Plugins are listed above."


class AuthMixin:
    """Stands in for the auth mixin: contributes an opt_ method through inheritance."""

    def opt_auth(self, value: str) -> None:
        """Add a credential checker, e.g. memory:alice:secret."""
        if ":" not in value:
            raise ValueError(f"no checker type in {value!r}")
        calls = self.setdefault("calls", [])  # type: ignore[attr-defined]
        calls.append(("auth", value))


class MethodOptions(Options, AuthMixin):
    flags = [("quiet", "q", "Say less.")]

    def opt_log_level(self, value: str) -> None:
        """Set the log level."""
        self.setdefault("calls", []).append(("log-level", value))

    def opt_verbose(self) -> None:
        """Say more; repeat for even more."""
        self.setdefault("calls", []).append(("verbose", None))

    opt_v = opt_verbose

    def opt_strict(self) -> None:
        raise UsageError("strict mode is not available here")


def parse(options_class: type[Options], argv: Sequence[str], prog: str = "tapster") -> Any:
    options = options_class(prog)
    options.parse_options(argv)
    return options


def usage_error(options_class: type[Options], argv: Sequence[str], prog: str = "tapster") -> UsageError:
    with pytest.raises(UsageError) as info:
        parse(options_class, argv, prog)
    return info.value


def help_text(options_class: type[Options], argv: Sequence[str] = ("--help",), prog: str = "tapster") -> str:
    with pytest.raises(HelpRequested) as info:
        parse(options_class, argv, prog)
    return info.value.text


# -- defaults and option forms -------------------------------------------------------------------------------


def test_defaults_present_without_arguments() -> None:
    """Every parameter and flag key is present after an empty parse, flags False."""
    options = parse(ServerOptions, [])
    assert dict(options) == {
        "python": None,
        "service-port": 80,
        "logfile": None,
        "offset": 0,
        "nodaemon": False,
        "no_save": False,
    }


def test_string_default_is_coerced_other_defaults_kept() -> None:
    """A str default goes through the coercer; a non-str default (None, an int) is kept as is."""
    options = ServerOptions()
    assert options["service-port"] == 80
    assert options["python"] is None
    assert options["offset"] == 0


def test_bad_string_default_names_option() -> None:
    """A str default the coercer rejects fails at construction, naming the option and the value."""

    class Broken(Options):
        parameters = [("port", None, "eighty", "A port.", int)]

    with pytest.raises(UsageError, match=r"^--port: invalid int value 'eighty'$"):
        Broken()


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "10001"],
        ["--port=10001"],
        ["-p", "10001"],
        ["-p10001"],
        ["-p=10001"],
        ["--port", "1", "-p10001"],
    ],
)
def test_parameter_forms(argv: list[str]) -> None:
    """Long, long=, short, attached short and short= forms all set the coerced value; the last one wins."""
    options = parse(PoetryOptions, argv)
    assert options["port"] == 10001
    assert options["iface"] == "localhost"


def test_flags_and_grouped_shorts() -> None:
    """Short flags group, and a final short parameter in the group takes the next argument (-noy app.tac)."""
    options = parse(ServerOptions, ["-noy", "echo.tac"])
    assert (options["nodaemon"], options["no_save"], options["python"]) == (True, True, "echo.tac")


def test_grouped_short_parameter_takes_rest_of_token() -> None:
    """A short parameter inside a group takes the rest of the token when there is one."""
    options = parse(ServerOptions, ["-nyecho.tac"])
    assert (options["nodaemon"], options["python"]) == (True, "echo.tac")


@pytest.mark.parametrize("spelling", ["--no-save", "--no_save"])
def test_underscore_declared_name_accepts_both_separators(spelling: str) -> None:
    """A name declared with an underscore is accepted with a dash too; the key stays as declared."""
    assert parse(ServerOptions, [spelling])["no_save"] is True


@pytest.mark.parametrize("spelling", ["--service-port", "--service_port"])
def test_dashed_declared_name_accepts_both_separators(spelling: str) -> None:
    """A name declared with a dash is accepted with an underscore too; the key stays as declared."""
    options = parse(ServerOptions, [spelling, "8080"])
    assert options["service-port"] == 8080
    assert "service_port" not in options


def test_dash_and_negative_number_are_values() -> None:
    """'-' (stdout/stdin) and a negative number are taken as a parameter's next-argument value."""
    options = parse(ServerOptions, ["--logfile", "-", "--offset", "-5"])
    assert (options["logfile"], options["offset"]) == ("-", -5)


def test_explicit_value_may_look_like_option() -> None:
    """With --name=value the value is taken verbatim, even when it starts with a dash."""
    assert parse(ServerOptions, ["--logfile=--weird"])["logfile"] == "--weird"


# -- errors --------------------------------------------------------------------------------------------------


def test_invalid_int_message_prog_and_usage() -> None:
    """A value the int coercer rejects gives "--port: invalid int value 'x'" with prog and usage set."""
    err = usage_error(PoetryOptions, ["--port", "x"], prog="tapster fastpoetry")
    assert str(err) == "--port: invalid int value 'x'"
    assert err.prog == "tapster fastpoetry"
    assert err.usage == "Usage: tapster fastpoetry [options]"


def test_invalid_value_given_by_short_names_long_option() -> None:
    """An invalid value given through the short form names the option by its long form."""
    assert str(usage_error(PoetryOptions, ["-px"])) == "--port: invalid int value 'x'"


def test_callable_coercer_message_is_used() -> None:
    """A non-type coercer raising ValueError with a message gives "--name: message"."""

    def port_number(text: str) -> int:
        number = int(text)
        if not 0 <= number < 65536:
            raise ValueError(f"port out of range: {number}")
        return number

    class Opts(Options):
        parameters = [("port", None, 0, "A port.", port_number)]

    assert str(usage_error(Opts, ["--port", "70000"])) == "--port: port out of range: 70000"


def test_coercer_without_message_names_value() -> None:
    """A coercer raising TypeError or ValueError without a message gives "invalid value 'x'"."""

    def picky(text: str) -> str:
        raise TypeError

    class Opts(Options):
        parameters = [("mode", None, None, "A mode.", picky)]

    assert str(usage_error(Opts, ["--mode=x"])) == "--mode: invalid value 'x'"


def test_coercer_type_raising_tapster_error_keeps_message() -> None:
    """A coercer class raising a tapster error (written for users) keeps its message."""

    class Endpoint:
        def __init__(self, text: str) -> None:
            raise EndpointError(f"no endpoint type in {text!r}")

    class Opts(Options):
        parameters = [("listen", None, None, "Where to listen.", Endpoint)]

    assert str(usage_error(Opts, ["--listen", "x"])) == "--listen: no endpoint type in 'x'"


def test_unrecognized_long_option_suggests_close_match() -> None:
    """An unknown long option is named, with a did-you-mean suggestion when one is close."""
    err = usage_error(PoetryOptions, ["--prot", "1"])
    assert str(err) == "unrecognized option: --prot (did you mean --port?)"
    assert err.prog == "tapster"


def test_unrecognized_option_without_close_match() -> None:
    """An unknown option with nothing close is named without a suggestion."""
    assert str(usage_error(PoetryOptions, ["--zzzzzz"])) == "unrecognized option: --zzzzzz"


def test_unrecognized_short_option() -> None:
    """An unknown letter inside a short group is named on its own."""
    assert str(usage_error(ServerOptions, ["-nq"])) == "unrecognized option: -q"


def test_single_dash_long_option_suggests_double_dash() -> None:
    """-nodaemon fails on the first unknown letter and suggests --nodaemon."""
    err = usage_error(ServerOptions, ["-nodaemon"])
    assert str(err) == "unrecognized option: -d (did you mean --nodaemon?)"


@pytest.mark.parametrize("argv", [["--port"], ["-p"], ["--port", "--iface", "x"], ["--port", "--"]])
def test_missing_value(argv: list[str]) -> None:
    """A parameter at the end, or followed by an option, is missing its value."""
    assert str(usage_error(PoetryOptions, argv)) == "--port: expected one argument"


@pytest.mark.parametrize("argv", [["--nodaemon=1"], ["-n=1"]])
def test_flag_given_a_value(argv: list[str]) -> None:
    """A flag given an explicit value is rejected, naming the flag."""
    assert str(usage_error(ServerOptions, argv)) == "--nodaemon takes no value"


def test_errors_never_print_or_exit(capsys: pytest.CaptureFixture[str]) -> None:
    """Errors and help are raised, never printed or turned into SystemExit."""
    with pytest.raises(UsageError):
        parse(PoetryOptions, ["--bogus"])
    with pytest.raises(HelpRequested):
        parse(PoetryOptions, ["--help"])
    assert capsys.readouterr() == ("", "")


# -- positional arguments, parse_args, post_options ----------------------------------------------------------


class CopyOptions(Options):
    flags = [("force", "f", "Overwrite.")]

    def parse_args(self, source: str, dest: str = ".", *extra: str) -> None:  # type: ignore[override]
        self["source"], self["dest"], self["extra"] = source, dest, extra


def test_parse_args_receives_positionals_mixed_with_options() -> None:
    """Positional arguments reach parse_args in order, options may come between them."""
    options = parse(CopyOptions, ["a", "-f", "b", "c"])
    assert (options["source"], options["dest"], options["extra"], options["force"]) == (
        "a",
        "b",
        ("c",),
        True,
    )


def test_double_dash_ends_options() -> None:
    """After --, everything is positional, dashes included; '-' alone is always positional."""
    options = parse(CopyOptions, ["-", "--", "-f", "--help"])
    assert (options["source"], options["dest"], options["extra"], options["force"]) == (
        "-",
        "-f",
        ("--help",),
        False,
    )


def test_negative_number_is_positional() -> None:
    """A negative number that is not a short option is a positional argument."""
    assert parse(CopyOptions, ["-5"])["source"] == "-5"


def test_parse_args_missing_argument() -> None:
    """Too few positionals name the missing argument."""
    err = usage_error(CopyOptions, ["-f"])
    assert str(err) == "missing argument: SOURCE"
    assert err.usage == "Usage: tapster [options] SOURCE [DEST] [EXTRA ...]"


def test_parse_args_too_many_arguments() -> None:
    """Too many positionals for a fixed parse_args name the extra ones."""

    class One(Options):
        def parse_args(self, name: str) -> None:  # type: ignore[override]
            self["name"] = name

    assert str(usage_error(One, ["a", "b", "c"])) == "too many arguments: 'b', 'c'"


def test_default_parse_args_rejects_arguments() -> None:
    """The default parse_args accepts no positional argument and names the ones given."""
    assert str(usage_error(PoetryOptions, ["poem.txt", "x"])) == "too many arguments: 'poem.txt', 'x'"


def test_type_error_inside_parse_args_is_not_masked() -> None:
    """A TypeError raised inside parse_args is a bug and propagates unchanged."""

    class Buggy(Options):
        def parse_args(self, *args: str) -> None:
            len(5)  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="has no len"):
        parse(Buggy, ["a"])


def test_usage_error_from_parse_args_gets_prog() -> None:
    """A UsageError raised by parse_args without prog gets prog and usage filled in."""

    class Strict(Options):
        def parse_args(self, *args: str) -> None:
            raise UsageError("no files please")

    err = usage_error(Strict, ["x"], prog="tapster strict")
    assert (str(err), err.prog, err.usage) == (
        "no files please",
        "tapster strict",
        "Usage: tapster strict [options] [ARGS ...]",
    )


class CheckedOptions(PoetryOptions):
    flags = [("ssl", None, "Use TLS.")]
    parameters = [*PoetryOptions.parameters, ("certificate", None, None, "TLS certificate file.")]

    def post_options(self) -> None:
        if self["ssl"] and not self["certificate"]:
            raise UsageError("--ssl needs --certificate")


def test_post_options_cross_check() -> None:
    """post_options sees all values and its UsageError gets prog and usage filled in."""
    err = usage_error(CheckedOptions, ["--ssl"], prog="tapster fastpoetry")
    assert (str(err), err.prog, err.usage) == (
        "--ssl needs --certificate",
        "tapster fastpoetry",
        "Usage: tapster fastpoetry [options]",
    )
    assert parse(CheckedOptions, ["--ssl", "--certificate", "c.pem"])["certificate"] == "c.pem"


def test_post_options_keeps_prog_already_set() -> None:
    """A UsageError that already carries prog and usage is not overwritten."""

    class Own(Options):
        def post_options(self) -> None:
            raise UsageError("own", prog="other", usage="Usage: other")

    err = usage_error(Own, [])
    assert (err.prog, err.usage) == ("other", "Usage: other")


def test_post_options_runs_after_parse_args() -> None:
    """The hooks run in order: options, parse_args, post_options."""

    class Ordered(Options):
        flags = [("x", None, "x")]

        def parse_args(self, *args: str) -> None:
            self["order"] = [("args", args, self["x"])]

        def post_options(self) -> None:
            self["order"].append("post")

    assert parse(Ordered, ["a", "--x"])["order"] == [("args", ("a",), True), "post"]


# -- method options ------------------------------------------------------------------------------------------


def test_method_options_repeat_in_command_line_order() -> None:
    """opt_ methods (own and from a mixin) are called once per occurrence, in command-line order."""
    options = parse(
        MethodOptions, ["--auth", "a:1", "-q", "--log-level=debug", "--auth=b:2", "--verbose", "-vv"]
    )
    assert options["calls"] == [
        ("auth", "a:1"),
        ("log-level", "debug"),
        ("auth", "b:2"),
        ("verbose", None),
        ("verbose", None),
        ("verbose", None),
    ]
    assert options["quiet"] is True


def test_method_option_accepts_underscore_spelling() -> None:
    """An opt_ method with an underscore is reachable with a dash or an underscore."""
    assert parse(MethodOptions, ["--log_level", "info"])["calls"] == [("log-level", "info")]


def test_method_option_value_error_names_option() -> None:
    """A ValueError from an opt_ method becomes a UsageError naming the option."""
    err = usage_error(MethodOptions, ["--auth", "nope"])
    assert str(err) == "--auth: no checker type in 'nope'"
    assert err.prog == "tapster"


def test_method_option_usage_error_gets_prog() -> None:
    """A UsageError from an opt_ method keeps its message and gets prog filled in."""
    err = usage_error(MethodOptions, ["--strict"], prog="tapster x")
    assert (str(err), err.prog) == ("strict mode is not available here", "tapster x")


def test_method_option_missing_value_and_flag_value() -> None:
    """Method options follow the same value rules as declared ones."""
    assert str(usage_error(MethodOptions, ["--auth"])) == "--auth: expected one argument"
    assert str(usage_error(MethodOptions, ["--verbose=2"])) == "--verbose takes no value"


def test_method_named_like_declared_parameter_receives_raw_value() -> None:
    """An opt_ method named like a declared parameter gets its raw values; default and short still apply."""

    class Opts(Options):
        parameters = [("port", "p", 80, "The port.", int)]

        def opt_port(self, value: str) -> None:
            self["port"] = int(value) + 1

    assert parse(Opts, [])["port"] == 80
    assert parse(Opts, ["-p", "8000"])["port"] == 8001


def test_method_option_with_help_request() -> None:
    """An opt_ method may raise HelpRequested itself (e.g. --version)."""

    class Opts(Options):
        def opt_version(self) -> None:
            """Show the version."""
            raise HelpRequested("tapster 1.0\n")

    with pytest.raises(HelpRequested, match=r"tapster 1\.0"):
        parse(Opts, ["--version"])


# -- subcommands ---------------------------------------------------------------------------------------------


def test_subcommand_splits_arguments() -> None:
    """Options before the subcommand go to this level, everything after it to the sub-options."""
    options = parse(GlobalOptions, ["-n", "fastpoetry", "--port", "1"])
    assert options["nodaemon"] is True
    assert options.subcommand == "fastpoetry"
    sub = options.sub_options
    assert isinstance(sub, PoetryOptions)
    assert dict(sub) == {"port": 1, "poem": None, "iface": "localhost"}
    assert sub.prog == "tapster fastpoetry"
    assert sub.parent is options


def test_subcommand_shortcut() -> None:
    """A subcommand's shortcut selects it under its full name."""
    options = parse(GlobalOptions, ["fp"])
    assert options.subcommand == "fastpoetry"
    assert options.sub_options is not None
    assert options.sub_options["port"] == 10000


def test_no_subcommand_leaves_attributes_unset() -> None:
    """Without a subcommand, subcommand and sub_options stay None."""
    options = parse(GlobalOptions, ["-n"])
    assert (options.subcommand, options.sub_options) == (None, None)


def test_option_after_subcommand_belongs_to_it() -> None:
    """An option of this level given after the subcommand is the subcommand's error, with its prog."""
    err = usage_error(GlobalOptions, ["fastpoetry", "-n"])
    assert (str(err), err.prog) == ("unrecognized option: -n", "tapster fastpoetry")


def test_parameter_value_is_not_taken_as_subcommand() -> None:
    """A parameter's value that happens to name a subcommand is still the value."""
    options = parse(GlobalOptions, ["--logfile", "fastpoetry"])
    assert (options["logfile"], options.subcommand) == ("fastpoetry", None)


def test_nested_subcommands() -> None:
    """Subcommands nest; each level's prog extends its parent's."""

    class Leaf(Options):
        flags = [("dry-run", "d", "Change nothing.")]

    class Middle(Options):
        subcommands = [("leaf", None, Leaf, "The leaf.")]

    class Top(Options):
        subcommands = [("middle", "m", Middle, "The middle.")]

    top = parse(Top, ["m", "leaf", "-d"])
    middle = top.sub_options
    assert middle is not None
    leaf = middle.sub_options
    assert leaf is not None
    assert (top.subcommand, middle.subcommand, leaf["dry-run"], leaf.prog) == (
        "middle",
        "leaf",
        True,
        "tapster middle leaf",
    )


def test_default_subcommand() -> None:
    """default_subcommand is used when no positional argument is given."""

    class Opts(Options):
        subcommands = [("run", None, PoetryOptions, "Run."), ("stop", None, Options, "Stop.")]
        default_subcommand = "run"

    options = parse(Opts, [])
    assert options.subcommand == "run"
    assert parse(Opts, ["stop"]).subcommand == "stop"


def test_unknown_subcommand_default_message() -> None:
    """An unknown subcommand name reaches parse_args, whose default error suggests a close name."""
    err = usage_error(GlobalOptions, ["fastpoet"])
    assert str(err) == "unknown subcommand 'fastpoet' (did you mean 'fastpoetry'?)"


def test_unknown_name_goes_to_overridden_parse_args() -> None:
    """With subcommands declared, a name matching none is a positional argument for parse_args."""

    class Opts(GlobalOptions):
        def parse_args(self, *args: str) -> None:
            self["args"] = args

    assert parse(Opts, ["x", "-n", "y"])["args"] == ("x", "y")


def test_dynamic_subcommands_read_lazily() -> None:
    """get_subcommands supplies subcommands at parse time, and is not called when no positional is given."""
    calls: list[str] = []

    class Dynamic(Options):
        flags = [("nodaemon", "n", "Don't daemonize.")]

        def get_subcommands(self) -> Sequence[tuple[Any, ...]]:
            calls.append("get")
            return [("fastpoetry", None, PoetryOptions, "Poetry.")]

    parse(Dynamic, ["-n"])
    assert calls == []
    options = parse(Dynamic, ["fastpoetry", "-p", "5"])
    assert options.sub_options is not None
    assert options.sub_options["port"] == 5
    assert calls == ["get"]


def test_unknown_subcommand_hook_can_raise() -> None:
    """unknown_subcommand may reject a name; its UsageError gets prog and usage."""

    class Plugins(GlobalOptions):
        def unknown_subcommand(self, name: str, rest: list[str]) -> None:
            raise UsageError(f"unknown plugin {name!r}")

    err = usage_error(Plugins, ["-n", "nosuch", "--port", "1"])
    assert (str(err), err.prog, err.usage) == (
        "unknown plugin 'nosuch'",
        "tapster",
        "Usage: tapster [options] PLUGIN ...",
    )


def test_unknown_subcommand_hook_can_start_subcommand() -> None:
    """unknown_subcommand may start a subcommand itself (e.g. a plugin found late), which takes the rest."""

    class Plugins(GlobalOptions):
        def unknown_subcommand(self, name: str, rest: list[str]) -> None:
            self.parse_subcommand(name, lambda: PoetryOptions(), rest)

    options = parse(Plugins, ["late", "--port", "2"])
    assert options.subcommand == "late"
    assert options.sub_options is not None
    assert (options.sub_options["port"], options.sub_options.prog) == (2, "tapster late")


def test_unknown_subcommand_hook_can_consume_arguments() -> None:
    """Parsing continues with what the hook leaves in rest."""

    class Eating(ServerOptions):
        def unknown_subcommand(self, name: str, rest: list[str]) -> None:
            self["eaten"] = (name, rest.pop(0))

    options = parse(Eating, ["set", "--not-an-option", "-n"])
    assert (options["eaten"], options["nodaemon"]) == (("set", "--not-an-option"), True)


# -- help ----------------------------------------------------------------------------------------------------


def test_help_lists_options_defaults_and_description() -> None:
    """--help raises HelpRequested with usage, description, each option's forms, metavar, help and default."""
    text = help_text(PoetryOptions, prog="tapster fastpoetry")
    lines = text.splitlines()
    assert lines[0] == "Usage: tapster fastpoetry [options]"
    assert "Serve a poem to anyone who connects." in text
    port = next(line for line in lines if "--port" in line)
    assert port.split() == [
        "-p,",
        "--port=PORT",
        "The",
        "port",
        "number",
        "to",
        "listen",
        "on.",
        "[default:",
        "10000]",
    ]
    poem = next(line for line in lines if "--poem" in line)
    assert "default" not in poem
    assert "The file containing the poem." in poem
    assert "[default: localhost]" in text
    assert "-h, --help" in text


def test_help_lists_flags_methods_subcommands_and_long_description() -> None:
    """Help lists flags, opt_ methods with their docstring's first line, subcommands, long_description."""
    text = help_text(GlobalOptions)
    assert text.startswith("Usage: tapster [options] PLUGIN ...\n")
    assert "-n, --nodaemon" in text
    assert "--service-port=SERVICE_PORT" in text
    assert "[default: 80]" in text
    commands = text.index("Commands:")
    assert "fastpoetry, fp  A fast poetry server." in text[commands:]
    assert text.rstrip().endswith("Plugins are listed above.")
    methods = help_text(MethodOptions)
    assert "--auth=AUTH" in methods
    assert "Add a credential checker, e.g. memory:alice:secret." in methods
    assert "-v, --verbose" in methods


def test_help_wraps_to_100_columns() -> None:
    """Long help texts and descriptions are wrapped so no line exceeds 100 columns."""

    class Wordy(Options):
        description = "word " * 60
        parameters = [("a-very-long-option-name-indeed", "a", None, "blah " * 50)]
        flags = [("x", None, "more " * 40)]

    text = help_text(Wordy)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert text.count("blah") == 50


@pytest.mark.parametrize("argv", [["-h"], ["-nh"], ["-n", "--help", "--bogus"], ["--port", "1", "--help"]])
def test_help_anywhere_at_this_level(argv: list[str]) -> None:
    """-h, --help, or h inside a short group ask for this level's help, before later errors are seen."""

    class Opts(ServerOptions):
        parameters = [*ServerOptions.parameters, ("port", "p", 1, "Port.", int)]

    assert help_text(Opts, argv).startswith("Usage: tapster [options]")


def test_help_comes_before_post_options() -> None:
    """A help request wins over a post_options error."""
    assert "--certificate" in help_text(CheckedOptions, ["--ssl", "--help"])


def test_help_after_subcommand_is_the_subcommands() -> None:
    """--help after a subcommand gives the subcommand's help under its prog."""
    assert help_text(GlobalOptions, ["-n", "fastpoetry", "--help"]).startswith(
        "Usage: tapster fastpoetry [options]"
    )


def test_format_usage_variants() -> None:
    """The usage line is generated from prog, subcommands and parse_args, unless synopsis overrides it."""
    assert PoetryOptions("tapster fastpoetry").format_usage() == "Usage: tapster fastpoetry [options]"
    assert GlobalOptions().format_usage() == "Usage: tapster [options] PLUGIN ..."

    class Cmds(Options):
        subcommands = GlobalOptions.subcommands

    assert Cmds("prog").format_usage() == "Usage: prog [options] COMMAND ..."


# -- mapping and declarations --------------------------------------------------------------------------------


def test_mapping_behaviour() -> None:
    """Options is a mutable mapping of the declared long names."""
    options = parse(PoetryOptions, ["--poem", "poem.txt"])
    assert dict(options) == {"port": 10000, "poem": "poem.txt", "iface": "localhost"}
    assert len(options) == 3
    assert list(options) == ["port", "poem", "iface"]
    assert "poem" in options
    assert options.get("nothing") is None
    options["extra"] = 1
    del options["iface"]
    assert dict(options) == {"port": 10000, "poem": "poem.txt", "extra": 1}
    assert repr(options) == "PoetryOptions({'port': 10000, 'poem': 'poem.txt', 'extra': 1})"
    with pytest.raises(KeyError):
        options["iface"]


def test_instances_do_not_share_values() -> None:
    """Two instances of one class keep separate values."""
    first = parse(PoetryOptions, ["-p", "1"])
    second = parse(PoetryOptions, [])
    assert (first["port"], second["port"]) == (1, 10000)


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"flags": [("x", None, "x"), ("x", None, "again")]}, "declared twice"),
        ({"flags": [("no_save", None, "x"), ("no-save", None, "again")]}, "declared twice"),
        ({"flags": [("a", "q", "x"), ("b", "q", "again")]}, "declared twice"),
        ({"flags": [("help", None, "x")]}, "reserved"),
        ({"flags": [("x", "h", "x")]}, "reserved"),
        ({"flags": [("x", "xy", "x")]}, "bad short"),
        ({"parameters": [("x", None, "x")]}, "is not"),
        ({"parameters": ["port"]}, "is not"),
        ({"flags": [(None, "x", "x")]}, "bad long"),
        ({"opt_two": lambda self, a, b: None}, "at most one argument"),
    ],
)
def test_bad_declarations_raise_type_error(attrs: dict[str, Any], message: str) -> None:
    """A malformed class declaration raises TypeError when the class is first used."""
    cls = type("Bad", (Options,), attrs)
    with pytest.raises(TypeError, match=message):
        cls()


def test_import_is_light() -> None:
    """Importing tapster.options adds no argparse, difflib, textwrap or dataclasses (start-up time)."""
    code = (
        "import sys, tapster; before = set(sys.modules); import tapster.options; "
        "print(*sorted({'argparse', 'difflib', 'textwrap', 'dataclasses'} & (set(sys.modules) - before)))"
    )
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = {**os.environ, "PYTHONPATH": src}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == ""


_TOKENS = st.sampled_from(
    [
        "-n",
        "-noy",
        "-h",
        "--port",
        "-p",
        "--port=",
        "--",
        "-",
        "-5",
        "fastpoetry",
        "fp",
        "--auth",
        "--logfile",
        "--no-save=1",
        "-o",
        "-y",
        "x:y",
        "--verbose",
        "-v",
        "--strict",
        "--log_level",
        "--offset",
        "-1e3",
        "=",
    ]
)


class FuzzOptions(GlobalOptions, AuthMixin):
    """Global options with method options too, for the property test below."""


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_TOKENS, st.text(max_size=8)), max_size=8))
def test_any_command_line_gives_result_usage_error_or_help(argv: list[str]) -> None:
    """Whatever the command line, parsing succeeds or raises UsageError (with prog) or HelpRequested."""
    outcome: Exception | None = None
    try:
        parse(FuzzOptions, argv)
    except (UsageError, HelpRequested) as err:
        outcome = err
    if isinstance(outcome, UsageError):
        assert (outcome.prog, outcome.usage) != (None, None)
        assert str(outcome)
    elif isinstance(outcome, HelpRequested):
        assert outcome.text.startswith("Usage: ")


@pytest.mark.parametrize("coercer", ["int", 3, ["int"]])
def test_a_coercer_that_cannot_be_called_is_a_type_error_when_the_class_is_defined(coercer: object) -> None:
    """A plugin author's mistake is a TypeError at class definition naming the class, the option and the value,
    not a usage error shown to the user at parse time."""
    with pytest.raises(
        TypeError, match=r"Bad\.parameters: the coercer of 'port' is .*, which is not callable"
    ):

        class Bad(Options):
            parameters = [("port", "p", "80", "the port", coercer)]


def test_a_non_callable_coercer_set_after_the_class_is_defined_is_still_a_type_error() -> None:
    """Parameters assigned to the class later are checked when the option table is first built."""

    class Late(Options):
        pass

    Late.parameters = [("port", "p", None, "the port", "int")]
    with pytest.raises(TypeError, match=r"Late\.parameters: the coercer of 'port' is 'int'"):
        Late().parse_options(["--port", "8"])


def test_a_none_coercer_is_allowed_and_keeps_the_text() -> None:
    class Plain(Options):
        parameters = [("name", "n", None, "a name", None)]

    options = Plain()
    options.parse_options(["--name", "x"])
    assert options["name"] == "x"
