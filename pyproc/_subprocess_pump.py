"""The I/O exchange behind pyproc.subprocess.Popen.communicate(): write the input, read stdout and stderr.

One small interface, so that communicate() can run on whichever pump is available: `Exchange` holds the state
of one Popen's communication (what is left of the input, what was read so far; it survives a TimeoutExpired so
that a second communicate() goes on where the first stopped), and `pump(exchange, deadline)` moves data until
every pipe is done or the deadline passes.  This implementation uses selectors (poll) with the pipes switched
to non-blocking mode, so that one write moves as much input as the pipe accepts and one read takes whatever
is there.
"""

from __future__ import annotations

import os
import selectors
import time
from collections.abc import Callable

_READ_SIZE = 65536


class Exchange:
    """The state of one communicate(): the parent's pipe ends and the data moved so far.

    stdin_fd / stdout_fd / stderr_fd: the parent's ends (None when not a pipe).  The pump calls close_stdin()
    once the input is written (the child sees end of file); the caller closes stdout / stderr once `*_done`.
    """

    __slots__ = ("close_stdin", "err_chunks", "input", "offset", "out_chunks", "stderr_done", "stderr_fd",
                 "stdin_done", "stdin_fd", "stdout_done", "stdout_fd")

    def __init__(self, stdin_fd: int | None, data: bytes | None, stdout_fd: int | None, stderr_fd: int | None,
                 close_stdin: Callable[[], None]) -> None:
        self.stdin_fd = stdin_fd
        self.close_stdin = close_stdin
        self.input = memoryview(data) if data else memoryview(b"")
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


def _set_nonblocking(fd: int, changed: list[int]) -> None:
    if os.get_blocking(fd):
        os.set_blocking(fd, False)
        changed.append(fd)


def pump(ex: Exchange, deadline: float | None) -> bool:
    """Moves data until ex is finished (True) or time.monotonic() passes deadline (False).

    Input goes to the child as the pipe accepts it while stdout and stderr are read, so the child never blocks
    on a full pipe while the parent waits on another (the classic deadlock).  A child that closed its stdin
    (EPIPE) ends the input quietly, as subprocess does.
    """
    changed: list[int] = []
    try:
        return _pump(ex, deadline, changed)
    finally:
        if not ex.finished:  # a timeout: the caller may go on using the file objects (blocking fds)
            for fd, done in ((ex.stdin_fd, ex.stdin_done), (ex.stdout_fd, ex.stdout_done),
                             (ex.stderr_fd, ex.stderr_done)):
                if fd in changed and not done:
                    os.set_blocking(fd, True)


def _pump(ex: Exchange, deadline: float | None, changed: list[int]) -> bool:
    with selectors.PollSelector() as selector:
        if not ex.stdin_done:
            assert ex.stdin_fd is not None
            if ex.offset >= len(ex.input):
                ex.stdin_done = True
                ex.close_stdin()
            else:
                _set_nonblocking(ex.stdin_fd, changed)
                selector.register(ex.stdin_fd, selectors.EVENT_WRITE)
        for fd, done in ((ex.stdout_fd, ex.stdout_done), (ex.stderr_fd, ex.stderr_done)):
            if not done:
                assert fd is not None
                _set_nonblocking(fd, changed)
                selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            timeout = None
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    return False
            for key, _events in selector.select(timeout):
                fd = key.fd
                if fd == ex.stdin_fd and not ex.stdin_done:
                    try:
                        ex.offset += os.write(fd, ex.input[ex.offset:])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        ex.offset = len(ex.input)
                    if ex.offset >= len(ex.input):
                        selector.unregister(fd)
                        ex.stdin_done = True
                        ex.close_stdin()
                    continue
                try:
                    data = os.read(fd, _READ_SIZE)
                except BlockingIOError:
                    continue
                if fd == ex.stdout_fd:
                    if data:
                        ex.out_chunks.append(data)
                    else:
                        ex.stdout_done = True
                        selector.unregister(fd)
                else:
                    if data:
                        ex.err_chunks.append(data)
                    else:
                        ex.stderr_done = True
                        selector.unregister(fd)
    return True


__all__ = ["Exchange", "pump"]
