"""The package version; the compiled module carries the same string and the loader compares them."""

__version__ = "0.1.0"
