from setuptools import setup

setup(cffi_modules=["pyproc/_build.py:ffibuilder"])
