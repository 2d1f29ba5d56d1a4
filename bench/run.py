"""The run: every suite, in one process tree, with a progress bar; returns the results (raw samples included)."""

from __future__ import annotations

import datetime
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import cfloor, jobs, machine, spawnparts, tied
from .config import (
    FORK_METHODS,
    FORK_STATES,
    FRAGMENTED_MAX,
    SPAWN_METHODS,
    SWEEP_METHODS,
    SWEEP_METHODS_OTHER_STATES,
    THROUGHPUT_METHODS,
    Config,
    fmt_size,
)
from .harness import Runner, Series, Worker, WorkerError, interleave, pinned, ratio, spawn_cpu

Tick = Callable[[str], None]

_ROOT = Path(__file__).resolve().parent.parent
"""The source tree's root, from which `python -m bench.*` helpers run."""

NOT_IN_BUILD = "not in this build"
"""Why a row of an API that the pyproc being measured lacks (an older build: run_many, aio.run_many,
subprocess.install) is empty."""


def probe() -> dict[str, str | None]:
    """For each optional pyproc API the benchmarks use: None if importable, else why it is skipped."""
    out: dict[str, str | None] = {}
    try:
        import pyproc
    except ImportError as exc:
        reason = f"pyproc is not importable: {exc}"
        return {"spawn": reason, "run": reason, "subprocess": reason, "cow": reason, "run_many": reason,
                "aio": reason, "aio_run_many": reason, "install": reason}
    out["spawn"] = None
    out["run"] = None if callable(getattr(pyproc, "run", None)) else \
        "pyproc.run is not importable yet (issue 3, branch io)"
    try:
        import pyproc.subprocess as psub  # type: ignore[import-not-found,unused-ignore]

        missing = [n for n in ("run", "Popen", "PIPE") if not hasattr(psub, n)]
        out["subprocess"] = f"pyproc.subprocess lacks {', '.join(missing)}" if missing else None
        out["install"] = None if callable(getattr(psub, "install", None)) else \
            f"{NOT_IN_BUILD} (pyproc.subprocess.install, issue 16)"
    except ImportError as exc:
        out["subprocess"] = out["install"] = \
            f"pyproc.subprocess is not importable yet (issue 7, branch subprocess): {exc}"
    # The bench also measures an older pyproc build (one before issues 15 and 16): their rows then say so.
    out["run_many"] = None if callable(getattr(pyproc, "run_many", None)) else \
        f"{NOT_IN_BUILD} (pyproc.run_many, issue 15)"
    try:
        from pyproc import aio

        out["aio"] = None if callable(getattr(aio, "run", None)) else "pyproc.aio has no run"
        out["aio_run_many"] = None if callable(getattr(aio, "run_many", None)) else \
            f"{NOT_IN_BUILD} (pyproc.aio.run_many, issue 15)"
    except ImportError as exc:
        out["aio"] = out["aio_run_many"] = f"pyproc.aio is not importable: {exc}"
    try:
        from pyproc import cow  # type: ignore[attr-defined,unused-ignore]

        missing = [n for n in ("measure_fork", "measure_cow") if not callable(getattr(cow, n, None))]
        out["cow"] = f"pyproc.cow lacks {', '.join(missing)}" if missing else None
        out["fork_timer"] = None if hasattr(cow, "ForkTimer") else "pyproc.cow has no ForkTimer"
    except ImportError as exc:
        out["cow"] = f"pyproc.cow is not importable yet (issue 4, branch cow): {exc}"
    return out


def _skip_reason(method: str, apis: dict[str, str | None]) -> str | None:
    if method == "pyproc.subprocess.run" or method == "pyproc.subprocess":
        return apis["subprocess"]
    if method == "pyproc clone, C only":
        return apis["cow"] or apis.get("fork_timer")
    if method.startswith("pyproc"):
        return apis["spawn"]
    return None


def _spawn_runner(worker: Worker, method: str, argv: list[str], floors: cfloor.Floors) -> Runner:
    """n spawn+waits by `method` in `worker`, pinned to spawn_cpu() (bench.harness: the child on its parent's CPU)."""
    cpu = spawn_cpu()

    def run(n: int) -> list[int]:
        ns: list[int] = worker.request(op="spawn", method=method, argv=argv, n=n, cpu=cpu,
                                       floor=str(floors.spawnloop), libfloor=str(floors.libfloor))["ns"]
        return ns
    return run


def _interleave_available(methods: Sequence[tuple[str, Runner | None, str | None]], rounds: int, batch: int,
                          tick: Tick, label: str) -> dict[str, Series]:
    live = [(name, run) for name, run, why in methods if why is None and run is not None]
    series = interleave(live, rounds, batch, tick=lambda: tick(label))
    for name, _, why in methods:
        if why is not None:
            series[name] = Series(name, skipped=why)
    return series


def spawn_suite(cfg: Config, small: Worker, floors: cfloor.Floors, apis: dict[str, str | None],
                tick: Tick) -> dict[str, Any]:
    """spawn+wait of the minimal static executable and of /bin/true, every way, interleaved (issue 2)."""
    true = shutil.which("true") or "/bin/true"
    out: dict[str, Any] = {}
    for key, argv in (("minimal", [str(floors.minimal)]), ("true", [true])):
        methods = [(m, _spawn_runner(small, m, argv, floors), _skip_reason(m, apis)) for m in SPAWN_METHODS]
        series = _interleave_available(methods, cfg.spawn_rounds, cfg.spawn_batch, tick, f"spawn {key}")
        out[key] = {"argv": argv, "series": {k: v.to_json() for k, v in series.items()}, "_series": series}
    with pinned(spawn_cpu()):  # the C program and its children, as the series above
        parts = spawnparts.measure(floors, cfg.parts_rounds)
    out["parts"] = {"rounds": cfg.parts_rounds, "rows": spawnparts.summarize(parts)}
    tick("spawn steps")
    return out


def sweep_suite(cfg: Config, small: Worker, floors: cfloor.Floors, apis: dict[str, str | None],
                tick: Tick) -> dict[str, Any]:
    """spawn+wait of the minimal executable from parents of every size and state, each point interleaved with
    the same call from the small parent (issue 2's 4 GiB target, the Figure 1 plot)."""
    argv = [str(floors.minimal)]
    points: list[dict[str, Any]] = []
    not_built: list[dict[str, Any]] = []
    for state in cfg.states:
        names = SWEEP_METHODS if state == "dirty" else SWEEP_METHODS_OTHER_STATES
        for size in cfg.sizes:
            tick(f"sweep: building a {fmt_size(size)} {state} parent")
            t0 = time.perf_counter()
            try:
                big = Worker(size, state)
            except WorkerError as exc:
                not_built.append({"size": size, "state": state, "skipped": exc.reason})
                continue
            with big:
                build_s = time.perf_counter() - t0
                methods: list[tuple[str, Runner | None, str | None]] = []
                for m in names:
                    why = _skip_reason(m, apis)
                    methods.append((f"small|{m}", _spawn_runner(small, m, argv, floors), why))
                    methods.append((f"big|{m}", _spawn_runner(big, m, argv, floors), why))
                series = _interleave_available(methods, cfg.sweep_rounds, cfg.sweep_batch, tick,
                                               f"sweep {fmt_size(size)} {state}")
                info = big.info
            per_method: dict[str, Any] = {}
            for m in names:
                s_small, s_big = series[f"small|{m}"], series[f"big|{m}"]
                per_method[m] = {"small": s_small.to_json(), "big": s_big.to_json(),
                                 "big_vs_small": ratio(s_big, s_small), "skipped": s_big.skipped}
            points.append({"size": size, "state": state, "parent": info, "build_s": build_s,
                           "methods": per_method})
    return {"argv": argv, "small_parent": small.info, "points": points, "not_built": not_built}


def io_suite(cfg: Config, worker: Worker, floors: cfloor.Floors, apis: dict[str, str | None],
             tick: Tick) -> dict[str, Any]:
    """capture, round trip through cat, and run() of the minimal executable: pyproc vs subprocess vs C (issue 3,
    and issue 7's pyproc.subprocess)."""
    out: dict[str, Any] = {}
    common = {"readloop": str(floors.readloop), "pipeloop": str(floors.pipeloop), "minimal": str(floors.minimal)}
    # capture_medium runs last, in a worker that has captured big outputs already: glibc's mmap threshold has
    # risen (up to 32 MiB), so medium bytes objects come from recycled heap memory, as in a long-running program.
    plan = (("capture", cfg.io_size, cfg.io_rounds, 1), ("cat", cfg.io_size, cfg.io_rounds, 1),
            ("minimal", 0, cfg.minimal_io_rounds, cfg.minimal_io_batch),
            ("capture_medium", cfg.medium_io_size, cfg.medium_io_rounds, cfg.medium_io_batch))
    for kind, size, rounds, batch in plan:
        # The minimal executable's run is a short spawn+wait with pipes: pinned as the spawn series (bench.harness).
        # The captures are not: the child writes while this process reads, on the other CPU.
        cpu = spawn_cpu() if kind == "minimal" else None
        methods: list[tuple[str, Runner | None, str | None]] = []
        # For the minimal executable, pyproc.spawn(argv).wait() too: a capture does all of its work and more, so
        # subprocess.run(capture_output=True) / spawn+wait is the most any run(capture=True) could gain.
        extra = ("pyproc spawn+wait, no capture",) if kind == "minimal" else ()
        for m in ("pyproc", "subprocess", "pyproc.subprocess", "C floor", *extra):
            why = apis["run"] if m == "pyproc" else apis["spawn"] if m in extra else _skip_reason(m, apis)

            def run(n: int, m: str = m, kind: str = kind, size: int = size, cpu: int | None = cpu) -> list[int]:
                ns: list[int] = worker.request(op="io", kind=kind, method=m, size=size, n=n, cpu=cpu,
                                               **common)["ns"]
                return ns
            methods.append((m, run, why))
        series = _interleave_available(methods, rounds, batch, tick, f"I/O {kind}")
        out[kind] = {"size": size, "series": {k: v.to_json() for k, v in series.items()}, "_series": series}
    return out


def throughput_suite(cfg: Config, small: Worker, floors: cfloor.Floors, apis: dict[str, str | None],
                     tick: Tick) -> dict[str, Any]:
    """Spawns (minimal executable) per second from 1 and 2 threads of the small parent: rounds interleaved over
    the ways and thread counts; each figure the median rate of the rounds, with min and max."""
    argv = [str(floors.minimal)]
    out: dict[str, Any] = {}
    live = []
    for m in THROUGHPUT_METHODS:
        why = _skip_reason(m, apis)
        if why:
            out[m] = {"skipped": why}
        else:
            out[m] = {"1": {"rounds": []}, "2": {"rounds": []}}
            live.append(m)
    for r in range(cfg.throughput_rounds):
        for m in live[r % len(live):] + live[:r % len(live)]:
            for threads in (1, 2):
                tick(f"spawns/s {m} x{threads}")
                if "skipped" in out[m]:
                    continue
                try:
                    answer = small.request(op="throughput", method=m, argv=argv, threads=threads,
                                           seconds=cfg.throughput_seconds, floor=str(floors.spawnloop))
                except WorkerError as exc:
                    out[m] = {"skipped": f"failed: {exc.reason}"}
                    continue
                out[m][str(threads)]["rounds"].append(answer)
    live = [m for m in live if "skipped" not in out[m]]
    for m in live:
        for key in ("1", "2"):
            rates = [a["per_second"] for a in out[m][key]["rounds"]]
            out[m][key].update(per_second=statistics.median(rates), min=min(rates), max=max(rates))
    return out


def _jobs_skip(method: str, apis: dict[str, str | None]) -> str | None:
    if method == jobs.RUN_MANY:
        return apis["run_many"]
    if method == jobs.AIO_RUN_MANY:
        return apis["aio_run_many"]
    if method in (jobs.TPE_PYPROC, jobs.SYNC_SEQUENTIAL):
        return apis["run"]
    if method == jobs.AIO_SEQUENTIAL:
        return apis["aio"]
    if method == jobs.XARGS and shutil.which("xargs") is None:
        return "xargs is not on PATH"
    return None


def jobs_suite(cfg: Config, floors: cfloor.Floors, apis: dict[str, str | None], tick: Tick) -> dict[str, Any]:
    """Many children, K at a time (issue 15): jobs per second of every way at every K, all interleaved in one worker,
    for the minimal executable and /bin/true; sync pyproc.run vs `await aio.run` one after another; and run_many's
    peak RSS over many jobs, in a process of its own."""
    true = shutil.which("true") or "/bin/true"
    out: dict[str, Any] = {"ks": cfg.jobs_ks, "rounds": cfg.jobs_rounds, "seq_batch": cfg.jobs_seq_batch,
                           "per_child": cfg.jobs_per_child}
    with Worker(0, "clean") as w:
        def runner(method: str, argv: list[str], k: int, least: int = 0) -> Runner:
            def run(n: int) -> list[int]:
                ns: list[int] = w.request(op="jobs", method=method, argv=argv, k=k, n=max(n, least),
                                          jobloop=str(floors.jobloop))["ns"]
                return ns
            return run

        for workload, argv, batch in (("minimal", [str(floors.minimal)], cfg.jobs_batch),
                                      ("true", [true], cfg.jobs_batch_true)):
            methods = [(jobs.key(m, k), runner(m, argv, k, cfg.jobs_per_child * k), _jobs_skip(m, apis))
                       for k in cfg.jobs_ks for m in jobs.METHODS]
            series = _interleave_available(methods, cfg.jobs_rounds, batch, tick, f"jobs {workload}")
            out[workload] = {"batch": batch, "argv": argv, "series": {k: v.to_json() for k, v in series.items()},
                             "_series": series}
        argv = [str(floors.minimal)]
        methods = [(m, runner(m, argv, 1), _jobs_skip(m, apis)) for m in jobs.SEQUENTIAL]
        series = _interleave_available(methods, cfg.jobs_seq_rounds, cfg.jobs_seq_batch, tick, "jobs one by one")
        out["sequential"] = {"argv": argv, "series": {k: v.to_json() for k, v in series.items()},
                             "_series": series}
    out["rss"] = jobs_rss(cfg, floors, apis)
    tick("run_many's memory")
    return out


def jobs_rss(cfg: Config, floors: cfloor.Floors, apis: dict[str, str | None]) -> dict[str, Any]:
    """`python -m bench.jobsrss`: run_many's peak RSS over cfg.jobs_rss_count jobs, in a process of its own."""
    if apis["run_many"]:
        return {"jobs": cfg.jobs_rss_count, "skipped": apis["run_many"]}
    proc = subprocess.run([sys.executable, "-m", "bench.jobsrss", "--jobs", str(cfg.jobs_rss_count),
                           str(floors.minimal)], capture_output=True, text=True, timeout=1800, check=False,
                          cwd=str(_ROOT), env=tied.child_env())
    if proc.returncode != 0:
        return {"jobs": cfg.jobs_rss_count,
                "skipped": f"failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}"}
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer


def installed_suite(cfg: Config, apis: dict[str, str | None], tick: Tick) -> dict[str, Any]:
    """Issue 16's rows, "subprocess.run, installed vs not" and "asyncio.create_subprocess_exec + communicate,
    installed vs not": `python -m bench.installed --json` in a process of its own (install() patches the standard
    library process-wide), with this run's sample counts.  {"rows": bench.installed.measure()'s answer}."""
    tick("installed vs not")
    if apis["install"]:
        return {"skipped": apis["install"]}
    failed, out = _bench_module(["bench.installed", "--json", "--rounds", str(cfg.installed_rounds), "--batch",
                                 str(cfg.installed_batch)])
    return {"skipped": failed} if failed else {"rows": json.loads(out)}


def dask_suite(cfg: Config, tick: Tick) -> dict[str, Any]:
    """Issue 18's row: `python -m bench.dask_bench` (a 2-worker LocalCluster: client.map(subprocess.run) vs
    pyproc.dask.run_many vs local run_many) in a process of its own; skipped when dask.distributed is not installed
    (the `dask` extra)."""
    tick("dask: run_many on a LocalCluster")
    if importlib.util.find_spec("distributed") is None:
        return {"skipped": "dask.distributed is not installed (pip install 'pyproc[dask]')"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dask.json"
        failed, _ = _bench_module(["bench.dask_bench", "--jobs", str(cfg.dask_jobs), "--rounds", str(cfg.dask_rounds),
                                   "--workers", "2", "--json", str(path)])
        if failed:
            return {"skipped": failed}
        summary: dict[str, Any] = json.loads(path.read_text())
    return {"summary": summary, "workers": 2}


def _bench_module(args: list[str]) -> tuple[str | None, str]:
    """Runs `python -m ARGS` from the source tree: (None, its stdout), or (why, "") when it failed."""
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=3600,
                          check=False, cwd=str(_ROOT), env=tied.child_env())
    if proc.returncode != 0:
        return f"python -m {args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}", ""
    return None, proc.stdout


def fork_sizes(cfg: Config) -> list[tuple[str, str, int]]:
    """The (pages, state, size) points measure_fork sweeps: every size, fragmented capped at FRAGMENTED_MAX."""
    points = []
    for pages, state in FORK_STATES:
        sizes = cfg.sizes if state != "fragmented" else sorted({min(s, FRAGMENTED_MAX) for s in cfg.sizes})
        points += [(pages, state, size) for size in sizes]
    return points


def cow_suite(cfg: Config, floors: cfloor.Floors, apis: dict[str, str | None], tick: Tick) -> dict[str, Any]:
    """pyproc.cow (issue 4), timed in C: copy-on-write per 4 KiB page by phase and page kind (measure_cow), and
    fork / spawn cost against parent size for every page kind and state (measure_fork)."""
    if apis["cow"]:
        return {"skipped": apis["cow"]}
    out: dict[str, Any] = {"measure_cow": [], "measure_fork": []}
    with Worker(0, "clean") as w:
        for size in cfg.cow_sizes:
            for pages in ("4k", "thp", "hugetlb"):
                tick(f"cow {fmt_size(size)} {pages}")
                entry: dict[str, Any] = {"size": size, "pages": pages}
                try:
                    entry["result"] = w.request(op="cow", func="measure_cow", args=[size],
                                                kwargs={"pages": pages, "repeat": cfg.cow_repeat})["result"]
                except WorkerError as exc:
                    entry["skipped"] = exc.reason
                out["measure_cow"].append(entry)
        for pages, state, size in fork_sizes(cfg):
            tick(f"fork cost {fmt_size(size)} {pages} {state}")
            entry = {"size": size, "pages": pages, "state": state}
            try:
                entry["result"] = w.request(op="cow", func="measure_fork", args=[size], kwargs={
                    "pages": pages, "state": state, "engines": list(FORK_METHODS), "repeat": cfg.cow_repeat,
                    "program": str(floors.minimal)})["result"]
            except WorkerError as exc:
                entry["skipped"] = exc.reason
            out["measure_fork"].append(entry)
    return out


def total_ticks(cfg: Config) -> int:
    """How many progress ticks a run makes (for the progress bar)."""
    spawn = 2 * cfg.spawn_rounds + 1
    sweep = sum(len(cfg.sizes) * (cfg.sweep_rounds + 1) for _ in cfg.states)
    io = 2 * cfg.io_rounds + cfg.minimal_io_rounds + cfg.medium_io_rounds
    thr = 2 * len(THROUGHPUT_METHODS) * cfg.throughput_rounds
    cow = len(cfg.cow_sizes) * 3 + len(fork_sizes(cfg))
    many = 2 * cfg.jobs_rounds + cfg.jobs_seq_rounds + 1
    return spawn + sweep + io + thr + cow + many + 1


def run_all(cfg: Config, tick: Tick, argv: list[str]) -> dict[str, Any]:
    """Runs every suite and returns the results (with the live Series under '_series' keys, for the report)."""
    started = datetime.datetime.now(datetime.timezone.utc)
    floors = cfloor.build()
    apis = probe()
    results: dict[str, Any] = {
        "meta": {"started_utc": started.isoformat(timespec="seconds"), "command": argv,
                 "python_executable": sys.executable, "config": cfg.to_json(), "machine": machine.describe(),
                 "floors": floors.as_dict(), "apis": apis, "spawn_cpu": spawn_cpu()},
    }
    timings: dict[str, float] = {}

    def timed(name: str, func: Callable[[], dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        results[name] = func()
        timings[name] = round(time.perf_counter() - t0, 1)

    with Worker(0, "clean") as small:
        timed("spawn", lambda: spawn_suite(cfg, small, floors, apis, tick))
        timed("sweep", lambda: sweep_suite(cfg, small, floors, apis, tick))
        timed("throughput", lambda: throughput_suite(cfg, small, floors, apis, tick))
    with Worker(0, "clean") as io_worker:  # its own: the I/O buffers must not make the small parent big
        timed("io", lambda: io_suite(cfg, io_worker, floors, apis, tick))
    timed("jobs", lambda: jobs_suite(cfg, floors, apis, tick))
    timed("installed", lambda: installed_suite(cfg, apis, tick))
    timed("dask", lambda: dask_suite(cfg, tick))
    timed("cow", lambda: cow_suite(cfg, floors, apis, tick))
    results["meta"]["suite_seconds"] = timings
    results["meta"]["loadavg_end"] = machine.describe()["loadavg"]
    results["meta"]["finished_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    results["meta"]["elapsed_s"] = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    return results
