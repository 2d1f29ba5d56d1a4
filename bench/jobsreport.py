"""The many-children part of the report (issue 15): its targets, its section and its reading, from a run's results.

A sample of a way at some K is the time per job of one batch (batch time / jobs), so jobs per second is 1e9 / the
median, and "A's jobs/s vs B's" is median(B's time per job) / median(A's): harness.ratio(B, A).
"""

from __future__ import annotations

import statistics
from typing import Any

from . import jobs
from .harness import Series, fmt_ns, ratio, target
from .tables import stats_row, table

TARGET_K = 2
"""The K of issue 15's targets."""
JOBS_S = f"jobs/s (minimal exe, K={TARGET_K})"
_AT_TARGET_K = {jobs.TPE_SUBPROCESS: f"ThreadPoolExecutor({TARGET_K}) + subprocess.run",
                jobs.TPE_PYPROC: f"ThreadPoolExecutor({TARGET_K}) + pyproc.run",
                jobs.ASYNCIO: f"asyncio + Semaphore({TARGET_K})"}

RSS_BOUND_MIB = 50.0
"""Issue 15: over 200k jobs, run_many's peak RSS grows at most this much past its peak after the first 1000."""


def series(section: dict[str, Any]) -> dict[str, Series]:
    """The Series of a workload (live during a run, rebuilt from results.json otherwise)."""
    if "_series" in section:
        live: dict[str, Series] = section["_series"]
        return live
    return {k: Series(k, v["rounds_ns"], v["skipped"]) for k, v in section["series"].items()}


def _get(s: dict[str, Series], name: str) -> Series:
    return s.get(name) or Series(name, skipped=f"{name} is not in these results")


def growth(one_a: Series, two_a: Series, one_b: Series, two_b: Series) -> dict[str, float] | None:
    """How much A's jobs/s grow from K=1 to K=2, as a fraction of how much B's grow:
    (time_a(1) / time_a(2)) / (time_b(1) / time_b(2)), medians; min and max over the rounds."""
    if not all(x.samples for x in (one_a, two_a, one_b, two_b)):
        return None
    med = statistics.median
    value = (one_a.median / two_a.median) / (one_b.median / two_b.median)
    per_round = [(med(a1) / med(a2)) / (med(b1) / med(b2))
                 for a1, a2, b1, b2 in zip(one_a.rounds, two_a.rounds, one_b.rounds, two_b.rounds, strict=False)
                 if a1 and a2 and b1 and b2]
    return {"ratio": value, "min": min(per_round, default=value), "max": max(per_round, default=value)}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 15's targets (minimal executable, both outputs captured, K = 2), when the run has the jobs suite."""
    many = results.get("jobs")
    if not many or "minimal" not in many:
        return []
    s = series(many["minimal"])

    def at(method: str, k: int = TARGET_K) -> Series:
        return _get(s, jobs.key(method, k))

    rm, floor = at(jobs.RUN_MANY), at(jobs.FLOOR)

    def why(*ways: Series) -> str | None:
        return next((w.skipped for w in ways if w.skipped), None)

    out = [target(f"{JOBS_S}: run_many vs C floor", 15, ratio(floor, rm), ">=", 0.75,
                  "jobs/s of pyproc.run_many(jobs=2, capture=True) / jobs/s of the C job pool (median time per job "
                  "of the floor / of run_many)", why(rm, floor))]
    for method, bound in ((jobs.TPE_SUBPROCESS, 2.5), (jobs.TPE_PYPROC, 1.3), (jobs.ASYNCIO, 5.0)):
        other, label = at(method), _AT_TARGET_K[method]
        out.append(target(f"{JOBS_S}: run_many vs {label}", 15, ratio(other, rm), ">=", bound,
                          f"jobs/s of run_many / jobs/s of {method} (K=2)", why(rm, other)))
    aio_rm = at(jobs.AIO_RUN_MANY)
    out.append(target(f"{JOBS_S}: aio.run_many vs run_many", 15, ratio(rm, aio_rm), ">=", 0.7,
                      "jobs/s of `async for r in aio.run_many(...)` / jobs/s of run_many", why(aio_rm, rm)))
    seq = many.get("sequential")
    seq_s = series(seq) if seq else {}
    sync_seq, aio_seq = _get(seq_s, jobs.SYNC_SEQUENTIAL), _get(seq_s, jobs.AIO_SEQUENTIAL)
    out.append(target("one call at a time (minimal exe): await aio.run vs pyproc.run", 15,
                      ratio(aio_seq, sync_seq), "<=", 1.3,
                      "median `await aio.run(argv, capture=True)` / median pyproc.run(argv, capture=True), one "
                      "after another", why(aio_seq, sync_seq)))
    rm1, floor1 = at(jobs.RUN_MANY, 1), at(jobs.FLOOR, 1)
    out.append(target("jobs/s (minimal exe), K=1 to 2: run_many's growth vs the C floor's", 15,
                      growth(rm1, rm, floor1, floor), ">=", 0.9,
                      "(run_many's jobs/s at K=2 / at K=1) / (the C floor's jobs/s at K=2 / at K=1)",
                      why(rm1, rm, floor1, floor), _floor_growth_note(floor1, floor)))
    out.append(_rss_target(many.get("rss")))
    return out


def _floor_growth_note(one: Series, two: Series) -> str:
    if not (one.samples and two.samples):
        return ""
    return f"the C floor's own jobs/s grew {one.median / two.median:.2f}x from K=1 to K=2"


def _rss_target(rss: dict[str, Any] | None) -> dict[str, Any]:
    name = "run_many, jobs from a generator: peak RSS growth"
    what = ("peak RSS after the last job - peak RSS after the first 1000 (MiB; `python -m bench.jobsrss`, a process "
            "of its own)")
    if not rss or "skipped" in rss:
        return target(name, 15, None, "<=", RSS_BOUND_MIB, what, (rss or {}).get("skipped", "not measured"),
                      unit="MiB")
    value = float(rss["growth_mib"])
    note = f"over {rss['jobs']:,} jobs" + ("" if rss["jobs"] >= 200_000 else " (issue 15 asks 200,000)")
    return target(name, 15, {"ratio": value, "min": value, "max": value}, "<=", RSS_BOUND_MIB, what, None, note,
                  unit="MiB")


def _rate(s: Series) -> str:
    """jobs/s: median [slowest round, fastest round]."""
    st = s.stats()
    if st is None:
        return "skipped"
    return f"{1e9 / st['median']:,.0f} [{1e9 / st['max']:,.0f}, {1e9 / st['min']:,.0f}]"


def section(results: dict[str, Any]) -> list[str]:
    """The report's section: jobs/s per way and K for each workload, the one-at-a-time comparison, the RSS."""
    many = results.get("jobs")
    if not many:
        return []
    ks: list[int] = many["ks"]
    lines = ["## Many children, K at a time (jobs per second)", "",
             "Each way runs batches of jobs (the same number for every way: given per workload below; at least "
             f"{many.get('per_child', '?')} per child at the larger K) with K children at once, every job's stdout "
             "and stderr "
             "captured and its exit status checked; every way at every K runs interleaved in one worker "
             f"({many['rounds']} rounds after a warm-up batch, each way following every other equally often). "
             "A cell is jobs per second: the "
             "median over the rounds, in brackets the slowest and fastest round, and in parentheses the ratio to "
             "the C floor's jobs/s at the same K. The C floor is a C program keeping K children running (pipes read "
             "to end of file with one poll, each child reaped); `xargs -P K -n 1` is started once per batch and its "
             "children share its captured stdout and stderr (xargs has no per-job capture); the asyncio ways are "
             "timed inside their coroutine. Plot: jobs_per_second.png.", ""]
    for workload, title in (("minimal", "the minimal static executable"), ("true", "/bin/true (a dynamic program)")):
        if workload not in many:
            continue
        s = series(many[workload])
        rows = []
        for method in jobs.METHODS:
            row = [method]
            for k in ks:
                way, floor = _get(s, jobs.key(method, k)), _get(s, jobs.key(jobs.FLOOR, k))
                r = ratio(floor, way)
                row.append(_rate(way) + ("" if r is None or method == jobs.FLOOR else f" ({r['ratio']:.2f}x)"))
            row.append(next((s[name].skipped for k in ks if (name := jobs.key(method, k)) in s and s[name].skipped),
                            None) or "")
            rows.append(row)
        argv, batch = " ".join(many[workload]["argv"]), many[workload].get("batch", "?")
        lines += [f"### {title}", "", f"argv: `{argv}`; {batch} jobs a batch.", "",
                  *table(["way", *[f"K={k}" for k in ks], "note"], rows), ""]
    seq = many.get("sequential")
    if seq:
        s = series(seq)
        rows = [[name, *stats_row(ser), ser.skipped or ""] for name, ser in s.items()]
        lines += ["### One call at a time (minimal executable, both outputs captured)", "",
                  f"Time per call, {many.get('seq_batch', '?')} calls a batch, the two ways interleaved.", "",
                  *table(["way", "median", "min", "max", "n", "note"], rows), ""]
    rss = many.get("rss")
    if rss:
        if "skipped" in rss:
            lines += [f"run_many's memory over {rss['jobs']:,} jobs: {rss['skipped']}.", ""]
        else:
            lines += [f"run_many's memory (`python -m bench.jobsrss`, a process of its own): over {rss['jobs']:,} "
                      f"jobs of the minimal executable from a generator ({rss['elapsed_s']:.1f} s), peak RSS "
                      f"{rss['peak_rss_after_first_kib'] / 1024:.1f} MiB after the first {rss['first']:,} and "
                      f"{rss['peak_rss_end_kib'] / 1024:.1f} MiB at the end (+{rss['growth_mib']:.1f} MiB).", ""]
    return lines


def reading(results: dict[str, Any]) -> list[str]:
    """A few sentences on the jobs figures of this run."""
    many = results.get("jobs")
    if not many or "minimal" not in many:
        return []
    s = series(many["minimal"])
    k = TARGET_K
    floor = _get(s, jobs.key(jobs.FLOOR, k))
    if not floor.samples:
        return []
    parts = []
    for method in jobs.METHODS[:-1]:
        way = _get(s, jobs.key(method, k))
        if way.samples:
            parts.append(f"{method} {1e9 / way.median:,.0f} ({floor.median / way.median:.2f}x)")
    out = [f"Running the minimal executable {k} at a time with both outputs captured, the C job pool does "
           f"{1e9 / floor.median:,.0f} jobs/s ({fmt_ns(floor.median)} a job); per second, and against it: "
           + ", ".join(parts) + "."]
    floor1 = _get(s, jobs.key(jobs.FLOOR, 1))
    if floor1.samples:
        out.append(f"From K=1 to K={k} the C floor's jobs/s grow {floor1.median / floor.median:.2f}x, on "
                   f"{results['meta']['machine']['cores_usable']} usable cores.")
    return out


def failures(results: dict[str, Any]) -> list[str]:
    """The ways whose jobs failed in this run (not those absent from the build), for the report's notes."""
    many = results.get("jobs") or {}
    return sorted({f"jobs, {workload}, {name}: {s.skipped}" for workload in ("minimal", "true", "sequential")
                   if workload in many for name, s in series(many[workload]).items()
                   if s.skipped and s.skipped.startswith("failed")})


def summary(results: dict[str, Any]) -> list[str]:
    """The terminal summary's line: jobs/s of every way measured at K = 2, minimal executable."""
    many = results.get("jobs") or {}
    if "minimal" not in many:
        return []
    s = series(many["minimal"])
    rates = [f"{m} {1e9 / w.median:,.0f}" for m in jobs.METHODS if (w := _get(s, jobs.key(m, TARGET_K))).samples]
    return [f"jobs/s, minimal executable, K={TARGET_K}: " + ", ".join(rates)] if rates else []
