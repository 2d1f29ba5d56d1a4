"""Signals and asyncio, per call, interleaved (pytest bench/test_signals_micro.py -s).

Each comparison runs its ways in turn (A B C A B C ...) after a warm-up, and prints per way the median with min and
max, and each way's median as a ratio of the first way's.  pytest-benchmark records the whole interleaved run once
(benchmark.pedantic, one round), with the medians and ratios in extra_info.

- one signal to ourselves, caught and read back: pyproc.SignalPipe (C handler -> pipe -> read()) vs Python's own
  handler with signal.set_wakeup_fd (the standard library's self-pipe) vs blocking it and taking it with
  sigtimedwait (pyproc.signals.take_pending);
- one `true` run to completion from asyncio: pyproc.aio.run vs asyncio.create_subprocess_exec + wait.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import statistics
import time
from collections.abc import Callable
from typing import Any

from pyproc import SignalPipe, aio
from pyproc.signals import blocked, take_pending

USR1 = signal.SIGUSR1


def _interleaved(ways: dict[str, Callable[[], None]], rounds: int, warmup: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for call in ways.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, call in ways.items():
            start = time.perf_counter_ns()
            call()
            times[name].append((time.perf_counter_ns() - start) / 1000)
    return times


def _report(title: str, times: dict[str, list[float]]) -> dict[str, Any]:
    first = statistics.median(next(iter(times.values())))
    print(f"\n{title} (microseconds per call, {len(next(iter(times.values())))} interleaved rounds)")
    info: dict[str, Any] = {}
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<44} median {median:9.2f}  min {min(values):9.2f}  max {max(values):9.2f}"
              f"  x{median / first:5.2f}")
        info[name] = {"median_us": median, "min_us": min(values), "max_us": max(values), "ratio": median / first}
    return info


def test_signal_to_self_caught_and_read(benchmark: Any) -> None:
    benchmark.group = "one signal to self, caught and read back"
    me = os.getpid()

    def run() -> dict[str, Any]:
        def with_sigpipe() -> None:
            with SignalPipe([USR1]) as p:
                for _ in range(100):
                    os.kill(me, USR1)
                    if len(p.read()) != 1:
                        raise RuntimeError("lost a record")

        def with_wakeup_fd() -> None:
            seen = []
            read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            old_handler = signal.signal(USR1, lambda sig, frame: seen.append(sig))
            old_fd = signal.set_wakeup_fd(write_end)
            try:
                for _ in range(100):
                    os.kill(me, USR1)  # Python runs the handler at the next bytecode boundary
                    if os.read(read_end, 16) != bytes([USR1]):
                        raise RuntimeError("lost a wakeup byte")
            finally:
                signal.set_wakeup_fd(old_fd)
                signal.signal(USR1, old_handler)
                os.close(read_end)
                os.close(write_end)
            if len(seen) != 100:
                raise RuntimeError("the handler did not run every time")

        def with_sigtimedwait() -> None:
            with blocked([USR1]):
                for _ in range(100):
                    os.kill(me, USR1)
                    if len(take_pending([USR1])) != 1:
                        raise RuntimeError("lost a signal")

        times = _interleaved({"pyproc.SignalPipe (x100)": with_sigpipe,
                              "signal.signal + set_wakeup_fd (x100)": with_wakeup_fd,
                              "blocked + take_pending/sigtimedwait (x100)": with_sigtimedwait},
                             rounds=200, warmup=20)
        return _report(benchmark.group, times)

    benchmark.extra_info.update(benchmark.pedantic(run, rounds=1, iterations=1))


def test_asyncio_run_true(benchmark: Any) -> None:
    benchmark.group = "run `true` to completion from asyncio"
    true = shutil.which("true") or "/bin/true"

    async def pyproc_aio() -> None:
        result = await aio.run([true])
        if result.returncode != 0:
            raise RuntimeError(result)

    async def asyncio_subprocess() -> None:
        proc = await asyncio.create_subprocess_exec(true)
        if await proc.wait() != 0:
            raise RuntimeError(proc)

    def run() -> dict[str, Any]:
        loop = asyncio.new_event_loop()
        try:
            times = _interleaved({"pyproc.aio.run": lambda: loop.run_until_complete(pyproc_aio()),
                                  "asyncio.create_subprocess_exec + wait":
                                      lambda: loop.run_until_complete(asyncio_subprocess())},
                                 rounds=300, warmup=30)
        finally:
            loop.close()
        return _report(benchmark.group, times)

    benchmark.extra_info.update(benchmark.pedantic(run, rounds=1, iterations=1))
