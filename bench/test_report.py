"""The report's target logic on synthetic results (issues 19 and 16): the restated spawn and minimal-run bounds,
the ratio with a cost measured elsewhere added, issue 16's rows (fast; `pytest bench/test_report.py`, and
tests/test_bench.py runs this file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import config, report, run
from bench.harness import Series, ratio, target


def _s(name: str, per_round: list[float]) -> dict[str, Any]:
    """A Series as results.json holds it: one sample per round."""
    return Series(name, [[round(v)] for v in per_round]).to_json()


def _by_name(tg: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in tg}


def _spawn_results(default: float, inproc: float, bare: float, run_ns: float, sub_ns: float, ceiling: float,
                   pipes_ns: float | None) -> dict[str, Any]:
    names = {"pyproc default": default, "C floor, in this process": inproc, "pyproc clone, bare C calls": bare,
             "C floor": 50.0, "subprocess.run": 300.0, "os.posix_spawn": 300.0, "pyproc clone": default}
    spawn: dict[str, Any] = {"minimal": {"series": {n: _s(n, [v] * 3) for n, v in names.items()}}}
    if pipes_ns is not None:
        spawn["parts"] = {"rounds": 3, "rows": [{"way": "clone+capture_2_pipes", "added_to_clone_ns": pipes_ns,
                                                 "median_ns": 1.0}]}
    io = {"minimal": {"size": 0, "series": {
        "pyproc": _s("pyproc", [run_ns] * 3), "subprocess": _s("subprocess", [sub_ns] * 3),
        "pyproc.subprocess": _s("pyproc.subprocess", [run_ns] * 3), "C floor": _s("C floor", [90.0] * 3),
        report.CEILING: _s(report.CEILING, [ceiling] * 3)}}}
    return {"spawn": spawn, "io": io, "sweep": {"points": []}}


def test_restated_spawn_and_capture_bounds() -> None:
    tg = report.targets(_spawn_results(default=120, inproc=100, bare=105, run_ns=150, sub_ns=220, ceiling=120,
                                       pipes_ns=20))
    t = _by_name(tg)
    inproc = t["spawn minimal exe: pyproc default vs C floor in the same process"]
    assert (inproc["issue"], inproc["op"], inproc["bound"]) == (19, "<=", 1.25)
    assert inproc["ratio"]["ratio"] == pytest.approx(1.2) and inproc["held"] is True
    bare = t["spawn minimal exe: pyproc default vs bare C calls"]
    assert (bare["issue"], bare["bound"]) == (19, 1.10) and bare["held"] is False  # 120/105 = 1.14
    sub = t["run(minimal exe, capture): subprocess.run(capture_output=True) vs pyproc"]
    assert (sub["issue"], sub["op"], sub["bound"]) == (19, ">=", 1.4) and sub["held"] is True  # 220/150
    cap = t["run(minimal exe, capture): pyproc.run vs spawn+wait + C capture cost"]
    assert (cap["issue"], cap["op"], cap["bound"]) == (19, "<=", 1.10)
    assert cap["ratio"]["ratio"] == pytest.approx(150 / 140) and cap["held"] is True
    # The C floor in its own process is no target any more (issue 19): no row sets pyproc against it.
    assert not any(name.endswith("vs C floor") and name.startswith("spawn") for name in t)
    assert not any(row["issue"] == 2 and row["bound"] == 1.10 for row in tg)
    slower = _by_name(report.targets(_spawn_results(120, 100, 105, run_ns=160, sub_ns=220, ceiling=120,
                                                    pipes_ns=20)))
    row = slower["run(minimal exe, capture): pyproc.run vs spawn+wait + C capture cost"]
    assert row["ratio"]["ratio"] == pytest.approx(160 / 140) and row["held"] is False
    assert slower["run(minimal exe, capture): subprocess.run(capture_output=True) vs pyproc"]["held"] is False
    missing = _by_name(report.targets(_spawn_results(120, 100, 105, 150, 220, 120, pipes_ns=None)))
    row = missing["run(minimal exe, capture): pyproc.run vs spawn+wait + C capture cost"]
    assert row["held"] is None and "spawn-steps table" in row["skipped"]


def test_target_and_ratio_with_an_added_cost() -> None:
    a, b = Series("a", [[150], [160]]), Series("b", [[100], [120]])
    r = ratio(a, b, plus=20)
    assert r is not None and r["ratio"] == pytest.approx(155 / 130)
    assert r["min"] == pytest.approx(160 / 140) and r["max"] == pytest.approx(150 / 120)
    held = target("x", 19, r, "<=", 1.2, "what")
    assert held["held"] is True and held["skipped"] is None and held["unit"] == "x"
    missing = target("x", 19, None, ">=", 1.0, "what")
    assert missing["held"] is None and missing["skipped"] == "not measured"


def test_installed_rows_not_measured_say_why() -> None:
    results = _spawn_results(120, 100, 105, 150, 220, 120, 20)
    assert report.installed_targets(results) == []  # an older results.json: no rows at all
    results["installed"] = {"skipped": "not in this build (pyproc.subprocess.install, issue 16)"}
    rows = report.installed_targets(results)
    assert [(r["issue"], r["bound"], r["held"]) for r in rows] == [(16, 1.4, None), (16, 1.5, None)]
    assert all(r["skipped"].startswith("not in this build") for r in rows)
    assert "Not measured: not in this build" in "\n".join(report._installed_lines(results))


def _speedup(value: float) -> dict[str, Any]:
    stats = {"median": 100.0, "min": 90.0, "max": 120.0, "n": 10}
    return {"standard": stats, "installed": stats, "speedup": {"ratio": value, "min": value - 0.1,
                                                               "max": value + 0.1}, "target": 0}


def test_installed_suite_reads_bench_installed_into_the_targets(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """run.installed_suite runs `python -m bench.installed --json` with the run's sample counts, and the report's
    two issue-16 targets take their ratios from its answer."""
    ticks: list[str] = []
    cfg = config.quick()
    absent = "not in this build (pyproc.subprocess.install, issue 16)"
    assert run.installed_suite(cfg, {"install": absent}, ticks.append) == {"skipped": absent}
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "__init__.py").write_text("")
    monkeypatch.setattr(run, "_ROOT", tmp_path)
    answer = {"subprocess.run": _speedup(1.5), "asyncio.create_subprocess_exec + communicate": _speedup(1.2)}
    (tmp_path / "bench" / "installed.py").write_text(
        "import json, sys\n"
        "assert sys.argv[1:] == ['--json', '--rounds', sys.argv[3], '--batch', sys.argv[5]], sys.argv\n"
        f"assert (int(sys.argv[3]), int(sys.argv[5])) == ({cfg.installed_rounds}, {cfg.installed_batch})\n"
        f"print(json.dumps({answer!r}))\n")
    got = run.installed_suite(cfg, {"install": None}, ticks.append)
    assert got == {"rows": answer}
    rows = report.installed_targets({"installed": got})
    assert [(r["ratio"]["ratio"], r["bound"], r["held"]) for r in rows] == [(1.5, 1.4, True), (1.2, 1.5, False)]
    text = "\n".join(report._installed_lines({"installed": got}))
    assert "| subprocess.run | " in text and "1.50x [1.40, 1.60]" in text
    (tmp_path / "bench" / "installed.py").write_text("raise SystemExit('broken')\n")
    assert "failed (1): broken" in run.installed_suite(cfg, {"install": None}, ticks.append)["skipped"]
    assert ticks == ["installed vs not"] * 3


def test_dask_rows_from_bench_dask_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 18's targets come from bench.dask_bench's summary; skipped (no dask.distributed) they say why."""
    from bench import dask_bench

    assert report.dask_targets({}) == []
    skipped = report.dask_targets({"dask": {"skipped": "dask.distributed is not installed"}})
    assert [(r["issue"], r["bound"], r["held"], r["skipped"]) for r in skipped] == [
        (18, 10.0, None, "dask.distributed is not installed"), (18, 0.5, None, "dask.distributed is not installed")]
    series = {}
    for name, ns in ((dask_bench.DASK_MAP, 2_000_000_000), (dask_bench.DASK_PYPROC, 100_000_000),
                     (dask_bench.LOCAL, 80_000_000)):
        series[name] = Series(name, [[ns]])
    summary = dask_bench.summarize(series, 1000)
    rows = report.dask_targets({"dask": {"summary": summary, "workers": 2}})
    assert [(r["ratio"]["ratio"], r["held"]) for r in rows] == [(20.0, True), (0.8, True)]
    assert "| pyproc.dask.run_many vs client.map(subprocess.run) | 20.00x" in "\n".join(
        report._dask_lines({"dask": {"summary": summary, "workers": 2}}))
    monkeypatch.setattr(run.importlib.util, "find_spec", lambda name: None)
    assert run.dask_suite(config.quick(), lambda _: None)["skipped"].startswith("dask.distributed is not installed")
