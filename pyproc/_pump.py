"""The pump's Python side: one struct pyproc_pump (csrc/io.c) and the handover of what it read.

run(), Process.communicate(), pyproc.subprocess and run_many() all move their children's bytes through here.
The C pump (GIL released) polls the child's stdin, stdout and stderr together: input is written as the pipe
accepts it and outputs are read as they arrive, so no size in either direction can deadlock.  A signal
interrupts the C call, Python runs its handlers (which may raise) and the call resumes where it was: a signal
never surfaces as EINTR.

Captured output below 32 MiB per stream is read into 256 KiB chunks from a process-wide pool (reused by later
runs, so their pages are faulted in once; the pool keeps at most 32 MiB) and copied once, with the GIL released,
into the result.  Past 32 MiB (glibc's largest mmap threshold, above which a bytes object is always a fresh
mapping) the output goes to one growing mapping, read with a short-lived helper thread (all signals blocked) that
faults its pages in ahead of the reads on the other CPU (it never outlives the C call), and reaches Python by
moving its pages into the bytes object (mremap), not by copying them.

This module imports nothing of pyproc but the compiled core and the errors: process.py, io.py and pool.py build
on it, never the other way round.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import time
from typing import TYPE_CHECKING, Any

from ._lib import ffi, lib
from .errors import TimeoutExpired, check

if TYPE_CHECKING:
    from .process import Process

_EINTR = errno.EINTR
NO_LIMIT = (1 << 64) - 1
"""max_output's "no limit" for the C pump (UINT64_MAX)."""
# Smaller outputs are sliced out of the pump's first chunk (one contiguous piece); larger ones are copied (or
# their pages moved) into a new bytes object by C, with the GIL released.
SMALL = min(64 << 10, lib.PYPROC_OUT_CHUNK)
_PAGE = os.sysconf("SC_PAGESIZE")
page_lead: int | None = None
PUMP_PTR = ffi.typeof("struct pyproc_pump *")
chunk_max = lib.PYPROC_OUT_CHUNK_MAX  # outputs below this stay in the pump's reused chunks (tests lower it)
_new_bytes: Any = None


def lead() -> int:
    """The offset in a page at which a large fresh bytes object's data starts (48 with glibc and CPython).

    The pump starts its large buffers at the same offset, so that pyproc_pump_take can move whole pages into
    the bytes object instead of copying them.  Measured once: 40 MiB is above glibc's largest mmap threshold.
    """
    global page_lead
    if page_lead is None:
        probe = bytes(40 << 20)
        page_lead = int(ffi.cast("uintptr_t", ffi.from_buffer("char[]", probe))) % _PAGE
        del probe
    return page_lead


def uninitialized_bytes(n: int) -> bytes:
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


def byte_view(data: object, name: str) -> memoryview:
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


def check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be >= 0, not {timeout!r}")
    return float(timeout)


class Pump:
    """One struct pyproc_pump and what it points to; resumable (communicate after a timeout continues it)."""

    def __init__(self, in_fd: int | None, data: memoryview | None, out_fds: tuple[int | None, int | None],
                 max_output: int | None, own_outputs: bool = False) -> None:
        self.c = ffi.new(PUMP_PTR)
        self._data = ffi.NULL  # the input, kept alive while the pump may write it
        n = 0
        if in_fd is not None and data is not None and data.nbytes:
            self._data = ffi.from_buffer("char[]", data)
            n = data.nbytes
        out, err = out_fds
        lib.pyproc_pump_setup(self.c, -1 if in_fd is None else in_fd, self._data, n, -1 if out is None else out,
                              -1 if err is None else err, NO_LIMIT if max_output is None else max_output, lead(),
                              chunk_max, own_outputs)
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
        if n < SMALL:
            return ffi.buffer(self.c.out[stream].data, n)[:] if n else b""
        result = uninitialized_bytes(n)
        check(lib.pyproc_pump_copy(self.c, stream, ffi.from_buffer("char[]", result), n), None,
              "copying the output")
        return result

    def take(self, stream: int, limit: int | None = None) -> bytes:
        """What was read, handed over once (at most limit bytes); the buffer is freed."""
        return take(self.c, stream, limit)

    def finish(self, proc: Process) -> None:
        """release(), then reaps proc, in one C call (run()'s ending once the outputs were taken)."""
        finish(self.c, proc)
        self.released = True  # (after: if it raised before its C call, release() must still free the pump)

    def release(self) -> None:
        if not self.released:
            self.released = True
            lib.pyproc_pump_release(self.c)

    def __del__(self) -> None:
        if hasattr(self, "released"):
            self.release()


def take(c: Any, stream: int, limit: int | None = None) -> bytes:
    """What pump c (a struct pyproc_pump, or a pointer to one) read from stream, handed over once (at most limit
    bytes); the buffer is freed."""
    out = c.out[stream]
    n = int(out.len) if limit is None else min(int(out.len), limit)
    if n < SMALL:  # contiguous: the first chunk (or the mapping) holds it; the release frees it
        return ffi.buffer(out.data, n)[:] if n else b""
    # A new bytes object, not yet shared, receives the output with the GIL released: copied from the chunks,
    # or, from a large mapping, its pages moved there when the offsets in a page agree (else copied).
    result = uninitialized_bytes(n)
    dest = ffi.from_buffer("char[]", result)
    if ffi.typeof(c).kind != "pointer":
        c = ffi.addressof(c)  # a pool job's pump (a field, not an allocation of its own)
    check(lib.pyproc_pump_take(c, stream, dest, n), None, "handing over the output")
    return result


def finish(c: Any, proc: Process) -> None:
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


def communicate(proc: Process, input: bytes | bytearray | memoryview | None = None,
                timeout: float | None = None) -> tuple[bytes | None, bytes | None]:
    """Process.communicate: sends input, reads stdout and stderr to end of file, waits for the child.

    Returns (stdout, stderr): bytes for the streams that are pipes, else None.  With a timeout, raises
    pyproc.TimeoutExpired carrying the output read so far and leaves the child running; calling communicate()
    again (without input) continues where it stopped, as subprocess does.  input needs stdin=PIPE; a child
    that closes its stdin early gets the rest dropped, without error.
    """
    timeout = check_timeout(timeout)
    pump: Pump | None = proc._pump
    if pump is None:
        if input is not None:
            view: memoryview | None = byte_view(input, "input")
            if proc.stdin is None or proc.stdin.closed:
                raise ValueError("communicate(input=...) needs the child's stdin to be a pipe (stdin=PIPE)")
        else:
            view = None
        in_fd = None
        if proc.stdin is not None and proc.stdin.closed:
            proc.stdin = None
        if proc.stdin is not None:
            in_fd = _detach_stdin(proc)
        pump = Pump(in_fd, view, (_fileno(proc.stdout), _fileno(proc.stderr)), None)
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


def _peek(pump: Pump, stream: Any, i: int) -> bytes | None:
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


def capture_to_end(proc: Process, out_fd: int | None, err_fd: int | None) -> tuple[bytes, bytes]:
    """Reads proc's stdout and stderr pipes (the parent's ends) to end of file, closes them and reaps proc.

    No input, deadline or limit: the C pump can only finish.  The fds are this call's from the start (closed even
    when it raises); proc is reaped by the same C call that frees the pump.  For run(argv, capture=True) and
    pyproc.subprocess's run(args, capture_output=True).
    """
    # The pump's struct is used directly, without a Pump: this is the hot path of every run(capture=True).
    try:
        c = ffi.new(PUMP_PTR)
        lib.pyproc_pump_setup(c, -1, ffi.NULL, 0, -1 if out_fd is None else out_fd, -1 if err_fd is None else err_fd,
                              NO_LIMIT, lead(), chunk_max, 1)
    except BaseException:
        for fd in (out_fd, err_fd):
            if fd is not None:
                os.close(fd)
        raise
    released = False
    try:
        while True:
            err = lib.pyproc_pump_run(c, 0)  # no deadline: it returns when both outputs reached end of file
            if err != _EINTR:  # EINTR: go round, so that Python's signal handlers run (and may raise)
                break
        if err:
            check(err, None, "pumping the child's pipes")
        out = take(c, 0)
        errors = take(c, 1)
        finish(c, proc)
        released = True  # (after: if it raised before its C call, the pump must still be freed)
    finally:
        if not released:
            lib.pyproc_pump_release(c)
    return out, errors


__all__ = ["NO_LIMIT", "Pump", "byte_view", "capture_to_end", "check_timeout", "communicate", "finish", "take"]
