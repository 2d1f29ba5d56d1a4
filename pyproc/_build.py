"""The cffi builder: compiles csrc/*.c into pyproc._native (out-of-line API mode).

The cdef is the part of csrc/pyproc.h between the cdef markers, plus "#define NAME ..." for every kernel constant
the header asks for with "cdef-const NAME", so the compiler fills in its value.

Environment switches:
  PYPROC_WERROR=1    add -Werror (CI does)
  PYPROC_SANITIZE=1  build with -fsanitize=address,undefined (the test run must preload the sanitizer runtime)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
HEADER = CSRC / "pyproc.h"


def _version() -> str:
    namespace: dict[str, str] = {}
    exec((ROOT / "pyproc" / "_version.py").read_text(), namespace)
    return namespace["__version__"]


def _cdef_text() -> str:
    text = HEADER.read_text()
    body = text.split("/* cdef-begin */", 1)[1].split("/* cdef-end */", 1)[0]
    constants = sorted(set(re.findall(r"cdef-const\s+([A-Z_][A-Z0-9_]*)", body)))
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)  # cffi's parser takes no comments
    return body + "".join(f"\n#define {name} ..." for name in constants) + "\n"


def _compile_args() -> list[str]:
    args = ["-O2", "-Wall", "-Wextra", "-std=gnu11", "-fno-strict-aliasing"]
    if os.environ.get("PYPROC_WERROR") == "1":
        args.append("-Werror")
    if os.environ.get("PYPROC_SANITIZE") == "1":
        args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all", "-O1"]
    return args


def _link_args() -> list[str]:
    return ["-fsanitize=address,undefined"] if os.environ.get("PYPROC_SANITIZE") == "1" else []


def _sources() -> list[str]:
    # setuptools wants paths relative to the project root, where pip runs the build.
    return sorted(os.path.relpath(path, os.getcwd()) for path in CSRC.glob("*.c"))


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "pyproc._native",
    '#include "pyproc.h"\n',
    sources=_sources(),
    include_dirs=[os.path.relpath(CSRC, os.getcwd())],
    define_macros=[("_GNU_SOURCE", "1"), ("PYPROC_VERSION", f'"{_version()}"')],
    extra_compile_args=_compile_args(),
    extra_link_args=_link_args(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
