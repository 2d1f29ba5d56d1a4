"""measure_fork(), measure_cow(): what fork, spawn and copy-on-write cost, measured on this machine.

Every figure is taken in C (csrc/cow.c) with CLOCK_MONOTONIC around the work itself; the children of a measurement
run only C.  Python checks the arguments, refuses what the machine cannot hold before anything is allocated, lays
out the samples (interleaved: A B C A B C ...) and packs the results into dataclasses with every sample, its median,
min and max, and ``to_dict()`` for JSON.

The parent's memory is a *region* of private anonymous memory in one of these kinds and states:

- pages ``"4k"``: ordinary pages (MADV_NOHUGEPAGE, so that a THP mode of "always" does not change the kind);
  ``"thp"``: MADV_HUGEPAGE on a range aligned to the THP size (hpage_pmd_size: 2 MiB on x86-64; whether the
  kernel gave huge pages is reported in ``RegionInfo.anon_huge_kib``, never assumed); ``"hugetlb"``: MAP_HUGETLB,
  only where huge pages are reserved (``HugePages_Free`` in /proc/meminfo), else :class:`PagesUnavailable` says why.
- state ``"clean"``: mapped, never touched (no page tables to copy); ``"dirty"``: one byte written in every 4 KiB
  page (the write is timed: it is the parent's first-touch cost); ``"fragmented"``: dirty, then every other
  (system, 4 KiB on x86-64) page made read-only, so the mapping splits into one VMA per page (bounded by
  ``vm.max_map_count``: a size that would pass it is refused before allocating).

Memory is released after every measurement (the result records the parent's RSS before and after).  A size that
does not fit in MemAvailable minus a margin (see :func:`memory_limit`) raises MemoryError before any allocation:
a measurement never wakes the OOM killer.

Decisions where the issue was silent: sizes are rounded up to whole 4 KiB and system pages (huge pages for
hugetlb) and the rounded size is reported; :func:`measure_cow` always uses a dirty region (copy-on-write needs the
parent's pages to exist), and its parent first-touch figure is the dirtying of that region, one fresh region per
sample; the fork and spawn children run ``program`` (default /bin/true), which must exit with status 0.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ._lib import ffi, lib
from .errors import CalledProcessError, os_error
from .spawn import ENGINE_CODES, Request, failure_message, prepare

PAGE_SIZE = 4096
"""Every per-page figure is per 4 KiB page touched, whatever the page kind."""

GiB = 1 << 30
MiB = 1 << 20

PAGE_KINDS = ("4k", "thp", "hugetlb")
"""The kinds of pages a region can have."""

STATES = ("clean", "dirty", "fragmented")
"""The states a region can be in when the parent forks."""

METHODS = ("fork_exit", "fork_exec", "clone", "vfork", "posix_spawn", "fork", "auto")
"""What measure_fork can time: "fork_exit" = fork() + _exit(0) in the child + wait; "fork_exec" = fork() + execve
of the program + wait (both plain C, the floor); the others = pyproc's spawn engine of that name + wait."""

DEFAULT_METHODS = ("fork_exit", "fork_exec", "clone", "vfork", "posix_spawn", "fork")

COW_PHASES = ("first_touch", "read", "write", "rewrite")
"""The phases of measure_cow: the parent's first touch of fresh memory, then in the child after fork: read-touch
(pages still shared), write-touch (the copy-on-write copies) and rewrite (pages already copied)."""

_PAGES_CODES = {
    "4k": lib.PYPROC_COW_PAGES_4K,
    "thp": lib.PYPROC_COW_PAGES_THP,
    "hugetlb": lib.PYPROC_COW_PAGES_HUGETLB,
}
_STATE_CODES = {"clean": lib.PYPROC_COW_CLEAN, "dirty": lib.PYPROC_COW_DIRTY, "fragmented": lib.PYPROC_COW_FRAGMENTED}

_MAPS_MARGIN = 1024  # VMAs left free for the process's own needs when fragmenting

Progress = Callable[[int, int], None]
"""progress(done, total): called after each sample (warm-up samples included)."""


class PagesUnavailable(OSError):
    """The machine cannot give this kind of pages (no hugetlb pages reserved, THP disabled); str() says why."""


# ---- results -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Samples:
    """The samples of one quantity, in the order they were taken, with their median, min and max."""

    values: tuple[float, ...]
    unit: str

    @property
    def median(self) -> float:
        """The median sample (nan when there are none)."""
        return float(statistics.median(self.values)) if self.values else float("nan")

    @property
    def min(self) -> float:
        """The smallest sample (nan when there are none)."""
        return float(min(self.values)) if self.values else float("nan")

    @property
    def max(self) -> float:
        """The largest sample (nan when there are none)."""
        return float(max(self.values)) if self.values else float("nan")

    def scaled(self, factor: float, unit: str) -> Samples:
        """Every sample multiplied by factor, in the new unit."""
        return Samples(tuple(v * factor for v in self.values), unit)

    def to_dict(self) -> dict[str, Any]:
        """{"unit", "values", "median", "min", "max"}: JSON-ready."""
        return {"unit": self.unit, "values": list(self.values), "median": self.median, "min": self.min,
                "max": self.max}


@dataclass(frozen=True)
class RegionInfo:
    """The parent's region as it was measured.

    size: bytes (rounded up to whole pages); n_pages: 4 KiB pages in it; first_touch_ns / first_touch_faults: the
    dirtying write loop and its minor faults (None when clean); n_protected / protect_ns: the read-only pages of a
    fragmented region and the mprotect loop; vmas_added: lines /proc/self/maps gained; rss_kib /
    anon_huge_kib: what Rss and AnonHugePages of /proc/self/smaps_rollup gained (anon_huge_kib > 0: the kernel gave
    transparent huge pages); thp_mode: /sys/kernel/mm/transparent_hugepage/enabled's choice.
    """

    size: int
    pages: str
    state: str
    n_pages: int
    first_touch_ns: int | None
    first_touch_faults: int | None
    n_protected: int
    protect_ns: int | None
    vmas_added: int
    rss_kib: int
    anon_huge_kib: int
    thp_mode: str

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return {
            "size": self.size, "pages": self.pages, "state": self.state, "n_pages": self.n_pages,
            "first_touch_ns": self.first_touch_ns, "first_touch_faults": self.first_touch_faults,
            "n_protected": self.n_protected, "protect_ns": self.protect_ns, "vmas_added": self.vmas_added,
            "rss_kib": self.rss_kib, "anon_huge_kib": self.anon_huge_kib, "thp_mode": self.thp_mode,
        }


@dataclass(frozen=True)
class ForkResult:
    """What measure_fork saw: for each method, the time from before the fork/spawn to after the child was reaped.

    times_ns maps each method of METHODS asked for to its Samples (ns), in the order given; the samples of all
    methods were taken interleaved.  rss_before_kib / rss_after_kib: the parent's RSS before the region was made
    and after it was released.
    """

    size: int
    pages: str
    state: str
    program: str
    repeat: int
    warmup: int
    region: RegionInfo
    times_ns: dict[str, Samples]
    rss_before_kib: int
    rss_after_kib: int

    def median_ns(self, method: str) -> float:
        """The median time of one method, in ns."""
        return self.times_ns[method].median

    def to_dict(self) -> dict[str, Any]:
        """Everything as a JSON-ready dict (json.dumps(result.to_dict()) works)."""
        return {
            "kind": "fork", "size": self.size, "pages": self.pages, "state": self.state, "program": self.program,
            "repeat": self.repeat, "warmup": self.warmup, "region": self.region.to_dict(),
            "times_ns": {name: s.to_dict() for name, s in self.times_ns.items()},
            "rss_before_kib": self.rss_before_kib, "rss_after_kib": self.rss_after_kib,
        }

    def to_json(self, **kwargs: Any) -> str:
        """json.dumps(self.to_dict(), **kwargs)."""
        return json.dumps(self.to_dict(), **kwargs)


@dataclass(frozen=True)
class CowPhase:
    """One phase of measure_cow: its time (ns) and minor faults per sample, over `pages` 4 KiB pages touched."""

    name: str
    pages: int
    ns: Samples
    faults: Samples

    @property
    def ns_per_page(self) -> Samples:
        """Time per 4 KiB page touched, in ns."""
        return self.ns.scaled(1.0 / self.pages, "ns/page")

    @property
    def ms_per_gib(self) -> Samples:
        """Time per GiB touched, in ms."""
        return self.ns.scaled(GiB / (self.pages * PAGE_SIZE) / 1e6, "ms/GiB")

    @property
    def faults_per_page(self) -> Samples:
        """Minor faults per 4 KiB page touched (about 1 when every page faulted, 1/512 per 2 MiB page)."""
        return self.faults.scaled(1.0 / self.pages, "faults/page")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ns, ns_per_page, ms_per_gib, faults, faults_per_page (each a Samples dict) and pages."""
        return {
            "name": self.name, "pages": self.pages, "ns": self.ns.to_dict(),
            "ns_per_page": self.ns_per_page.to_dict(), "ms_per_gib": self.ms_per_gib.to_dict(),
            "faults": self.faults.to_dict(), "faults_per_page": self.faults_per_page.to_dict(),
        }


@dataclass(frozen=True)
class CowResult:
    """What measure_cow saw: phases maps each of COW_PHASES to its CowPhase (samples in the order taken).

    anon_huge_kib: per sample, the AnonHugePages the parent's region got (THP: how much was really huge);
    major_faults: per sample, the child's major faults (expected 0); regions: the RegionInfo of each sample's
    fresh region.
    """

    size: int
    pages: str
    n_pages: int
    repeat: int
    phases: dict[str, CowPhase]
    anon_huge_kib: Samples
    major_faults: Samples
    regions: tuple[RegionInfo, ...]
    rss_before_kib: int
    rss_after_kib: int

    def to_dict(self) -> dict[str, Any]:
        """Everything as a JSON-ready dict."""
        return {
            "kind": "cow", "size": self.size, "pages": self.pages, "n_pages": self.n_pages, "repeat": self.repeat,
            "phases": {name: phase.to_dict() for name, phase in self.phases.items()},
            "anon_huge_kib": self.anon_huge_kib.to_dict(), "major_faults": self.major_faults.to_dict(),
            "regions": [r.to_dict() for r in self.regions],
            "rss_before_kib": self.rss_before_kib, "rss_after_kib": self.rss_after_kib,
        }

    def to_json(self, **kwargs: Any) -> str:
        """json.dumps(self.to_dict(), **kwargs)."""
        return json.dumps(self.to_dict(), **kwargs)


# ---- the machine -------------------------------------------------------------------------------------------


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (kB fields) or counts (HugePages_*)."""
    out: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if not parts:
                continue
            value = int(parts[0])
            out[name] = value * 1024 if len(parts) > 1 and parts[1] == "kB" else value
    return out


def _rollup() -> dict[str, int]:
    """/proc/self/smaps_rollup's kB fields."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    out[name] = int(parts[0])
    except OSError:
        pass
    return out


def rss_kib() -> int:
    """This process's resident set size, in KiB (/proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _map_count() -> int:
    with open("/proc/self/maps", "rb") as f:
        return sum(1 for _ in f)


def _max_map_count() -> int:
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65530


def thp_size() -> int:
    """The size of a transparent huge page (hpage_pmd_size in sysfs; 0 without THP support)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def _unit() -> int:
    """Sizes are rounded up to a multiple of this: 4 KiB (the unit of the figures) and the system page size."""
    return max(PAGE_SIZE, os.sysconf("SC_PAGE_SIZE"))


def thp_mode() -> str:
    """The THP mode: "always", "madvise", "never", or "unsupported" (no /sys/kernel/mm/transparent_hugepage)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return "unsupported"
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else "unsupported"


def memory_limit() -> int:
    """The most bytes a measurement may allocate: MemAvailable minus a margin of max(512 MiB, 5% of MemTotal)."""
    info = _meminfo()
    margin = max(512 * MiB, info.get("MemTotal", 0) // 20)
    return max(0, info.get("MemAvailable", info.get("MemFree", 0)) - margin)


def unavailable_reason(pages: str) -> str | None:
    """Why this machine cannot give `pages` ("4k", "thp", "hugetlb"), or None when it can."""
    if pages == "thp":
        mode = thp_mode()
        if mode in ("never", "unsupported"):
            return f"transparent huge pages are {mode} here (/sys/kernel/mm/transparent_hugepage/enabled)"
        if thp_size() <= 0:
            return "the THP size is unknown (no /sys/kernel/mm/transparent_hugepage/hpage_pmd_size)"
    elif pages == "hugetlb":
        info = _meminfo()
        if info.get("HugePages_Total", 0) == 0:
            return "no hugetlb pages are reserved (HugePages_Total is 0; see /proc/sys/vm/nr_hugepages)"
        if info.get("HugePages_Free", 0) == 0:
            return "every reserved hugetlb page is in use (HugePages_Free is 0)"
    elif pages not in PAGE_KINDS:
        raise ValueError(f"unknown pages {pages!r}: expected one of {', '.join(PAGE_KINDS)}")
    return None


# ---- argument checks ---------------------------------------------------------------------------------------


def _check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}: expected one of {', '.join(choices)}")
    return value


def _check_count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value}")
    return value


def _check_size(size: object, pages: str, copies: int, state: str = "dirty") -> int:
    """The size rounded up to whole pages, after every refusal that can be decided before allocating."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int (bytes), not {type(size).__name__}")
    if size <= 0:
        raise ValueError(f"size must be > 0 bytes, not {size}")
    reason = unavailable_reason(pages)
    if reason:
        raise PagesUnavailable(errno.ENOMEM, f"cannot measure pages={pages!r}: {reason}")
    if pages == "hugetlb":
        info = _meminfo()
        huge = info.get("Hugepagesize", 2 * MiB)
        rounded = -(-size // huge) * huge
        free = info.get("HugePages_Free", 0) * huge
        if rounded * copies > free:
            raise PagesUnavailable(
                errno.ENOMEM,
                f"size {_fmt(rounded)} x {copies} needs more hugetlb pages than are free ({_fmt(free)})")
        return rounded
    unit = _unit()
    rounded = -(-size // unit) * unit
    limit = memory_limit()
    if rounded * copies > limit:
        need = f"{_fmt(rounded)}" + (f" x {copies}" if copies > 1 else "")
        raise MemoryError(
            f"size {need} does not fit in the memory this machine has available ({_fmt(limit)}: MemAvailable "
            f"minus a safety margin); refused before allocating anything")
    if state == "fragmented":
        page = os.sysconf("SC_PAGE_SIZE")
        n_pages = rounded // page
        room = _max_map_count() - _map_count() - _MAPS_MARGIN
        if n_pages > room:
            raise ValueError(
                f"state='fragmented' makes one VMA per page: {n_pages} pages for size {_fmt(rounded)}, but "
                f"vm.max_map_count leaves room for {max(room, 0)} (at most {_fmt(max(room, 0) * page)})")
    return rounded


def _fmt(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n} bytes"


def _resolve_program(program: object) -> bytes:
    if isinstance(program, os.PathLike):
        program = os.fspath(program)
    if isinstance(program, bytes):
        program = os.fsdecode(program)
    if not isinstance(program, str):
        raise TypeError(f"program must be str, bytes or os.PathLike, not {type(program).__name__}")
    path = program if "/" in program else shutil.which(program)
    if path is None or not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise PermissionError(errno.EACCES, f"{os.strerror(errno.EACCES)} (not an executable file)", path)
    return os.fsencode(os.path.abspath(path))


# ---- the region --------------------------------------------------------------------------------------------


class Region:
    """A region of the parent's memory in a given kind and state, released by close() (or `with`).

    The lower layer of measure_fork / measure_cow, for a caller who wants to hold several regions at once (to
    interleave sizes, say).  size is taken as is (a multiple of 4 KiB, of the huge page size for hugetlb); use
    the measure_* functions for checked, rounded sizes.
    """

    def __init__(self, size: int, pages: str = "4k", state: str = "dirty") -> None:
        _check_choice(pages, "pages", PAGE_KINDS)
        _check_choice(state, "state", STATES)
        if pages == "hugetlb" and state == "fragmented":
            raise ValueError("state='fragmented' is 4 KiB mprotect granularity: not possible with pages='hugetlb'")
        self._c = ffi.new("struct pyproc_cow_region *")
        maps0 = _map_count()
        roll0 = _rollup()
        err = lib.pyproc_cow_region_create(size, _PAGES_CODES[pages], _STATE_CODES[state], thp_size(), self._c)
        if err:
            where = f"making a {_fmt(size)} {pages} {state} region"
            if err == errno.ENOMEM and state == "fragmented":
                where += " (vm.max_map_count reached?)"
            raise os_error(err, None, where)
        roll1 = _rollup()
        c = self._c
        self.info = RegionInfo(
            size=size, pages=pages, state=state, n_pages=size // PAGE_SIZE,
            first_touch_ns=None if state == "clean" else int(c.touch_ns),
            first_touch_faults=None if state == "clean" else int(c.touch_minflt),
            n_protected=int(c.n_protected), protect_ns=int(c.protect_ns) if state == "fragmented" else None,
            vmas_added=_map_count() - maps0,
            rss_kib=roll1.get("Rss", 0) - roll0.get("Rss", 0),
            anon_huge_kib=roll1.get("AnonHugePages", 0) - roll0.get("AnonHugePages", 0),
            thp_mode=thp_mode(),
        )
        """What the region is (see RegionInfo)."""

    @property
    def c(self) -> Any:
        """The struct pyproc_cow_region * (for the C calls)."""
        return self._c

    @property
    def closed(self) -> bool:
        """True once the memory was released."""
        return not self._c.map_addr

    def close(self) -> None:
        """Releases the memory (munmap); a second call does nothing."""
        err = lib.pyproc_cow_region_destroy(self._c)
        if err:
            raise os_error(err, None, "munmap of the measured region")

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_c", None) is not None and self._c.map_addr:
            lib.pyproc_cow_region_destroy(self._c)


# ---- measure_fork ------------------------------------------------------------------------------------------


class ForkTimer:
    """Times one method of METHODS once per sample() call, from this process as it is (the lower layer of
    measure_fork, for a caller holding its own Regions).

    program: as measure_fork's (checked and resolved here).  sample(method) returns the ns from before the
    fork/spawn to after the child was reaped, measured in C; a child that does not exit 0 raises
    CalledProcessError, a spawn that fails its OSError.
    """

    def __init__(self, program: str | bytes | os.PathLike[str] = "/bin/true") -> None:
        self.program = _resolve_program(program)
        self.request: Request = prepare([self.program])
        self._ns = ffi.new("int64_t *")
        self._status = ffi.new("int *")
        self._res = ffi.new("struct pyproc_spawn_result *")

    def sample(self, method: str) -> int:
        """One timed sample of method (see METHODS), in ns."""
        _check_choice(method, "method", METHODS)
        if method == "fork_exit":
            code, engine = lib.PYPROC_COW_FORK_EXIT, 0
        elif method == "fork_exec":
            code, engine = lib.PYPROC_COW_FORK_EXEC, 0
        else:
            code, engine = lib.PYPROC_COW_SPAWN, ENGINE_CODES[method]
        err = lib.pyproc_cow_fork_sample(code, self.request.c, engine, self._ns, self._status, self._res)
        if err:
            if code == lib.PYPROC_COW_SPAWN and self._res.fail_stage:
                where, filename = failure_message(self.request, self._res.fail_stage, self._res.fail_index)
                raise os_error(err, filename, f"{method}: {where}")
            raise os_error(err, None, f"measuring {method}")
        status = int(self._status[0])
        if method != "fork_exit" and status != 0:
            code_ = os.waitstatus_to_exitcode(status)
            raise CalledProcessError(code_, [os.fsdecode(self.program)])
        return int(self._ns[0])


def _check_methods(engines: object) -> tuple[str, ...]:
    if isinstance(engines, str) or not isinstance(engines, Iterable):
        raise TypeError(f"engines must be a sequence of method names, not {type(engines).__name__}")
    methods = tuple(_check_choice(m, "engine", METHODS) for m in engines)
    if not methods:
        raise ValueError(f"engines is empty: name at least one of {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"engines names a method twice: {methods}")
    return methods


def measure_fork(
    size: int,
    *,
    pages: str = "4k",
    state: str = "dirty",
    engines: Iterable[str] = DEFAULT_METHODS,
    repeat: int = 5,
    warmup: int = 1,
    program: str | bytes | os.PathLike[str] = "/bin/true",
    progress: Progress | None = None,
) -> ForkResult:
    """Times starting and reaping a child from a parent holding `size` more bytes of memory.

    size: bytes (int > 0, rounded up to whole pages); pages: "4k", "thp" or "hugetlb"; state: "clean", "dirty"
    or "fragmented" (see the module's doc).  engines: which of METHODS to time: "fork_exit" (fork + _exit +
    wait), "fork_exec" (fork + execve(program) + wait) and pyproc's engines "clone", "vfork", "posix_spawn",
    "fork" ("auto" = clone), each spawning `program` with default options and waiting.  Every method is sampled
    `repeat` times after `warmup` unrecorded rounds, interleaved (A B C A B C ...); progress(done, total) is
    called after each sample.  program: a small program that exits 0 (default /bin/true; a PATH search when it has
    no slash).

    Raises TypeError / ValueError for bad arguments, MemoryError when size does not fit in the available memory,
    PagesUnavailable when the page kind is not available here, FileNotFoundError / PermissionError for program,
    all before anything is allocated.  The memory is released before returning (or raising).
    """
    pages = _check_choice(pages, "pages", PAGE_KINDS)
    state = _check_choice(state, "state", STATES)
    if pages == "hugetlb" and state == "fragmented":
        raise ValueError("state='fragmented' is 4 KiB mprotect granularity: not possible with pages='hugetlb'")
    methods = _check_methods(engines)
    repeat = _check_count(repeat, "repeat", 1)
    warmup = _check_count(warmup, "warmup", 0)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, not {type(progress).__name__}")
    sampler = ForkTimer(program)
    size = _check_size(size, pages, 1, state)
    samples: dict[str, list[float]] = {m: [] for m in methods}
    total = (warmup + repeat) * len(methods)
    done = 0
    rss_before = rss_kib()
    with Region(size, pages, state) as region:
        for round_ in range(warmup + repeat):
            for method in methods:
                ns = sampler.sample(method)
                if round_ >= warmup:
                    samples[method].append(ns)
                done += 1
                if progress is not None:
                    progress(done, total)
    return ForkResult(
        size=size, pages=pages, state=state, program=os.fsdecode(sampler.program), repeat=repeat, warmup=warmup,
        region=region.info, times_ns={m: Samples(tuple(v), "ns") for m, v in samples.items()},
        rss_before_kib=rss_before, rss_after_kib=rss_kib(),
    )


# ---- measure_cow -------------------------------------------------------------------------------------------


def measure_cow(
    size: int,
    *,
    pages: str = "4k",
    repeat: int = 3,
    progress: Progress | None = None,
) -> CowResult:
    """Measures copy-on-write per 4 KiB page: the parent's first touch, then the child's read, write, rewrite.

    Each of `repeat` samples makes a fresh dirty region of `size` bytes (its timed dirtying is the parent's
    first-touch figure), forks, and the child (C only) times read-touch, write-touch (the copies) and rewrite of
    one byte in every 4 KiB page, with its minor faults from getrusage, and reports them through a pipe; then the
    region is released.  With pages="thp" the kernel may copy 4 KiB or 2 MiB on a write: faults_per_page and
    anon_huge_kib show which.  Peak memory: twice size (the parent's pages and the child's copies).

    Raises as measure_fork (MemoryError when 2 x size does not fit).
    """
    pages = _check_choice(pages, "pages", PAGE_KINDS)
    repeat = _check_count(repeat, "repeat", 1)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, not {type(progress).__name__}")
    size = _check_size(size, pages, 2)
    record = ffi.new("struct pyproc_cow_child_record *")
    status = ffi.new("int *")
    values: dict[str, list[float]] = {p: [] for p in COW_PHASES}
    faults: dict[str, list[float]] = {p: [] for p in COW_PHASES}
    huge: list[float] = []
    major: list[float] = []
    regions: list[RegionInfo] = []
    rss_before = rss_kib()
    for i in range(repeat):
        with Region(size, pages, "dirty") as region:
            err = lib.pyproc_cow_touch_sample(region.c, record, status)
            if err:
                detail = "" if status[0] == 0 else f"; child wait status {status[0]:#x}"
                raise os_error(err, None, f"measuring copy-on-write{detail}")
            if status[0] != 0:
                raise OSError(errno.ECHILD, f"the measuring child ended with wait status {status[0]:#x}")
        info = region.info
        regions.append(info)
        huge.append(info.anon_huge_kib)
        major.append(int(record.majflt))
        values["first_touch"].append(info.first_touch_ns or 0)
        faults["first_touch"].append(info.first_touch_faults or 0)
        for phase in ("read", "write", "rewrite"):
            values[phase].append(int(getattr(record, f"{phase}_ns")))
            faults[phase].append(int(getattr(record, f"{phase}_minflt")))
        if progress is not None:
            progress(i + 1, repeat)
    n_pages = size // PAGE_SIZE
    return CowResult(
        size=size, pages=pages, n_pages=n_pages, repeat=repeat,
        phases={p: CowPhase(p, n_pages, Samples(tuple(values[p]), "ns"), Samples(tuple(faults[p]), "faults"))
                for p in COW_PHASES},
        anon_huge_kib=Samples(tuple(huge), "KiB"), major_faults=Samples(tuple(major), "faults"),
        regions=tuple(regions), rss_before_kib=rss_before, rss_after_kib=rss_kib(),
    )


__all__ = [
    "COW_PHASES",
    "DEFAULT_METHODS",
    "METHODS",
    "PAGE_KINDS",
    "PAGE_SIZE",
    "STATES",
    "CowPhase",
    "CowResult",
    "ForkResult",
    "ForkTimer",
    "PagesUnavailable",
    "Region",
    "RegionInfo",
    "Samples",
    "measure_cow",
    "measure_fork",
    "memory_limit",
    "rss_kib",
    "thp_mode",
    "thp_size",
    "unavailable_reason",
]
