"""What a run measures: the embedded default (this machine: 2 cores, 24 GiB; about six minutes), --quick (CI, under
a minute), and --sizes (the parent sizes of the sweep, each refused when it does not fit in MemAvailable)."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

SPAWN_METHODS = ("pyproc default", "pyproc clone", "pyproc vfork", "pyproc posix_spawn", "pyproc fork",
                 "subprocess.run", "pyproc.subprocess.run", "os.posix_spawn", "os.fork+execv", "C floor",
                 "C floor, in this process", "pyproc clone, C only", "pyproc clone, bare C calls")
"""The spawn+wait head-to-head, from a small parent.  "C floor" is a small C program's loop; "C floor, in this
process" the same vfork+execve+waitpid timed in C but called from the Python worker (what the kernel work costs
from a Python parent); "pyproc clone, C only" is pyproc's clone engine timed in C (pyproc.cow.ForkTimer) from the
same parent: what pyproc's call costs without its Python layer; "pyproc clone, bare C calls" makes from Python
only the two C calls pyproc.spawn(argv).wait() makes (argv packed beforehand): what any Python wrapper over them
pays at least."""

SWEEP_METHODS = ("pyproc default", "pyproc vfork", "pyproc posix_spawn", "pyproc fork", "subprocess.run",
                 "os.posix_spawn", "os.fork+execv", "multiprocessing fork", "multiprocessing spawn",
                 "multiprocessing forkserver")
"""Ways of spawning measured against parent size (dirty 4 KiB pages)."""

SWEEP_METHODS_OTHER_STATES = ("pyproc default", "pyproc fork", "os.fork+execv", "multiprocessing fork")
"""The subset measured for the other memory states (clean, THP), to keep the run short."""

FORK_STATES = (("4k", "dirty"), ("4k", "clean"), ("4k", "fragmented"), ("thp", "dirty"), ("hugetlb", "dirty"))
"""The parent states pyproc.cow.measure_fork sweeps (timed in C)."""

FORK_METHODS = ("fork_exit", "fork_exec", "clone", "vfork", "posix_spawn", "fork")
"""What measure_fork times: plain C fork+_exit / fork+execve, and pyproc's engines (the C call, no Python)."""

FRAGMENTED_MAX = 128 * MiB
"""'fragmented' makes one VMA per 4 KiB page, bounded by vm.max_map_count (65530 by default): sizes above this
are measured at this size instead."""

THROUGHPUT_METHODS = ("pyproc default", "pyproc fork", "subprocess.run", "os.posix_spawn", "C floor")

# A big-parent worker needs its region plus the interpreter plus room for everyone else on the machine.
MEMORY_MARGIN = 1 * GiB


@dataclass
class Config:
    """Every knob of a run (all recorded in results.json)."""

    name: str
    spawn_rounds: int
    spawn_batch: int
    parts_rounds: int
    """rounds of bench.spawnparts (what each step of a spawn costs, timed in C; 10 spawns per way a round)."""
    sizes: list[int]
    states: list[str]
    sweep_rounds: int
    sweep_batch: int
    io_size: int
    io_rounds: int
    medium_io_size: int
    """capture of a medium output (issue 3's regression guard: pyproc must not lose to subprocess there)."""
    medium_io_rounds: int
    medium_io_batch: int
    minimal_io_rounds: int
    minimal_io_batch: int
    throughput_seconds: float
    throughput_rounds: int
    cow_sizes: list[int]
    """measure_cow's region sizes (it needs twice the size); measure_fork sweeps `sizes`."""
    cow_repeat: int
    jobs_ks: list[int]
    """K values of the many-children comparison (issue 15): 1, 2, 4 and the CPU count."""
    jobs_batch: int
    """jobs per batch of the minimal executable (one sample: the batch's time per job), the same for every way."""
    jobs_batch_true: int
    """the same for /bin/true (a dynamic program: several times slower per job)."""
    jobs_per_child: int
    """at least this many jobs per child in a batch (K x this at large K), so that the start and drain of the K
    children are a small part of it."""
    jobs_rounds: int
    jobs_seq_batch: int
    """calls per batch of sync pyproc.run vs `await aio.run`, one after another (per-call samples)."""
    jobs_seq_rounds: int
    jobs_rss_count: int
    """jobs run_many runs from a generator in a process of its own, for its peak RSS (issue 15: 200k)."""
    installed_rounds: int
    installed_batch: int
    """python -m bench.installed (issue 16): rounds, and calls per contender per round, of each row."""
    dask_jobs: int
    """python -m bench.dask_bench (issue 18): jobs per way and round on a 2-worker LocalCluster (the issue: 20k)."""
    dask_rounds: int
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def default() -> Config:
    """This machine's run: about six minutes (the many-children part, issue 15, about one of them)."""
    return Config(name="default", spawn_rounds=60, spawn_batch=10, parts_rounds=600,
                  sizes=[16 * MiB, 64 * MiB, 256 * MiB, 1 * GiB, 4 * GiB], states=["dirty", "clean", "thp"],
                  sweep_rounds=8, sweep_batch=3, io_size=1 * GiB, io_rounds=9, medium_io_size=4 * MiB,
                  medium_io_rounds=30, medium_io_batch=10, minimal_io_rounds=30,
                  minimal_io_batch=20, throughput_seconds=1.0, throughput_rounds=3, cow_sizes=[256 * MiB],
                  cow_repeat=7, jobs_ks=_jobs_ks(), jobs_batch=300, jobs_batch_true=100, jobs_per_child=25,
                  jobs_rounds=5, jobs_seq_batch=50, jobs_seq_rounds=20, jobs_rss_count=200_000,
                  installed_rounds=15, installed_batch=200, dask_jobs=20_000, dask_rounds=3)


def quick() -> Config:
    """CI: the same shape, small sizes and few samples (under a minute)."""
    return Config(name="quick", spawn_rounds=5, spawn_batch=5, parts_rounds=10, sizes=[16 * MiB, 256 * MiB],
                  states=["dirty", "clean"], sweep_rounds=3, sweep_batch=2, io_size=32 * MiB, io_rounds=3,
                  medium_io_size=4 * MiB, medium_io_rounds=4, medium_io_batch=5,
                  minimal_io_rounds=4, minimal_io_batch=5, throughput_seconds=0.3, throughput_rounds=1,
                  cow_sizes=[32 * MiB], cow_repeat=2, jobs_ks=_jobs_ks(), jobs_batch=40, jobs_batch_true=15,
                  jobs_per_child=5, jobs_rounds=2, jobs_seq_batch=10, jobs_seq_rounds=3, jobs_rss_count=3000,
                  installed_rounds=2, installed_batch=10, dask_jobs=400, dask_rounds=1)


def _jobs_ks() -> list[int]:
    """1, 2, 4 and the CPUs this process may use (run_many's default)."""
    return sorted({1, 2, 4, len(os.sched_getaffinity(0))})


_UNITS = {"": 1, "b": 1, "k": KiB, "kb": KiB, "kib": KiB, "m": MiB, "mb": MiB, "mib": MiB, "g": GiB, "gb": GiB,
          "gib": GiB, "t": GiB * 1024, "tib": GiB * 1024}


def parse_size(text: str) -> int:
    """'64M', '1G', '4GiB', '512MiB', '1048576' -> bytes (binary units); ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 64M, 1G, 4GiB, 1048576)")
    size = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if size <= 0:
        raise ValueError(f"a parent size must be positive, not {text!r}")
    return size


def fmt_size(size: int) -> str:
    """Bytes as the shortest exact binary unit: 4 GiB, 64 MiB, 1536 KiB."""
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} B"


class SizeError(ValueError):
    """A requested parent size does not fit in this machine's available memory."""


def check_sizes(sizes: list[int], available: int) -> None:
    """Refuses (SizeError) any size that does not fit in MemAvailable minus the margin."""
    room = available - MEMORY_MARGIN
    too_big = [s for s in sizes if s > room]
    if too_big:
        raise SizeError(
            f"parent size(s) {', '.join(fmt_size(s) for s in too_big)} do not fit: MemAvailable is "
            f"{available / GiB:.1f} GiB and the benchmark keeps {fmt_size(MEMORY_MARGIN)} free, so the largest "
            f"parent it will build is {max(room, 0) / GiB:.1f} GiB; choose smaller --sizes")


def fit(cfg: Config, available: int) -> Config:
    """The embedded defaults, trimmed to what fits this machine (noted in the report) instead of refused."""
    room = available - MEMORY_MARGIN
    kept = [s for s in cfg.sizes if s <= room]
    if len(kept) < len(cfg.sizes):
        cfg.notes.append(f"parent sizes above {room / GiB:.1f} GiB left out: MemAvailable is "
                         f"{available / GiB:.1f} GiB")
        cfg.sizes = kept or [min(64 * MiB, max(room, MiB))]
    while cfg.io_size > MiB and 3 * cfg.io_size > room:
        cfg.io_size //= 2
        cfg.notes.append(f"I/O size lowered to {fmt_size(cfg.io_size)} to fit MemAvailable")
    cfg.cow_sizes = [s for s in cfg.cow_sizes if 2 * s <= room] or [min(32 * MiB, max(room // 2, MiB))]
    return cfg
