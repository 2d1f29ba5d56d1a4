"""pyproc.subprocess against the standard library's subprocess, and the native API's ratio for the same work.

    python -m bench.bench_subprocess [--rounds N] [--batch N]

Issue 7's target: Popen + communicate and run(capture_output=True) through pyproc.subprocess reach the same
speed-up over the standard library as the native API (pyproc.io.run when it exists, else pyproc.spawn + reading
the pipes), within 10%.  Every contender runs in the same process, interleaved: after a warm-up, each round runs a
batch of every contender in turn, in harness.balanced_order (each follows every other one equally often).
Reported: the median time per call with min and max over the rounds' batch medians, and each ratio stdlib /
contender (> 1: faster than the standard library) as the median of the per-round ratios, with min and max.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import pyproc
import pyproc.subprocess as psub

from .harness import balanced_order

Call = Callable[[], None]


def native_capture(argv: list[str]) -> Call:
    """The native API's capture: pyproc.io.run when the io branch is there, else spawn + read + wait."""
    io = getattr(pyproc, "run", None)
    if io is not None:
        return lambda: io(argv, capture=True) and None
    pipe = pyproc.PIPE

    def call() -> None:
        with pyproc.spawn(argv, stdout=pipe, stderr=pipe) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            proc.stdout.read()
            proc.stderr.read()
    return call


def popen_communicate(module: object, argv: list[str]) -> Call:
    popen = module.Popen  # type: ignore[attr-defined]
    pipe = module.PIPE  # type: ignore[attr-defined]

    def call() -> None:
        with popen(argv, stdout=pipe, stderr=pipe) as p:
            p.communicate()
    return call


def run_capture(module: object, argv: list[str]) -> Call:
    run = module.run  # type: ignore[attr-defined]
    return lambda: run(argv, capture_output=True) and None


def measure(contenders: dict[str, Call], rounds: int, batch: int) -> dict[str, list[float]]:
    """Per-round batch medians (seconds per call) for each contender, interleaved in balanced_order."""
    names = list(contenders)
    for name in names:  # warm-up
        for _ in range(batch):
            contenders[name]()
    medians: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in (names[k] for k in balanced_order(len(names), r)):
            call = contenders[name]
            times = []
            for _ in range(batch):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            medians[name].append(statistics.median(times))
    return medians


def report(title: str, medians: dict[str, list[float]], baseline: str) -> None:
    print(f"\n{title}")
    base = medians[baseline]
    for name, values in medians.items():
        line = (f"  {name:34s} {statistics.median(values) * 1e6:9.1f} us/call "
                f"(min {min(values) * 1e6:.1f}, max {max(values) * 1e6:.1f})")
        if name != baseline:
            ratios = [b / v for b, v in zip(base, values, strict=True)]
            line += (f"   stdlib/this = {statistics.median(ratios):.2f} "
                     f"(min {min(ratios):.2f}, max {max(ratios):.2f})")
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=20)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, pyproc {pyproc.__version__}, native capture: "
          f"{'pyproc.run' if hasattr(pyproc, 'run') else 'pyproc.spawn + read'}; "
          f"{args.rounds} rounds x {args.batch} calls")
    for argv in (["true"], ["head", "-c", "1048576", "/dev/zero"]):
        contenders = {
            "subprocess run(capture_output)": run_capture(subprocess, argv),
            "pyproc.subprocess run(capture)": run_capture(psub, argv),
            "subprocess Popen+communicate": popen_communicate(subprocess, argv),
            "pyproc.subprocess Popen+communicate": popen_communicate(psub, argv),
            "native pyproc capture": native_capture(argv),
        }
        medians = measure(contenders, args.rounds, args.batch)
        shown = " ".join(argv)
        report(f"[{shown}] run(capture_output=True)", {k: medians[k] for k in (
            "subprocess run(capture_output)", "pyproc.subprocess run(capture)", "native pyproc capture")},
            "subprocess run(capture_output)")
        report(f"[{shown}] Popen + communicate()", {k: medians[k] for k in (
            "subprocess Popen+communicate", "pyproc.subprocess Popen+communicate", "native pyproc capture")},
            "subprocess Popen+communicate")
        # The target: pyproc.subprocess's speed-up over subprocess = the native API's, within 10%.  The ratio of
        # the two speed-ups, per round: (std/ps) / (std/native) = native/ps, ideally 1.
        native = medians["native pyproc capture"]
        for name in ("pyproc.subprocess run(capture)", "pyproc.subprocess Popen+communicate"):
            base = "subprocess run(capture_output)" if "run" in name else "subprocess Popen+communicate"
            ours = [s / p for s, p in zip(medians[base], medians[name], strict=True)]
            theirs = [s / n for s, n in zip(medians[base], native, strict=True)]
            rel = [o / t for o, t in zip(ours, theirs, strict=True)]
            print(f"  speed-up of {name} / speed-up of native = {statistics.median(rel):.2f} "
                  f"(min {min(rel):.2f}, max {max(rel):.2f}); target >= 0.90")


if __name__ == "__main__":
    main()
