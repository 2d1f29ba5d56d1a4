"""pytest-benchmark fixtures for `pytest bench/` (the per-call microbenchmarks).

Only `pytest bench/` loads this: the repository's pytest configuration collects tests/ alone, so the main test run
never runs benchmarks.  Each benchmark sets its group so that pytest-benchmark's table reads, per workload,
pyproc vs subprocess vs the C floor.  The C floors are called through ctypes (libfloor.so, one spawn or transfer per
call, the GIL released), which adds a ctypes call (about a microsecond) to the C work.
"""

from __future__ import annotations

import ctypes
import shutil
from collections.abc import Callable
from typing import Any

import pytest

from bench import cfloor
from bench.run import probe


@pytest.fixture(scope="session")
def floors() -> cfloor.Floors:
    try:
        return cfloor.build()
    except cfloor.NoCompilerError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def apis() -> dict[str, str | None]:
    return probe()


def _argv(args: list[str]) -> Any:
    arr = (ctypes.c_char_p * (len(args) + 1))(*[a.encode() for a in args], None)
    return arr


class CFloor:
    """The C floors as callables (ctypes into libfloor.so)."""

    def __init__(self, path: str) -> None:
        self.lib = ctypes.CDLL(path)
        self.lib.floor_spawn_once.restype = ctypes.c_int
        self.lib.floor_read_all.restype = ctypes.c_longlong
        self.lib.floor_pipe.restype = ctypes.c_longlong
        self.lib.floor_pipe.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]

    def spawn(self, args: list[str]) -> Callable[[], None]:
        argv = _argv(args)

        def call() -> None:
            if self.lib.floor_spawn_once(argv) != 0:
                raise RuntimeError(f"C floor: spawn of {args} failed")
        return call

    def read_all(self, args: list[str], expected: int) -> Callable[[], None]:
        argv = _argv(args)

        def call() -> None:
            got = self.lib.floor_read_all(argv)
            if got != expected:
                raise RuntimeError(f"C floor: read {got} bytes, expected {expected}")
        return call

    def pipe(self, args: list[str], data: bytes) -> Callable[[], None]:
        argv = _argv(args)

        def call() -> None:
            got = self.lib.floor_pipe(ctypes.cast(argv, ctypes.c_void_p), data, len(data))
            if got != len(data):
                raise RuntimeError(f"C floor: got {got} bytes back, expected {len(data)}")
        return call


@pytest.fixture(scope="session")
def c_floor(floors: cfloor.Floors) -> CFloor:
    return CFloor(str(floors.libfloor))


@pytest.fixture(scope="session")
def minimal(floors: cfloor.Floors) -> str:
    return str(floors.minimal)


@pytest.fixture(scope="session")
def true_path() -> str:
    return shutil.which("true") or "/bin/true"
