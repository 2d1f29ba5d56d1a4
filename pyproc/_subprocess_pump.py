"""The I/O exchange behind pyproc.subprocess.Popen.communicate(): write the input, read stdout and stderr.

One small interface, so that communicate() runs on whichever pump is there: new_exchange() gives an object
holding one Popen's communication (what is left of the input, what was read so far; it survives a
TimeoutExpired so that a second communicate() goes on where the first stopped) with
  run(deadline) -> bool       move data until every pipe is done (True) or time.monotonic() passes deadline;
  partial() -> (out, err)     what was read so far (None for a stream that read nothing), for TimeoutExpired;
  output() -> (out, err)      everything, once run() returned True (may be asked again: communicate twice);
  close_input()               the child's stdin reaches end of file (Popen.__exit__ after a timeout);
  stdin_done / stdout_done / stderr_done: which file objects the caller may close.

NativeExchange is pyproc._pump's C pump (one poll loop over the three pipes with the GIL released, buffers that
grow without copying): what communicate() uses.  Exchange is the same in Python, a select.poll loop with stdin
non-blocking while it runs: the fallback when _Pump is None (the tests run the differential cases on it too).
"""

from __future__ import annotations

import math
import os
import select
import time
from collections.abc import Callable
from typing import IO, Any, cast

from . import _pump
from ._lib import lib

# The C pump of run() / Process.communicate (pyproc._pump); None selects the Python fallback (the tests do).
_Pump: Any = _pump.Pump
_PUMP_DONE = lib.PYPROC_PUMP_DONE

_READ_SIZE = 65536


class Exchange:
    """The state of one communicate(): the parent's pipe ends and the data moved so far.

    stdin_fd / stdout_fd / stderr_fd: the parent's ends (None when not a pipe).  The pump calls close_stdin()
    once the input is written (the child sees end of file); the caller closes stdout / stderr once `*_done`.
    """

    __slots__ = ("close_stdin", "err_chunks", "input", "offset", "out_chunks", "stderr_done", "stderr_fd",
                 "stdin_done", "stdin_fd", "stdout_done", "stdout_fd")

    def __init__(self, stdin_fd: int | None, data: memoryview | None, stdout_fd: int | None, stderr_fd: int | None,
                 close_stdin: Callable[[], None]) -> None:
        self.stdin_fd = stdin_fd
        self.close_stdin = close_stdin
        self.input = data if data is not None else memoryview(b"")
        self.offset = 0
        self.stdin_done = stdin_fd is None
        self.stdout_fd = stdout_fd
        self.stdout_done = stdout_fd is None
        self.stderr_fd = stderr_fd
        self.stderr_done = stderr_fd is None
        self.out_chunks: list[bytes] = []
        self.err_chunks: list[bytes] = []

    @property
    def finished(self) -> bool:
        """True once the input is written (or refused) and both outputs reached end of file."""
        return self.stdin_done and self.stdout_done and self.stderr_done

    def run(self, deadline: float | None) -> bool:
        return pump(self, deadline)

    def partial(self) -> tuple[bytes | None, bytes | None]:
        return (b"".join(self.out_chunks) if self.out_chunks else None,
                b"".join(self.err_chunks) if self.err_chunks else None)

    def close_input(self) -> None:
        """Nothing to do: the input goes through the Popen's own stdin file object, which the caller closes."""

    def output(self) -> tuple[bytes, bytes]:
        out, err = b"".join(self.out_chunks), b"".join(self.err_chunks)
        self.out_chunks, self.err_chunks = [out], [err]  # joined once, even when asked again
        return out, err


def pump(ex: Exchange, deadline: float | None) -> bool:
    """Moves data until ex is finished (True) or time.monotonic() passes deadline (False).

    Input goes to the child as the pipe accepts it while stdout and stderr are read, so the child never blocks
    on a full pipe while the parent waits on another (the classic deadlock).  A child that closed its stdin
    (EPIPE) ends the input quietly, as subprocess does.  Only stdin is made non-blocking, for the time of the
    call (a write must not wait for room for all of it); a read after POLLIN never blocks on a pipe.
    """
    poller = select.poll()
    in_fd = -1
    if not ex.stdin_done:
        assert ex.stdin_fd is not None
        if ex.offset >= len(ex.input):
            ex.stdin_done = True
            ex.close_stdin()
        else:
            in_fd = ex.stdin_fd
            poller.register(in_fd, select.POLLOUT)
    out_fd = -1 if ex.stdout_done else cast(int, ex.stdout_fd)
    err_fd = -1 if ex.stderr_done else cast(int, ex.stderr_fd)
    for fd in (out_fd, err_fd):
        if fd >= 0:
            poller.register(fd, select.POLLIN)
    left = (in_fd >= 0) + (out_fd >= 0) + (err_fd >= 0)
    was_blocking = in_fd >= 0 and os.get_blocking(in_fd)
    if was_blocking:
        os.set_blocking(in_fd, False)
    try:
        while left:
            timeout_ms = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                timeout_ms = math.ceil(remaining * 1000)
            for fd, _events in poller.poll(timeout_ms):
                if fd == in_fd:
                    try:
                        ex.offset += os.write(fd, ex.input[ex.offset:])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        ex.offset = len(ex.input)
                    if ex.offset >= len(ex.input):
                        poller.unregister(fd)
                        left -= 1
                        in_fd = -1
                        was_blocking = False  # closed now: nothing to restore
                        ex.stdin_done = True
                        ex.close_stdin()
                    continue
                data = os.read(fd, _READ_SIZE)
                if data:
                    (ex.out_chunks if fd == out_fd else ex.err_chunks).append(data)
                    continue
                poller.unregister(fd)
                left -= 1
                if fd == out_fd:
                    ex.stdout_done = True
                else:
                    ex.stderr_done = True
        return True
    finally:
        if was_blocking:  # a timeout: the caller may go on writing through the blocking file object
            os.set_blocking(in_fd, True)


class NativeExchange:
    """The same exchange on pyproc._pump's C pump; it owns stdin_fd (a dup: the file object is closed at once)."""

    __slots__ = ("_output", "_pump", "stderr_done", "stdin_done", "stdout_done")

    def __init__(self, stdin_fd: int | None, data: memoryview | None, stdout_fd: int | None,
                 stderr_fd: int | None) -> None:
        assert _Pump is not None
        self._pump: Any = _Pump(stdin_fd, data, (stdout_fd, stderr_fd), None)
        self._output: tuple[bytes, bytes] | None = None
        self.stdin_done = True  # the caller's file object is already closed; the pump closes its dup
        self.stdout_done = self.stderr_done = False

    def run(self, deadline: float | None) -> bool:
        if self._output is not None:
            return True
        if self._pump.run(deadline) != _PUMP_DONE:
            return False
        pump = self._pump
        try:
            self._output = (pump.take(0), pump.take(1))
        finally:
            pump.release()
        self.stdout_done = self.stderr_done = True
        return True

    def partial(self) -> tuple[bytes | None, bytes | None]:
        out, err = self._pump.peek(0), self._pump.peek(1)
        return out or None, err or None

    def close_input(self) -> None:
        """Closes the pump's stdin fd (the child sees end of file) when the input was not all written (a
        timeout): what Popen.__exit__ closing .stdin does with the standard library."""
        if self._output is None and not self._pump.released:
            self._pump.release()

    def output(self) -> tuple[bytes, bytes]:
        assert self._output is not None
        return self._output


def new_exchange(stdin: IO[Any] | None, data: memoryview | None, stdout_fd: int | None, stderr_fd: int | None,
                 close_stdin: Callable[[], None], owned_stdin_fd: int | None = None) -> Exchange | NativeExchange:
    """The exchange for one communicate(); stdin is the Popen's stdin file object (None, or already closed,
    when there is no input to send).  owned_stdin_fd: instead, the stdin pipe itself (no file object was made),
    which the C pump takes over (it needs the C pump)."""
    if owned_stdin_fd is not None:
        assert _Pump is not None
        return NativeExchange(owned_stdin_fd, data, stdout_fd, stderr_fd)
    if _Pump is None:
        stdin_fd = None if stdin is None or stdin.closed else stdin.fileno()
        return Exchange(stdin_fd, data, stdout_fd, stderr_fd, close_stdin)
    stdin_fd = None
    if stdin is not None and not stdin.closed:
        stdin_fd = os.dup(stdin.fileno())  # the pump closes its own fd once the input is written
        try:
            close_stdin()
        except BaseException:
            os.close(stdin_fd)
            raise
    return NativeExchange(stdin_fd, data, stdout_fd, stderr_fd)


__all__ = ["Exchange", "NativeExchange", "new_exchange", "pump"]
