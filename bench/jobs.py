"""Many children, a few at a time (issue 15's benchmark): each way of running N jobs with K children at once,
written as a user writes it, every job's stdout and stderr captured and its exit status checked.

The worker (bench.worker, op "jobs") times these; the C floor for the same work is cfloor's ``jobloop``.  A batch
function runs n jobs and returns the nanoseconds they took: the asyncio ways are timed inside their coroutine (the
event loop's own start and close are not part of the work); the others around the call.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any

RUN_MANY = "pyproc.run_many"
AIO_RUN_MANY = "pyproc.aio.run_many"
TPE_PYPROC = "ThreadPoolExecutor + pyproc.run"
TPE_SUBPROCESS = "ThreadPoolExecutor + subprocess.run"
ASYNCIO = "asyncio.create_subprocess_exec + Semaphore"
XARGS = "xargs -P"
FLOOR = "C floor"
METHODS = (RUN_MANY, AIO_RUN_MANY, TPE_PYPROC, TPE_SUBPROCESS, ASYNCIO, XARGS, FLOOR)
"""The ways compared at every K (the C floor runs in the worker's FloorServer, not here)."""

SYNC_SEQUENTIAL = "pyproc.run, one after another"
AIO_SEQUENTIAL = "await pyproc.aio.run, one after another"
SEQUENTIAL = (SYNC_SEQUENTIAL, AIO_SEQUENTIAL)
"""One job at a time, timed per call: what the asyncio face costs over the sync call."""

Batch = Callable[[int], int]
"""Runs n jobs; returns the nanoseconds they took.  Raises JobFailed if any job failed."""


class JobFailed(RuntimeError):
    """A job of a batch exited non-zero or could not start: the batch's figure would not be the work measured."""


def key(method: str, k: int) -> str:
    """The name of `method` with K = k in a run's series."""
    return f"{method}, K={k}"


def _check(method: str, codes: Sequence[int | None], n: int) -> None:
    bad = [c for c in codes if c != 0]
    if len(codes) != n or bad:
        raise JobFailed(f"{method}: {len(codes)} of {n} jobs finished, {len(bad)} failed (exit statuses "
                        f"{sorted(set(bad), key=str)[:5]})")


def _result_code(r: Any) -> int | None:
    """A run_many Result's exit status; the exception of a job that could not start is raised."""
    error = getattr(r, "error", None)
    if error is not None:
        raise error
    code: int | None = r.returncode
    return code


def _commands(argv: list[str], n: int) -> Iterator[list[str]]:
    return (argv for _ in range(n))


def _in_new_loop(method: str, timed: Callable[[int], Coroutine[Any, Any, tuple[int, list[int | None]]]]) -> Batch:
    """A batch run by asyncio.run(timed(n)), which times itself inside the loop and gives the exit statuses."""
    import asyncio

    def run(n: int) -> int:
        dt, codes = asyncio.run(timed(n))
        _check(method, codes, n)
        return dt
    return run


def batch(method: str, argv: list[str], k: int) -> Batch:
    """The batch function of `method` with k children at a time (every way but the C floor)."""
    clock = time.perf_counter_ns
    if method == RUN_MANY:
        import pyproc

        many = pyproc.run_many  # type: ignore[attr-defined,unused-ignore]

        def run_many(n: int) -> int:
            t0 = clock()
            codes = [_result_code(r) for r in many(_commands(argv, n), jobs=k, capture=True)]
            dt = clock() - t0
            _check(method, codes, n)
            return dt
        return run_many
    if method in (TPE_PYPROC, TPE_SUBPROCESS):
        from concurrent.futures import ThreadPoolExecutor

        if method == TPE_PYPROC:
            import pyproc

            def one(_: int) -> int | None:
                code: int | None = pyproc.run(argv, capture=True).returncode
                return code
        else:
            def one(_: int) -> int | None:
                return subprocess.run(argv, capture_output=True, check=False).returncode

        def pool(n: int) -> int:
            t0 = clock()
            with ThreadPoolExecutor(k) as executor:
                codes = list(executor.map(one, range(n)))
            dt = clock() - t0
            _check(method, codes, n)
            return dt
        return pool
    if method == ASYNCIO:
        import asyncio

        async def asyncio_jobs(n: int) -> tuple[int, list[int | None]]:
            sem = asyncio.Semaphore(k)

            async def one() -> int | None:
                async with sem:
                    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                                stderr=asyncio.subprocess.PIPE)
                    await proc.communicate()
                    return proc.returncode
            t0 = clock()
            codes = await asyncio.gather(*(one() for _ in range(n)))
            return clock() - t0, list(codes)
        return _in_new_loop(method, asyncio_jobs)
    if method == AIO_RUN_MANY:
        from pyproc import aio

        aio_many = aio.run_many  # type: ignore[attr-defined,unused-ignore]

        async def aio_jobs(n: int) -> tuple[int, list[int | None]]:
            t0 = clock()
            codes = [_result_code(r) async for r in aio_many(_commands(argv, n), jobs=k, capture=True)]
            return clock() - t0, codes
        return _in_new_loop(method, aio_jobs)
    if method == XARGS:
        from shutil import which

        # xargs -n 1 gives each job one argument ("x"), which the programs measured here ignore.  Its children
        # share xargs's stdout and stderr (captured here once), not a pipe each: xargs has no per-job capture.
        cmd = [which("xargs") or "xargs", "-P", str(k), "-n", "1", *argv]

        def run_xargs(n: int) -> int:
            t0 = clock()
            proc = subprocess.run(cmd, input=b"x\n" * n, capture_output=True, check=False)
            dt = clock() - t0
            if proc.returncode != 0:
                raise JobFailed(f"{method}: xargs exited with {proc.returncode}: "
                                f"{proc.stderr.decode(errors='replace').strip()[:200]}")
            return dt
        return run_xargs
    raise ValueError(f"unknown way of running jobs {method!r}")


def sequential(method: str, argv: list[str]) -> Callable[[int], list[int]]:
    """n calls one after another, each timed (ns): sync pyproc.run or `await aio.run`, both capturing."""
    clock = time.perf_counter_ns
    if method == SYNC_SEQUENTIAL:
        import pyproc

        def sync_calls(n: int) -> list[int]:
            times, codes = [], []
            for _ in range(n):
                t0 = clock()
                r = pyproc.run(argv, capture=True)
                times.append(clock() - t0)
                codes.append(r.returncode)
            _check(method, codes, n)
            return times
        return sync_calls
    if method == AIO_SEQUENTIAL:
        import asyncio

        from pyproc import aio

        async def aio_calls(n: int) -> tuple[list[int], list[int | None]]:
            times: list[int] = []
            codes: list[int | None] = []
            for _ in range(n):
                t0 = clock()
                r = await aio.run(argv, capture=True)
                times.append(clock() - t0)
                codes.append(r.returncode)
            return times, codes

        def run_aio(n: int) -> list[int]:
            times, codes = asyncio.run(aio_calls(n))
            _check(method, codes, n)
            return times
        return run_aio
    raise ValueError(f"unknown sequential way {method!r}")

