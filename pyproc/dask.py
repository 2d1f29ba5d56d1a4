"""pyproc.dask: run_many past one machine.  Batches of commands go to the workers of an existing Dask cluster, each
batch runs there with pyproc.run_many, and the Results stream back.  Dask owns placement, worker loss and retries;
pyproc schedules nothing across machines.

Install with `pip install 'pyproc[dask]'` (dask.distributed); the workers need pyproc too.  `import pyproc` never
imports this module (nor dask): import it by name.

How it goes (see run_many() for the contract):
- The commands are read lazily, a batch at a time, and at most 2 batches per worker are out at once (submitted and
  not yet yielded): the client holds a bounded number of commands and Results whatever the number of commands.
- Each batch is one Dask task (pure=False) that calls pyproc.run_many on its worker with jobs_per_worker children
  at once (default: the worker's threads).  One batch of a run at a time runs children on a worker; a second one
  handed to the same worker waits, ready to start the moment the first ends (pyproc._dask_worker).
- batch_size, when not given: see BatchSizer.
- A worker lost mid-batch: the scheduler hands the batch to another worker (Dask's rescheduling of the tasks of a
  lost worker, up to distributed.scheduler.allowed-failures times, then KilledWorker is raised here), so the
  commands of that batch that had run may run twice.  A batch's Results come back as one task result, so each
  command has exactly one Result in the output.  Every child is started with pdeathsig=SIGKILL (unless you give
  pdeathsig, or engine="posix_spawn", which cannot express it), so children die with a worker process that dies,
  and leads a process group of its own (unless you give process_group or new_session), so that a stop, a timeout
  and run_many's own cleanup kill what the command started too.
- However the iteration ends early (an exception in your loop, check=True, break and close(), Ctrl-C), the
  outstanding batches are cancelled and stopped on the workers: a batch that runs has its children killed and
  reaped (pyproc._dask_worker.stop), and the iteration's exception propagates once none is left running.
"""

from __future__ import annotations

import itertools
import math
import signal
import statistics
import time
import uuid
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

try:
    import distributed
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("pyproc.dask needs dask.distributed: pip install 'pyproc[dask]'") from exc

from . import _dask_worker
from .io import Result
from .pool import _progress_bar
from .pool import run_many as _local_run_many
from .spawn import DEVNULL, PIPE, STDOUT

OVERHEAD_SHARE = 0.05
"""The share of a batch's time that Dask's per-task cost may take: batch_size is sized to keep it below."""
BATCH_SECONDS = 2.0
"""About how long a batch may last (it bounds the work lost with a worker, and keeps the load even at the end)."""
BATCHES_PER_WORKER = 2
"""Batches out at once per worker (one running, one ready to start)."""
PROBES = 5
"""Empty tasks timed, one after another, to learn what one Dask task costs."""
STOP_WAIT = 30.0
"""How long a stop waits, at most, for the batches of a run to end on a worker."""


def measure_task_cost(client: distributed.Client, probes: int = PROBES) -> float:
    """What one Dask task costs from this client, in seconds: the median round trip of empty tasks submitted one
    after another (the first one, which may import pyproc on a worker, is left out)."""
    times = []
    for _ in range(probes):
        started = time.perf_counter()
        client.submit(_dask_worker.noop, pure=False).result()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:] if len(times) > 1 else times)


class BatchSizer:
    """How many commands go in the next batch, when run_many() was not given batch_size.

    From two measures: task_cost, what one Dask task costs (measure_task_cost: the round trip of an empty task),
    and the cost of a command on a worker, the seconds a batch took there divided by its commands (with
    jobs_per_worker children at once: the worker's time per command, the median of the last 8 batches).  A batch
    holds enough commands that the task cost is at most OVERHEAD_SHARE (5%) of its time, so
    size = task_cost / (0.05 * per_command); at least `jobs` (every child slot of the worker busy), at most
    BATCH_SECONDS (2 s) of commands, and, when the number of commands is known, at most a quarter of each worker's
    share.  Until the first batch comes back, batches hold 2 * jobs commands.
    """

    def __init__(self, task_cost: float, jobs: int, workers: int, total: int | None) -> None:
        self.task_cost = task_cost
        self.jobs = jobs
        self.workers = workers
        self.total = total
        self.per_command: deque[float] = deque(maxlen=8)

    def observe(self, commands: int, seconds: float) -> None:
        """A batch of `commands` took `seconds` on its worker."""
        if commands > 0 and seconds > 0:
            self.per_command.append(seconds / commands)

    def size(self) -> int:
        """The size of the next batch."""
        low = self.jobs
        if not self.per_command:
            return 2 * low
        per_command = statistics.median(self.per_command)
        size = math.ceil(self.task_cost / (OVERHEAD_SHARE * per_command))
        high = max(low, round(BATCH_SECONDS / per_command))
        if self.total is not None:
            high = min(high, max(low, math.ceil(self.total / (4 * self.workers))))
        return min(max(size, low), high)


class _FixedSize:
    def __init__(self, size: int) -> None:
        self._size = size

    def observe(self, commands: int, seconds: float) -> None:
        pass

    def size(self) -> int:
        return self._size


def _check_int(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, not {type(value).__name__}")
    if not 1 <= value <= 1 << 20:
        raise ValueError(f"{name} must be between 1 and {1 << 20}, not {value}")
    return value


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, (bool, int)):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return bool(value)


_TRAVELS = (None, PIPE, DEVNULL, STDOUT)


def _worker_options(options: dict[str, Any]) -> dict[str, Any]:
    """run_many's options as each worker gets them, checked here (TypeError / ValueError before any task)."""
    if "jobs" in options:
        raise TypeError("pyproc.dask.run_many takes jobs_per_worker=, not jobs=")
    for name in ("stdin", "stdout", "stderr"):
        spec = options.get(name)
        if not any(spec is code or (type(spec) is int and spec == code) for code in _TRAVELS):
            raise ValueError(f"{name}={spec!r}: an fd or a file of this process means nothing on a worker "
                             "(PIPE, DEVNULL, STDOUT or None)")
    for name in ("fds", "pass_fds"):
        if options.get(name):
            raise ValueError(f"{name}: fds of this process mean nothing on a worker")
    _local_run_many((), jobs=1, **options)  # every other option checked as run_many checks it (nothing starts)
    options = dict(options)
    if "pdeathsig" not in options and options.get("engine", "auto") != "posix_spawn":
        options["pdeathsig"] = signal.SIGKILL  # children die with a worker process that dies
    if options.get("process_group") is None and not options.get("new_session"):
        options["process_group"] = 0  # a stop kills the group: what a command started goes with it
    return options


def run_many(
    client: distributed.Client,
    commands: Iterable[Any],
    *,
    batch_size: int | None = None,
    jobs_per_worker: int | None = None,
    ordered: bool = True,
    **run_many_options: Any,
) -> Iterator[Result]:
    """pyproc.run_many on a Dask cluster: yields one Result per command, as run_many does.

    client: a distributed.Client whose workers have pyproc installed.  commands: any iterable of argvs or
    pyproc.Jobs (they are pickled), read lazily in batches; at most 2 batches per worker are out at once, so the
    client's memory stays bounded whatever the number of commands.  Each batch is one Dask task that runs
    pyproc.run_many on its worker, jobs_per_worker children at once (default: that worker's threads; one batch
    of this call runs children on a worker at a time).

    batch_size: commands per batch.  When None, it is chosen from measures: the round trip of an empty Dask task
    (the per-task cost, timed on a few empty tasks before the first batch) and the time a command takes on a
    worker (from the batches that came back): each batch holds enough commands that the per-task cost stays under
    5% of its time, and no more than about 2 s of work (see BatchSizer).

    ordered=True yields in input order, False as the batches come back.  Every other keyword is run_many()'s:
    capture, stdin, input, timeout, check, fail_fast, progress and spawn's options (cwd, env ...), applied on the
    workers (paths are the workers'; stdin / stdout / stderr may be PIPE, DEVNULL or STDOUT, not an fd).

    As with run_many: a command that cannot start yields a Result whose error is the OSError; check=True raises
    the first failure it sees (the batch holding it stops there, and every outstanding batch is cancelled and its
    children killed before the exception propagates); fail_fast=True starts no command after the first failure
    seen (the commands already started finish and are yielded).  A bad command raises TypeError / ValueError
    (from its worker) the same way.  A worker lost mid-batch: Dask hands the batch to another worker, so some of
    its commands may run twice (each has one Result in the output).  However the iteration ends early, the
    outstanding batches are cancelled and their children killed and reaped on the workers.
    """
    if not isinstance(client, distributed.Client):
        raise TypeError(f"client must be a distributed.Client, not {type(client).__name__}")
    size = _check_int("batch_size", batch_size)
    jobs = _check_int("jobs_per_worker", jobs_per_worker)
    ordered = _check_flag("ordered", ordered)
    check = _check_flag("check", run_many_options.pop("check", False))
    progress = _check_flag("progress", run_many_options.pop("progress", False))
    fail_fast = _check_flag("fail_fast", run_many_options.get("fail_fast", False))
    options = _worker_options(run_many_options)
    options["ordered"] = ordered
    bar = _progress_bar(commands) if progress else None
    try:
        total: int | None = len(commands)  # type: ignore[arg-type]
    except TypeError:
        total = None
    return _results(client, iter(commands), total, size, jobs, ordered, check, fail_fast, options, bar)


def _results(client: Any, source: Iterator[Any], total: int | None, batch_size: int | None,
             jobs: int | None, ordered: bool, check: bool, fail_fast: bool, options: dict[str, Any],
             make_bar: Any) -> Iterator[Result]:
    token = f"pyproc-run-many-{uuid.uuid4().hex}"
    pending: dict[Any, int] = {}  # future -> its batch number
    done_batches: Any = distributed.as_completed()  # type: ignore[no-untyped-call]
    bar = None
    finished = False
    try:
        nthreads = client.nthreads()
        workers = max(1, len(nthreads))
        sizer: BatchSizer | _FixedSize
        if batch_size is not None:
            sizer = _FixedSize(batch_size)
        else:
            sizer = BatchSizer(measure_task_cost(client), jobs or max(nthreads.values(), default=1), workers, total)
        out_at_once = BATCHES_PER_WORKER * workers
        bar = make_bar() if make_bar is not None else None
        submitted = yielded = 0  # batches submitted; batches yielded (ordered: the number of the next one)
        offset = 0
        exhausted = False
        ready: dict[int, list[Result]] = {}

        def refill() -> int:
            nonlocal submitted, offset, exhausted
            while not exhausted and submitted - yielded < out_at_once:
                batch = list(itertools.islice(source, sizer.size()))
                if not batch:
                    exhausted = True
                    break
                future = client.submit(_dask_worker.run_batch, token, offset, batch, jobs, check, options,
                                       pure=False, key=f"{token}-{submitted}")
                pending[future] = submitted
                done_batches.add(future)
                submitted += 1
                offset += len(batch)
            return submitted

        refill()
        while pending:
            future = next(done_batches)
            number = pending.pop(future)
            outcome = future.result()  # a worker's exception (a bad command, KilledWorker) is raised here
            results, seconds = outcome if outcome is not None else ([], 0.0)
            sizer.observe(len(results), seconds)
            failures = [r for r in results if r.error is not None or r.returncode != 0]
            if failures:
                if check:
                    failures[0].check_returncode()  # raises; the finally stops every outstanding batch
                if fail_fast and not exhausted:
                    exhausted = True  # no batch is submitted after a failure, and the workers start nothing more
                    client.run(_dask_worker.stop, token, _dask_worker.DRAIN, 0.0, on_error="return")
            if ordered:
                ready[number] = results
                while yielded in ready:
                    for result in ready.pop(yielded):
                        if bar is not None:
                            bar.update(1)
                        yield result
                    yielded += 1
            else:
                yielded += 1
                for result in results:
                    if bar is not None:
                        bar.update(1)
                    yield result
            refill()
        finished = True
    finally:
        if not finished:
            _stop(client, token, list(pending))
        if bar is not None:
            bar.close()


_stops_in_loop: set[Any] = set()  # the stops scheduled on a client's event loop, until they are done


def _stop(client: Any, token: str, futures: list[Any]) -> None:
    """Cancels the outstanding batches and stops the ones that run (children killed and reaped) on every worker."""
    if client.asynchronous:
        # In the client's event loop (an iterator dropped there by the garbage collector): blocking would hang the
        # loop, so the stop is scheduled on it.
        import asyncio

        async def stop_later() -> None:
            if futures:
                await client.cancel(futures)
            await client.run(_dask_worker.stop, token, _dask_worker.KILL, STOP_WAIT, on_error="return")

        task = asyncio.get_running_loop().create_task(stop_later())
        _stops_in_loop.add(task)
        task.add_done_callback(_stops_in_loop.discard)
        return
    try:
        if futures:
            client.cancel(futures)
        left = client.run(_dask_worker.stop, token, _dask_worker.KILL, STOP_WAIT, on_error="return")
    except Exception as exc:  # the client may be what failed: the iteration's own exception is the one to see
        warnings.warn(f"pyproc.dask.run_many could not stop its batches on the workers: {exc!r}", RuntimeWarning,
                      stacklevel=3)
        return
    running = {worker: n for worker, n in left.items() if not isinstance(n, int) or n}
    if running:
        warnings.warn(f"pyproc.dask.run_many: batches still running {STOP_WAIT} s after the stop: {running}",
                      RuntimeWarning, stacklevel=3)


__all__ = ["BatchSizer", "measure_task_cost", "run_many"]
