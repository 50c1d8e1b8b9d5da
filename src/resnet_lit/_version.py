"""The package version (pyproject.toml reads it; CHANGELOG.md): a leaf that any module may import."""

__version__ = "0.2.0.dev0"
