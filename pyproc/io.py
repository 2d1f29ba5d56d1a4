"""Moving bytes to and from children: run(), Result, Process.communicate(), pipeline(), read_full /
write_full.

The work is done by one C call (csrc/io.c, GIL released) that polls the child's stdin, stdout and stderr
together: input is written as the pipe accepts it and outputs are read as they arrive, so no size in either
direction can deadlock.  A signal interrupts the C call, Python runs its handlers (which may raise) and the
call resumes where it was: a signal never surfaces as EINTR.

Decisions (where the issue left a choice):
- run(..., timeout=T) starts the child in a new process group of its own (unless process_group or new_session
is
  given), so that the timeout kills grandchildren too, and a grandchild holding the pipes cannot keep run()
  waiting.  Such a child is not in the terminal's foreground group: Ctrl-C at a terminal reaches pyproc's
  process, whose KeyboardInterrupt then kills the child's group.
- Without a timeout, run() reads until end of file, as subprocess does: a grandchild that keeps the pipes open
  keeps run() waiting.
- On a timeout or max_output, the child (its group when it leads one) is killed with SIGKILL and reaped; what
the
  pipes already hold is read without waiting, never until end of file.
- TimeoutExpired and OutputLimitExceeded carry the output as bytes (text mode or not: a partial output may end
  inside a character); Result and CalledProcessError carry str in text mode.
- Text mode (encoding or errors given) decodes with that encoding (default: the locale's), without newline
  translation.
- A child in its own group (run() with a timeout) that reads the terminal is stopped by SIGTTIN: give it
  input= or stdin=, or keep it in pyproc's group with process_group=os.getpgrp() (then a timeout kills the
  child alone).
- Captured output below 32 MiB per stream is read into 256 KiB chunks from a process-wide pool (reused by later
  runs, so their pages are faulted in once; the pool keeps at most 32 MiB) and copied once, with the GIL
  released, into the result.  Past 32 MiB (glibc's largest mmap threshold, above which a bytes object is always a
  fresh mapping) the output goes to one growing mapping, read with a short-lived helper thread (all signals
  blocked) that faults its pages in ahead of the reads on the other CPU (it never outlives the C call), and
  reaches Python by moving its pages into the bytes object (mremap), not by copying them.
"""

from __future__ import annotations

import errno
import functools
import locale
import math
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from ._lib import ffi, lib
from .errors import CalledProcessError, OutputLimitExceeded, TimeoutExpired, check
from .process import Process, Rusage, Status
from .spawn import PIPE, STDOUT, FileSpec, _pack_argv, _start_piped, prepare, start

_EINTR = errno.EINTR
_NO_LIMIT = (1 << 64) - 1
# Smaller outputs are sliced out of the pump's first chunk (one contiguous piece); larger ones are copied (or
# their pages moved) into a new bytes object by C, with the GIL released.
_SMALL = min(64 << 10, lib.PYPROC_OUT_CHUNK)
_PAGE = os.sysconf("SC_PAGESIZE")
_page_lead: int | None = None
_PUMP_PTR = ffi.typeof("struct pyproc_pump *")
_chunk_max = lib.PYPROC_OUT_CHUNK_MAX  # outputs below this stay in the pump's reused chunks (tests lower it)
_new_bytes: Any = None

Input = Union[bytes, bytearray, memoryview, str, None]  # noqa: UP007 - a runtime alias on 3.10


def _lead() -> int:
    """The offset in a page at which a large fresh bytes object's data starts (48 with glibc and CPython).

    The pump starts its large buffers at the same offset, so that pyproc_pump_take can move whole pages into
    the bytes object instead of copying them.  Measured once: 40 MiB is above glibc's largest mmap threshold.
    """
    global _page_lead
    if _page_lead is None:
        probe = bytes(40 << 20)
        _page_lead = int(ffi.cast("uintptr_t", ffi.from_buffer("char[]", probe))) % _PAGE
        del probe
    return _page_lead


def _uninitialized_bytes(n: int) -> bytes:
    """A new bytes object of n bytes that the caller fills at once (through ffi.from_buffer) before anyone sees it.

    CPython's PyBytes_FromStringAndSize(NULL, n) (through ctypes, imported on first use): unlike bytes(n), it does
    not zero memory that is about to be overwritten -- glibc's calloc clears recycled heap memory, a whole extra
    pass over a medium output.  Falls back to bytes(n) where ctypes or that function is missing.
    """
    global _new_bytes
    if _new_bytes is None:
        try:
            import ctypes

            func = ctypes.pythonapi.PyBytes_FromStringAndSize
            func.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
            func.restype = ctypes.py_object
            _new_bytes = functools.partial(func, None)
        except (ImportError, AttributeError):
            _new_bytes = bytes
    result: bytes = _new_bytes(n)
    return result


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
    view = _byte_view(data, "data")
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


def _byte_view(data: object, name: str) -> memoryview:
    if isinstance(data, str):
        raise TypeError(f"{name} must be bytes-like, not str (encode it, or use text mode with encoding=)")
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        kind = type(data).__name__
        raise TypeError(f"{name} must be bytes, bytearray or another buffer, not {kind}") from None
    if not view.c_contiguous:
        raise ValueError(f"{name} must be a contiguous buffer")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


# ---- the pump ----------------------------------------------------------------------------------------------


class _Pump:
    """One struct pyproc_pump and what it points to; resumable (communicate after a timeout continues it)."""

    def __init__(self, in_fd: int | None, data: memoryview | None, out_fds: tuple[int | None, int | None],
                 max_output: int | None, own_outputs: bool = False) -> None:
        self.c = ffi.new(_PUMP_PTR)
        self._data = ffi.NULL  # the input, kept alive while the pump may write it
        n = 0
        if in_fd is not None and data is not None and data.nbytes:
            self._data = ffi.from_buffer("char[]", data)
            n = data.nbytes
        out, err = out_fds
        lib.pyproc_pump_setup(self.c, -1 if in_fd is None else in_fd, self._data, n, -1 if out is None else out,
                              -1 if err is None else err, _NO_LIMIT if max_output is None else max_output, _lead(),
                              _chunk_max, own_outputs)
        self.released = False

    def run(self, deadline: float | None) -> int:
        """Pumps until done, the deadline (time.monotonic()) or the limit; returns a PYPROC_PUMP_* outcome."""
        c = self.c
        if c.outcome == lib.PYPROC_PUMP_TIMEOUT:
            c.outcome = lib.PYPROC_PUMP_RUNNING  # resumed after a timeout (communicate again)
        c.deadline_ns = -1 if deadline is None else max(0, int(deadline * 1e9))
        while True:
            err = lib.pyproc_pump_run(c, 0)
            if err != _EINTR:  # EINTR: go round, so that Python's signal handlers run (and may raise)
                break
        check(err, None, "pumping the child's pipes")
        return int(c.outcome)

    def drain(self) -> None:
        """Reads what the pipes already hold, without waiting (after the child was killed)."""
        while True:
            err = lib.pyproc_pump_run(self.c, 1)
            if err != _EINTR:
                break
        check(err, None, "reading the child's pipes")

    def peek(self, stream: int) -> bytes:
        """A copy of what was read so far (the state is kept)."""
        n = int(self.c.out[stream].len)
        if n < _SMALL:
            return ffi.buffer(self.c.out[stream].data, n)[:] if n else b""
        result = _uninitialized_bytes(n)
        check(lib.pyproc_pump_copy(self.c, stream, ffi.from_buffer("char[]", result), n), None,
              "copying the output")
        return result

    def take(self, stream: int, limit: int | None = None) -> bytes:
        """What was read, handed over once (at most limit bytes); the buffer is freed."""
        return _take(self.c, stream, limit)

    def finish(self, proc: Process) -> None:
        """release(), then reaps proc, in one C call (run()'s ending once the outputs were taken)."""
        _finish(self.c, proc)
        self.released = True  # (after: if it raised before its C call, release() must still free the pump)

    def release(self) -> None:
        if not self.released:
            self.released = True
            lib.pyproc_pump_release(self.c)

    def __del__(self) -> None:
        if hasattr(self, "released"):
            self.release()


def _take(c: Any, stream: int, limit: int | None = None) -> bytes:
    """What pump c read from stream, handed over once (at most limit bytes); the buffer is freed."""
    out = c.out[stream]
    n = int(out.len) if limit is None else min(int(out.len), limit)
    if n < _SMALL:  # contiguous: the first chunk (or the mapping) holds it; the release frees it
        return ffi.buffer(out.data, n)[:] if n else b""
    # A new bytes object, not yet shared, receives the output with the GIL released: copied from the chunks,
    # or, from a large mapping, its pages moved there when the offsets in a page agree (else copied).
    result = _uninitialized_bytes(n)
    dest = ffi.from_buffer("char[]", result)
    check(lib.pyproc_pump_take(c, stream, dest, n), None, "handing over the output")
    return result


def _finish(c: Any, proc: Process) -> None:
    """Releases pump c, then reaps proc, in one C call (run()'s ending once the outputs were taken)."""
    child = proc._c
    if child is None or proc.returncode is not None:
        lib.pyproc_pump_release(c)
        proc.wait()
        return
    pidfd = -1 if proc.pidfd is None else proc.pidfd
    while True:
        err = lib.pyproc_pump_finish(c, child, proc.pid, pidfd)
        if err != _EINTR:  # EINTR: go round, so that Python's signal handlers run (and may raise)
            break
    if err:
        proc.wait()  # ECHILD (reaped behind our back) and the rest: the general reap decides
    else:
        proc._set_reaped()


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be >= 0, not {timeout!r}")
    return float(timeout)


def _check_limit(max_output: object) -> int | None:
    if max_output is None:
        return None
    if isinstance(max_output, bool) or not isinstance(max_output, int):
        kind = type(max_output).__name__
        raise TypeError(f"max_output must be an int (bytes per stream) or None, not {kind}")
    if not 0 <= max_output < _NO_LIMIT:
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


# ---- communicate -------------------------------------------------------------------------------------------


def communicate(proc: Process, input: bytes | bytearray | memoryview | None = None,
                timeout: float | None = None) -> tuple[bytes | None, bytes | None]:
    """Process.communicate: sends input, reads stdout and stderr to end of file, waits for the child.

    Returns (stdout, stderr): bytes for the streams that are pipes, else None.  With a timeout, raises
    pyproc.TimeoutExpired carrying the output read so far and leaves the child running; calling communicate()
    again (without input) continues where it stopped, as subprocess does.  input needs stdin=PIPE; a child
    that closes its stdin early gets the rest dropped, without error.
    """
    timeout = _check_timeout(timeout)
    pump: _Pump | None = proc._pump
    if pump is None:
        if input is not None:
            view: memoryview | None = _byte_view(input, "input")
            if proc.stdin is None or proc.stdin.closed:
                raise ValueError("communicate(input=...) needs the child's stdin to be a pipe (stdin=PIPE)")
        else:
            view = None
        in_fd = None
        if proc.stdin is not None and proc.stdin.closed:
            proc.stdin = None
        if proc.stdin is not None:
            in_fd = _detach_stdin(proc)
        pump = _Pump(in_fd, view, (_fileno(proc.stdout), _fileno(proc.stderr)), None)
        proc._pump = pump
    elif input is not None:
        raise ValueError("communicate() was already started: input cannot be sent again")
    deadline = None if timeout is None else time.monotonic() + timeout
    outcome = pump.run(deadline)
    if outcome == lib.PYPROC_PUMP_TIMEOUT:
        partial = _peek(pump, proc.stdout, 0), _peek(pump, proc.stderr, 1)
        raise TimeoutExpired(proc.args, timeout or 0.0, *partial)
    out = pump.take(0) if _fileno(proc.stdout) is not None else None
    err = pump.take(1) if _fileno(proc.stderr) is not None else None
    pump.release()
    proc._pump = None
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    if deadline is None:
        proc.wait()
    else:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except TimeoutExpired:
            raise TimeoutExpired(proc.args, timeout or 0.0, out, err) from None
    return out, err


def _peek(pump: _Pump, stream: Any, i: int) -> bytes | None:
    return None if _fileno(stream) is None else pump.peek(i)


def _fileno(stream: Any) -> int | None:
    """The fd of a pipe the caller has not closed (a closed one is treated as no pipe)."""
    return None if stream is None or stream.closed else int(stream.fileno())


def _detach_stdin(proc: Process) -> int:
    """Takes the stdin pipe from proc.stdin (flushing what it buffered) as an fd the pump owns."""
    stdin = proc.stdin
    assert stdin is not None
    fd = os.dup(stdin.fileno())
    try:
        stdin.close()
    except BrokenPipeError:
        pass  # the child already closed its stdin
    except BaseException:
        os.close(fd)
        raise
    proc.stdin = None
    return fd


# ---- run ---------------------------------------------------------------------------------------------------


class Result:
    """What run() gives back.

    args; returncode (the exit code, or minus the signal number); stdout / stderr (bytes, str in text mode, or
    None for a stream that was not captured); status (pyproc.Status); rusage (pyproc.Rusage: the child's CPU
    times, max RSS, faults); elapsed (seconds from the spawn to the reap).  status and rusage are decoded when
    first read.
    """

    __slots__ = ("_proc", "args", "elapsed", "returncode", "stderr", "stdout")

    def __init__(self, args: Any, returncode: int, stdout: Any = None, stderr: Any = None,
                 proc: Process | None = None, elapsed: float = 0.0) -> None:
        self.args = args
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self._proc = proc
        self.elapsed = elapsed

    @property
    def status(self) -> Status | None:
        """How the child ended (pyproc.Status)."""
        return None if self._proc is None else self._proc.status

    @property
    def rusage(self) -> Rusage | None:
        """The resources the child used (pyproc.Rusage)."""
        return None if self._proc is None else self._proc.rusage

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(args={self.args!r}, returncode={self.returncode!r}, "
                f"stdout={self.stdout!r}, stderr={self.stderr!r}, elapsed={self.elapsed!r})")

    def check_returncode(self) -> None:
        """Raises pyproc.CalledProcessError (carrying the output) if returncode is nonzero."""
        if self.returncode:
            raise CalledProcessError(self.returncode, self.args, self.stdout, self.stderr)


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
    return _byte_view(input, "input")


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
    checked_timeout = _check_timeout(timeout)
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
        packed = _pack_argv(argv, True)  # None unless argv is a plain list of str naming a path
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
        out, err = _capture_to_end(proc, parent[1], parent[2])
    except BaseException:
        _kill(proc, False)
        proc.wait()
        raise
    assert proc.returncode is not None
    result = Result(proc.args, proc.returncode, out, err, proc, time.monotonic() - started)
    if check and proc.returncode:
        result.check_returncode()
    return result


def _capture_to_end(proc: Process, out_fd: int | None, err_fd: int | None) -> tuple[bytes, bytes]:
    """Reads proc's stdout and stderr pipes (the parent's ends) to end of file, closes them and reaps proc.

    No input, deadline or limit: the C pump can only finish.  The fds are this call's from the start (closed even
    when it raises); proc is reaped by the same C call that frees the pump.  For run(argv, capture=True) and
    pyproc.subprocess's run(args, capture_output=True).
    """
    # The pump's struct is used directly, without a _Pump: this is the hot path of every run(capture=True).
    try:
        c = ffi.new(_PUMP_PTR)
        lib.pyproc_pump_setup(c, -1, ffi.NULL, 0, -1 if out_fd is None else out_fd, -1 if err_fd is None else err_fd,
                              _NO_LIMIT, _lead(), _chunk_max, 1)
    except BaseException:
        _close_fds([fd for fd in (out_fd, err_fd) if fd is not None])
        raise
    released = False
    try:
        while True:
            err = lib.pyproc_pump_run(c, 0)  # no deadline: it returns when both outputs reached end of file
            if err != _EINTR:  # EINTR: go round, so that Python's signal handlers run (and may raise)
                break
        if err:
            check(err, None, "pumping the child's pipes")
        out = _take(c, 0)
        errors = _take(c, 1)
        _finish(c, proc)
        released = True  # (after: if it raised before its C call, the pump must still be freed)
    finally:
        if not released:
            lib.pyproc_pump_release(c)
    return out, errors


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
    pump = _Pump(in_fd, data, (parent[1], parent[2]), limit, True)  # own_outputs (positional: see spawn.start())
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
            return Result(proc.args, proc.returncode, out, err, proc)
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
    return Result(proc.args, proc.returncode, out, err, proc)


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
    pump: _Pump | None = None
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
        pump = _Pump(in_parent, data, (out_parent, err_parent), limit)
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

