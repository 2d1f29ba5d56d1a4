"""spawn+wait per call: pyproc engines vs subprocess vs os vs the C floor (pytest bench/)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.worker import spawner

WAYS = ["pyproc default", "pyproc clone", "pyproc vfork", "pyproc posix_spawn", "pyproc fork", "subprocess.run",
        "pyproc.subprocess.run", "os.posix_spawn", "os.fork+execv", "C floor"]


def _call(way: str, argv: list[str], c_floor: Any, apis: dict[str, str | None]) -> Any:
    if way == "C floor":
        return c_floor.spawn(argv)
    if way == "pyproc.subprocess.run" and apis["subprocess"]:
        pytest.skip(apis["subprocess"])
    return spawner(way, argv)


@pytest.mark.parametrize("way", WAYS)
def test_spawn_minimal(benchmark: Any, way: str, minimal: str, c_floor: Any, apis: dict[str, str | None]) -> None:
    benchmark.group = "spawn+wait: minimal static executable"
    benchmark(_call(way, [minimal], c_floor, apis))


@pytest.mark.parametrize("way", WAYS)
def test_spawn_true(benchmark: Any, way: str, true_path: str, c_floor: Any, apis: dict[str, str | None]) -> None:
    benchmark.group = "spawn+wait: /bin/true"
    benchmark(_call(way, [true_path], c_floor, apis))
