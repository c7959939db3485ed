"""Turning the command line into the root service: ``-y FILE``, ``-f FILE`` or a plugin, through one function.

The ``sys.path`` rule, the only place tapster changes ``sys.path`` (docs/running.md, "Where modules are found"):
the launch directory goes first, once, for every run, as ``python -m`` does, so a project's ``tapster/plugins/``
folder and its modules are found, and classes a saved state names can be imported again; ``-y FILE`` also puts
the file's directory in front of that, so a tac file imports the modules beside it. Both stay for the whole
run: a service may import lazily, and a save at stop pickles classes from those modules.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import TYPE_CHECKING, Any

from tapster.errors import AppLoadError

if TYPE_CHECKING:  # both imported when used: plugin discovery for --help calls use_launch_directory()
    from tapster.runner._options import ServerOptions
    from tapster.service import Service

__all__ = ["load_application_file", "load_root", "use_launch_directory"]


def use_launch_directory() -> None:
    """Put the working directory (where tapster was started) first on ``sys.path``, unless it is there already."""
    cwd = os.getcwd()
    if not any(os.path.abspath(entry or os.curdir) == cwd for entry in sys.path):
        sys.path.insert(0, cwd)


def load_root(options: ServerOptions) -> Service:
    """The root service the parsed global options name: a tac file, a saved state, or a plugin's application.

    Raises:
        AppLoadError: the file cannot be loaded (one line naming it and why).
        PluginError: the plugin failed to make its service.
    """
    use_launch_directory()
    if options["python"]:
        return load_application_file(options["python"])
    if options["file"]:
        from tapster.persist import load_state

        return load_state(options["file"], trust_any_owner=options["trust-state-file"])
    from tapster.plugin import build_application

    assert options.service_maker is not None and options.sub_options is not None  # post_options checked
    return build_application(options.service_maker, options.sub_options)


def load_application_file(path: str) -> Service:
    """Run the application file at ``path`` and return its ``application`` variable.

    The file's directory goes first on ``sys.path`` and stays there for the run (the module's ``sys.path`` rule),
    so a tac file can import the modules that sit beside it (seed 004's ``reverse_app.py`` imports ``reverse``).

    Raises:
        AppLoadError: the file cannot be read, does not compile (message has file:line), raises while running,
            defines no ``application``, or its ``application`` is not a Service.
    """
    try:
        with open(path, "rb") as handle:
            source = handle.read()
    except OSError as exc:
        raise AppLoadError(f"cannot read application file {path}: {exc.strerror or exc}") from exc
    try:
        code = compile(source, path, "exec")
    except SyntaxError as exc:
        where = f"{exc.filename or path}:{exc.lineno}" if exc.lineno else path
        raise AppLoadError(f"syntax error in {where}: {exc.msg}") from exc
    except ValueError as exc:  # null bytes and the like
        raise AppLoadError(f"cannot compile application file {path}: {exc}") from exc
    namespace: dict[str, Any] = {"__file__": os.path.abspath(path), "__name__": "__tapster_application__"}
    directory = os.path.dirname(os.path.abspath(path))
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        exec(code, namespace)
    except SystemExit as exc:
        raise AppLoadError(f"application file {path} called sys.exit({exc.code!r}) while loading") from exc
    except (
        BaseException
    ) as exc:  # KeyboardInterrupt or a bare BaseException raised by the file is its error too
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        from tapster._extras import install_hint

        hint = install_hint(exc)
        raise AppLoadError(f"error in application file {_where(exc, path)}: {message}{hint}") from exc
    if "application" not in namespace:
        raise AppLoadError(f"application file {path} defines no 'application' variable")
    application = namespace["application"]
    from tapster.service import Service

    if not isinstance(application, Service):
        raise AppLoadError(
            f"'application' in {path} is {_article(type(application).__qualname__)}, not a tapster Service "
            "(make it tapster.Application(NAME))"
        )
    return application


def _where(exc: BaseException, path: str) -> str:
    """``path:line`` of the deepest frame of ``exc`` that ran in the application file itself."""
    target = os.path.abspath(path)
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.path.abspath(frame.filename) == target:
            line = frame.lineno
    return f"{path}:{line}" if line else path


def _article(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"
