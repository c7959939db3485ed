"""The single place the version lives; pyproject.toml carries the same number."""

__version__ = "0.1.0"
