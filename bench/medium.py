"""pyproc.run(capture=True) against subprocess.run(capture_output=True) across output sizes (issue 3's medium-size
regression guard, restated by issue 19): `python -m bench.medium [--rounds R] [--processes P] [--sizes 64K,...]`.

For each size N, `head -c N /dev/zero` is captured three ways, interleaved in one process (a warm-up of each, then
rounds of one call per way in bench.harness.balanced_order): pyproc.run(capture=True),
subprocess.run(capture_output=True), and the C floor -- libfloor's floor_read_poll: both outputs on pipes, polled,
stdout's pipe enlarged at 64 KiB, read into memory reused by every call (no result object is made): the least a
reader of this child's output was measured to pay.  Two scenarios:
- fresh: nothing big was allocated in that process before;
- after 1 GiB: that process first captured 1 GiB both ways, so glibc's dynamic mmap threshold has risen to its
  maximum (32 MiB) and medium bytes objects come from recycled heap memory.
Each (size, scenario) runs in P new processes (default 5): from 2 to 8 MiB the time of a capture depends on where
the scheduler happens to put the child and the reader for that process's whole life (one process's
subprocess/pyproc scattered from 0.75x to 1.27x at 4 MiB, and the C floor's from 0.83x to 1.27x of pyproc's), so
one process is one draw of that.  Printed per size: each way's median time (the median of the processes'
medians), median(subprocess) / median(pyproc) and median(C floor) / median(pyproc) as the median over the
processes of each process's ratio, in brackets the lowest and highest process (>= 1.0: pyproc is not slower).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from . import cfloor, tied
from .config import GiB, fmt_size, parse_size
from .harness import balanced_order

DEFAULT_SIZES = "64K,1M,2M,4M,8M,16M,32M,64M"
WAYS = ("pyproc", "subprocess", "C floor")


def _rounds_for(size: int, rounds: int) -> int:
    """Fewer rounds for the big sizes (each call takes longer), at least 15."""
    return rounds if size <= 4 << 20 else max(15, rounds * (4 << 20) // size)


def _floor(size: int) -> Callable[[], int]:
    """One capture of `head -c size /dev/zero` by libfloor's floor_read_poll, into a buffer kept for every call."""
    func = ctypes.CDLL(str(cfloor.build().libfloor)).floor_read_poll
    func.restype = ctypes.c_longlong
    func.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t)
    head = shutil.which("head") or "/usr/bin/head"
    c_argv = (ctypes.c_char_p * 5)(head.encode(), b"-c", str(size).encode(), b"/dev/zero", None)
    buf = ctypes.create_string_buffer(size + 1)  # one byte more: a longer output would show

    def call() -> int:
        return int(func(ctypes.cast(c_argv, ctypes.c_void_p), buf, size + 1))
    return call


def measure(size: int, rounds: int, after: bool) -> dict[str, list[int]]:
    """In this process: the interleaved samples (ns) of every way for `size` bytes."""
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

    ways = {"pyproc": ours, "subprocess": theirs, "C floor": _floor(size)}
    for call in (*ways.values(), *ways.values()):  # warm-up
        call()
    samples: dict[str, list[int]] = {name: [] for name in WAYS}
    for r in range(rounds):
        for k in balanced_order(len(WAYS), r):
            name = WAYS[k]
            t0 = time.perf_counter_ns()
            got = ways[name]()
            samples[name].append(time.perf_counter_ns() - t0)
            if got != size:
                raise RuntimeError(f"{name} captured {got} bytes, expected {size}")
    return samples


def summarize(runs: list[dict[str, list[int]]]) -> dict[str, float]:
    """Per way, the median of the processes' medians (ns); per ratio (subprocess / pyproc, C floor / pyproc), the
    median over the processes of each process's median ratio, with the lowest and highest process."""
    medians = [{name: statistics.median(run[name]) for name in WAYS} for run in runs]
    out = {f"{name} ns": statistics.median(m[name] for m in medians) for name in WAYS}
    for name in ("subprocess", "C floor"):
        ratios = [m[name] / m["pyproc"] for m in medians]
        out[name] = statistics.median(ratios)
        out[f"{name} min"], out[f"{name} max"] = min(ratios), max(ratios)
    out["n"] = sum(len(run["pyproc"]) for run in runs)
    return out


def _row(size: int, s: dict[str, float], processes: int) -> str:
    return (f"{fmt_size(size):>8}  pyproc {s['pyproc ns'] / 1e6:8.3f} ms  subprocess {s['subprocess ns'] / 1e6:8.3f} "
            f"ms  C floor {s['C floor ns'] / 1e6:8.3f} ms  subprocess/pyproc {s['subprocess']:.3f}x "
            f"[{s['subprocess min']:.2f}, {s['subprocess max']:.2f}]  C floor/pyproc {s['C floor']:.3f}x "
            f"[{s['C floor min']:.2f}, {s['C floor max']:.2f}]  processes={processes} n={int(s['n'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60, help="rounds per process at sizes up to 4 MiB (fewer "
                        "above)")
    parser.add_argument("--processes", type=int, default=5, help="processes per size and scenario (default 5)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated sizes (default {DEFAULT_SIZES})")
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "SCENARIO"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    tied.tie_to_parent()
    if args.rounds < 1 or args.processes < 1:
        parser.error("--rounds and --processes must be at least 1")
    if args.one:  # a child of the run below: one size, one scenario, JSON out
        size = int(args.one[0])
        print(json.dumps(measure(size, _rounds_for(size, args.rounds), args.one[1] == "after")))
        return
    sizes = [parse_size(x) for x in args.sizes.split(",")]
    try:
        cfloor.build()
    except cfloor.NoCompilerError as exc:
        parser.exit(3, f"python -m bench.medium: {exc}\n")
    for scenario, title in (("fresh", "fresh process"), ("after", "after a 1 GiB capture in the same process")):
        print(f"# {title}: `head -c N /dev/zero`, interleaved; medians over {args.processes} processes "
              "[lowest, highest process]", flush=True)
        for size in sizes:
            runs = []
            for _ in range(args.processes):
                proc = subprocess.run([sys.executable, "-m", "bench.medium", "--rounds", str(args.rounds), "--one",
                                       str(size), scenario], capture_output=True, text=True, check=True,
                                      env=tied.child_env())
                runs.append(json.loads(proc.stdout))
            print(_row(size, summarize(runs), args.processes), flush=True)


if __name__ == "__main__":
    main()
