"""python -m bench: measure and plot what starting processes costs on this machine (see bench/README in report.md).

    python -m bench                      # this machine's default: about six minutes
    python -m bench --quick              # CI: under a minute
    python -m bench --sizes 64M,1G,4G    # parent sizes of the sweep (refused if they don't fit MemAvailable)
    python -m bench --out DIR            # default ./bench-results
    python -m bench --replot DIR         # re-render report.md and the PNGs from DIR/results.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import cfloor, config, machine, plots, report
from .harness import WorkerError


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=(
        "Measure what starting a process costs on this machine (pyproc engines, subprocess, os.posix_spawn, "
        "os.fork, multiprocessing, C floors), from small and big parents; write report.md, results.json and "
        "PNG plots."))
    p.add_argument("--quick", action="store_true", help="small sizes and few samples: under a minute (CI)")
    p.add_argument("--sizes", help="comma-separated parent sizes for the sweep, e.g. 64M,1G,4G (binary units); "
                                   "sizes that do not fit in MemAvailable are refused")
    p.add_argument("--out", default="bench-results", type=Path, help="output directory (default ./bench-results)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--replot", type=Path, metavar="DIR",
                   help="re-render report.md and the plots from DIR/results.json, measuring nothing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    args = parse_args(args_list)
    if args.replot:
        results = report.load(args.replot / "results.json")
        report.write(results, args.replot)
        plots.write(results, args.replot)
        print(f"re-rendered {args.replot}/report.md and plots")
        return 0
    cfg = config.quick() if args.quick else config.default()
    available = machine.mem_available()
    if args.sizes:
        try:
            sizes = sorted({config.parse_size(s) for s in args.sizes.split(",") if s.strip()})
            if not sizes:
                raise ValueError("--sizes is empty")
            config.check_sizes(sizes, available)
        except ValueError as exc:
            print(f"python -m bench: {exc}", file=sys.stderr)
            return 2
        cfg.sizes = sizes
    cfg = config.fit(cfg, available)
    try:
        cfloor.compiler()  # before anything is drawn: without one, the run ends with one line
    except cfloor.NoCompilerError as exc:
        print(f"python -m bench: {exc}", file=sys.stderr)
        return 3

    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

    from .run import run_all, total_ticks

    bar = tqdm(total=total_ticks(cfg), unit="step", disable=args.no_progress, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")

    def tick(label: str) -> None:
        bar.set_description_str(label[:40].ljust(40))
        bar.update(1)

    try:
        results = run_all(cfg, tick, args_list)
    except cfloor.NoCompilerError as exc:
        bar.close()
        print(f"python -m bench: {exc}", file=sys.stderr)
        return 3
    except WorkerError as exc:
        bar.close()
        print(f"python -m bench: a measurement failed: {exc}", file=sys.stderr)
        return 1
    bar.update(max(0, bar.total - bar.n))  # steps of suites that were skipped
    bar.close()
    out: Path = args.out
    tg = report.write(results, out)
    plots.write(results, out)
    print(report.summary(results, tg))
    print(f"\nwrote {out}/report.md, {out}/results.json and {len(plots.PLOTS)} plots "
          f"({results['meta']['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
