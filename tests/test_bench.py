"""The benchmark report (issue 5): a --quick run produces report.md, results.json and the plots, the figures are
sane, bad sizes are refused, a missing compiler is a clear error.

bench/ lives in the source tree, not in the wheel, and runs as `python -m bench` from the source tree's root: these
tests run it that way (a subprocess; nothing is imported from the source tree here) and are skipped when tests/ is
not next to a bench package (pyproc installed, tests copied elsewhere).  The harness's own unit tests are in
bench/test_harness.py (pytest bench/).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH_ROOT = Path(__file__).resolve().parent.parent
PNG_NAMES = ("spawn_vs_parent_size.png", "cow_per_page.png", "pipe_throughput.png", "spawns_per_second.png")


def _bench_importable() -> str | None:
    if not (BENCH_ROOT / "bench" / "__main__.py").is_file():
        return f"no bench package next to tests/ ({BENCH_ROOT}): not the source tree"
    check = "import bench.run, bench.report, bench.plots, numpy, matplotlib, tqdm"
    proc = subprocess.run([sys.executable, "-c", check], cwd=BENCH_ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return f"the bench package is not importable: {proc.stderr.strip().splitlines()[-1:]}"
    return None


_why = _bench_importable()
if _why:
    pytest.skip(_why, allow_module_level=True)


def _run_bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=BENCH_ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("bench")
    proc = _run_bench("--quick", "--no-progress", "--out", str(out))
    if proc.returncode == 3 and "no C compiler" in proc.stderr:
        pytest.skip(proc.stderr.strip())
    return out, proc


def _median(entry: dict[str, Any]) -> float:
    stats = entry["stats"]
    assert stats is not None, entry.get("skipped")
    return float(stats["median"])


def test_quick_run_writes_report_json_and_plots(quick_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = quick_run
    assert proc.returncode == 0, proc.stderr
    assert "targets:" in proc.stdout  # the terminal summary
    report = (out / "report.md").read_text()
    for heading in ("## Machine", "## Targets", "## Reading", "## spawn+wait of /bin/true",
                    "## spawn+wait of the minimal executable against parent size", "## I/O",
                    "## Spawns per second", "## What each step of a spawn costs, timed in C"):
        assert heading in report
    for name in PNG_NAMES:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(data) > 10_000, name


def test_quick_run_figures_are_sane(quick_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = quick_run
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    machine = results["meta"]["machine"]
    assert machine["cores_online"] >= 1 and machine["kernel"] and machine["python"]

    spawn = results["spawn"]["minimal"]["series"]
    for name in ("pyproc default", "pyproc clone", "subprocess.run", "os.fork+execv", "C floor"):
        samples = [x for r in spawn[name]["rounds_ns"] for x in r]
        cfg = results["meta"]["config"]
        assert len(samples) == cfg["spawn_rounds"] * cfg["spawn_batch"], name
        assert all(isinstance(x, int) and 1_000 < x < 10_000_000_000 for x in samples), name
        assert statistics.median(samples) == _median(spawn[name])

    # At the largest size, with dirty 4 KiB pages, fork+exec copies the page tables: slower than the clone engine,
    # and slower than itself from the small parent; the clone engine does not grow like it.
    dirty = [p for p in results["sweep"]["points"] if p["state"] == "dirty"]
    big = max(dirty, key=lambda p: p["size"])
    m = big["methods"]
    assert _median(m["os.fork+execv"]["big"]) > 2 * _median(m["pyproc default"]["big"])
    assert _median(m["pyproc fork"]["big"]) > _median(m["pyproc default"]["big"])
    assert m["os.fork+execv"]["big_vs_small"]["ratio"] > 1.5
    assert big["parent"]["rss_kib"] * 1024 >= big["size"]  # the pages really were dirtied

    # Pipe throughput of the C loop is a real transfer rate (bytes were checked by the worker).
    capture = results["io"]["capture"]
    assert capture["size"] > 0 and _median(capture["series"]["C floor"]) > 0

    # The steps table (bench.spawnparts): every way measured, the floor is its own unit, and pyproc's default steps
    # cost at least the plain clone they add to (each a median of rounds timed in C).
    parts = results["spawn"]["parts"]
    rows = {r["way"]: r for r in parts["rows"]}
    assert parts["rounds"] == results["meta"]["config"]["parts_rounds"]
    assert {"vfork+execve+waitpid", "clone", "clone+CLONE_PIDFD", "clone+all_of_pyproc"} <= set(rows)
    assert rows["vfork+execve+waitpid"]["vs_floor"] == 1.0
    assert all(1_000 < r["median_ns"] < 1_000_000_000 for r in rows.values())
    assert rows["clone+all_of_pyproc"]["vs_floor_min"] <= rows["clone+all_of_pyproc"]["vs_floor"]
    assert "clone+all_of_pyproc+capture" in rows

    # run(minimal exe, capture) is set against a spawn+wait that captures nothing, in the same rounds.
    minimal = results["io"]["minimal"]["series"]
    assert _median(minimal["pyproc spawn+wait, no capture"]) > 0

    targets = {t["name"]: t for t in results["targets"]}
    assert any(name.startswith("spawn minimal exe: pyproc default vs C floor") for name in targets)
    assert "ceiling:" in targets["run(minimal exe, capture): subprocess.run(capture_output=True) vs pyproc"]["note"]
    # The medium capture row (issue 3's regression guard) is measured in every run, quick or not.
    medium = results["io"]["capture_medium"]
    assert medium["size"] == results["meta"]["config"]["medium_io_size"]
    for name in ("pyproc", "subprocess"):
        assert _median(medium["series"][name]) > 0, name
    guard = targets[f"capture {medium['size'] >> 20} MiB: subprocess.run(capture_output=True) vs pyproc"]
    assert guard["ratio"] is not None and guard["bound"] == 1.0 and guard["op"] == ">="
    for t in results["targets"]:
        assert t["held"] in (True, False, None)
        assert (t["held"] is None) == (t["ratio"] is None)
        if t["ratio"] is None:
            assert t["skipped"], t["name"]  # a target not measured says why


def test_sizes_that_do_not_fit_are_refused() -> None:
    proc = _run_bench("--sizes", "64M,1000T", "--out", os.devnull, timeout=60)
    assert proc.returncode == 2
    assert "do not fit" in proc.stderr and "MemAvailable" in proc.stderr
    proc = _run_bench("--sizes", "lots", "--out", os.devnull, timeout=60)
    assert proc.returncode == 2 and "not a size" in proc.stderr


@pytest.mark.parametrize("compilers", ["none on PATH", "all failing"])
def test_no_compiler_is_one_clear_line(compilers: str, tmp_path: Path) -> None:
    # No compiler at all, or (as in a machine without one, .ci/wheel-test.sh) cc, gcc, clang and $CC that fail.
    path = tmp_path / "bin"
    path.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CC"}
    env.update(PATH=str(path), PYPROC_BENCH_CACHE=str(tmp_path / "cache"))
    if compilers == "all failing":
        for name in ("cc", "gcc", "clang"):
            (path / name).write_text("#!/bin/sh\nexit 1\n")
            (path / name).chmod(0o755)
        env.update(PATH=f"{path}:{os.environ['PATH']}", CC="false")
    for module, args in (("bench", ["--quick", "--out", str(tmp_path / "o")]), ("bench.spawnparts", [])):
        proc = subprocess.run([sys.executable, "-m", module, *args], cwd=BENCH_ROOT, env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        assert proc.returncode == 3, proc.stderr
        assert proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"python -m {module}: no C compiler found"), proc.stderr
        if compilers == "all failing":
            assert "$CC (/" in lines[0] and "exits 1" in lines[0]
    assert not (tmp_path / "o").exists()


def test_c_floors_run(quick_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = quick_run
    assert proc.returncode == 0, proc.stderr
    floors = json.loads((out / "results.json").read_text())["meta"]["floors"]
    assert subprocess.run([floors["minimal"]], check=False).returncode == 0
    times = subprocess.run([floors["spawnloop"], "3", floors["minimal"]], capture_output=True, text=True,
                           check=True).stdout.split()
    assert len(times) == 3 and all(int(x) > 0 for x in times)
    got = subprocess.run([floors["readloop"], "1", "/bin/sh", "-c", "printf 12345"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert int(got[1]) == 5
    got = subprocess.run([floors["pipeloop"], "1", "100000", "/bin/cat"], capture_output=True, text=True,
                         check=True).stdout.split()
    assert int(got[1]) == 100000
    bad = subprocess.run([floors["spawnloop"], "1", str(out / "missing")], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 1 and "failed" in bad.stderr
    parts = subprocess.run([floors["spawnparts"], "2", floors["minimal"]], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert len(parts) == 10 and all(len(line.split()) == 3 and int(line.split()[1]) > 0 for line in parts)
    bad = subprocess.run([floors["spawnparts"], "1", str(out / "missing")], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 1 and "failed" in bad.stderr
    bad = subprocess.run([floors["spawnparts"], "0", floors["minimal"]], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "usage" in bad.stderr
