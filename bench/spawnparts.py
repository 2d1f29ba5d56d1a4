"""What each step of a CLONE_VM spawn costs, timed in C: `python -m bench.spawnparts [--rounds R]`.

The C program (cfloor's ``spawnparts``) spawns and reaps the minimal static executable in several ways, interleaved
in one process: vfork+execve+waitpid (the floor), clone(CLONE_VM|CLONE_VFORK) on its own stack, and that clone
with one more step each: a pidfd from CLONE_PIDFD or from pidfd_open() once clone returned, wait4 with rusage,
SIGPIPE and SIGXFSZ reset in the child, close_range in the child, all the steps pyproc's default engine takes;
and a capture (stdout and stderr on pipes read to end of file), alone and with those steps.
The main report (python -m bench) includes the same table; this runs it alone.  Both pin the C program to one CPU
(bench.harness.pinned), as the report's spawn series.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
from typing import Any

from . import cfloor
from .harness import fmt_ns, pinned, spawn_cpu

FLOOR = "vfork+execve+waitpid"
CLONE = "clone"
CAPTURE = "clone+capture_2_pipes"
STEPS = {
    FLOOR: "vfork + execve + waitpid: the floor",
    CLONE: "clone with CLONE_VM and CLONE_VFORK, on its own stack, + execve + waitpid",
    "clone+CLONE_PIDFD": "clone + a pidfd from CLONE_PIDFD (closed after the reap)",
    "clone+pidfd_open": "clone + a pidfd from pidfd_open() once clone returned (closed after the reap)",
    "clone+wait4_rusage": "clone + wait4 with rusage instead of waitpid",
    "clone+reset_2_signals": "clone + SIGPIPE and SIGXFSZ reset to SIG_DFL in the child (ignored in the parent)",
    "clone+close_range": "clone + close_range(3, ~0U, 0) in the child",
    "clone+all_of_pyproc": "clone + CLONE_PIDFD + wait4 rusage + the 2 resets + close_range: pyproc's default steps",
    CAPTURE: "clone + stdout and stderr on two pipes, read to end of file (poll): a capture",
    "clone+all_of_pyproc+capture": "pyproc's default steps + the capture: what run(capture=True) does in C",
}
"""The ways spawnparts measures (its names), with what each does."""


def measure(floors: cfloor.Floors, rounds: int) -> dict[str, list[int]]:
    """Per way, the median (ns) of each round's 10 spawns, from one run of the C program."""
    proc = subprocess.run([str(floors.spawnparts), str(rounds), str(floors.minimal)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"spawnparts failed: {proc.stderr.strip() or f'exit status {proc.returncode}'}")
    out = {}
    for line in proc.stdout.splitlines():
        name, *values = line.split()
        out[name] = [int(v) for v in values]
    if set(out) != set(STEPS) or any(len(v) != rounds for v in out.values()):
        raise RuntimeError(f"spawnparts printed unexpected ways: {sorted(out)}")
    return out


def summarize(rounds: dict[str, list[int]]) -> list[dict[str, Any]]:
    """One row per way: median, ratio to the floor (median / median, with the lowest and highest single-round
    ratio), and the time it adds to the plain clone."""
    floor, clone = statistics.median(rounds[FLOOR]), statistics.median(rounds[CLONE])
    rows = []
    for name, what in STEPS.items():
        median = statistics.median(rounds[name])
        per_round = [a / b for a, b in zip(rounds[name], rounds[FLOOR], strict=True)]
        rows.append({"way": name, "what": what, "median_ns": median, "vs_floor": median / floor,
                     "vs_floor_min": min(per_round), "vs_floor_max": max(per_round),
                     "added_to_clone_ns": median - clone})
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as a Markdown table."""
    lines = ["| way | median | vs floor | added to the plain clone |", "|---|---|---|---|"]
    for r in rows:
        added = "" if r["way"] in (FLOOR, CLONE) else f"{r['added_to_clone_ns'] / 1e3:+.2f} µs"
        lines.append(f"| {r['what']} | {fmt_ns(r['median_ns'])} | {r['vs_floor']:.3f}x "
                     f"[{r['vs_floor_min']:.2f}, {r['vs_floor_max']:.2f}] | {added} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.spawnparts", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000, help="rounds of 10 spawns per way (default 1000)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        floors = cfloor.build()
    except cfloor.NoCompilerError as exc:
        parser.exit(3, f"python -m bench.spawnparts: {exc}\n")
    with pinned(spawn_cpu()):  # as in the report: the children on their parent's CPU (bench.harness)
        rounds = measure(floors, args.rounds)
    print("\n".join(table(summarize(rounds))))


if __name__ == "__main__":
    main()
