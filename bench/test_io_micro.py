"""I/O per call: pyproc.run vs subprocess vs pyproc.subprocess vs the C loops (pytest bench/).

64 MiB per call here (the report, python -m bench, moves 1 GiB)."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from bench.worker import io_call

SIZE = 64 << 20
WAYS = ["pyproc", "subprocess", "pyproc.subprocess", "C floor"]


def _skip(way: str, apis: dict[str, str | None]) -> None:
    if way == "pyproc" and apis["run"]:
        pytest.skip(apis["run"])
    if way == "pyproc.subprocess" and apis["subprocess"]:
        pytest.skip(apis["subprocess"])


def _checked(call: Any, expected: int) -> Any:
    def run() -> None:
        got = call()
        if got != expected:
            raise RuntimeError(f"got {got} bytes, expected {expected}")
    return run


@pytest.mark.parametrize("way", WAYS)
def test_capture_64mib(benchmark: Any, way: str, c_floor: Any, minimal: str, apis: dict[str, str | None]) -> None:
    benchmark.group = "capture 64 MiB from head -c 64M /dev/zero"
    _skip(way, apis)
    if way == "C floor":
        head = shutil.which("head") or "/usr/bin/head"
        benchmark(c_floor.read_all([head, "-c", str(SIZE), "/dev/zero"], SIZE))
    else:
        benchmark(_checked(io_call("capture", way, SIZE, minimal), SIZE))


@pytest.mark.parametrize("way", WAYS)
def test_cat_64mib(benchmark: Any, way: str, c_floor: Any, minimal: str, apis: dict[str, str | None]) -> None:
    benchmark.group = "64 MiB in and out through cat"
    _skip(way, apis)
    if way == "C floor":
        benchmark(c_floor.pipe([shutil.which("cat") or "/bin/cat"], b"x" * SIZE))
    else:
        benchmark(_checked(io_call("cat", way, SIZE, minimal), SIZE))


@pytest.mark.parametrize("way", WAYS)
def test_run_minimal_captured(benchmark: Any, way: str, c_floor: Any, minimal: str,
                              apis: dict[str, str | None]) -> None:
    benchmark.group = "run the minimal executable, output captured"
    _skip(way, apis)
    if way == "C floor":
        benchmark(c_floor.read_all([minimal], 0))
    else:
        benchmark(_checked(io_call("minimal", way, 0, minimal), 0))
