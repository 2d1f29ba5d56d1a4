"""The worker side of pyproc.dask: one batch of commands run with pyproc.run_many inside a Dask worker, and the
stop that the client sends when it gives up on a run (an exception, check=True, the iterator closed).

Nothing here imports dask: these functions run in a worker process, called by the tasks and the client.run calls
that pyproc.dask makes.  Per worker process and per run (a token the client makes), _Run keeps:
- one batch running its children at a time: the worker's `jobs` are its children at once, whatever the number of
  Dask threads that picked up a batch of the run; a second batch waits for the first (ready the moment it ends, so
  the worker never waits for the scheduler between batches);
- the native ids of the threads that run children, so that a stop can reach children blocked in the C pool: the
  batch checks the stop between results, and a kill stop kills the thread's children (found in
  /proc/self/task/TID/children, each checked through a pidfd, so a recycled pid is never hit), which makes the
  pool return at once; closing run_many then kills and reaps the rest (their groups where they lead one);
- how many batches of the run are in this process, so that the stop can wait until none is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Generator, Iterable, Iterator
from typing import Any, cast

from .io import Result
from .pool import run_many

KILL = "kill"  # stop now: children killed, the batch's results dropped
DRAIN = "drain"  # start nothing more, let what runs finish (fail_fast)
_STOPPED_KEPT = 1024  # stopped runs remembered, so that a batch of one that starts late stops at once


class _Run:
    __slots__ = ("batches", "busy", "changed", "leaders_only", "stop", "threads")

    def __init__(self) -> None:
        self.changed = threading.Condition(_lock)
        self.busy = False  # a batch of this run is running its children here
        self.stop: str | None = None
        self.threads: set[int] = set()  # native ids of the threads running this run's children
        self.batches = 0  # batches of this run in this process (running or waiting)
        # Every child of the run leads its own process group: a stop kills only group leaders, so a child that
        # other code left behind on the same thread (an earlier task's) is not touched.
        self.leaders_only = False


_lock = threading.Lock()
_runs: dict[str, _Run] = {}
_stopped: OrderedDict[str, str] = OrderedDict()


def _enter(token: str) -> _Run:
    with _lock:
        run = _runs.get(token)
        if run is None:
            run = _runs[token] = _Run()
            run.stop = _stopped.get(token)
        run.batches += 1
        return run


def _leave(token: str, run: _Run) -> None:
    with _lock:
        run.batches -= 1
        if run.batches == 0 and _runs.get(token) is run:
            del _runs[token]
        run.changed.notify_all()


def _failed(result: Result) -> bool:
    return result.error is not None or result.returncode != 0


def _feed(commands: Iterable[Any], run: _Run) -> Iterator[Any]:
    """The batch's commands, until the run is stopped (run_many reads them lazily: a stop starts nothing more)."""
    for command in commands:
        if run.stop is not None:
            return
        yield command


def run_batch(token: str, offset: int, commands: list[Any], jobs: int | None, check: bool,
              options: dict[str, Any]) -> tuple[list[Result], float] | None:
    """Runs one batch with run_many (jobs at once; None: the worker's threads); returns its Results and the
    seconds run_many took.  check: stop at the first failure (the client raises it).  A run stopped with DRAIN
    runs no command it has not started; one stopped with KILL returns None (no one waits for that batch)."""
    if jobs is None:
        from distributed import get_worker

        jobs = get_worker().state.nthreads
    run = _enter(token)
    me = threading.get_native_id()
    try:
        with run.changed:
            while run.busy and run.stop is None:
                run.changed.wait()
            if run.stop is not None:
                return None if run.stop == KILL else ([], 0.0)
            run.busy = True
            run.leaders_only = options.get("process_group") == 0 or bool(options.get("new_session"))
            run.threads.add(me)
        try:
            results: list[Result] = []
            started = time.monotonic()
            results_of = cast(Generator[Result, None, None], run_many(_feed(commands, run), jobs=jobs, **options))
            try:
                for result in results_of:
                    if run.stop == KILL:
                        return None
                    results.append(result)
                    if check and _failed(result):
                        break
            except (TypeError, ValueError) as exc:
                if type(exc) not in (TypeError, ValueError):
                    raise
                # run_many names the command's index in the batch: name it in the whole run.
                raise type(exc)(f"{exc} (the batch starts at command {offset})") from exc
            finally:
                results_of.close()  # kills and reaps whatever still runs
            return results, time.monotonic() - started
        finally:
            with run.changed:
                run.busy = False
                run.threads.discard(me)
                run.changed.notify_all()
    finally:
        _leave(token, run)


def _thread_children(tid: int) -> list[int]:
    try:
        with open(f"/proc/self/task/{tid}/children") as f:
            return [int(pid) for pid in f.read().split()]
    except OSError:
        return []  # the thread is gone, or the kernel lists no children (CONFIG_PROC_CHILDREN): the stop waits


def _pgid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[2])


def kill_thread_children(tid: int, leaders_only: bool = False) -> int:
    """SIGKILLs the children of thread tid of this process (their group when they lead one; with leaders_only, only
    the children that lead a group); returns how many."""
    killed = 0
    for pid in _thread_children(tid):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue  # reaped since
        try:
            # Still listed after the pidfd was opened: the pidfd is that child's (a pid is not reused while its
            # process is unreaped), so an unrelated process that took a recycled pid is never signalled.
            if pid not in _thread_children(tid):
                continue
            leader = _pgid(pid) == pid
            if leaders_only and not leader:
                continue
            if leader:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)  # the group exists while its leader (our child) is unreaped
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            killed += 1
        finally:
            os.close(pidfd)
    return killed


async def stop(token: str, mode: str, wait: float) -> int:
    """Stops the run's batches in this worker process (mode KILL or DRAIN); with KILL, waits up to `wait` seconds
    for them to end, killing their children again as they start.  Returns how many batches are still there."""
    import asyncio

    with _lock:
        _stopped[token] = mode
        while len(_stopped) > _STOPPED_KEPT:
            _stopped.popitem(last=False)
        run = _runs.get(token)
        if run is None:
            return 0
        run.stop = mode
        run.changed.notify_all()
    if mode != KILL:
        return run.batches
    deadline = time.monotonic() + wait
    while True:
        with _lock:
            threads = list(run.threads)
            left = run.batches
        if left == 0 or time.monotonic() > deadline:
            return left
        for tid in threads:
            kill_thread_children(tid, run.leaders_only)
        await asyncio.sleep(0.005)


def forget(token: str) -> None:
    """Drops what this process remembers of a run that ended (its stop, if any)."""
    with _lock:
        _stopped.pop(token, None)


def noop() -> None:
    """An empty task: pyproc.dask times a few of them to learn what one Dask task costs."""
