"""No credential in clear text: not in the parsed options, not in the service tree, not in what is pickled."""

from __future__ import annotations

import asyncio
import pickle

from tapster.plugin import build_application, make_options
from tapster.plugins.manhole import manhole

PASSWORD = "S3cretPassw0rd"


def test_options_and_tree_hold_no_clear_password(tmp_path):
    """`tapster manhole --auth memory:admin:PASSWORD`: the options keep checkers, not the spec; the tree pickles
    (as saved state is written) with a hash instead of the password, and the loaded tree accepts it."""
    options = make_options(manhole)
    options.parse_options(
        ["--ssh", "tcp:0:interface=127.0.0.1", "--auth", f"memory:admin:{PASSWORD}", "--host-key",
         str(tmp_path / "k")]
    )  # fmt: skip
    assert PASSWORD not in repr(options)
    assert all(PASSWORD not in repr(value) for value in dict(options).values())
    app = build_application(manhole, options)
    data = pickle.dumps(app)
    assert PASSWORD.encode() not in data
    loaded = pickle.loads(data)
    authenticator = loaded["manhole"].authenticator
    assert asyncio.run(authenticator.attempts("127.0.0.1").password("admin", PASSWORD))
    assert not asyncio.run(authenticator.attempts("127.0.0.1").password("admin", PASSWORD + "x"))
