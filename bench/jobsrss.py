"""run_many's memory over many jobs (issue 15), in a process of its own:
`python -m bench.jobsrss [--jobs N] [--first M] [PROGRAM [ARGS...]]`.

Runs N jobs (default 200000) of PROGRAM (default: the bench's minimal static executable) through pyproc.run_many
from a generator, both outputs captured, at its default number of children, checking every job's exit status, and
prints one JSON line: this process's peak RSS (getrusage's ru_maxrss) after the first M results (default 1000) and
after the last, and their difference.  Issue 15's bound: the difference is at most 50 MiB, whatever N.  Exit status
3 when this build has no run_many.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

from . import tied


def peak_rss_kib() -> int:
    """This process's peak resident set size so far (KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(argv: list[str], jobs: int, first: int) -> dict[str, Any]:
    """Runs the jobs; the peak RSS after the first `first` results and at the end."""
    import pyproc

    run_many = pyproc.run_many  # type: ignore[attr-defined,unused-ignore]
    done = 0
    after_first = 0
    t0 = time.perf_counter_ns()
    for r in run_many((argv for _ in range(jobs)), capture=True):
        error = getattr(r, "error", None)
        if error is not None:
            raise error
        if r.returncode != 0:
            raise RuntimeError(f"job {done} of {argv} exited with {r.returncode}")
        done += 1
        if done == first:
            after_first = peak_rss_kib()
    elapsed = time.perf_counter_ns() - t0
    if done != jobs:
        raise RuntimeError(f"run_many yielded {done} results for {jobs} commands")
    end = peak_rss_kib()
    return {"jobs": jobs, "first": first, "peak_rss_after_first_kib": after_first, "peak_rss_end_kib": end,
            "growth_mib": (end - after_first) / 1024, "elapsed_s": elapsed / 1e9}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jobsrss", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200_000, help="jobs to run (default 200000)")
    parser.add_argument("--first", type=int, default=1000, help="results after which the baseline is taken")
    parser.add_argument("program", nargs=argparse.REMAINDER,
                        help="the job's argv (default: the bench's minimal static executable)")
    args = parser.parse_args(argv)
    tied.tie_to_parent()
    if not 1 <= args.first <= args.jobs:
        parser.error("--first must be between 1 and --jobs")
    import pyproc

    if not callable(getattr(pyproc, "run_many", None)):
        print("python -m bench.jobsrss: pyproc.run_many is not in this build", file=sys.stderr)
        return 3
    if not args.program:
        from .cfloor import build

        args.program = [str(build().minimal)]
    print(json.dumps(measure(args.program, args.jobs, args.first)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
