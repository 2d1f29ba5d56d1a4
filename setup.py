from setuptools import setup

# cffi builds pyproc._native against the limited C API (pyproc/_native.abi3.so), so one wheel serves every
# supported CPython: its tag names the oldest, requires-python's floor in pyproject.toml.
setup(cffi_modules=["pyproc/_build.py:ffibuilder"], options={"bdist_wheel": {"py_limited_api": "cp311"}})
