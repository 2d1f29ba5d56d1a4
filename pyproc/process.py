"""Process: a started child, with its pid, pidfd, wait / poll, signals, status and rusage; and wait_any().

Waiting with a timeout polls the pidfd (no sleep loops); reaping uses wait4 so rusage comes with the status;
signals go through the pidfd, so a recycled pid is never hit.  Nothing here ever calls waitpid(-1).
"""

from __future__ import annotations

import errno
import math
import numbers
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any

from ._lib import ffi, lib
from ._pump import communicate
from .errors import TimeoutExpired, check


@dataclass(frozen=True)
class Status:
    """How a child ended: exited with exit_code, or was killed by signal (core_dumped if it left a core)."""

    exited: bool
    exit_code: int | None
    signal: int | None
    core_dumped: bool

    @classmethod
    def from_wait_status(cls, wait_status: int) -> Status:
        """Decodes a wait4 status word."""
        if os.WIFEXITED(wait_status):
            return cls(True, os.WEXITSTATUS(wait_status), None, False)
        return cls(False, None, os.WTERMSIG(wait_status), os.WCOREDUMP(wait_status))

    @property
    def returncode(self) -> int:
        """As subprocess: the exit code, or minus the signal number."""
        return self.exit_code if self.exit_code is not None else -(self.signal or 0)


@dataclass(frozen=True)
class Rusage:
    """Resources the child used (getrusage's fields; times in seconds, maxrss in KiB)."""

    utime: float
    stime: float
    maxrss_kib: int
    minflt: int
    majflt: int
    inblock: int
    oublock: int
    nvcsw: int
    nivcsw: int

    @classmethod
    def from_c(cls, ru: Any) -> Rusage:
        return cls(ru.utime_ns / 1e9, ru.stime_ns / 1e9, ru.maxrss_kib, ru.minflt, ru.majflt, ru.inblock,
                   ru.oublock, ru.nvcsw, ru.nivcsw)


_EINTR = errno.EINTR
_MAX_TIMEOUT_NS = 1 << 62  # 146 years: "no limit" for every practical purpose, and it fits the C int64_t


def _timeout_ns(timeout: float) -> int:
    """Seconds -> nanoseconds for the C waits: negative is 0, inf (or anything huge) is _MAX_TIMEOUT_NS."""
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if math.isnan(timeout):
        raise ValueError("timeout is NaN")
    ns = float(timeout) * 1e9
    return _MAX_TIMEOUT_NS if ns >= _MAX_TIMEOUT_NS else 0 if ns <= 0 else int(ns)


# Children whose Process was collected while they still ran: reaped (without blocking) at the next spawn, as
# subprocess does, so that they never stay zombies.
abandoned: list[tuple[int, int | None]] = []
"""(pid, pidfd) of children whose Process was collected while they ran; reaped by reap_abandoned()."""
abandoned_lock = threading.Lock()


def reap_abandoned() -> None:
    """Reaps, without blocking, the children of collected Process objects that have finished since."""
    # The list is taken out under the lock and worked on outside it: allocating here can run the cyclic GC, whose
    # finalizers (a collected Process's __del__) append to the list under the same lock.
    with abandoned_lock:
        pending = abandoned[:]
        abandoned.clear()
    still_running = []
    child = ffi.new("struct pyproc_child *")
    for pid, pidfd in pending:
        err = lib.pyproc_child_reap(child, pid, -1, 1)
        if err == 0 and not child.reaped:
            still_running.append((pid, pidfd))
        elif pidfd is not None:
            os.close(pidfd)
    if still_running:
        with abandoned_lock:
            abandoned.extend(still_running)


class Process:
    """A child started by pyproc.spawn().

    Attributes: pid; pidfd (an fd that refers to this child and no other, or None on kernels without pidfds; closed
    once the child is reaped); args; stdin / stdout / stderr (binary file objects for PIPE, else None); returncode
    (None while running; the exit code, or minus the signal number that killed it); status and rusage (after the
    child is reaped).

    As a context manager it closes the pipes and waits on exit.  A Process collected while its child still runs
    leaves the child running and emits a ResourceWarning (as subprocess does); a finished child is reaped.
    """

    # Class-level defaults: a spawn sets only what differs (every attribute set is paid on every spawn).
    stdin: IO[bytes] | None = None
    stdout: IO[bytes] | None = None
    stderr: IO[bytes] | None = None
    returncode: int | None = None
    _c: Any = None  # the struct pyproc_child: spawn result, then wait status and rusage
    _status: Status | None = None
    _rusage: Rusage | None = None
    _reap_lock: threading.Lock | None = None
    _pump: Any = None  # communicate()'s state (pyproc._pump.Pump), kept across a timeout

    def __init__(
        self,
        pid: int,
        pidfd: int | None,
        args: Any,
        stdin: IO[bytes] | None = None,
        stdout: IO[bytes] | None = None,
        stderr: IO[bytes] | None = None,
        _c: Any = None,
    ) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.args = args
        if stdin is not None:
            self.stdin = stdin
        if stdout is not None:
            self.stdout = stdout
        if stderr is not None:
            self.stderr = stderr
        if _c is not None:
            self._c = _c  # start()'s struct pyproc_child, which the reap fills in
        self._reap_lock = threading.Lock()

    @property
    def status(self) -> Status | None:
        """How the child ended (None until it is reaped, or when another waiter took its status)."""
        if self._status is None and self._c is not None and self._c.reaped:
            self._status = Status.from_wait_status(self._c.wait_status)
        return self._status

    @property
    def rusage(self) -> Rusage | None:
        """The resources the child used, from wait4 (None until it is reaped)."""
        if self._rusage is None and self._c is not None and self._c.reaped:
            self._rusage = Rusage.from_c(self._c.rusage)
        return self._rusage

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pid={self.pid} returncode={self.returncode} args={self.args!r}>"

    def _reap(self, nohang: bool) -> bool:
        """wait4 the child; True once it has been reaped (by this call or an earlier one)."""
        if self.returncode is not None:
            return True
        lock = self._reap_lock
        assert lock is not None
        if not lock.acquire(not nohang):
            return False
        try:
            if self.returncode is not None:
                return True
            c = self._c
            if c is None:  # a Process made by hand (not by start()) gets its struct at the first reap
                c = self._c = ffi.new("struct pyproc_child *")
            pidfd = -1 if self.pidfd is None else self.pidfd
            while True:
                # Once reaped, the C side also closes the pidfd. Status and Rusage objects are built when asked
                # for: this is the hot path of every spawn.
                err = lib.pyproc_child_reap(c, self.pid, pidfd, nohang)
                if err != _EINTR:  # EINTR: go round, so that Python's signal handlers run (and may raise)
                    break
            if err:
                if err != errno.ECHILD:
                    check(err)
                # Reaped behind our back (SIGCHLD ignored, someone's waitpid(-1)): no status to give.
                if self.pidfd is not None:
                    os.close(self.pidfd)
                    self.pidfd = None
                self.returncode = 0
                return True
            if nohang and not c.reaped:  # (a blocking wait4 that returned 0 has reaped)
                return False
            self._set_reaped()
            return True
        finally:
            lock.release()

    def _set_reaped(self) -> None:
        """Records a reap done by a C call that filled self._c (pyproc_child_reap, pyproc_pump_finish), which
        closed the pidfd."""
        self.pidfd = None
        self.returncode = self._c.returncode

    def poll(self) -> int | None:
        """The returncode if the child has finished (reaping it), else None; never blocks."""
        self._reap(nohang=True)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Waits for the child to finish and returns its returncode (negative signal number if killed).

        With a timeout (seconds) raises pyproc.TimeoutExpired (also a subprocess.TimeoutExpired and a
        TimeoutError) if it is still running then; the child is left running.  The GIL is released while waiting.
        """
        if self.returncode is not None:
            return self.returncode
        if timeout is not None:
            self._wait_exited(timeout)
        self._reap(False)
        assert self.returncode is not None
        return self.returncode

    def _wait_exited(self, timeout: float) -> None:
        """Returns once the child has exited (not yet reaped) or raises TimeoutExpired."""
        pidfd = self.pidfd
        if pidfd is None:
            self._poll_exited(timeout)
            return
        exited = ffi.new("int *")
        remaining = ffi.new("int64_t *")
        left = _timeout_ns(timeout)
        while True:
            err = lib.pyproc_wait_pidfd(pidfd, left, exited, remaining)
            if err != errno.EINTR:
                break
            left = remaining[0]
        check(err)
        if not exited[0]:
            raise TimeoutExpired(self.args, timeout)

    def _poll_exited(self, timeout: float) -> None:
        # Only on kernels without pidfds (before 5.3), or after the pidfd was closed by a concurrent reap.
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while not self._reap(nohang=True):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutExpired(self.args, timeout)
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)

    def communicate(self, input: bytes | bytearray | memoryview | None = None,
                    timeout: float | None = None) -> tuple[bytes | None, bytes | None]:
        """Sends input to the child's stdin, reads its stdout and stderr to end of file, waits for it.

        Returns (stdout, stderr): bytes for the streams that are pipes, None for the others.  One C call does
        the work with the GIL released, polling all pipes together: no size in either direction deadlocks.  A
        child that closes its stdin early gets the rest of input dropped, without error.  With a timeout it
        raises pyproc.TimeoutExpired carrying the output read so far and leaves the child running; calling
        communicate() again (without input) continues where it stopped.  See pyproc.io.communicate.
        """
        return communicate(self, input, timeout)

    def send_signal(self, sig: int) -> None:
        """Sends sig to the child (through its pidfd); does nothing once the child has been reaped."""
        if self.returncode is not None:
            return
        pidfd = -1 if self.pidfd is None else self.pidfd
        err = lib.pyproc_send_signal(self.pid, pidfd, int(sig))
        if err == errno.ESRCH and self.poll() is not None:  # it ended meanwhile
            return
        check(err)

    def terminate(self) -> None:
        """Sends SIGTERM."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Sends SIGKILL."""
        self.send_signal(signal.SIGKILL)

    def __enter__(self) -> Process:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        try:
            if self.stdin is not None:
                self.stdin.close()
        except BrokenPipeError:
            pass  # the child stopped reading: what was buffered cannot go anywhere
        finally:
            self.wait()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if self.returncode is not None or self._reap_lock is None:  # done, or __init__ never ran
            return
        if self._reap(nohang=True):
            return
        _warn(f"pyproc: child {self.pid} is still running", ResourceWarning, source=self)
        with abandoned_lock:
            abandoned.append((self.pid, self.pidfd))
        self.pidfd = None


def wait_any(processes: Iterable[Process], timeout: float | None = None) -> Process:
    """Waits until the first of processes finishes, reaps it and returns it (its returncode is set).

    The safe form of waitpid(-1): it polls the given children's pidfds and never reaps another child.  One that has
    already finished is returned at once.  Raises pyproc.TimeoutExpired when none finishes within timeout.
    """
    procs: Sequence[Process] = list(processes)
    if not procs:
        raise ValueError("wait_any needs at least one process")
    for proc in procs:
        if not isinstance(proc, Process):
            raise TypeError(f"wait_any takes Process objects, not {type(proc).__name__}")
        if proc.returncode is not None:
            return proc
    pidfds = [proc.pidfd for proc in procs]
    if any(fd is None for fd in pidfds):
        return _wait_any_polling(procs, timeout)
    c_fds = ffi.new("int[]", pidfds)
    index = ffi.new("int *")
    remaining = ffi.new("int64_t *")
    left = -1 if timeout is None else _timeout_ns(timeout)
    while True:
        err = lib.pyproc_wait_any(c_fds, len(procs), left, index, remaining)
        if err != errno.EINTR:
            break
        left = remaining[0]
    check(err)
    if index[0] < 0:
        raise TimeoutExpired([proc.args for proc in procs], timeout or 0.0)
    proc = procs[int(index[0])]
    proc.wait()
    return proc


def _wait_any_polling(procs: Sequence[Process], timeout: float | None) -> Process:
    # Kernels without pidfds only.
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.0005
    while True:
        for proc in procs:
            if proc.poll() is not None:
                return proc
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutExpired([proc.args for proc in procs], timeout or 0.0)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


__all__ = ["Process", "Rusage", "Status", "reap_abandoned", "wait_any"]
