"""The standard library's subprocess and asyncio with pyproc.subprocess.install() active, against the same calls
without it: `python -m bench.installed [--rounds R] [--batch N] [--json]`.

Two rows, each measured in one process pinned to one CPU as the report's spawn series are (bench.harness),
interleaved (harness.interleave: a warm-up batch of each, then rounds of one batch per contender, in a balanced
order), with cfloor's minimal static executable as the child and both its outputs captured:

- "subprocess.run": subprocess.run(argv, capture_output=True), installed vs not;
- "asyncio.create_subprocess_exec + communicate": asyncio.create_subprocess_exec(argv, stdout=PIPE, stderr=PIPE)
  then communicate(), on one event loop, installed vs not.

install() and uninstall() are called between batches, outside the timed calls.  The speed-up is standard /
installed (> 1: the installed module is faster): the median of all samples, with the lowest and highest
same-round ratio.  The issue's targets: >= 1.4 for subprocess.run, >= 1.5 for asyncio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pyproc.subprocess as pyproc_subprocess

from . import cfloor, tied
from .harness import Runner, Series, fmt_ns, interleave, pinned, ratio, spawn_cpu

ROWS = ("subprocess.run", "asyncio.create_subprocess_exec + communicate")
TARGETS = {"subprocess.run": 1.4, "asyncio.create_subprocess_exec + communicate": 1.5}


def _run_batch(exe: str) -> Runner:
    argv = [exe]

    def batch(n: int) -> list[int]:
        run = subprocess.run  # looked up per batch: installed or not, as the caller's code would see it
        times = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            done = run(argv, capture_output=True)
            times.append(time.perf_counter_ns() - t0)
            if done.returncode != 0:
                raise RuntimeError(f"{exe} exited with {done.returncode}")
        return times

    return batch


def _asyncio_batch(exe: str, loop: asyncio.AbstractEventLoop) -> Runner:
    pipe = subprocess.PIPE

    async def calls(n: int) -> list[int]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            proc = await asyncio.create_subprocess_exec(exe, stdout=pipe, stderr=pipe)
            await proc.communicate()
            times.append(time.perf_counter_ns() - t0)
            if proc.returncode != 0:
                raise RuntimeError(f"{exe} exited with {proc.returncode}")
        return times

    return lambda n: loop.run_until_complete(calls(n))


def _installed(batch: Runner) -> Runner:
    def run(n: int) -> list[int]:
        with pyproc_subprocess.installed():
            if subprocess.Popen is not pyproc_subprocess.Popen:
                raise RuntimeError("install() did not take effect")
            return batch(n)

    return run


def _standard(batch: Runner) -> Runner:
    def run(n: int) -> list[int]:
        if pyproc_subprocess.is_installed():
            raise RuntimeError("pyproc.subprocess is installed: the standard contender would not be standard")
        return batch(n)

    return run


def measure(exe: str | None = None, rounds: int = 15, batch: int = 200,
            tick: Callable[[], None] | None = None) -> dict[str, dict[str, Any]]:
    """Runs both rows and returns, per row (ROWS), {"standard": stats, "installed": stats, "speedup": ratio,
    "target": the issue's target}: stats are Series.stats() (ns: median, min, max, n), the speed-up is
    harness.ratio(standard, installed) ({"ratio", "min", "max"})."""
    exe = exe or str(cfloor.build().minimal)
    loop = asyncio.new_event_loop()
    # Short spawn+wait series, pinned to one CPU as the report's spawn series are (bench.harness: on a VM, a child the
    # scheduler puts on the other, idle CPU costs every way alike tens of microseconds, depending on what ran before).
    try:
        with pinned(spawn_cpu()):
            batches = {ROWS[0]: _run_batch(exe), ROWS[1]: _asyncio_batch(exe, loop)}
            results = {}
            for row, calls in batches.items():
                series: dict[str, Series] = interleave(
                    [("standard", _standard(calls)), ("installed", _installed(calls))], rounds, batch, tick=tick)
                results[row] = {"standard": series["standard"].stats(), "installed": series["installed"].stats(),
                                "speedup": ratio(series["standard"], series["installed"]), "target": TARGETS[row]}
            return results
    finally:
        loop.close()


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    """The results as a Markdown table."""
    lines = ["| call (minimal executable, both outputs captured) | standard | installed | speed-up | target |",
             "|---|---|---|---|---|"]
    for row, r in results.items():
        s = r["speedup"]
        lines.append(f"| {row} | {fmt_ns(r['standard']['median'])} | {fmt_ns(r['installed']['median'])} | "
                     f"{s['ratio']:.2f}x [{s['min']:.2f}, {s['max']:.2f}] | >= {r['target']}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.installed", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="rounds per row (default 15)")
    parser.add_argument("--batch", type=int, default=200, help="calls per contender per round (default 200)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    tied.tie_to_parent()
    if args.rounds < 1 or args.batch < 1:
        parser.error("--rounds and --batch must be at least 1")
    results = measure(rounds=args.rounds, batch=args.batch)
    print(json.dumps(results, indent=2) if args.json else "\n".join(table(results)))


if __name__ == "__main__":
    main()
