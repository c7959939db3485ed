"""Hypothesis fuzzing of every parser that reads user input: only the documented errors may come out.

The parsers: endpoint strings (server and client), the global command line, the ``tapster ctl`` command line,
each plugin's option list, ``--auth`` specs, and saved-state files (a damaged header, a truncated file). For each,
an input either parses or raises the documented :class:`~tapster.errors.TapsterError` subclass with a one-line
message (the CLI prints it as one line, exit 1 or 2); any other exception is what a user would see as a traceback,
and is counted as a crash.

Unlike an ordinary ``@given`` test, a crash does not stop the run: every input is tried, the crashes are counted,
and the figure recorded is "N cases, K crashes" (the smallest crashing inputs are shown on failure). CI runs a
modest number of cases per parser; the long run (bench/reliability.py) runs at least 20,000 per parser.

The endpoint strategies are those of tests/test_endpoints_property.py (which runs hypothesis' default 100 cases
on every test run); this file runs them at the suite's scale and counts.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conftest import EXAMPLES
from reliability.conftest import LONG, Figures, scale
from tapster.endpoints import parse_client, parse_server
from tapster.errors import AppLoadError, EndpointError, HelpRequested, TapsterError
from test_endpoints_property import (
    CLIENT_KEYS,
    CLIENT_TYPE_KEYS,
    CLIENT_TYPES,
    SERVER_KEYS,
    SERVER_TYPE_KEYS,
    SERVER_TYPES,
    descriptions,
    near_valid,
)

CASES = scale(400, 20_000)
"""Cases per parser: a fraction of a second each in CI, >= 20,000 in the long run."""


class Crashes:
    """The inputs that raised something other than the documented errors, smallest first."""

    def __init__(self) -> None:
        self.cases = 0
        self.found: list[tuple[int, str, str]] = []

    def add(self, value: object, exc: BaseException) -> None:
        shown = repr(value)
        self.found.append((len(shown), shown, f"{type(exc).__name__}: {exc}"))

    def __len__(self) -> int:
        return len(self.found)

    def smallest(self, count: int = 5) -> list[str]:
        return [f"{value} -> {error}" for _, value, error in sorted(self.found)[:count]]


def fuzz(
    figures: Figures,
    parser: str,
    strategy: st.SearchStrategy[Any],
    check: Callable[[Any], None],
    *,
    cases: int = CASES,
) -> None:
    """Run ``check`` on ``cases`` inputs drawn from ``strategy``; record and assert "0 crashes".

    ``check`` returns normally for an accepted input or a documented error, and raises for anything else.
    """
    crashes = Crashes()

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        derandomize=not LONG,  # CI: the same inputs every run; the long run explores new ones each time
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(value: Any) -> None:
        crashes.cases += 1
        try:
            check(value)
        except Exception as exc:
            crashes.add(value, exc)

    run()
    figures.record(
        f"fuzzing: {parser}",
        f"{crashes.cases:,} cases, {len(crashes)} crashes",
        f">= {cases:,} cases, 0 crashes",
        not crashes and crashes.cases >= cases,
    )
    assert not crashes, crashes.smallest()
    assert crashes.cases >= cases, f"hypothesis ran only {crashes.cases} of {cases} cases"


def one_line(exc: TapsterError, given: str | list[str] | bytes) -> None:
    """The CLI shows a TapsterError's message as one line, so tapster must never put a line break in one.

    A message that echoes an argument holding a newline carries the user's line break, not tapster's: such
    input is not judged here (it is reported separately, see docs/reliability.md).
    """
    parts = given if isinstance(given, list) else [given]
    if any("\n" in part if isinstance(part, str) else False for part in parts):
        return
    if "\n" in str(exc):
        raise AssertionError(f"{type(exc).__name__} message spans lines: {str(exc)!r}")


# -- endpoints -------------------------------------------------------------------------------------------------


def endpoint_check(parse: Callable[[str], object]) -> Callable[[str], None]:
    def check(description: str) -> None:
        try:
            parse(description)
        except EndpointError as exc:
            one_line(exc, description)
            if not str(exc).startswith(f"invalid endpoint {description!r}: "):
                raise AssertionError(f"message does not name the string: {exc}") from None

    return check


def test_fuzz_server_endpoints(figures: Figures) -> None:
    """Server endpoint strings (random text and description-shaped): an endpoint or EndpointError."""
    strategy = st.one_of(st.text(), descriptions(SERVER_TYPES, SERVER_KEYS), near_valid(SERVER_TYPE_KEYS))
    fuzz(figures, "server endpoint strings", strategy, endpoint_check(parse_server))


def test_fuzz_client_endpoints(figures: Figures) -> None:
    """Client endpoint strings (random text and description-shaped): an endpoint or EndpointError."""
    strategy = st.one_of(st.text(), descriptions(CLIENT_TYPES, CLIENT_KEYS), near_valid(CLIENT_TYPE_KEYS))
    fuzz(figures, "client endpoint strings", strategy, endpoint_check(parse_client))


# -- files the parsers may be pointed at ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Files of every kind an option may name: good, malformed, binary, a directory, a link, missing ones."""
    root = tmp_path_factory.mktemp("fuzzfiles")
    (root / "users").write_text("admin:secret\n# comment\nbob:$6$salt$hash\n")
    (root / "badlines").write_text("no colon here\n:empty user\nx:$zz$unknown\n")
    (root / "binary").write_bytes(bytes(range(256)) * 4)
    (root / "empty").write_text("")
    (root / "keys").mkdir()
    (root / "keys" / "admin.keys").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGarbage admin\n")
    (root / "link").symlink_to(root / "users")
    for path in root.rglob("*"):
        path.chmod(0o700 if path.is_dir() and not path.is_symlink() else 0o600)
    names = [
        "users",
        "badlines",
        "binary",
        "empty",
        "keys",
        "keys/admin.keys",
        "link",
        "missing",
        "keys/none",
    ]
    return {name: str(root / name) for name in names}


def auth_specs(files: dict[str, str]) -> st.SearchStrategy[str]:
    """``--auth`` specs: each type with well-formed and junk arguments, escapes, case changes, random text."""
    kinds = ["anonymous", "file", "memory", "passwd", "sshkey", "unix", "ANONYMOUS", " memory", "file ", "x"]
    junk = st.text(max_size=12)
    path = st.one_of(st.sampled_from(sorted(files.values())), junk)
    pairs = st.lists(st.sampled_from(["admin", "b\\:ob", "", "pw", "x\\", "\\\\", "é", "admin"]), max_size=6)
    args = st.one_of(path, pairs.map(":".join), junk)
    spec = st.builds(
        lambda kind, colon, rest: kind + (":" + rest if colon else ""),
        st.sampled_from(kinds),
        st.booleans(),
        args,
    )
    return st.one_of(spec, st.text())


def test_fuzz_auth_specs(files: dict[str, str], figures: Figures) -> None:
    """`--auth` specs: a checker, a UsageError naming the spec, or (for a file that is there but unsafe or unusable:
    a directory, a link) a one-line TapsterError (exit 1); never another exception."""
    from tapster.auth import parse_auth

    def check(spec: str) -> None:
        try:
            parse_auth(spec)
        except TapsterError as exc:
            one_line(exc, spec)

    fuzz(figures, "--auth specs", auth_specs(files), check)


# -- command lines -----------------------------------------------------------------------------------------------


def importable(module: str) -> bool:
    """Whether ``module`` names a module that is not imported yet but could be (importing it may do anything)."""
    if module in sys.modules:
        return False
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def harmless(value: str) -> bool:
    """A random value that, given to ``--namespace MODULE:ATTR``, imports nothing new (``antigravity`` opens a
    browser); tapster's own import of the module is not what is being fuzzed."""
    return ":" not in value or not importable(value.partition(":")[0])


def values(files: dict[str, str]) -> st.SearchStrategy[str]:
    """Option values: typical good and bad ones, the prepared files, --auth specs, and random text."""
    typical = [
        "0", "1", "-1", "022", "0o22", "999", "8", "nan", "inf", "-inf", "1e400", "0x10", "", " ", "-", "--",
        "text", "json", "cprofile", "profile", "asyncio", "uvloop", "nosuchloop", "root", "nobody", "0:0",
        "tcp:0:interface=127.0.0.1", "tcp:99999", "unix:/nonexistent/dir/sock", "os:environ", "json:__all__",
        "tapster:nosuch", "nosuchmodule_zz:x", "x.tac", "state.tap", "/", "/nonexistent", "\x00", "\udc80",
    ]  # fmt: skip
    return st.one_of(
        st.sampled_from(typical),
        st.sampled_from(sorted(files.values())),
        auth_specs(files).filter(harmless),
        st.text(max_size=10).filter(harmless),
    )


def tokens(
    long_names: list[str], short_letters: str, words: list[str], files: dict[str, str]
) -> st.SearchStrategy[list[str]]:
    """Command lines: known options (long, short, clustered, with ``=``), values, words, and junk tokens."""
    value = values(files)
    long = st.sampled_from(long_names)
    short = st.sampled_from(list(short_letters))
    token = st.one_of(
        long.map(lambda name: f"--{name}"),
        st.builds(lambda name, v: f"--{name}={v}", long, value),
        short.map(lambda letter: f"-{letter}"),
        st.builds(lambda letter, v: f"-{letter}{v}", short, value),
        st.lists(short, min_size=2, max_size=4).map(lambda letters: "-" + "".join(letters)),
        st.sampled_from(["--", "-", "--help", "-h", "--version", "--nosuch", "-Z", *words]),
        value,
    )
    return st.lists(token, max_size=8)


def option_names(options: Any) -> tuple[list[str], str]:
    """The long names (with method options) and short letters an Options instance accepts."""
    from tapster.options import _table_for

    table = _table_for(type(options))
    return sorted(table.by_long), "".join(sorted(table.by_short))


def test_fuzz_global_options(files: dict[str, str], figures: Figures) -> None:
    """The global command line (and a plugin's, after its name): a RunConfig or a TapsterError, one line."""
    from tapster.runner._options import ServerOptions

    long_names, short_letters = option_names(ServerOptions("tapster"))
    words = ["manhole", "ctl", "nosuchplugin", "app.tac"]

    def check(argv: list[str]) -> None:
        options = ServerOptions("tapster")
        try:
            options.parse_options(argv)
            options.run_config(os.getcwd())
        except HelpRequested:
            pass
        except TapsterError as exc:
            one_line(exc, argv)

    strategy = tokens(long_names, short_letters, words, files)
    fuzz(figures, "global option list (tapster [options] [PLUGIN [options]])", strategy, check)


def test_fuzz_ctl_options(files: dict[str, str], figures: Figures) -> None:
    """`tapster ctl` command lines (parsed only, nothing is signalled): parsed or a TapsterError, one line."""
    from tapster.runner._ctl import CtlOptions

    # The options live on the commands (`tapster ctl stop --timeout 5`); the words put them there.
    long_names, short_letters = ["pidfile", "timeout", "nosuch"], "h"
    words = ["status", "stop", "rotate", "reopen", "restart", "--timeout", "--pidfile"]

    def check(argv: list[str]) -> None:
        try:
            CtlOptions("tapster ctl").parse_options(argv)
        except HelpRequested:
            pass
        except TapsterError as exc:
            one_line(exc, argv)

    fuzz(figures, "`tapster ctl` option list", tokens(long_names, short_letters, words, files), check)


def plugin_makers() -> dict[str, Any]:
    """The built-in plugins and those of examples/, found as `tapster` finds them, loaded by name."""
    from tapster.plugin import discover_plugins

    plugins = discover_plugins([str(EXAMPLES)], entry_points=False, use_cache=False)
    makers = {}
    for name in plugins.names():
        try:
            makers[name] = plugins.load(name)
        except TapsterError:
            continue  # an example that needs its project on sys.path (myproject): not a parser to fuzz here
    return makers


@pytest.fixture(scope="module")
def makers() -> Iterator[dict[str, Any]]:
    before = set(sys.modules)
    yield plugin_makers()
    for name in set(sys.modules) - before:  # the plugin modules loaded under private names
        if name.startswith("_tapster_plugin_"):
            del sys.modules[name]


@pytest.mark.parametrize("plugin", ["manhole", "echo", "fastpoetry"])
def test_fuzz_plugin_options(
    plugin: str, makers: dict[str, Any], files: dict[str, str], figures: Figures
) -> None:
    """A plugin's option list, parsed as `tapster PLUGIN ...` does: parsed or a TapsterError, one line."""
    from tapster.plugin import make_options

    if plugin not in makers:
        pytest.fail(f"plugin {plugin} not found among {sorted(makers)}")
    maker = makers[plugin]
    long_names, short_letters = option_names(make_options(maker))

    def check(argv: list[str]) -> None:
        options = make_options(maker)
        options.prog = f"tapster {plugin}"
        try:
            options.parse_options(argv)
        except HelpRequested:
            pass
        except TapsterError as exc:
            one_line(exc, argv)

    strategy = tokens(long_names, short_letters or "h", [], files)
    fuzz(figures, f"`{plugin}` plugin option list", strategy, check)


# -- saved state -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_state(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a real saved state (an Application with a child service)."""
    from tapster import Application
    from tapster.persist import save_state
    from tapster.services import TimerService

    root = tmp_path_factory.mktemp("state")
    root.chmod(0o700)
    application = Application("fuzzed")
    TimerService(60, print).set_parent(application)
    save_state(application, str(root / "fuzzed-shutdown.tap"))
    return (root / "fuzzed-shutdown.tap").read_bytes()


def test_fuzz_saved_state_files(saved_state: bytes, tmp_path: Path, figures: Figures) -> None:
    """A .tap file with a damaged header or pickle, or truncated anywhere: loaded or AppLoadError, never a traceback."""
    from tapster.persist import load_state

    header, _, body = saved_state.partition(b"\n")
    path = tmp_path / "fuzzed.tap"
    tmp_path.chmod(0o700)

    def damaged_header(draw_bytes: bytes, position: int) -> bytes:
        mangled = bytearray(header + b"\n")
        mangled[position % len(mangled)] ^= draw_bytes[0] or 1
        return bytes(mangled) + draw_bytes[1:] + body

    def damaged_pickle(edits: list[tuple[int, int]]) -> bytes:
        start = saved_state.index(b"\x80")  # the pickle's PROTO opcode, after the header lines
        mangled = bytearray(saved_state)
        for position, value in edits:
            mangled[start + position % (len(mangled) - start)] = value
        return bytes(mangled)

    strategy = st.one_of(
        st.binary(max_size=64),  # no header at all
        st.lists(  # one to four bytes of the pickle itself changed
            st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
            min_size=1,
            max_size=4,
        ).map(damaged_pickle),
        st.builds(damaged_header, st.binary(min_size=1, max_size=16), st.integers(min_value=0)),
        st.integers(min_value=0, max_value=len(saved_state)).map(lambda n: saved_state[:n]),  # truncated
    )

    def check(data: bytes) -> None:
        path.write_bytes(data)
        path.chmod(0o600)
        try:
            load_state(str(path))
        except AppLoadError as exc:
            one_line(exc, data)

    fuzz(figures, "saved-state files (damaged header or pickle, truncated)", strategy, check)
