"""Moving bytes to and from children: run(), Result, pipeline(), read_full / write_full (and communicate, from
pyproc._pump, whose pump all of them use).

Decisions (where the issue left a choice):
- run(..., timeout=T) starts the child in a new process group of its own (unless process_group or new_session is
  given), so that the timeout kills grandchildren too, and a grandchild holding the pipes cannot keep run()
  waiting.  Such a child is not in the terminal's foreground group: Ctrl-C at a terminal reaches pyproc's
  process, whose KeyboardInterrupt then kills the child's group.
- Without a timeout, run() reads until end of file, as subprocess does: a grandchild that keeps the pipes open
  keeps run() waiting.
- On a timeout or max_output, the child (its group when it leads one) is killed with SIGKILL and reaped; what the
  pipes already hold is read without waiting, never until end of file.
- TimeoutExpired and OutputLimitExceeded carry the output as bytes (text mode or not: a partial output may end
  inside a character); Result and CalledProcessError carry str in text mode.
- Text mode (encoding or errors given) decodes with that encoding (default: the locale's), without newline
  translation.
- A child in its own group (run() with a timeout) that reads the terminal is stopped by SIGTTIN: give it
  input= or stdin=, or keep it in pyproc's group with process_group=os.getpgrp() (then a timeout kills the
  child alone).
- How captured output is buffered and handed over: see pyproc._pump.
"""

from __future__ import annotations

import errno
import locale
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from ._lib import ffi, lib
from ._pump import NO_LIMIT, Pump, byte_view, capture_to_end, check_timeout, communicate
from .errors import CalledProcessError, OutputLimitExceeded, TimeoutExpired, check
from .process import Process, Rusage, Status
from .spawn import PIPE, STDOUT, FileSpec, _pack_argv, _start_piped, prepare, start

_EINTR = errno.EINTR

Input = Union[bytes, bytearray, memoryview, str, None]  # noqa: UP007 - a runtime alias on 3.10


# ---- read_full / write_full --------------------------------------------------------------------------------


def _check_fd(fd: object, name: str = "fd") -> int:
    if isinstance(fd, bool) or not isinstance(fd, int):
        raise TypeError(f"{name} must be an int file descriptor, not {type(fd).__name__}")
    if fd < 0:
        raise ValueError(f"{name}: {fd} is not a file descriptor")
    return fd


def read_full(fd: int, n: int) -> bytes:
    """Reads n bytes from fd, fewer only at end of file.

    Partial reads are continued, EINTR is retried after Python's signal handlers ran, and a non-blocking fd's
    EAGAIN is waited out with poll.  The GIL is released while reading.  Raises OSError (errno and the fd in
    the message) on a read error; what was read before it is lost.
    """
    _check_fd(fd)
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, not {type(n).__name__}")
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    if n == 0:
        return b""
    buf = bytearray(n)
    c_buf = ffi.from_buffer("char[]", buf, require_writable=True)
    done = ffi.new("size_t *")
    while True:
        err = lib.pyproc_read_full(fd, c_buf, n, done)
        if err != _EINTR:
            break
    check(err, None, f"read_full(fd {fd})")
    got = int(done[0])
    del c_buf
    if got < n:
        del buf[got:]
    return bytes(buf)


def write_full(fd: int, data: bytes | bytearray | memoryview) -> int:
    """Writes all of data to fd and returns its length.

    Partial writes are continued, EINTR is retried after Python's signal handlers ran, a non-blocking fd's
    EAGAIN is waited out with poll.  A reader that went away gives BrokenPipeError (never SIGPIPE).  The GIL
    is released while writing.
    """
    _check_fd(fd)
    view = byte_view(data, "data")
    n = view.nbytes
    if n == 0:
        return 0
    c_data = ffi.from_buffer("char[]", view)
    done = ffi.new("size_t *")
    while True:
        err = lib.pyproc_write_full(fd, c_data, n, done)
        if err != _EINTR:
            break
    check(err, None, f"write_full(fd {fd}): {int(done[0])} of {n} bytes written")
    return n


def _check_limit(max_output: object) -> int | None:
    if max_output is None:
        return None
    if isinstance(max_output, bool) or not isinstance(max_output, int):
        kind = type(max_output).__name__
        raise TypeError(f"max_output must be an int (bytes per stream) or None, not {kind}")
    if not 0 <= max_output < NO_LIMIT:
        raise ValueError(f"max_output must be >= 0, not {max_output}")
    return max_output


def _kill(proc: Process, group: bool) -> None:
    """SIGKILL to the child, or to its process group (only while the child is unreaped: its pid, the group's
    id, cannot have been reused)."""
    if proc.returncode is not None:
        return
    if group:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            return
        except ProcessLookupError:
            pass
    proc.kill()


# ---- run ---------------------------------------------------------------------------------------------------


class Result:
    """What run() (and run_many(), for each command) gives back.

    args; returncode (the exit code, or minus the signal number); stdout / stderr (bytes, str in text mode, or
    None for a stream that was not captured); status (pyproc.Status); rusage (pyproc.Rusage: the child's CPU
    times, max RSS, faults); elapsed (seconds from the spawn to the reap).  status and rusage are decoded when
    read.  error: None, except for a run_many() job that failed as a whole: the OSError of a command that could
    not start (returncode 127, no status), or the pyproc.TimeoutExpired of one killed at its timeout (timed_out
    is then True; stdout / stderr hold what it wrote until then).
    """

    __slots__ = ("_child", "args", "elapsed", "error", "returncode", "stderr", "stdout")

    def __init__(self, args: Any, returncode: int, stdout: Any = None, stderr: Any = None, child: Any = None,
                 elapsed: float = 0.0, error: BaseException | None = None) -> None:
        self.args = args
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self._child = child  # the struct pyproc_child the reap filled in (None: no status to give)
        self.elapsed = elapsed
        self.error = error

    @property
    def status(self) -> Status | None:
        """How the child ended (pyproc.Status); None when it was not reaped by pyproc."""
        c = self._child
        return Status.from_wait_status(c.wait_status) if c is not None and c.reaped else None

    @property
    def rusage(self) -> Rusage | None:
        """The resources the child used (pyproc.Rusage); None when it was not reaped by pyproc."""
        c = self._child
        return Rusage.from_c(c.rusage) if c is not None and c.reaped else None

    @property
    def timed_out(self) -> bool:
        """True for a run_many() job killed at its timeout."""
        return isinstance(self.error, TimeoutExpired)

    def __repr__(self) -> str:
        error = "" if self.error is None else f", error={self.error!r}"
        return (f"{type(self).__name__}(args={self.args!r}, returncode={self.returncode!r}, "
                f"stdout={self.stdout!r}, stderr={self.stderr!r}, elapsed={self.elapsed!r}{error})")

    def __reduce__(self) -> tuple[Any, ...]:
        # The reaped struct is C memory, which does not pickle: its status word and rusage travel as numbers, so a
        # Result crosses processes (pyproc.dask) with everything it gives.
        c = self._child
        ended = None
        if c is not None and c.reaped:
            ended = (c.wait_status, c.returncode, tuple(getattr(c.rusage, name) for name in _RUSAGE_FIELDS))
        return (_unpickle_result,
                (self.args, self.returncode, self.stdout, self.stderr, self.elapsed, self.error, ended))

    def check_returncode(self) -> None:
        """Raises error if there is one, else pyproc.CalledProcessError (carrying the output) if returncode is
        nonzero."""
        if self.error is not None:
            raise self.error
        if self.returncode:
            raise CalledProcessError(self.returncode, self.args, self.stdout, self.stderr)


_RUSAGE_FIELDS = tuple(name for name, _ in ffi.typeof("struct pyproc_rusage").fields)


def _unpickle_result(args: Any, returncode: int, stdout: Any, stderr: Any, elapsed: float,
                     error: BaseException | None, ended: tuple[int, int, tuple[int, ...]] | None) -> Result:
    """A pickled Result again, with a struct pyproc_child of its own holding the status and rusage it had."""
    child = None
    if ended is not None:
        child = ffi.new("struct pyproc_child *")
        child.reaped = 1
        child.wait_status, child.returncode, usage = ended
        for name, value in zip(_RUSAGE_FIELDS, usage, strict=True):
            setattr(child.rusage, name, value)
    return Result(args, returncode, stdout, stderr, child, elapsed, error)


def _text_settings(encoding: object, errors: object) -> tuple[str, str] | None:
    if encoding is None and errors is None:
        return None
    if encoding is not None and not isinstance(encoding, str):
        raise TypeError(f"encoding must be a str, not {type(encoding).__name__}")
    if errors is not None and not isinstance(errors, str):
        raise TypeError(f"errors must be a str, not {type(errors).__name__}")
    enc = encoding if encoding is not None else locale.getpreferredencoding(False)
    import codecs

    codecs.lookup(enc)  # LookupError for an unknown encoding, before any child exists
    return enc, errors if errors is not None else "strict"


def _input_view(input: Input, text: tuple[str, str] | None) -> memoryview | None:
    if input is None:
        return None
    if isinstance(input, str):
        if text is None:
            raise TypeError("input is a str but run() is not in text mode: pass bytes, or encoding=")
        return memoryview(input.encode(*text))
    return byte_view(input, "input")


def _check_io_arguments(
    input: Input,
    capture: object,
    stdout: FileSpec,
    stderr: FileSpec,
    timeout: object,
    max_output: object,
    encoding: object,
    errors: object,
) -> tuple[tuple[str, str] | None, float | None, int | None, memoryview | None, FileSpec, FileSpec]:
    """The checks run() and pipeline() share: (text settings, timeout, limit, input bytes, stdout, stderr)."""
    text = _text_settings(encoding, errors)
    checked_timeout = check_timeout(timeout)
    limit = _check_limit(max_output)
    data = _input_view(input, text)
    if not isinstance(capture, (bool, int)):
        raise TypeError(f"capture must be a bool, not {type(capture).__name__}")
    if capture:
        if stdout is not None or stderr is not None:
            raise ValueError("capture=True conflicts with stdout= / stderr=")
        stdout = stderr = PIPE
    return text, checked_timeout, limit, data, stdout, stderr


def _decode(data: bytes | None, text: tuple[str, str] | None) -> bytes | str | None:
    if data is None or text is None:
        return data
    return data.decode(*text)


def _is_code(spec: object, code: int) -> bool:
    return isinstance(spec, int) and not isinstance(spec, bool) and spec == code


def run(
    argv: Sequence[Any],
    *,
    input: Input = None,
    capture: bool = False,
    stdout: FileSpec = None,
    stderr: FileSpec = None,
    timeout: float | None = None,
    check: bool = False,
    max_output: int | None = None,
    encoding: str | None = None,
    errors: str | None = None,
    **spawn_options: Any,
) -> Result:
    """Runs argv to completion and returns a Result (returncode, stdout, stderr, status, rusage, elapsed).

    input: bytes (str in text mode) written to the child's stdin as it reads it; a child that closes its stdin
    early gets the rest dropped, without error.  capture=True captures stdout and stderr; or give stdout= /
    stderr= (PIPE captures that stream; STDOUT for stderr; DEVNULL; an fd or file).  Streams not captured are
    inherited. The output is read by one C call with the GIL released; no size in either direction can
    deadlock.

    timeout (seconds): the child is started in its own process group (unless process_group or new_session is
    given); when time runs out the group is killed (grandchildren too), the child reaped, and
    pyproc.TimeoutExpired raised with the output read so far (bytes).  max_output: the most bytes kept per
    stream; more kills the child (its group if it leads one) and raises pyproc.OutputLimitExceeded carrying
    what was read (at most max_output per stream).  check=True raises pyproc.CalledProcessError on a nonzero
    returncode.  encoding / errors: text mode (input and output are str).  Other keyword arguments go to
    pyproc.spawn() (cwd, env, engine, ...).

    Bad arguments raise TypeError / ValueError before any child exists.
    """
    if (capture is True and input is None and stdout is None and stderr is None and timeout is None
            and max_output is None and encoding is None and errors is None and not spawn_options
            and (check is False or check is True)):
        packed = _pack_argv(argv, True)  # the commonest call, run(argv, capture=True): its own short path
        if packed is not None:
            return _run_capture_direct(argv, packed, check)
    text, timeout, limit, data, stdout, stderr = _check_io_arguments(
        input, capture, stdout, stderr, timeout, max_output, encoding, errors)
    if not isinstance(check, (bool, int)):
        raise TypeError(f"check must be a bool, not {type(check).__name__}")
    stdin = spawn_options.pop("stdin", None)
    if data is not None and stdin is not None:
        raise ValueError("input= and stdin= both say where the child's stdin comes from")
    if limit is not None and not (_is_code(stdout, PIPE) or _is_code(stderr, PIPE)):
        raise ValueError("max_output limits captured output, and nothing is captured (use capture=True)")
    grouped = spawn_options.get("process_group") is not None or spawn_options.get("new_session")
    if timeout is not None and not grouped:
        spawn_options["process_group"] = 0
    own_group = spawn_options.get("process_group") == 0 or bool(spawn_options.get("new_session"))

    # The pipes are made here or by the C side, not by spawn(PIPE): the parent's ends go to the pump as plain fds
    # (no file objects to build and tear down), and each child end is closed as soon as the child has it.
    pipes = _pipe_flags(stdin, data, stdout, stderr)
    packed = None
    if pipes >= 0 and (not spawn_options or (len(spawn_options) == 1 and own_group
                                             and type(spawn_options.get("process_group")) is int)):
        packed = _pack_argv(argv, True)  # None unless argv is a plain list of str
    if packed is not None:
        started = time.monotonic()
        proc, parent = _start_piped(argv, packed, pipes, own_group)  # the common case: pipes and spawn in C
        open_fds = [fd for fd in parent if fd is not None]
    else:
        open_fds = []
        parent = [None, None, None]
        try:
            if data is not None or _is_code(stdin, PIPE):
                stdin, parent[0] = _pipe(open_fds)
            if _is_code(stdout, PIPE):
                parent[1], stdout = _pipe(open_fds)
            if _is_code(stderr, PIPE):
                parent[2], stderr = _pipe(open_fds)
            request = prepare(argv, stdin=stdin, stdout=stdout, stderr=stderr, **spawn_options)
            started = time.monotonic()
            proc = start(request)
        except BaseException:
            _close_fds(open_fds)
            raise
        for fd in list(open_fds):
            if fd not in parent:
                _close_fds(open_fds, fd)
    deadline = None if timeout is None else started + timeout
    try:
        result = _run_started(proc, parent, open_fds, data, deadline, timeout, limit, own_group)
    except BaseException:
        _kill(proc, own_group)
        proc.wait()
        raise
    finally:
        _close_fds(open_fds)
    result.elapsed = time.monotonic() - started
    if text is not None:
        result.stdout = _decode(result.stdout, text)
        result.stderr = _decode(result.stderr, text)
    if check:
        result.check_returncode()
    return result


_CAPTURE_PIPES = lib.PYPROC_PIPE_STDOUT | lib.PYPROC_PIPE_STDERR


def _run_capture_direct(argv: Sequence[Any], packed: bytes, check: bool) -> Result:
    """run(argv, capture=True) with nothing else given and argv packed by _pack_argv(argv, True): what run()'s
    general path does for it (no input, no deadline, no limit), with fewer steps."""
    started = time.monotonic()
    proc, parent = _start_piped(argv, packed, _CAPTURE_PIPES, False)
    try:
        out, err = capture_to_end(proc, parent[1], parent[2])
    except BaseException:
        _kill(proc, False)
        proc.wait()
        raise
    assert proc.returncode is not None
    result = Result(proc.args, proc.returncode, out, err, proc._c, time.monotonic() - started)
    if check and proc.returncode:
        result.check_returncode()
    return result


def _pipe_flags(stdin: object, data: memoryview | None, stdout: object, stderr: object) -> int:
    """The PYPROC_PIPE_* flags when every stream is inherited, a new pipe or stderr=STDOUT (what the C side can
    set up with the spawn); -1 when one is an fd, a file or DEVNULL."""
    flags = 0
    if data is not None or _is_code(stdin, PIPE):
        flags |= lib.PYPROC_PIPE_STDIN
    elif stdin is not None:
        return -1
    if _is_code(stdout, PIPE):
        flags |= lib.PYPROC_PIPE_STDOUT
    elif stdout is not None:
        return -1
    if _is_code(stderr, PIPE):
        flags |= lib.PYPROC_PIPE_STDERR
    elif _is_code(stderr, STDOUT):
        flags |= lib.PYPROC_STDERR_TO_STDOUT
    elif stderr is not None:
        return -1
    return flags


def _run_started(proc: Process, parent: list[int | None], open_fds: list[int], data: memoryview | None,
                 deadline: float | None, timeout: float | None, limit: int | None, own_group: bool) -> Result:
    in_fd = parent[0]
    if in_fd is None and parent[1] is None and parent[2] is None:
        return _wait_run(proc, None, None, deadline, timeout, own_group)  # nothing to pump
    pump = Pump(in_fd, data, (parent[1], parent[2]), limit, True)  # own_outputs (positional: see spawn.start())
    open_fds.clear()  # the pump owns every pipe end now: it closes the input once written, all at release
    try:
        outcome = pump.run(deadline)
        if outcome != lib.PYPROC_PUMP_DONE:
            _kill(proc, own_group)
            proc.wait()
            pump.drain()
            out = pump.take(0, limit) if parent[1] is not None else None
            err = pump.take(1, limit) if parent[2] is not None else None
            if outcome == lib.PYPROC_PUMP_TIMEOUT:
                raise TimeoutExpired(proc.args, timeout or 0.0, out, err)
            raise OutputLimitExceeded(proc.args, limit or 0, out, err)
        out = pump.take(0) if parent[1] is not None else None
        err = pump.take(1) if parent[2] is not None else None
        if deadline is None:
            pump.finish(proc)  # the common ending: pipes closed and the child reaped in one C call
            assert proc.returncode is not None
            return Result(proc.args, proc.returncode, out, err, proc._c)
    finally:
        pump.release()
    return _wait_run(proc, out, err, deadline, timeout, own_group)


def _wait_run(proc: Process, out: bytes | None, err: bytes | None, deadline: float | None,
              timeout: float | None, own_group: bool) -> Result:
    """Reaps run()'s child within the deadline (else kills it, its group when it leads one, and raises)."""
    if deadline is None:
        proc.wait()
    else:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except TimeoutExpired:
            _kill(proc, own_group)
            proc.wait()
            raise TimeoutExpired(proc.args, timeout or 0.0, out, err) from None
    assert proc.returncode is not None
    return Result(proc.args, proc.returncode, out, err, proc._c)


# ---- pipeline ----------------------------------------------------------------------------------------------


@dataclass
class Pipeline:
    """What pipeline() gives back.

    args (one argv per stage); returncodes (one per stage); returncode (pipefail: the last nonzero returncode
    of the stages, 0 when all succeeded); stdout / stderr (captured output, str in text mode, else None);
    statuses, rusages (per stage); pids; elapsed (seconds).
    """

    args: list[Any]
    returncodes: list[int]
    returncode: int
    stdout: Any = None
    stderr: Any = None
    statuses: list[Status | None] = field(default_factory=list)
    rusages: list[Rusage | None] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    elapsed: float = 0.0

    def check_returncode(self) -> None:
        """Raises pyproc.CalledProcessError (for the whole pipeline) if returncode is nonzero."""
        if self.returncode:
            raise CalledProcessError(self.returncode, self.args, self.stdout, self.stderr)


def _pipefail(codes: Sequence[int]) -> int:
    for code in reversed(codes):
        if code:
            return code
    return 0


def pipeline(
    argvs: Sequence[Sequence[Any]],
    *,
    input: Input = None,
    stdin: FileSpec = None,
    stdout: FileSpec = None,
    stderr: FileSpec = None,
    capture: bool = False,
    timeout: float | None = None,
    check: bool = False,
    max_output: int | None = None,
    encoding: str | None = None,
    errors: str | None = None,
    **spawn_options: Any,
) -> Pipeline:
    """Runs argv1 | argv2 | ... to completion, every stage in one new process group, and returns a Pipeline.

    Stage i's stdout is stage i+1's stdin (a pipe the parent does not keep open: each stage sees end of file
    when the stage before it ends).  stdin / input feed the first stage, stdout (or capture=True: captured)
    takes the last stage's output; stderr applies to every stage (PIPE, or capture=True: all stages' stderr
    captured together).  returncodes per stage; returncode is pipefail-style (the last nonzero one).  timeout
    kills the whole group, reaps every stage and raises pyproc.TimeoutExpired with the output so far;
    max_output, encoding / errors, check and the other spawn options (cwd, env, engine, ...) as for run().

    Bad arguments (for any stage) raise TypeError / ValueError before any stage exists; a stage that cannot
    start (FileNotFoundError, ...) gets the stages already started killed and reaped.
    """
    if isinstance(argvs, (str, bytes)) or not isinstance(argvs, Sequence):
        raise TypeError(f"pipeline takes a sequence of argvs, not {type(argvs).__name__}")
    if not argvs:
        raise ValueError("pipeline needs at least one stage")
    for key in ("process_group", "new_session", "fds"):
        if key in spawn_options:
            raise ValueError(f"pipeline() does not take {key}=: it sets the stages' process group and stdio")
    text, timeout, limit, data, stdout, stderr = _check_io_arguments(
        input, capture, stdout, stderr, timeout, max_output, encoding, errors)
    if data is not None and stdin is not None:
        raise ValueError("input= and stdin= both say where the first stage's stdin comes from")
    if _is_code(stdin, STDOUT) or _is_code(stdout, STDOUT):
        raise ValueError("STDOUT is only valid for stderr")
    if limit is not None and not (_is_code(stdout, PIPE) or _is_code(stderr, PIPE)):
        raise ValueError("max_output limits captured output, and nothing is captured (use capture=True)")

    open_fds: list[int] = []  # every pipe end the parent holds (closed on the way out)
    try:
        in_parent = out_parent = err_parent = None
        first_in: FileSpec = stdin
        if data is not None or _is_code(stdin, PIPE):
            first_in, in_parent = _pipe(open_fds)
        last_out: FileSpec = stdout
        if _is_code(stdout, PIPE):
            out_parent, last_out = _pipe(open_fds)
        err_spec: FileSpec = STDOUT if _is_code(stderr, STDOUT) else stderr
        if _is_code(stderr, PIPE):
            err_parent, err_spec = _pipe(open_fds)
        links = [_pipe(open_fds) for _ in range(len(argvs) - 1)]
        requests = []
        for i, argv in enumerate(argvs):
            stage_in = first_in if i == 0 else links[i - 1][0]
            stage_out = last_out if i == len(argvs) - 1 else links[i][1]
            requests.append(prepare(argv, stdin=stage_in, stdout=stage_out, stderr=err_spec, process_group=0,
                                    **spawn_options))
    except BaseException:
        _close_fds(open_fds)
        raise

    procs: list[Process] = []
    pump: Pump | None = None
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    try:
        # Start the stages in order, each joining the first one's group; the parent closes each child end as
        # soon as its stage has it, so that it holds nothing that would keep a stage from seeing end of file.
        for i, request in enumerate(requests):
            if procs:
                request.c.process_group = procs[0].pid
            procs.append(start(request))
            used = [links[i - 1][0]] if i > 0 else []
            if i < len(links):
                used.append(links[i][1])
            if i == 0 and in_parent is not None:
                used.append(first_in)  # type: ignore[arg-type]
            if i == len(argvs) - 1 and out_parent is not None:
                used.append(last_out)  # type: ignore[arg-type]
            for fd in used:
                _close_fds(open_fds, fd)
        if err_parent is not None:
            _close_fds(open_fds, err_spec)  # type: ignore[arg-type]
        if in_parent is not None:
            open_fds.remove(in_parent)  # the pump owns it now, and closes it once the input is written
        pump = Pump(in_parent, data, (out_parent, err_parent), limit)
        outcome = pump.run(deadline)
        if outcome != lib.PYPROC_PUMP_DONE:
            _kill(procs[0], True)
            for proc in reversed(procs):
                proc.wait()
            pump.drain()
            out = pump.take(0, limit) if out_parent is not None else None
            err = pump.take(1, limit) if err_parent is not None else None
            if outcome == lib.PYPROC_PUMP_TIMEOUT:
                raise TimeoutExpired(list(argvs), timeout or 0.0, out, err)
            raise OutputLimitExceeded(list(argvs), limit or 0, out, err)
        out = pump.take(0) if out_parent is not None else None
        err = pump.take(1) if err_parent is not None else None
        _close_fds(open_fds)
        # The group leader (the first stage) is reaped last: until then its pid, the group's id, stays ours.
        for proc in reversed(procs):
            if deadline is None:
                proc.wait()
            else:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except TimeoutExpired:
                    raise TimeoutExpired(list(argvs), timeout or 0.0, out, err) from None
    except BaseException:
        if procs:
            _kill(procs[0], True)
            for proc in reversed(procs):
                proc.kill()
                proc.wait()
        raise
    finally:
        if pump is not None:
            pump.release()
        elif in_parent is not None and in_parent not in open_fds:
            os.close(in_parent)
        _close_fds(open_fds)
    codes = [int(proc.returncode) for proc in procs if proc.returncode is not None]
    result = Pipeline(
        list(argvs), codes, _pipefail(codes), _decode(out, text), _decode(err, text),
        [p.status for p in procs], [p.rusage for p in procs], [p.pid for p in procs],
        time.monotonic() - started,
    )
    if check:
        result.check_returncode()
    return result


def _pipe(open_fds: list[int]) -> tuple[int, int]:
    r, w = os.pipe()
    open_fds += [r, w]
    return r, w


def _close_fds(open_fds: list[int], fd: int | None = None) -> None:
    """Closes fd (and forgets it), or every fd in open_fds."""
    targets = list(open_fds) if fd is None else [fd]
    for target in targets:
        open_fds.remove(target)
        os.close(target)


__all__ = ["Pipeline", "Result", "communicate", "pipeline", "read_full", "run", "write_full"]

