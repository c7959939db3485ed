"""The manhole: a Python shell inside the running server, over SSH (asyncssh) and telnet.

Importing this package imports only the standard library and tapster's core; asyncssh is imported when a manhole
with SSH starts, prompt_toolkit and ptpython when a client with a terminal logs in.
"""

from tapster.manhole._reload import ReloadReport, reload
from tapster.manhole._service import ManholeService, manhole_endpoint

__all__ = ["ManholeService", "ReloadReport", "manhole_endpoint", "reload"]
