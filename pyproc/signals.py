"""Signals as data: SignalPipe (a self-pipe fed by an async-signal-safe C handler), blocked() and
take_pending().

SignalPipe installs, in C, a SA_SIGINFO handler whose only work is one write() of a fixed-size record (signo,
code, pid, uid, status) to a non-blocking close-on-exec pipe, with errno saved and restored.  The handler
never blocks and never allocates; a full pipe increments an atomic drop counter instead.  Python reads the
records from the pipe's fd when it is ready (select, selectors, asyncio: see pyproc.aio.SignalPipe), so signal
handling becomes ordinary I/O, on whichever thread the kernel ran the handler.

Standard signals (1..31) do not queue: while one is pending, more of the same kind coalesce into it, so N
sends can give fewer than N records.  Real-time signals (SIGRTMIN..SIGRTMAX) queue, up to RLIMIT_SIGPENDING.

blocked() and take_pending() are thin wrappers over signal.pthread_sigmask and signal.sigtimedwait, for code
that prefers to keep signals pending and take them synchronously.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import struct
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, NamedTuple

from ._lib import ffi, lib
from .errors import check

_RECORD = struct.Struct("=iiiIi")
if _RECORD.size != ffi.sizeof("struct pyproc_sigrecord"):  # pragma: no cover - a build/layout mismatch
    raise ImportError("pyproc: struct pyproc_sigrecord does not match the Python decoder")
_RECORD_SIZE = _RECORD.size
_READ_SIZE = _RECORD_SIZE * 3264  # what a default pipe (64 KiB) holds: records never straddle its pages
_iter_records = _RECORD.iter_unpack

# Signals a handler cannot usefully turn into a record: the kernel's faults re-fault when the handler returns.
_FAULTS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP,
                     signal.SIGSYS})
_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})
_VALID_SIGNALS = frozenset(int(sig) for sig in signal.valid_signals())
_SENDER_CODES = frozenset({0, -1, -3, -6})  # SI_USER, SI_QUEUE, SI_MESGQ, SI_TKILL: si_pid / si_uid are valid
_VALUE_CODES = frozenset({-1, -2, -3})  # SI_QUEUE, SI_TIMER, SI_MESGQ: the sigval's int is in status


class SignalEvent(NamedTuple):
    """One caught signal.

    signo: the signal number.  code: siginfo's si_code (SI_USER = 0 for kill(), SI_QUEUE = -1 for sigqueue(),
    SI_TKILL = -6 for tgkill(), CLD_EXITED = 1 ... for SIGCHLD, ...).  pid / uid: the sender (for kill,
    tgkill, sigqueue) or, for SIGCHLD, the child; 0 when the kernel sent the signal.  status: for SIGCHLD the
    exit status or signal number (si_status); for sigqueue() the value's int; else 0.
    """

    signo: int
    code: int
    pid: int
    uid: int
    status: int


_make_event = SignalEvent._make


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _check_signals(signals: object, what: str) -> list[int]:
    """The distinct signal numbers of an iterable, in order, or TypeError / ValueError."""
    if isinstance(signals, (str, bytes)) or not isinstance(signals, Iterable):
        if isinstance(signals, int) and not isinstance(signals, bool):
            signals = [signals]
        else:
            raise TypeError(f"{what} takes an iterable of signal numbers, not {type(signals).__name__}")
    valid = _VALID_SIGNALS
    result: list[int] = []
    for sig in signals:
        if isinstance(sig, bool) or not isinstance(sig, int):
            raise TypeError(f"{what}: {sig!r} is not a signal number")
        if sig not in valid:
            raise ValueError(f"{what}: {sig} is not a valid signal number on this system")
        if int(sig) not in result:
            result.append(int(sig))
    if not result:
        raise ValueError(f"{what} needs at least one signal")
    return result


class SignalCounts(NamedTuple):
    """A SignalPipe's counters for one signal: handler runs (delivered), records lost (dropped)."""

    delivered: int
    dropped: int


class SignalPipe:
    """Turns signals into SignalEvent records read from a pipe; a context manager.

    SignalPipe(signals, *, restart=True) installs pyproc's C handler for each of `signals` (numbers or
    signal.Signals).  restart: system calls the handler interrupts are restarted where the kernel can
    (SA_RESTART); with restart=False they fail with EINTR (Python retries most of them by itself, PEP 475).

    fileno() is the read end (non-blocking, close-on-exec) to hand to select / selectors / asyncio; read()
    returns the records waiting now (a list of SignalEvent, empty if none; never blocks); wait(timeout) blocks
    until at least one record arrives or timeout seconds pass.  delivered / dropped / counts(): how many
    signals the handler received, and how many of those records were lost because the pipe was full (read
    more often).  close() (or leaving the with block) puts back
    exactly the dispositions that were there before: SIG_DFL, SIG_IGN, another C handler, or Python's own
    handler, so that Python handlers set with signal.signal() run again afterwards.  While the pipe is open,
    signal.getsignal() still reports the earlier Python handler, but it does not run: the pipe has the signal.

    One owner per signal: creating a SignalPipe for a signal that another open SignalPipe has raises
    RuntimeError. Signals the kernel raises for a fault (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS) and
    SIGKILL / SIGSTOP are refused with ValueError.  If other code replaces pyproc's handler while the pipe is
    open, close() leaves that code's handler in place and warns (RuntimeWarning).  In a child made by
    os.fork(), every SignalPipe is closed at once: the child's signals must not land in the parent's pipe.
    Unlike signal.signal(), a SignalPipe may be opened, read and closed from any thread.
    """

    def __init__(self, signals: Iterable[int], *, restart: bool = True) -> None:
        self._read_fd = -1
        self._write_fd = -1
        self._installed: list[int] = []
        self._final_counts: dict[int, SignalCounts] = {}
        self._lock = threading.Lock()
        self._partial = b""
        sigs = _check_signals(signals, "SignalPipe")
        for sig in sigs:
            if sig in _UNCATCHABLE:
                raise ValueError(f"SignalPipe: {_signal_name(sig)} cannot be caught")
            if sig in _FAULTS:
                raise ValueError(f"SignalPipe: {_signal_name(sig)} is a fault signal: a handler that returns "
                                 "makes the faulting instruction run again; use faulthandler for those")
        if not isinstance(restart, (bool, int)):
            raise TypeError(f"restart must be a bool, not {type(restart).__name__}")
        self.signals: frozenset[int] = frozenset(sigs)
        """The signals this pipe owns."""
        self.restart = bool(restart)
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            for sig in sigs:
                err = lib.pyproc_sigpipe_install(sig, self._write_fd, int(self.restart))
                if err == errno.EBUSY:
                    raise RuntimeError(f"{_signal_name(sig)} already belongs to another open SignalPipe: "
                                       "close that one first")
                check(err, None, f"installing the handler for {_signal_name(sig)}")
                self._installed.append(sig)
        except BaseException:
            self._uninstall()
            self._close_fds()
            raise
        _open_pipes.add(self)

    def __repr__(self) -> str:
        names = ", ".join(_signal_name(sig) for sig in sorted(self.signals))
        state = "closed" if self.closed else f"fd={self._read_fd}"
        return f"<{type(self).__name__} [{names}] {state}>"

    @property
    def closed(self) -> bool:
        """True once close() has run."""
        return self._read_fd < 0

    def fileno(self) -> int:
        """The read end of the pipe (non-blocking): readable when records are waiting.  ValueError once
        closed."""
        if self._read_fd < 0:
            raise ValueError("I/O operation on a closed SignalPipe")
        return self._read_fd

    def read(self) -> list[SignalEvent]:
        """The records waiting in the pipe now, oldest first (empty list if none); never blocks."""
        with self._lock:
            fd = self.fileno()
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                data = b""
            if self._partial or len(data) == _READ_SIZE or len(data) % _RECORD_SIZE:
                data = self._read_rest(fd, data)
            return list(map(_make_event, _iter_records(data)))

    def _read_rest(self, fd: int, data: bytes) -> bytes:
        """The uncommon case of read(): more than one read's worth, or a part of a record left over."""
        chunks = [self._partial, data]
        while len(data) == _READ_SIZE:
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                break
            chunks.append(data)
        joined = b"".join(chunks)
        whole = len(joined) - len(joined) % _RECORD_SIZE
        self._partial = joined[whole:]
        return joined[:whole]

    def wait(self, timeout: float | None = None) -> list[SignalEvent]:
        """Blocks until at least one record is there (or timeout seconds pass) and returns the records read.

        Returns an empty list on timeout.  Other signals' Python handlers run meanwhile (and may raise).  A close()
        from another thread meanwhile ends the wait with ValueError (the pipe is closed).
        """
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0 or None")
        events = self.read()
        if events:
            return events
        # The poll watches a copy of the read end: close() in another thread cannot pull the number from under it
        # (a closed number is soon another fd's).  close() closes the write end too, which ends the poll (POLLHUP);
        # read() then says the pipe is closed.
        with self._lock:
            watched = os.dup(self.fileno())
        try:
            poller = select.poll()
            poller.register(watched, select.POLLIN)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready = poller.poll(None if left is None else left * 1000)  # EINTR retried by Python (PEP 475)
                if ready:
                    events = self.read()
                    if events:
                        return events
                if deadline is not None and time.monotonic() >= deadline:
                    return []
        finally:
            os.close(watched)

    def counts(self) -> dict[int, SignalCounts]:
        """{signal: SignalCounts(delivered, dropped)} since the pipe was opened (frozen by close()).

        delivered: how many times the handler ran for that signal; dropped: how many of those records the full
        pipe refused.  Every delivered record is either in the pipe (read() returns it) or dropped.  Standard
        signals sent while one of the same kind is pending coalesce in the kernel: they count as one delivery.
        """
        if self.closed:
            return dict(self._final_counts)
        delivered = ffi.new("uint64_t *")
        dropped = ffi.new("uint64_t *")
        result = {}
        for sig in self._installed:
            check(lib.pyproc_sigpipe_counts(sig, delivered, dropped))
            result[sig] = SignalCounts(int(delivered[0]), int(dropped[0]))
        return result

    @property
    def delivered(self) -> int:
        """How many signals the handler received, all signals together (see counts())."""
        return sum(count.delivered for count in self.counts().values())

    @property
    def dropped(self) -> int:
        """How many records were lost because the pipe was full, all signals together (see counts())."""
        return sum(count.dropped for count in self.counts().values())

    def _uninstall(self) -> None:
        replaced_by_others = []
        errors: list[BaseException] = []
        replaced = ffi.new("int *")
        delivered = ffi.new("uint64_t *")
        dropped = ffi.new("uint64_t *")
        while self._installed:
            sig = self._installed[-1]
            err = lib.pyproc_sigpipe_uninstall(sig, replaced)
            # Final once uninstalled: no handler counts for this pipe any more.
            if lib.pyproc_sigpipe_counts(sig, delivered, dropped) == 0:
                self._final_counts[sig] = SignalCounts(int(delivered[0]), int(dropped[0]))
            if err:
                errors.append(OSError(err, f"{os.strerror(err)} (restoring the disposition of "
                                           f"{_signal_name(sig)})"))
            elif replaced[0]:
                replaced_by_others.append(sig)
            self._installed.pop()
        if replaced_by_others:
            names = ", ".join(_signal_name(sig) for sig in replaced_by_others)
            warnings.warn(f"SignalPipe.close: the handler for {names} was replaced while the pipe was open; "
                          "the new handler was left in place", RuntimeWarning, stacklevel=3)
        if errors:
            raise errors[0]

    def _close_fds(self) -> None:
        with self._lock:  # not while another thread's read() uses the read end
            for fd in (self._read_fd, self._write_fd):
                if fd >= 0:
                    os.close(fd)
            self._read_fd = self._write_fd = -1

    def close(self) -> None:
        """Puts back the earlier dispositions, then closes the pipe (unread records are lost); idempotent."""
        if self._read_fd < 0:
            return
        _open_pipes.discard(self)
        try:
            self._uninstall()  # after this no handler writes to the pipe any more, even on an error
        finally:
            self._close_fds()

    def __enter__(self) -> SignalPipe:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_read_fd", -1) >= 0:
            _warn(f"unclosed {self!r}: its handlers were still installed", ResourceWarning, source=self)
            self.close()


_open_pipes: weakref.WeakSet[SignalPipe] = weakref.WeakSet()


def _close_all_in_child() -> None:
    """In the child of os.fork(): closes every SignalPipe (dispositions back, fds closed)."""
    lib.pyproc_sigpipe_after_fork_child()
    for pipe in list(_open_pipes):
        pipe._lock = threading.Lock()  # it may have been held by a thread of the parent: none of them is here
        with contextlib.suppress(Exception):
            pipe.close()


os.register_at_fork(after_in_child=_close_all_in_child)


@contextmanager
def blocked(signals: Iterable[int]) -> Iterator[frozenset[int]]:
    """Blocks signals in the calling thread for the with block (signal.pthread_sigmask), then restores the
    mask.

    Signals sent meanwhile stay pending (one per standard signal); they are delivered when the mask is
    restored, unless taken with take_pending() first.  Yields the set of signals that were blocked before.
    """
    sigs = _check_signals(signals, "blocked")
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield frozenset(int(sig) for sig in previous)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def event_from_siginfo(info: Any) -> SignalEvent:
    """A SignalEvent from a signal.struct_siginfo (sigwaitinfo / sigtimedwait), with SignalPipe's field
    rules."""
    signo, code = int(info.si_signo), int(info.si_code)
    if signo == signal.SIGCHLD and code > 0:
        return SignalEvent(signo, code, int(info.si_pid), int(info.si_uid), int(info.si_status))
    sender = code in _SENDER_CODES
    return SignalEvent(signo, code, int(info.si_pid) if sender else 0, int(info.si_uid) if sender else 0,
                       int(info.si_status) if code in _VALUE_CODES else 0)


def take_pending(signals: Iterable[int], timeout: float = 0.0) -> list[SignalEvent]:
    """Takes the pending signals among `signals` synchronously (signal.sigtimedwait) and returns them as
    events.

    Waits up to timeout seconds (default 0: no wait) for the first one, then takes whatever else is pending
    without waiting.  The signals should be blocked in every thread (see blocked()), or the kernel may deliver
    them to a handler instead.  Returns an empty list if none came.
    """
    sigs = _check_signals(signals, "take_pending")
    if timeout < 0:
        raise ValueError("timeout must be >= 0")
    events = []
    info = signal.sigtimedwait(sigs, timeout)
    while info is not None:
        events.append(event_from_siginfo(info))
        info = signal.sigtimedwait(sigs, 0)
    return events


__all__ = ["SignalCounts", "SignalEvent", "SignalPipe", "blocked", "event_from_siginfo", "take_pending"]
