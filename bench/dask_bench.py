"""Past one machine (issue 18): `python -m bench.dask_bench [--jobs N] [--rounds R] [--workers W] [--json PATH]`.

Runs N jobs (default 20000) of the bench's minimal static executable, stdout and stderr captured and every exit
status checked, three ways, interleaved (A B C, B C A, ...) after one warm-up each, on a LocalCluster of W worker
processes (default 2) with one thread each:
- `client.map(subprocess.run, commands, capture_output=True, pure=False)` then `client.gather`: a Dask task and
  a standard-library spawn per command (the usual pattern);
- `pyproc.dask.run_many(client, commands, capture=True)`: batches (batch_size chosen from measures) run with
  pyproc.run_many on the workers, one child per worker thread at a time;
- `pyproc.run_many(commands, capture=True, jobs=W)` in this process, on the same number of children at once.

Prints a table (jobs/s per way: median [min, max] over the rounds), issue 18's two targets as ratios of the median
times (pyproc.dask.run_many >= 10x client.map(subprocess.run), and >= 0.5x local run_many), and writes one JSON
document (the rounds in ns, the ratios, the targets) to --json when given.  Exit status 3 when dask.distributed or
pyproc.dask is missing (pip install -e '.[bench,dask]').
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from . import tied
from .harness import Series, fmt_ratio, interleave, ratio, target

ISSUE = 18
DASK_MAP = "client.map(subprocess.run)"
DASK_PYPROC = "pyproc.dask.run_many"
LOCAL = "pyproc.run_many (local)"


def _check(results: Any, n: int, way: str) -> None:
    count = 0
    for r in results:
        if r.returncode != 0 or getattr(r, "error", None) is not None:
            raise RuntimeError(f"{way}: a job failed: {r!r}")
        count += 1
    if count != n:
        raise RuntimeError(f"{way}: {count} results for {n} commands")


def contenders(client: Any, exe: str, workers: int) -> list[tuple[str, Any]]:
    """The three ways, each a harness Runner: runs n jobs, returns [their wall time in ns]."""
    import pyproc
    import pyproc.dask

    def dask_map(n: int) -> list[int]:
        started = time.perf_counter_ns()
        futures = client.map(subprocess.run, [[exe]] * n, capture_output=True, pure=False)
        results = client.gather(futures)
        elapsed = time.perf_counter_ns() - started
        del futures
        _check(results, n, DASK_MAP)
        return [elapsed]

    def dask_pyproc(n: int) -> list[int]:
        started = time.perf_counter_ns()
        results = list(pyproc.dask.run_many(client, ([exe] for _ in range(n)), capture=True))
        elapsed = time.perf_counter_ns() - started
        _check(results, n, DASK_PYPROC)
        return [elapsed]

    def local(n: int) -> list[int]:
        started = time.perf_counter_ns()
        results = list(pyproc.run_many(([exe] for _ in range(n)), capture=True, jobs=workers))
        elapsed = time.perf_counter_ns() - started
        _check(results, n, LOCAL)
        return [elapsed]

    return [(DASK_MAP, dask_map), (DASK_PYPROC, dask_pyproc), (LOCAL, local)]


TARGETS = (("pyproc.dask.run_many vs client.map(subprocess.run)", ">=", 10.0,
            "jobs/s of pyproc.dask.run_many / jobs/s of client.map(subprocess.run), 2-worker LocalCluster"),
           ("pyproc.dask.run_many vs local pyproc.run_many", ">=", 0.5,
            "jobs/s of pyproc.dask.run_many / jobs/s of pyproc.run_many on as many children in this process"))
"""Issue 18's targets: (name, op, bound, what is measured)."""


def summarize(series: dict[str, Series], jobs: int) -> dict[str, Any]:
    """Jobs/s per way, the ratios of the median times and issue 18's targets."""
    rates = {}
    for name, s in series.items():
        st = s.stats()
        rates[name] = None if st is None else {
            "median": jobs / st["median"] * 1e9, "min": jobs / st["max"] * 1e9, "max": jobs / st["min"] * 1e9}
    over_map = ratio(series[DASK_MAP], series[DASK_PYPROC])  # time of client.map / time of pyproc.dask
    over_local = ratio(series[LOCAL], series[DASK_PYPROC])  # time of local run_many / time of pyproc.dask
    targets = [target(name, ISSUE, r, op, bound, what)
               for (name, op, bound, what), r in zip(TARGETS, (over_map, over_local), strict=True)]
    return {"jobs": jobs, "jobs_per_second": rates, "targets": targets,
            "series": {name: s.to_json() for name, s in series.items()}}


def report(summary: dict[str, Any], workers: int) -> str:
    """The result as Markdown: one table of jobs/s, one of the targets."""
    lines = [f"### Past one machine: {summary['jobs']} jobs of the minimal executable, captured, "
             f"{workers}-worker LocalCluster", "", "| way | jobs/s median [min, max] |", "|---|---|"]
    for name, r in summary["jobs_per_second"].items():
        cell = "n/a" if r is None else f"{r['median']:,.0f} [{r['min']:,.0f}, {r['max']:,.0f}]"
        lines.append(f"| {name} | {cell} |")
    lines += ["", "| target (issue 18) | measured | bound | held |", "|---|---|---|---|"]
    for t in summary["targets"]:
        held = "n/a" if t["held"] is None else "yes" if t["held"] else "NO"
        lines.append(f"| {t['name']} | {fmt_ratio(t['ratio'])} | {t['op']} {t['bound']}x | {held} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dask_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per way and round (default 20000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the LocalCluster (default 2)")
    parser.add_argument("--json", help="write the result as JSON to this path")
    args = parser.parse_args(argv)
    tied.tie_to_parent()
    if args.jobs < 1 or args.rounds < 1 or args.workers < 1:
        parser.error("--jobs, --rounds and --workers must be at least 1")
    try:
        import distributed

        import pyproc.dask  # noqa: F401
    except ImportError as exc:
        print(f"python -m bench.dask_bench: {exc} (pip install -e '.[bench,dask]')", file=sys.stderr)
        return 3
    from .cfloor import build

    exe = str(build().minimal)
    with distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=40) as cluster, \
            distributed.Client(cluster) as client:
        series = interleave(contenders(client, exe, args.workers), rounds=args.rounds, batch=args.jobs)
    summary = summarize(series, args.jobs)
    print(report(summary, args.workers))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
