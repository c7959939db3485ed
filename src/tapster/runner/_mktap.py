"""``tapster mktap PLUGIN [plugin options]``: build a plugin's application and save it, without running it.

Seed 002's workflow: twistd's ``mktap`` wrote ``PLUGIN.tap`` and ``twistd -f PLUGIN.tap`` ran it, so a
deployment could be configured once and started many times. The file is the same saved state a ``-f`` run writes
at shutdown (``tapster.persist``: atomic, mode 0600, never through a planted link, an allow-list on loading).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from tapster.errors import UsageError
from tapster.runner._options import ServerOptions

__all__ = ["MktapOptions", "run_mktap"]


class MktapOptions(ServerOptions):
    """``tapster mktap [--output FILE] PLUGIN [plugin options]``: tapster's plugins, none of its run options."""

    synopsis = "Usage: tapster mktap [options] PLUGIN [plugin options]"
    description = (
        "Build a plugin's application without running it and save it as PLUGIN.tap; "
        "run it later with: tapster -f PLUGIN.tap"
    )
    parameters = (("output", None, None, "Write the application here instead of PLUGIN.tap."),)  # type: ignore[assignment]
    flags = ()  # type: ignore[assignment]  # none of the run's flags

    opt_version = None  # type: ignore[assignment]  # the run's options do not apply to building a file
    opt_help_reactors = None  # type: ignore[assignment]

    def parse_options(self, argv: Sequence[str]) -> None:
        self._parse_options(argv)

    def post_options(self) -> None:
        if self.subcommand is None:
            raise UsageError("give the plugin to build: tapster mktap PLUGIN [plugin options]")


def run_mktap(options: MktapOptions) -> str:
    """Build and save the application the parsed options name; return the line to print.

    Raises:
        PluginError: the plugin failed to make its service.
        StateNotSaved: the tree cannot be pickled or the file written (one line naming what and where).
    """
    from tapster.persist import save_state
    from tapster.plugin import build_application
    from tapster.runner._appload import use_launch_directory

    assert options.service_maker is not None and options.sub_options is not None  # post_options checked
    use_launch_directory()
    root = build_application(options.service_maker, options.sub_options)
    path = options["output"] or f"{options.subcommand}.tap"
    save_state(root, path)
    return (
        f"Saved the {options.subcommand} application to {path}; run it with: tapster -f {shlex.quote(path)}"
    )
