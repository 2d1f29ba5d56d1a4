"""pyproc.run(capture=True) against subprocess.run(capture_output=True) across output sizes (issue 3's medium-size
regression): `python -m bench.medium [--rounds R] [--sizes 64K,1M,...]`.

For each size N, `head -c N /dev/zero` is captured both ways, interleaved (pyproc, subprocess, then subprocess,
pyproc, ... the order alternating every round) after a warm-up of each, in a new Python process per size and
scenario:
- fresh: nothing big was allocated in that process before;
- after 1 GiB: that process first captured 1 GiB both ways, so glibc's dynamic mmap threshold has risen to its
  maximum (32 MiB) and medium bytes objects come from recycled heap memory.
Prints per size the medians with min and max of both, and median(subprocess) / median(pyproc) with, in brackets,
the lowest and highest ratio of single rounds (>= 1.0: pyproc is not slower).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from .config import GiB, fmt_size, parse_size

DEFAULT_SIZES = "64K,1M,2M,4M,8M,16M,32M,64M"


def _rounds_for(size: int, rounds: int) -> int:
    """Fewer rounds for the big sizes (each call takes longer), at least 15."""
    return rounds if size <= 4 << 20 else max(15, rounds * (4 << 20) // size)


def measure(size: int, rounds: int, after: bool) -> dict[str, list[int]]:
    """In this process: the interleaved samples (ns) of both ways for `size` bytes."""
    import pyproc

    if after:
        big = ["head", "-c", str(GiB), "/dev/zero"]
        assert len(pyproc.run(big, capture=True).stdout) == GiB
        assert len(subprocess.run(big, capture_output=True, check=True).stdout) == GiB
    argv = ["head", "-c", str(size), "/dev/zero"]

    def ours() -> int:
        return len(pyproc.run(argv, capture=True).stdout)

    def theirs() -> int:
        return len(subprocess.run(argv, capture_output=True).stdout)

    ways = {"pyproc": ours, "subprocess": theirs}
    for call in (ours, theirs, ours, theirs):  # warm-up
        call()
    samples: dict[str, list[int]] = {"pyproc": [], "subprocess": []}
    for r in range(rounds):
        for name in (("pyproc", "subprocess") if r % 2 == 0 else ("subprocess", "pyproc")):
            t0 = time.perf_counter_ns()
            got = ways[name]()
            samples[name].append(time.perf_counter_ns() - t0)
            if got != size:
                raise RuntimeError(f"{name} captured {got} bytes, expected {size}")
    return samples


def _row(size: int, s: dict[str, list[int]]) -> str:
    p, q = s["pyproc"], s["subprocess"]
    per_round = [b / a for a, b in zip(p, q, strict=True)]
    ratio = statistics.median(q) / statistics.median(p)
    return (f"{fmt_size(size):>8}  pyproc {statistics.median(p) / 1e6:8.3f} ms [{min(p) / 1e6:.3f}, "
            f"{max(p) / 1e6:.3f}]  subprocess {statistics.median(q) / 1e6:8.3f} ms [{min(q) / 1e6:.3f}, "
            f"{max(q) / 1e6:.3f}]  subprocess/pyproc {ratio:.3f}x [{min(per_round):.2f}, {max(per_round):.2f}]"
            f"  n={len(p)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60, help="rounds at sizes up to 4 MiB (fewer above)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated sizes (default {DEFAULT_SIZES})")
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "SCENARIO"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child of the run below: one size, one scenario, JSON out
        size = int(args.one[0])
        print(json.dumps(measure(size, _rounds_for(size, args.rounds), args.one[1] == "after")))
        return
    sizes = [parse_size(x) for x in args.sizes.split(",")]
    for scenario, title in (("fresh", "fresh process"), ("after", "after a 1 GiB capture in the same process")):
        print(f"# {title}: `head -c N /dev/zero`, interleaved, medians [min, max]", flush=True)
        for size in sizes:
            proc = subprocess.run([sys.executable, "-m", "bench.medium", "--rounds", str(args.rounds), "--one",
                                   str(size), scenario], capture_output=True, text=True, check=True)
            print(_row(size, json.loads(proc.stdout)), flush=True)


if __name__ == "__main__":
    main()
