"""run_many() and Job: many children at the kernel's pace, through one C job pool (csrc/pool.c).

One C call (pyproc_pool_run, GIL released) keeps `jobs` children running: it starts queued jobs through the same
spawn as run() (pipes made with the spawn), waits on every child's pidfd and pipes in one epoll set, feeds inputs
and reads outputs with run()'s pump, reaps with wait4, kills jobs past their deadline, and returns as soon as a job
is done, its replacement already started.  Python only converts commands (argv packed as spawn() packs it) and
builds Results while the children run.

How it fits together (_Plan, _Pool, the generator):
- _Plan checks everything the jobs share once, at the call (bad options raise before any child exists), and
  converts each command when it is read: a list or tuple of str takes the packed path with a request built once
  for the whole run (a program without a slash gets its PATH candidates once per run); anything else (bytes,
  os.PathLike, a Job with cwd / env) goes through spawn's prepare(), which also names what is wrong with a bad
  command.
- _Pool is one struct pyproc_pool with the Python record of each of its jobs (kept until the job is recycled: the
  C side points into it).
- The generator reads commands only while fewer than `jobs` wait in the queue and fewer than 3 * jobs + 16 are
  read ahead of the results yielded (so a generator of a million commands is consumed lazily, in bounded memory),
  and its finally closes the pool: every running child killed and reaped, every fd closed, whatever ends the
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
    DEVNULL,
    ENGINE_CODES,
    PIPE,
    STDOUT,
    FileSpec,
    Request,
    _exec_candidates,
    _pack_argv,
    piped_failure,
    prepare,
)

_EINTR = errno.EINTR
_POOL_PTR = ffi.typeof("struct pyproc_pool *")
_CHILD_PTR = ffi.typeof("struct pyproc_child *")
_REQUEST_PTR = ffi.typeof("struct pyproc_spawn_request *")
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
                 options: dict[str, Any]) -> None:
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
        # Every option checked now, before any child exists (DEVNULL is opened and closed again).
        request = prepare(["/"], stdin=stdin, stdout=stdout, stderr=stderr, **options)
        request.stdio.close_all()
        self.engine = ENGINE_CODES[request.engine]
        self.default = not options and stdin is None and stdout is None and stderr is None
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
            c_paths = [ffi.new("char[]", path) for path in _exec_candidates(os.fsencode(program), self.env)]
            array = ffi.new("char *[]", c_paths)
            req = ffi.new(_REQUEST_PTR, (self.group_request if group else self.request)[0])
            req.exec_paths = array
            req.n_exec_paths = len(c_paths)
            if len(self.paths) >= _PATH_CACHE_MAX:
                self.paths.clear()  # the jobs that use them keep theirs alive
            entry = self.paths[key] = (req, c_paths, array)
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
            if type(exc) not in (TypeError, ValueError):
                raise  # (UnicodeError ...: their own arguments)
            raise type(exc)(f"run_many: command {index}: {exc}") from exc

    # ---- one job ----------------------------------------------------------------------------------------------

    def submit(self, pool: _Pool, command: Any, index: int) -> int:
        """Converts command and queues it in pool; returns its slot.  A bad command raises (naming index)."""
        argv = command
        data = self.input
        data_c = self.input_c
        timeout = self.timeout
        cwd = env = None
        if type(command) is Job:
            argv = command.argv
            if command.input is not None:
                if self.stdin_given:
                    raise ValueError(f"run_many: command {index}: Job(input=...) and run_many's stdin= both say "
                                     "where its stdin comes from")
                data = command.input
                data_c = ffi.from_buffer("char[]", data)
            if command.timeout is not None:
                timeout = command.timeout
            cwd, env = command.cwd, command.env
        group = timeout is not None and not self.grouped
        packed = None
        if cwd is None and env is None and (type(argv) is list or type(argv) is tuple):
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
        slot = int(pool.slot_out[0])
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
        returncode = int(child.returncode) if child.reaped else 127 if child.spawn.fail_stage else 0
        if job.error:
            if child.spawn.fail_stage:
                error = self._start_error(argv, child, job.pipes, int(job.error), job_options)
            else:
                error = os_error(int(job.error), None, "running the job (its pipes, or the pool's epoll set)")
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
                          RuntimeWarning, stacklevel=3)
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
    jobs = _check_jobs(jobs)
    flags = []
    for name, value in (("check", check), ("fail_fast", fail_fast), ("ordered", ordered), ("progress", progress)):
        if not isinstance(value, (bool, int)):
            raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
        flags.append(bool(value))
    plan = _Plan(capture, stdin, input, timeout, spawn_options)
    source = iter(commands)
    bar = _progress_bar(commands) if progress else None
    return _results(plan, source, jobs, flags[0], flags[1], flags[2], bar)


def _failed(result: Result) -> bool:
    return result.error is not None or result.returncode != 0


def _results(plan: _Plan, source: Iterator[Any], jobs: int, check: bool, fail_fast: bool, ordered: bool,
             make_bar: Callable[[], Any] | None) -> Iterator[Result]:
    ahead = read_ahead(jobs)
    pool: _Pool | None = None
    bar = None
    try:
        plan.open()
        pool = _Pool(jobs, ahead + jobs)
        bar = make_bar() if make_bar is not None else None
        c = pool.c
        submitted = yielded = 0  # commands read; results yielded (ordered: the index of the next one to yield)
        ready: dict[int, Result | None] = {}  # ordered: finished, waiting for their turn (None: dropped)
        exhausted = stopping = False
        while True:
            while not (exhausted or stopping) and c.n_queued < jobs and submitted - yielded < ahead:
                try:
                    command = next(source)
                except StopIteration:
                    exhausted = True
                    break
                plan.submit(pool, command, submitted)
                submitted += 1
            if not (c.running or c.n_queued or c.n_done):
                break
            pool.run(True)
            done = [plan.result(pool, c.done[k]) for k in range(c.n_done)]
            lib.pyproc_pool_recycle(c)
            for index, result in done:
                if _failed(result):
                    if check:
                        result.check_returncode()  # raises; the finally kills and reaps what runs
                    if fail_fast and not stopping:
                        stopping = True  # no job starts after a failure
                        for record in pool.drop_queued():
                            ready[record[0]] = None
                if ordered:
                    ready[index] = result
                    continue
                yielded += 1
                if bar is not None:
                    bar.update(1)
                yield result
            while ordered and yielded in ready:
                ready_result = ready.pop(yielded)
                yielded += 1
                if ready_result is None:
                    continue
                if bar is not None:
                    bar.update(1)
                yield ready_result
    finally:
        if pool is not None:
            pool.close()
        plan.close()
        if bar is not None:
            bar.close()


__all__ = ["Job", "run_many"]
