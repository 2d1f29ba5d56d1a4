"""asyncio face of pyproc: await run(...), async for ... in run_many(...), await spawn(...) -> AsyncProcess, and
SignalPipe with `async for`.

Everything runs on the event loop's own thread: no helper threads, no SIGCHLD watcher, never waitpid(-1).
Starting a child is one synchronous C call (clone + exec, with the GIL released), short enough to make on the
loop.  run() and run_many() go through the C job pool: the loop watches the pool's epoll fd, and each wake-up
runs one pass of the C loop that never waits (pyproc._aio_pool).  For spawn() and AsyncProcess, a child's exit is
watched through its pidfd registered with the loop (loop.add_reader: a pidfd becomes readable when the child
exits), then the child is reaped with wait4 (so rusage comes with the status), and pipes are pumped by the loop
through asyncio's own pipe transports (non-blocking fds, add_reader / add_writer).

Timeouts and cancellation kill the child (its whole process group when it leads one: new_session=True or
process_group=0) and reap it, so nothing is left running and no zombie stays behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

from . import _aio_pool
from . import signals as _signals
from ._aio_pool import AsyncResults
from .errors import TimeoutExpired
from .io import Result
from .pool import _new_run
from .process import Process, Rusage, Status
from .spawn import DEVNULL, PIPE, STDOUT, FileSpec
from .spawn import spawn as _spawn

_READ_CHUNK = 1 << 16
_POLL_DELAYS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


class ExitWatch:
    """Reaps a Process from an event loop as soon as it exits, then calls on_exit(returncode) -- or on_error(exc)
    if the reap fails -- once, on the loop's thread.

    The child's pidfd (a private copy: the loop keeps it registered whatever happens to the Process's own) is
    registered with loop.add_reader -- a pidfd becomes readable when the child exits -- and the child is reaped
    with wait4 (rusage comes with the status).  On kernels without pidfds (before 5.3) the loop polls with a
    growing delay.  No thread, no SIGCHLD handler, no waitpid(-1).  What AsyncProcess and pyproc.subprocess's
    asyncio transport (install()) watch their children with.
    """

    __slots__ = ("_fd", "_loop", "_on_error", "_on_exit", "_poll_step", "_process", "done")

    def __init__(self, process: Process, loop: asyncio.AbstractEventLoop, on_exit: Callable[[int], object],
                 on_error: Callable[[BaseException], object]) -> None:
        self._process = process
        self._loop = loop
        self._on_exit = on_exit
        self._on_error = on_error
        self._fd = -1
        self._poll_step = 0
        self.done = False
        """True once a callback was made (or cancel() was called): nothing more is watched."""
        watch_fd = process._dup_pidfd()  # held against a concurrent reap while it is copied (issue 14)
        if watch_fd is not None:
            self._fd = watch_fd
            try:
                loop.add_reader(self._fd, self._check)
            except BaseException:
                os.close(self._fd)
                raise
        else:  # no pidfd (kernels before 5.3; a child gone already): poll with a growing delay, still on the loop
            loop.call_soon(self._check)

    def _check(self) -> None:
        """Called by the loop when the pidfd is readable (or on the polling fallback): reaps the child."""
        if self.done:
            return
        try:
            returncode = self._process.poll()
        except Exception as exc:  # wait4 failed: say so rather than leave the waiters hanging
            self.cancel()
            self._on_error(exc)
            return
        if returncode is None:
            # pidfd readable means exited, and wait4 sees it; still, never spin: look again shortly.
            self._unregister()
            delay = _POLL_DELAYS[min(self._poll_step, len(_POLL_DELAYS) - 1)]
            self._poll_step += 1
            self._loop.call_later(delay, self._check)
            return
        self.cancel()
        self._on_exit(returncode)

    def _unregister(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def cancel(self) -> None:
        """Stops watching (closes the pidfd copy); no callback comes after this."""
        self.done = True
        self._unregister()

    def __del__(self, _close: Callable[[int], None] = os.close) -> None:
        # Collected while still watching: its loop, which held the callback, is gone (closed with the child still
        # running); the pidfd's copy must not outlive it.
        if self._fd >= 0:
            _close(self._fd)
            self._fd = -1


class AsyncProcess:
    """A child started by aio.spawn(), managed from the event loop.

    Attributes: pid, args, returncode (None until the child is reaped), status, rusage; stdin (an
    asyncio.StreamWriter for stdin=PIPE, else None), stdout / stderr (asyncio.StreamReader for PIPE, else
    None).

    The child is reaped by the loop as soon as it exits, whether or not anyone awaits wait().  As an async
    context manager it kills the child on an exception, and always waits for it on exit.
    """

    def __init__(self, process: Process, loop: asyncio.AbstractEventLoop, own_group: bool) -> None:
        self._process = process
        self._loop = loop
        self._own_group = own_group
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self._transports: list[asyncio.BaseTransport] = []
        self._exited: asyncio.Future[int] = loop.create_future()
        self._watch = ExitWatch(process, loop, self._exited.set_result, self._exited.set_exception)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pid={self.pid} returncode={self.returncode} args={self.args!r}>"

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._process.pid

    @property
    def args(self) -> Any:
        """The argv the child was started with."""
        return self._process.args

    @property
    def returncode(self) -> int | None:
        """None while the child runs; then its exit code, or minus the signal number that killed it."""
        return self._process.returncode

    @property
    def status(self) -> Status | None:
        """How the child ended (after it was reaped)."""
        return self._process.status

    @property
    def rusage(self) -> Rusage | None:
        """The resources the child used (after it was reaped)."""
        return self._process.rusage

    async def wait(self, timeout: float | None = None) -> int:
        """Waits for the child to exit and returns its returncode.

        With a timeout (seconds) raises pyproc.TimeoutExpired if it still runs then; the child is left running
        (as subprocess's wait does).  Cancelling the awaiting task leaves the child running too.
        """
        if timeout is None:
            return await asyncio.shield(self._exited)
        try:
            return await asyncio.wait_for(asyncio.shield(self._exited), timeout)
        except asyncio.TimeoutError:
            raise TimeoutExpired(self.args, timeout) from None

    def send_signal(self, sig: int) -> None:
        """Sends sig to the child through its pidfd; does nothing once it has been reaped."""
        self._process.send_signal(sig)

    def terminate(self) -> None:
        """Sends SIGTERM."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Sends SIGKILL (to the child's process group as well when it leads one)."""
        if self._process.returncode is not None:
            return
        if self._own_group:
            # The child is not reaped yet, so its pid (= its group's id) cannot have been reused.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        self._process.kill()

    async def kill_and_reap(self) -> None:
        """Kills the child (and its group, when it leads one), closes the pipes and waits until it is reaped.

        Shielded: if the awaiting task is cancelled meanwhile, the loop still reaps the child when it exits.
        """
        self.kill()
        self._close_pipes()
        await asyncio.shield(self._exited)

    def _close_pipes(self) -> None:
        for transport in self._transports:
            transport.close()

    async def communicate(
        self, input: bytes | None = None, timeout: float | None = None
    ) -> tuple[bytes | None, bytes | None]:
        """Writes input to stdin (then closes it), reads stdout and stderr to EOF, waits for the child.

        Returns (stdout, stderr): bytes for the streams that are pipes, else None.  All of it happens on the
        loop, all pipes at once (no deadlock when the child fills one pipe while we write to another).

        On timeout the child is killed (its group too when it leads one) and reaped, and pyproc.TimeoutExpired
        is raised carrying what was read (.stdout / .stderr).  If the awaiting task is cancelled, the child is
        killed and reaped before the CancelledError propagates.
        """
        if input is not None and self.stdin is None:
            raise ValueError("communicate(input=...) needs stdin=PIPE")
        if input is not None and not isinstance(input, (bytes, bytearray, memoryview)):
            raise TypeError(f"input must be bytes-like, not {type(input).__name__}")
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0 or None")
        out = bytearray() if self.stdout is not None else None
        err = bytearray() if self.stderr is not None else None
        try:
            if timeout is None:
                await self._pump(input, out, err)
            else:
                await asyncio.wait_for(self._pump(input, out, err), timeout)
        except asyncio.TimeoutError:
            await self.kill_and_reap()
            raise TimeoutExpired(self.args, timeout or 0.0, None if out is None else bytes(out),
                                 None if err is None else bytes(err)) from None
        except BaseException:
            await self.kill_and_reap()
            raise
        return (None if out is None else bytes(out), None if err is None else bytes(err))

    async def _pump(self, input: bytes | None, out: bytearray | None, err: bytearray | None) -> None:
        jobs = []
        if self.stdin is not None:
            jobs.append(self._feed(self.stdin, input))
        if self.stdout is not None and out is not None:
            jobs.append(_drain(self.stdout, out))
        if self.stderr is not None and err is not None:
            jobs.append(_drain(self.stderr, err))
        if jobs:
            await asyncio.gather(*jobs)
        await asyncio.shield(self._exited)

    @staticmethod
    async def _feed(writer: asyncio.StreamWriter, data: bytes | None) -> None:
        try:
            if data:
                writer.write(data)
                await writer.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the child stopped reading: what it did not take cannot go anywhere
        finally:
            writer.close()

    async def __aenter__(self) -> AsyncProcess:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            await self.kill_and_reap()
            return
        if self.stdin is not None:
            self.stdin.close()
        await self.wait()
        self._close_pipes()


async def _drain(reader: asyncio.StreamReader, into: bytearray) -> None:
    while True:
        chunk = await reader.read(_READ_CHUNK)
        if not chunk:
            return
        into += chunk


def _reader_protocol(
    reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop
) -> Callable[[], asyncio.StreamReaderProtocol]:
    return lambda: asyncio.StreamReaderProtocol(reader, loop=loop)


async def spawn(
    argv: Sequence[Any], *, stdin: FileSpec = None, stdout: FileSpec = None, stderr: FileSpec = None,
    limit: int = _READ_CHUNK, **kwargs: Any
) -> AsyncProcess:
    """Starts argv (pyproc.spawn's arguments) and returns an AsyncProcess bound to the running loop.

    stdin=PIPE gives an asyncio.StreamWriter, stdout / stderr=PIPE an asyncio.StreamReader (limit: the
    reader's buffer limit, as in asyncio.subprocess).  Raises as pyproc.spawn does (TypeError / ValueError /
    OSError), with no child left behind.
    """
    loop = asyncio.get_running_loop()
    own_group = bool(kwargs.get("new_session")) or kwargs.get("process_group") == 0
    process = _spawn(argv, stdin=stdin, stdout=stdout, stderr=stderr, **kwargs)
    try:
        proc = AsyncProcess(process, loop, own_group)
    except BaseException:  # e.g. no fd left for the watcher's copy of the pidfd: leave nothing behind
        with process:
            process.kill()
        raise
    try:
        if process.stdin is not None:
            write_transport, protocol = await loop.connect_write_pipe(
                lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=limit, loop=loop), loop=loop),
                process.stdin)
            proc._transports.append(write_transport)
            proc.stdin = asyncio.StreamWriter(write_transport, protocol, None, loop)
        for name in ("stdout", "stderr"):
            stream = getattr(process, name)
            if stream is None:
                continue
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            read_transport, _ = await loop.connect_read_pipe(_reader_protocol(reader, loop), stream)
            proc._transports.append(read_transport)
            setattr(proc, name, reader)
    except BaseException:
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        await proc.kill_and_reap()
        raise
    return proc


async def run(
    argv: Sequence[Any],
    *,
    input: bytes | bytearray | memoryview | None = None,
    capture: bool = False,
    stdin: FileSpec = None,
    stdout: FileSpec = None,
    stderr: FileSpec = None,
    timeout: float | None = None,
    check: bool = False,
    **kwargs: Any,
) -> Result:
    """Runs argv to completion on the event loop and returns a pyproc.Result, as pyproc.run() does.

    input: bytes for the child's stdin (implies stdin=PIPE).  capture=True: stdout=PIPE and stderr=PIPE.
    Other keyword arguments are pyproc.spawn's (cwd, env, new_session, ...).

    timeout (seconds): as with pyproc.run(), the child runs in a process group of its own (unless process_group or
    new_session is given); when time runs out the group is killed, the child reaped, and pyproc.TimeoutExpired
    raised with the partial output.  Cancelling the awaiting task kills and reaps the child before the
    CancelledError propagates.  check=True raises pyproc.CalledProcessError on a nonzero exit.  A child that
    cannot start raises as pyproc.run() does (FileNotFoundError ...).

    Every call on one loop shares one job pool (pyproc.run_many's C loop, one pass per wake-up of the loop): see
    pyproc._aio_pool.
    """
    return await _aio_pool.run(argv, input, capture, stdin, stdout, stderr, timeout, check, kwargs)


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
) -> AsyncResults:
    """pyproc.run_many on the event loop: `async for result in aio.run_many(commands, ...)`, same arguments and
    semantics (jobs at a time, lazy reading, ordered or as completed, per-job timeouts, check, fail_fast).

    The loop watches the pool's epoll fd and runs one non-blocking pass of the C loop whenever it is readable: no
    threads.  Cancelling the consuming task, an exception, aclose() (or `async with`) or dropping the iterator kills
    and reaps every running child and closes every fd.  Bad options raise here, before anything starts.
    """
    return AsyncResults(_new_run(commands, jobs, capture, stdin, input, timeout, check, fail_fast, ordered, progress,
                                 spawn_options))


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class SignalPipe(_signals.SignalPipe):
    """pyproc.SignalPipe for asyncio: `async for event in pipe` yields SignalEvent records as they come.

    The pipe's fd is watched with the running loop's add_reader only while someone awaits.  Iteration ends
    when the pipe is closed (close() wakes a waiting iterator).  Also `await pipe.wait_async(timeout)` -> list
    of events (empty on timeout), and `async with`.
    """

    def __init__(self, signals: Any, *, restart: bool = True) -> None:
        super().__init__(signals, restart=restart)
        self._pending: deque[_signals.SignalEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._waiter_loop: asyncio.AbstractEventLoop | None = None

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        if self._waiter is not None:
            raise RuntimeError("another task is already waiting on this SignalPipe")
        fd = self.fileno()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter, self._waiter_loop = waiter, loop
        loop.add_reader(fd, _wake, waiter)
        try:
            await waiter
        finally:
            self._unwatch()

    def _unwatch(self) -> None:
        if self._waiter is not None and self._waiter_loop is not None:
            if not self.closed:
                self._waiter_loop.remove_reader(self._read_fd)
            if not self._waiter.done():
                self._waiter.set_result(None)
        self._waiter = self._waiter_loop = None

    async def wait_async(self, timeout: float | None = None) -> list[_signals.SignalEvent]:
        """Waits on the loop until records arrive or timeout seconds pass; returns them (empty on timeout)."""
        events = list(self._pending) + self.read()
        self._pending.clear()
        if events:
            return events
        try:
            await asyncio.wait_for(self._readable(), timeout)
        except asyncio.TimeoutError:
            return []
        return [] if self.closed else self.read()

    def __aiter__(self) -> SignalPipe:
        return self

    async def __anext__(self) -> _signals.SignalEvent:
        while not self._pending:
            if self.closed:
                raise StopAsyncIteration
            events = self.read()
            if not events:
                await self._readable()
                continue
            self._pending.extend(events)
        return self._pending.popleft()

    def close(self) -> None:
        """Wakes a waiting iterator (which then stops), restores the dispositions and closes the pipe."""
        if self._waiter is not None and self._waiter_loop is not None and not self.closed:
            self._waiter_loop.remove_reader(self._read_fd)
            if not self._waiter.done():
                self._waiter.set_result(None)
            self._waiter = self._waiter_loop = None
        super().close()

    async def __aenter__(self) -> SignalPipe:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


__all__ = ["DEVNULL", "PIPE", "STDOUT", "AsyncProcess", "AsyncResults", "ExitWatch", "Result", "SignalPipe", "run",
           "run_many", "spawn"]
