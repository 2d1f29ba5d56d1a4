"""run_many() and Job: many children at the kernel's pace, through one C job pool (csrc/pool.c).

One C call (pyproc_pool_run, GIL released) keeps `jobs` children running: it starts queued jobs through the same
spawn as run() (pipes made with the spawn), waits on every child's pidfd and pipes in one epoll set, feeds inputs
and reads outputs with run()'s pump, reaps with wait4, kills jobs past their deadline, and returns as soon as a job
is done, its replacement already started.  Python only converts commands (argv packed as spawn() packs it) and
builds Results while the children run.

How it fits together (_Plan, _Pool, _Run):
- _Plan checks everything the jobs share once, at the call (bad options raise before any child exists), and
  converts each command when it is read: a list or tuple of str takes the packed path with a request built once
  for the whole run (a program without a slash gets its PATH candidates once per run); anything else (bytes,
  os.PathLike, a Job with cwd / env) goes through spawn's prepare(), which also names what is wrong with a bad
  command.
- _Pool is one struct pyproc_pool with the Python record of each of its jobs (kept until the job is recycled: the
  C side points into it).
- _Run (one iteration; run_many's generator and aio.run_many's iterator both drive one) reads commands only while
  fewer than `jobs` wait in the queue and fewer than 3 * jobs + 16 are read ahead of the results yielded (so a
  generator of a million commands is consumed lazily, in bounded memory), turns done jobs into results in their
  order, and its close() closes the pool: every running child killed and reaped, every fd closed, whatever ends the
  iteration (an exception in the consumer, Ctrl-C, close(), garbage collection).

Decisions (where the issue left a choice):
- A command that cannot start yields a Result with returncode 127 (what a child that failed to exec exits with,
  and the shell's "command not found"), no status, the captured streams empty, and error set to the OSError that
  run() would raise (FileNotFoundError ...).
- A timed-out job yields a Result whose error is the pyproc.TimeoutExpired that run() would raise (with the partial
  output; timed_out is True); its returncode is -SIGKILL.  As with run(), a job with a timeout runs in its own
  process group, and the group is killed.
- check=True raises at the first failure seen (as the jobs finish, whatever the order of the results: waiting for
  an earlier job that runs long would only delay the error), after killing and reaping everything that runs; the
  results yielded before are those ready until then (in input order with ordered=True).
- fail_fast=True: no job starts after the first failure (a nonzero exit, a command that could not start, a
  timeout); the jobs already running finish and their results are yielded, the queued ones are dropped (no result),
  and the iteration ends without raising.
- A bad command (not a sequence, an empty argv, a bad Job option) raises TypeError / ValueError when it is read,
  naming its index; the jobs running then are killed and reaped first.
- progress=True without tqdm installed warns (RuntimeWarning) and runs without a bar.
- No text mode: outputs and input are bytes.
"""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from . import _pump
from ._lib import ffi, lib
from ._pump import byte_view, check_timeout, take
from .errors import TimeoutExpired, check, os_error
from .io import Result
from .spawn import (
    _DEFAULT_REQUEST,
    _GROUP_REQUEST,
    _REQUEST_PTR,
    DEVNULL,
    ENGINE_CODES,
    PIPE,
    STDOUT,
    FileSpec,
    Request,
    _pack_argv,
    piped_failure,
    prepare,
    request_with_path,
)

_EINTR = errno.EINTR
_POOL_PTR = ffi.typeof("struct pyproc_pool *")
_CHILD_PTR = ffi.typeof("struct pyproc_child *")
_PIPE_STDIN = lib.PYPROC_PIPE_STDIN
_PIPE_STDOUT = lib.PYPROC_PIPE_STDOUT
_PIPE_STDERR = lib.PYPROC_PIPE_STDERR
_STDERR_TO_STDOUT = lib.PYPROC_STDERR_TO_STDOUT
_QUEUED = lib.PYPROC_JOB_QUEUED
_PATH_CACHE_MAX = 256  # programs whose PATH candidates one run keeps


def read_ahead(jobs: int) -> int:
    """How many commands run_many() reads ahead of the results it has yielded, at most."""
    return 3 * jobs + 16


class Job:
    """A command for run_many() with options of its own: Job(argv, *, input=None, cwd=None, env=None, timeout=None).

    input (bytes) is written to the job's stdin; cwd and env as for spawn(); timeout (seconds) kills the job's
    process group when it runs out.  Each one set here replaces run_many()'s for this job.  input and timeout are
    checked here; argv, cwd and env when run_many() reads the job.
    """

    __slots__ = ("argv", "cwd", "env", "input", "timeout")

    def __init__(self, argv: Any, *, input: bytes | bytearray | memoryview | None = None, cwd: Any = None,
                 env: Mapping[Any, Any] | None = None, timeout: float | None = None) -> None:
        self.argv = argv
        self.input = None if input is None else byte_view(input, "input")
        self.cwd = cwd
        self.env = env
        self.timeout = check_timeout(timeout)

    def __reduce__(self) -> tuple[Any, ...]:
        # input is held as a memoryview, which does not pickle: it travels as bytes (pyproc.dask ships Jobs).
        data = None if self.input is None else bytes(self.input)
        return (_make_job, (self.argv, data, self.cwd, self.env, self.timeout))

    def __repr__(self) -> str:
        extra = "".join(f", {name}={getattr(self, name)!r}" for name in ("cwd", "env", "timeout")
                        if getattr(self, name) is not None)
        if self.input is not None:
            extra += f", input=<{self.input.nbytes} bytes>"
        return f"Job({self.argv!r}{extra})"


def _make_job(argv: Any, input: bytes | None, cwd: Any, env: Mapping[Any, Any] | None, timeout: float | None) -> Job:
    return Job(argv, input=input, cwd=cwd, env=env, timeout=timeout)


def _is_code(spec: object, code: int) -> bool:
    return isinstance(spec, int) and not isinstance(spec, bool) and spec == code


class _Pool:
    """One struct pyproc_pool and the Python record of each job it holds, by slot (the C side points into it)."""

    __slots__ = ("c", "records", "slot_out")

    def __init__(self, jobs: int, slots: int) -> None:
        c = ffi.new(_POOL_PTR)
        check(lib.pyproc_pool_open(c, jobs, slots, _pump.lead(), _pump.chunk_max), None, "opening the job pool")
        self.c = c
        self.records: list[Any] = [None] * slots
        self.slot_out = ffi.new("int *")

    def run(self, block: bool) -> None:
        """One pyproc_pool_run; EINTR returns normally (the caller goes round, and Python's handlers run)."""
        err = lib.pyproc_pool_run(self.c, block)
        if err and err != _EINTR:
            check(err, None, "running the job pool")

    def drop_queued(self) -> list[Any]:
        """Forgets the jobs that have not started; returns their records."""
        c = self.c
        dropped = []
        for slot, record in enumerate(self.records):
            if record is not None and c.slots[slot].state == _QUEUED:
                dropped.append(record)
                self.records[slot] = None
        lib.pyproc_pool_drop_queued(c)
        return dropped

    def close(self) -> None:
        """Kills and reaps every running child, closes every fd; the records can go after that."""
        lib.pyproc_pool_close(self.c)
        self.records = []

    def __del__(self) -> None:
        if hasattr(self, "c"):
            self.close()


class _Plan:
    """What every job of one run shares, checked once; submits each command to a pool and builds its Result."""

    def __init__(self, capture: object, stdin: FileSpec, input: object, timeout: object,
                 options: dict[str, Any], shared: bool = True) -> None:
        # shared: for many jobs (run_many), every option is checked now and open() builds one request that every
        # packed argv uses; not shared (one aio.run call), the job's own conversion checks and builds everything.
        if not isinstance(capture, (bool, int)):
            raise TypeError(f"capture must be a bool, not {type(capture).__name__}")
        self.timeout = check_timeout(timeout)
        if isinstance(input, str):
            raise TypeError("input must be bytes-like, not str: run_many has no text mode (encode it)")
        self.input = None if input is None else byte_view(input, "input")
        self.input_c = ffi.NULL if self.input is None else ffi.from_buffer("char[]", self.input)
        stdout = options.pop("stdout", None)
        stderr = options.pop("stderr", None)
        if capture:
            if stdout is not None or stderr is not None:
                raise ValueError("capture=True conflicts with stdout= / stderr=")
            stdout = stderr = PIPE
        self.stdin_is_pipe = _is_code(stdin, PIPE)
        if self.stdin_is_pipe:
            stdin = None
        self.stdin_given = stdin is not None
        if self.input is not None and self.stdin_given:
            raise ValueError("input= and stdin= both say where the children's stdin comes from")
        pipes = 0
        if _is_code(stdout, PIPE):
            pipes |= _PIPE_STDOUT
            stdout = None
        if _is_code(stderr, PIPE):
            pipes |= _PIPE_STDERR
            stderr = None
        elif _is_code(stderr, STDOUT) and pipes & _PIPE_STDOUT:
            pipes |= _STDERR_TO_STDOUT
            stderr = None
        self.pipes = pipes
        self.stdio: tuple[FileSpec, FileSpec, FileSpec] = (stdin, stdout, stderr)  # in the fd plan of every job
        self.options = options
        self.grouped = options.get("process_group") is not None or bool(options.get("new_session"))
        self.own_group = options.get("process_group") == 0 or bool(options.get("new_session"))
        self.executable = options.get("executable")
        self.env = options.get("env")
        self.default = not options and stdin is None and stdout is None and stderr is None
        self.shared = shared
        self.engine = lib.PYPROC_ENGINE_CLONE
        if shared and not self.default:
            # Every option checked now, before any child exists (DEVNULL is opened and closed again).
            request = prepare(["/"], stdin=stdin, stdout=stdout, stderr=stderr, **options)
            request.stdio.close_all()
            self.engine = ENGINE_CODES[request.engine]
        self.devnull: int | None = None
        self.template: Request | None = None
        self.request: Any = _DEFAULT_REQUEST
        self.group_request: Any = _GROUP_REQUEST
        self.paths: dict[tuple[str, bool], Any] = {}

    # ---- what one run holds ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Opens what the run's jobs share: /dev/null once (DEVNULL), the request every packed argv uses."""
        if self.default:
            return
        specs = list(self.stdio)
        for i, spec in enumerate(specs):
            if _is_code(spec, DEVNULL):
                if self.devnull is None:
                    self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                specs[i] = self.devnull
        self.stdio = (specs[0], specs[1], specs[2])
        if not self.shared:
            self.request = self.group_request = None  # every job takes the general conversion
            return
        template = prepare(["/"], stdin=specs[0], stdout=specs[1], stderr=specs[2], **self.options)
        if self.executable is None:
            template.c.exec_paths = ffi.NULL  # each job's argv[0] (pyproc_spawn_child's packed argv)
        self.template = template
        self.request = template.c
        if self.grouped:
            self.group_request = template.c
        else:
            self.group_request = template.keep(ffi.new(_REQUEST_PTR, template.c[0]))
            self.group_request.process_group = 0

    def close(self) -> None:
        if self.devnull is not None:
            os.close(self.devnull)
            self.devnull = None

    def _path_request(self, program: str, group: bool) -> Any:
        """The run's request with PATH's candidates for program (found once per run, as spawn() finds them)."""
        key = (program, group)
        entry = self.paths.get(key)
        if entry is None:
            entry = request_with_path(self.group_request if group else self.request, os.fsencode(program), self.env)
            if len(self.paths) >= _PATH_CACHE_MAX:
                self.paths.clear()  # the jobs that use them keep theirs alive
            self.paths[key] = entry
        return entry

    def _prepare(self, argv: Any, index: int, group: bool, cwd: Any, env: Any) -> Request:
        """spawn's general conversion of one command (its errors name the command's index)."""
        options = self.options
        if cwd is not None or env is not None or group:
            options = dict(options)
            if cwd is not None:
                options["cwd"] = cwd
            if env is not None:
                options["env"] = env
            if group:
                options["process_group"] = 0
        stdin, stdout, stderr = self.stdio
        try:
            return prepare(argv, stdin=stdin, stdout=stdout, stderr=stderr, **options)
        except (TypeError, ValueError) as exc:
            if index < 0 or type(exc) not in (TypeError, ValueError):
                raise  # (not a run_many command; UnicodeError ...: their own arguments)
            raise type(exc)(f"run_many: command {index}: {exc}") from exc

    # ---- one job ----------------------------------------------------------------------------------------------

    def submit(self, pool: _Pool, argv: Any, index: int, data: memoryview | None = None,
               timeout: float | None = None, cwd: Any = None, env: Any = None) -> int:
        """Converts argv and queues it in pool; returns its slot.  data / timeout / cwd / env: the job's own (a
        Job's, checked), else the plan's.  A bad command raises (naming index when it is >= 0)."""
        data_c = self.input_c
        if data is None:
            data = self.input
        else:
            if self.stdin_given:
                raise ValueError(f"run_many: command {index}: Job(input=...) and run_many's stdin= both say "
                                 "where its stdin comes from")
            data_c = ffi.from_buffer("char[]", data)
        if timeout is None:
            timeout = self.timeout
        group = timeout is not None and not self.grouped
        packed = None
        if cwd is None and env is None and self.request is not None and (type(argv) is list or type(argv) is tuple):
            packed = _pack_argv(argv)  # None for anything but non-empty str items without NUL
        if packed is not None:
            if self.executable is not None or "/" in argv[0]:
                keep: Any = None
                req = self.group_request if group else self.request
            else:
                keep = self._path_request(argv[0], group)
                req = keep[0]
            argc = len(argv)
            engine = self.engine
        else:
            keep = self._prepare(argv, index, group, cwd, env)
            req = keep.c
            packed = ffi.NULL
            argc = 0
            engine = ENGINE_CODES[keep.engine]
        pipes = self.pipes
        if data is not None or self.stdin_is_pipe:
            pipes |= _PIPE_STDIN
        child = ffi.new(_CHILD_PTR)
        err = lib.pyproc_pool_submit(pool.c, req, packed, 0 if argc == 0 else len(packed), argc, engine, pipes,
                                     data_c, 0 if data is None else data.nbytes,
                                     -1 if timeout is None else int(timeout * 1e9), group or self.own_group, child,
                                     pool.slot_out)
        if err:
            check(err, None, "queueing a job")
        slot: int = pool.slot_out[0]
        records = pool.records
        if slot >= len(records):
            records.extend([None] * (slot + 1 - len(records)))
        # (index, argv, child, what C points into, timeout, the options that differ from the run's)
        records[slot] = (index, argv, child, (keep, data_c), timeout, (group, cwd, env))
        return slot

    def result(self, pool: _Pool, slot: int) -> tuple[int, Result]:
        """The Result of the done job in slot (its outputs taken; the slot is recycled after)."""
        index, argv, child, _keep, timeout, job_options = pool.records[slot]
        pool.records[slot] = None
        job = pool.c.slots[slot]
        pipes = self.pipes
        pump = job.pump
        out = take(pump, 0) if pipes & _PIPE_STDOUT else None
        errors = take(pump, 1) if pipes & _PIPE_STDERR else None
        error: BaseException | None = None
        # Not reaped by the pool: it could not start (127), or someone else reaped it (no status: 0, as Process).
        returncode = child.returncode if child.reaped else 127 if child.spawn.fail_stage else 0
        failed = job.error
        if failed:
            if child.spawn.fail_stage:
                error = self._start_error(argv, child, job.pipes, failed, job_options)
            else:
                error = os_error(failed, None, "running the job (its pipes, or the pool's epoll set)")
        elif job.timed_out:
            error = TimeoutExpired(argv, timeout or 0.0, out, errors)
        return index, Result(argv, returncode, out, errors, child, (job.end_ns - job.start_ns) / 1e9, error)

    def _start_error(self, argv: Any, child: Any, pipes: int, err: int, job_options: tuple[bool, Any, Any]) -> OSError:
        """The OSError run() would raise for a command that could not start, named by its general request."""
        group, cwd, env = job_options
        try:
            request: Request | None = self._prepare(argv, -1, group, cwd, env)
        except Exception:
            request = None  # (it was prepared once already; should it fail now, the step is named without it)
        if request is None:
            return os_error(err, None, "starting the child")
        try:
            return piped_failure(argv, request, "auto", pipes, err, child.spawn)
        finally:
            request.stdio.close_all()


def _check_jobs(jobs: object) -> int:
    if jobs is None:
        return len(os.sched_getaffinity(0))
    if isinstance(jobs, bool) or not isinstance(jobs, int):
        raise TypeError(f"jobs must be an int or None, not {type(jobs).__name__}")
    if not 1 <= jobs <= 1 << 20:
        raise ValueError(f"jobs must be between 1 and {1 << 20}, not {jobs}")
    return jobs


_bar_class: Any = None


def _progress_bar(commands: Iterable[Any]) -> Callable[[], Any] | None:
    """A function that makes the tqdm bar (total: len(commands) when it has one); None, with a warning, without
    tqdm."""
    global _bar_class
    if _bar_class is None:
        try:
            from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            warnings.warn("run_many(progress=True) needs tqdm (pip install tqdm): running without a progress bar",
                          RuntimeWarning, stacklevel=4)  # (the caller of run_many)
            return None

        class _Bar(tqdm):  # type: ignore[misc,unused-ignore]
            # No monitor thread: tqdm's would outlive the bar, for the life of the process, and a thread that does
            # not block signals receives the signals the caller's thread blocks.
            monitor_interval = 0

        _bar_class = _Bar
    try:
        total: int | None = len(commands)  # type: ignore[arg-type]
    except TypeError:
        total = None
    bar_class = _bar_class
    return lambda: bar_class(total=total, unit="job")


def run_many(
    commands: Iterable[Any],
    *,
    jobs: int | None = None,
    capture: bool = False,
    stdin: FileSpec = None,
    input: bytes | bytearray | memoryview | None = None,
    timeout: float | None = None,
    check: bool = False,
    fail_fast: bool = False,
    ordered: bool = True,
    progress: bool = False,
    **spawn_options: Any,
) -> Iterator[Result]:
    """Runs every command, `jobs` at a time, and yields one Result per command (the class run() returns).

    commands: any iterable (a generator of millions works: it is read lazily, at most 3 * jobs + 16 commands ahead
    of the results yielded, so memory stays bounded).  Each command is an argv, as for run(), or a
    pyproc.Job(argv, input=, cwd=, env=, timeout=) for options of its own.  jobs: how many run at once (default:
    the CPUs this process may use).  ordered=True yields in input order, False as the jobs finish.

    capture=True captures stdout and stderr (or give stdout= / stderr=: PIPE, STDOUT, DEVNULL, an fd); stdin
    (DEVNULL, an fd, PIPE; default inherited) and input (bytes for every job's stdin) as for run().  timeout
    (seconds, per job): an overdue job's process group is killed, the others go on; its Result has timed_out True,
    error a pyproc.TimeoutExpired and the output written until then.  Other keyword arguments are spawn()'s (cwd,
    env, engine, umask, ...) and apply to every job.

    A command that cannot start (FileNotFoundError, PermissionError, a bad cwd ...) yields a Result whose error is
    that exception (returncode 127) and the others go on.  check=True raises at the first failure seen (the error,
    or CalledProcessError for a nonzero exit), after killing and reaping every running child; fail_fast=True starts
    no job after the first failure, yields the results of the jobs already running, and ends.
    progress=True shows a tqdm progress bar (warns and goes on without one when tqdm is missing).

    Bad options raise TypeError / ValueError here; a bad command (not a sequence, an empty argv ...) raises when
    it is read, naming its index.  However the iteration ends (an exception in the loop, Ctrl-C, break and close()
    or garbage collection of the iterator), every running child is killed and reaped and every fd closed.
    """
    return _results(_new_run(commands, jobs, capture, stdin, input, timeout, check, fail_fast, ordered, progress,
                             spawn_options))


def _new_run(commands: Iterable[Any], jobs: object, capture: object, stdin: FileSpec, input: object,
             timeout: object, check: object, fail_fast: object, ordered: object, progress: object,
             spawn_options: dict[str, Any]) -> _Run:
    """run_many's (and aio.run_many's) arguments checked, before anything starts: a _Run to open."""
    jobs = _check_jobs(jobs)
    flags = []
    for name, value in (("check", check), ("fail_fast", fail_fast), ("ordered", ordered), ("progress", progress)):
        if not isinstance(value, (bool, int)):
            raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
        flags.append(bool(value))
    plan = _Plan(capture, stdin, input, timeout, spawn_options)
    source = iter(commands)
    bar = _progress_bar(commands) if flags[3] else None
    return _Run(plan, source, jobs, flags[0], flags[1], flags[2], bar)


def _failed(result: Result) -> bool:
    return result.error is not None or result.returncode != 0


class _Run:
    """One run_many's state, shared by the iterator of run_many and that of aio.run_many: reads commands into the
    pool within the read-ahead, and turns the done jobs into the results to hand out, in their order."""

    def __init__(self, plan: _Plan, source: Iterator[Any], jobs: int, check: bool, fail_fast: bool, ordered: bool,
                 make_bar: Callable[[], Any] | None) -> None:
        self.plan = plan
        self.source = source
        self.jobs = jobs
        self.ahead = read_ahead(jobs)
        self.check = check
        self.fail_fast = fail_fast
        self.ordered = ordered
        self.make_bar = make_bar
        self.bar: Any = None
        self.pool: _Pool | None = None
        self.submitted = self.handed = 0  # commands read; results handed out (ordered: the index of the next one)
        self.ready: dict[int, Result | None] = {}  # ordered: done, waiting for their turn (None: dropped)
        self.exhausted = self.stopping = False

    def open(self) -> _Pool:
        self.plan.open()
        self.pool = pool = _Pool(self.jobs, self.ahead + self.jobs)
        if self.make_bar is not None:
            self.bar = self.make_bar()
        return pool

    def refill(self, held: int = 0) -> int:
        """Reads commands into the queue while fewer than `jobs` wait there and the read-ahead allows (held:
        results handed out that the consumer has not taken yet); returns how many.  A bad command, or the source
        itself, raises here."""
        pool = self.pool
        assert pool is not None
        c = pool.c
        plan = self.plan
        before = self.submitted
        while (not (self.exhausted or self.stopping) and c.n_queued < self.jobs
               and self.submitted - self.handed + held < self.ahead):
            try:
                command = next(self.source)
            except StopIteration:
                self.exhausted = True
                break
            if type(command) is Job:
                plan.submit(pool, command.argv, self.submitted, command.input, command.timeout, command.cwd,
                            command.env)
            else:
                plan.submit(pool, command, self.submitted)
            self.submitted += 1
        return self.submitted - before

    def finished(self) -> bool:
        """Nothing left to run or hand out (after a refill)."""
        c = self.pool.c  # type: ignore[union-attr]
        return not (c.running or c.n_queued or c.n_done)

    def collect(self) -> list[Result]:
        """The results to hand out now, from the jobs done since the last call (their slots recycled).  Raises
        the first failure with check=True; drops what is queued at the first failure with fail_fast=True."""
        pool = self.pool
        assert pool is not None
        c = pool.c
        n = c.n_done
        if not n:
            return []
        done = [self.plan.result(pool, c.done[k]) for k in range(n)]
        lib.pyproc_pool_recycle(c)
        out = []
        for index, result in done:
            if _failed(result):
                if self.check:
                    result.check_returncode()  # raises; closing the run kills and reaps what runs
                if self.fail_fast and not self.stopping:
                    self.stopping = True  # no job starts after a failure
                    for record in pool.drop_queued():
                        self.ready[record[0]] = None
            if self.ordered:
                self.ready[index] = result
            else:
                out.append(result)
        if self.ordered:
            ready = self.ready
            while self.handed in ready:
                ready_result = ready.pop(self.handed)
                self.handed += 1
                if ready_result is not None:
                    out.append(ready_result)
        else:
            self.handed += len(out)
        if self.bar is not None and out:
            self.bar.update(len(out))
        return out

    def close(self) -> None:
        """Kills and reaps what runs, closes every fd (idempotent)."""
        try:
            if self.pool is not None:
                self.pool.close()
        finally:
            self.plan.close()
            if self.bar is not None:
                self.bar.close()
                self.bar = None


def _results(run: _Run) -> Iterator[Result]:
    try:
        pool = run.open()
        while True:
            run.refill()
            if run.finished():
                return
            pool.run(True)
            yield from run.collect()
    finally:
        run.close()


__all__ = ["Job", "run_many"]
