"""The asyncio face of the job pool (csrc/pool.c): aio.run_many's iterator, and the pool per event loop that
aio.run's calls share.

The loop watches a pool's epoll fd (loop.add_reader: readable when a child exited or a pipe has something to give or
take) and its next deadline (loop.call_later).  Each wake-up runs one pass of pyproc_pool_run that never waits: it
starts queued jobs, moves data, reaps, kills overdue jobs, and the done jobs become Results.  All of it on the loop's
thread: no helper threads, no SIGCHLD handler, no waitpid(-1); a child is started by one synchronous C call (clone
+ exec), short enough to make on the loop.

aio.run: every call on one loop shares one pool (no limit on the jobs running), created on first use and closed
one loop iteration after its last job ended, so that back-to-back calls reuse it and a loop that ends leaves no fd
behind.  Cancelling the awaiting task kills the child (its group when it leads one) and reaps it before the
CancelledError goes on.

aio.run_many: a pool of its own per iteration, the same _Run (commands read, results ordered, check / fail_fast)
as the sync run_many; results are collected and more commands read as the loop sees jobs end, and handed out by
__anext__; the results the consumer has not taken count against the read-ahead, so memory stays bounded whatever
its pace.  However the iteration
ends (exhausted, an exception, cancellation, aclose(), the iterator dropped), the pool is closed: every running
child killed and reaped, every fd closed (synchronously: no await needed).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from ._lib import lib
from ._pump import byte_view, check_timeout
from .io import Result
from .pool import _Plan, _Pool, _Run
from .spawn import FileSpec

_UNLIMITED = 1 << 30  # aio.run's pool: every call starts at once


class _Watch:
    """A _Pool attached to an event loop: its epoll fd read-watched, its next deadline a timer.  step() runs one
    pass that never waits, then on_pass(error) hands the done jobs on (error: the pass itself failed).

    on_pass is held weakly: the loop holds the watch (its reader callback), and its owner must stay collectable,
    so that an iterator its consumer dropped is closed at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: _Pool,
                 on_pass: Callable[[BaseException | None], None]) -> None:
        self.loop = loop
        self.pool = pool
        self.on_pass = weakref.WeakMethod(on_pass)
        self.fd = int(pool.c.epfd)
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = -1
        self.step_soon: asyncio.Handle | None = None
        loop.add_reader(self.fd, self.step)

    def step(self) -> None:
        if self.step_soon is not None:  # (this call may be it, or do its work)
            self.step_soon.cancel()
            self.step_soon = None
        if self.fd < 0:  # (a step scheduled before close)
            return
        on_pass = self.on_pass()
        if on_pass is None:  # (its owner is being collected, and closes the pool)
            self.close()
            return
        c = self.pool.c
        for _ in range(4):
            error: BaseException | None = None
            try:
                self.pool.run(False)
            except Exception as exc:  # (EINTR is not one: the next wake-up goes on)
                error = exc
            on_pass(error)
            # on_pass may have queued more: start them now if there is room (not at some later wake-up).
            if self.fd < 0 or not (c.n_queued and c.running < c.jobs):
                break
        else:
            # Still jobs to start after four passes (they end, or fail to start, as fast as they start): the next
            # pass on the loop's next iteration, as the epoll fd may have nothing in it that would wake one.
            self.step_soon = self.loop.call_soon(self.step)
        wake = int(c.next_wake_ns) if self.fd >= 0 else -1
        if wake >= 0 and (self.timer is None or wake < self.timer_at):
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_later(max(0.0, (wake - time.monotonic_ns()) / 1e9), self._on_timer)
            self.timer_at = wake

    def _on_timer(self) -> None:
        self.timer = None
        self.timer_at = -1
        self.step()

    def close(self) -> None:
        """Stops watching (before the pool closes its epoll fd)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.step_soon is not None:
            self.step_soon.cancel()
            self.step_soon = None
        if self.fd >= 0:
            if not self.loop.is_closed():
                self.loop.remove_reader(self.fd)
            self.fd = -1


# ---- aio.run ------------------------------------------------------------------------------------------------


class _LoopPool:
    """The pool that every aio.run on one event loop shares, with the future of each job it holds."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pool = _Pool(_UNLIMITED, 16)
        self.waiting: dict[int, tuple[asyncio.Future[Result], _Plan]] = {}
        self.idle_check = False
        try:
            self.watch = _Watch(loop, self.pool, self._on_pass)
        except BaseException:
            self.pool.close()
            raise
        _loop_pools[loop] = self

    def submit(self, plan: _Plan, argv: Any, data: memoryview | None, timeout: float | None
               ) -> tuple[int, asyncio.Future[Result]]:
        """Queues argv and starts it at once; the future gets its Result."""
        slot = plan.submit(self.pool, argv, -1, data, timeout)
        future: asyncio.Future[Result] = self.loop.create_future()
        self.waiting[slot] = (future, plan)
        self.watch.step()  # starts it now, and hands on whatever else is done
        return slot, future

    def _on_pass(self, error: BaseException | None) -> None:
        c = self.pool.c
        n = c.n_done
        for k in range(n):
            slot = int(c.done[k])
            future, plan = self.waiting.pop(slot)
            try:
                result = plan.result(self.pool, slot)[1]
            except BaseException as exc:
                if not future.done():
                    future.set_exception(exc)
                continue
            if not future.done():
                future.set_result(result)
        if n:
            lib.pyproc_pool_recycle(c)
        if error is not None:  # the pool itself failed: every waiter hears it, and the pool goes
            for future, _ in self.waiting.values():
                if not future.done():
                    future.set_exception(error)
            self.close()
        elif not self.waiting:
            self._check_idle_soon()

    def cancel(self, slot: int, future: asyncio.Future[Result]) -> None:
        """Ends the job behind future if it is still the pool's: killed (its group too) and reaped, now."""
        entry = self.waiting.get(slot)
        if entry is None or entry[0] is not future:
            return  # done already (its slot may hold another job by now)
        del self.waiting[slot]
        lib.pyproc_pool_cancel(self.pool.c, slot)
        self.pool.records[slot] = None
        if not self.waiting:
            self._check_idle_soon()

    def _check_idle_soon(self) -> None:
        # One iteration later: an awaiting task woken by the last result may start the next call first.
        if not self.idle_check and not self.loop.is_closed():
            self.idle_check = True
            self.loop.call_soon(self._close_if_idle)

    def _close_if_idle(self) -> None:
        self.idle_check = False
        if not self.waiting:
            self.close()

    def close(self) -> None:
        if _loop_pools.get(self.loop) is self:
            del _loop_pools[self.loop]
        self.watch.close()
        self.pool.close()


_loop_pools: dict[asyncio.AbstractEventLoop, _LoopPool] = {}
_default_plans: dict[tuple[bool, FileSpec, FileSpec, FileSpec], _Plan] = {}


def _plan_for(capture: object, stdin: FileSpec, stdout: FileSpec, stderr: FileSpec,
              options: dict[str, Any]) -> tuple[_Plan, bool]:
    """The plan of one aio.run call, and whether it is the call's own (then open, to be closed after the call).
    Calls with nothing but pipes and inherited streams share a plan made once."""
    key = None
    if not options and all(spec is None or type(spec) is int for spec in (stdin, stdout, stderr)):
        key = (bool(capture), stdin, stdout, stderr)
        plan = _default_plans.get(key)
        if plan is not None:
            return plan, False
    if stdout is not None:
        options["stdout"] = stdout
    if stderr is not None:
        options["stderr"] = stderr
    plan = _Plan(capture, stdin, None, None, options, False)
    if key is not None and plan.default:
        _default_plans[key] = plan
        return plan, False
    plan.open()
    return plan, True


async def run(argv: Sequence[Any], input: bytes | bytearray | memoryview | None, capture: bool, stdin: FileSpec,
              stdout: FileSpec, stderr: FileSpec, timeout: float | None, check: bool,
              options: dict[str, Any]) -> Result:
    """aio.run (see there)."""
    loop = asyncio.get_running_loop()
    data = None if input is None else byte_view(input, "input")
    if data is not None and stdin is not None:
        raise ValueError("input= and stdin= both say where the child's stdin comes from")
    timeout = check_timeout(timeout)
    plan, own = _plan_for(capture, stdin, stdout, stderr, options)
    try:
        shared = _loop_pools.get(loop) or _LoopPool(loop)
        slot, future = shared.submit(plan, argv, data, timeout)
        try:
            result = await future
        except BaseException:
            shared.cancel(slot, future)
            raise
    finally:
        if own:
            plan.close()
    if result.error is not None:
        raise result.error
    if check and result.returncode:
        result.check_returncode()
    return result


# ---- aio.run_many -------------------------------------------------------------------------------------------


class AsyncResults:
    """What aio.run_many returns: `async for result in it`, one pyproc.Result per command, as run_many yields them.

    aclose() (or `async with`) ends it early; so does dropping it: every running child is killed and reaped and
    every fd closed.
    """

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._watch: _Watch | None = None
        self._buffer: deque[Result] = deque()
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def __aiter__(self) -> AsyncResults:
        return self

    async def __anext__(self) -> Result:
        try:
            while True:
                if self._buffer:
                    return self._buffer.popleft()
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                if self._closed:
                    raise StopAsyncIteration
                if self._watch is None:
                    self._watch = _Watch(asyncio.get_running_loop(), self._run.open(), self._on_pass)
                if self._run.refill(len(self._buffer)):
                    self._watch.step()  # starts what was just queued (and collects what is done)
                if self._buffer or self._error is not None:
                    continue
                if self._run.finished():
                    raise StopAsyncIteration
                self._waiter = waiter = self._watch.loop.create_future()
                try:
                    await waiter  # the loop's next pass that collects a result (or fails) wakes it
                finally:
                    self._waiter = None
        except BaseException:
            self.close()
            raise

    def _on_pass(self, error: BaseException | None) -> None:
        if error is None:
            try:
                self._buffer.extend(self._run.collect())
                self._run.refill(len(self._buffer))  # the consumer's untaken results count against the read-ahead
            except BaseException as exc:  # check=True's failure, a bad command: raised by the next __anext__
                self._error = exc
        else:
            self._error = error
        if (self._buffer or self._error is not None) and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        """Kills and reaps every running child and closes every fd (synchronously); the iteration ends."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._watch is not None:
                self._watch.close()
        finally:
            self._run.close()
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)

    async def aclose(self) -> None:
        """close(), as an async iterator's aclose()."""
        self.close()

    async def __aenter__(self) -> AsyncResults:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        if hasattr(self, "_closed"):
            self.close()


__all__ = ["AsyncResults", "run"]
