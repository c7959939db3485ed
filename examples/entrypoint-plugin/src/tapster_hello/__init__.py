"""tapster-hello: an example tapster plugin distributed with an entry point (see ``plugin.py``)."""
