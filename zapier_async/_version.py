"""The package version: its one source (`pyproject.toml` reads it; the root re-exports it)."""

__version__ = "0.1.0.dev0"
