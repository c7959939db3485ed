"""Bytecode for plugin modules that is checked against the source's hash, not its modification time.

Python's default ``.pyc`` records the source's size and its mtime in whole seconds. A plugin file edited within
the second it was last compiled, keeping its size (a typo fixed, a digit changed), then loads its old code: the
plugin cache notices the edit (it compares mtimes in nanoseconds) and imports the module again, only to be handed
the stale bytecode. Plugin modules are therefore compiled to *checked hash-based* ``.pyc`` files (PEP 552):
loading reads the source and compares a hash of it with the one in the ``.pyc``, which costs a few microseconds
for a plugin file and is only paid when a module is imported (never by a warm ``tapster --help``).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import marshal
import sys
from types import CodeType

_FLAGS = (0b11).to_bytes(4, "little")  # hash-based, checked against the source on every load (PEP 552)


class HashCheckedLoader(importlib.machinery.SourceFileLoader):
    """A source loader whose bytecode cache is valid only for the exact source it was compiled from."""

    def get_code(self, fullname: str) -> CodeType:
        """The module's code: from its ``.pyc`` if that was compiled from these very bytes, else compiled now."""
        source_path = self.get_filename(fullname)
        source = self.get_data(source_path)
        source_hash = importlib.util.source_hash(source)
        header = importlib.util.MAGIC_NUMBER + _FLAGS + source_hash
        bytecode_path: str | None = None
        data = b""
        try:
            bytecode_path = importlib.util.cache_from_source(source_path)
            data = self.get_data(bytecode_path)
        except (NotImplementedError, OSError):  # an interpreter without a bytecode cache; no .pyc yet
            pass
        if data[:16] == header:
            try:
                code = marshal.loads(memoryview(data)[16:])
            except (EOFError, ValueError, TypeError):
                code = None
            if isinstance(code, CodeType):
                return code
        code = self.source_to_code(source, source_path)
        # set_data gives up silently on a folder it cannot write to
        if bytecode_path is not None and not sys.dont_write_bytecode:
            self.set_data(bytecode_path, header + marshal.dumps(code))
        return code
