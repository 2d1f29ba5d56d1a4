"""pyproc's benchmark suite and report (not part of the wheel; run from the source tree).

    pip install -e '.[bench]'
    python -m bench                 # the report for this machine: ./bench-results/{report.md,results.json,*.png}
    python -m bench --quick         # under a minute (CI)
    pytest bench/                   # per-call microbenchmarks (pytest-benchmark), pyproc vs subprocess vs C

Layout: cfloor (the C floors, built with cc into a cache dir), worker (a process holding a parent region that runs
the timed calls), harness (interleaving, medians, ratios, targets), config (what a run measures), run (the suites),
report / plots / tables (the outputs), cowdata (pyproc.cow's results as rows), machine (what the figures come
from), jobs / jobsreport / jobsrss (many children K at a time: the ways, their report part, run_many's memory).
"""
