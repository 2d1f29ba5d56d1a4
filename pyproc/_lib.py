"""Loads the compiled core and refuses a build that does not match this package's version."""

from __future__ import annotations

from ._version import __version__

try:
    from ._native import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on how the package was installed
    raise ImportError(
        f"pyproc's compiled core (pyproc._native) cannot be loaded ({exc}): install the package with pip "
        "('pip install .' or 'pip install -e .') so that setuptools builds it"
    ) from exc

_built = ffi.string(lib.pyproc_version()).decode()
if _built != __version__:
    raise ImportError(
        f"pyproc._native was built for pyproc {_built} but this is pyproc {__version__}: "
        "rebuild it ('pip install .' or 'pip install -e .')"
    )

__all__ = ["ffi", "lib"]
