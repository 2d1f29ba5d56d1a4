"""pyproc.aio: run / spawn / AsyncProcess on the event loop, and SignalPipe with async for."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

import pyproc
from pyproc import aio

T = TypeVar("T")

pytestmark = pytest.mark.usefixtures("no_leaks")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _kernel_threads() -> set[int]:
    return {int(tid) for tid in os.listdir("/proc/self/task")}


def _python_threads() -> set[int | None]:
    return {thread.ident for thread in threading.enumerate()}


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of pid, or None when no such process exists."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1])


def _gone(pid: int) -> bool:
    """True when our child pid was reaped: no such process (or the pid now belongs to someone else's
    process)."""
    stat = _stat(pid)
    return stat is None or stat[1] != os.getpid()


def _dead(pid: int) -> bool:
    """True when pid (not our child) no longer runs: gone, or a zombie waiting for its own parent."""
    stat = _stat(pid)
    return stat is None or stat[0] in ("Z", "X")


def _wait_dead(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not _dead(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def _read_pid(path: Path, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n"):
            return int(text)
        assert time.monotonic() < deadline, f"{path} was never written"
        await asyncio.sleep(0.005)


def test_run_captures_output_status_rusage() -> None:
    result = run_async(aio.run(["sh", "-c", "cat; echo oops >&2; exit 3"], input=b"x" * 1_000_000,
                               capture=True))
    assert result.returncode == 3
    assert result.stdout == b"x" * 1_000_000  # both pipes pumped at once: no write-then-read deadlock
    assert result.stderr == b"oops\n"
    assert result.status == pyproc.Status(True, 3, None, False)
    assert result.rusage is not None and result.rusage.maxrss_kib > 0
    assert 0 < result.elapsed < 60
    assert result.args == ["sh", "-c", "cat; echo oops >&2; exit 3"]
    with pytest.raises(pyproc.CalledProcessError) as info:
        result.check_returncode()
    assert info.value.returncode == 3 and info.value.stderr == b"oops\n"


def test_run_check_and_signal_status() -> None:
    with pytest.raises(pyproc.CalledProcessError):
        run_async(aio.run(["false"], check=True))
    result = run_async(aio.run(["sh", "-c", "kill -9 $$"]))
    assert result.returncode == -signal.SIGKILL
    assert result.status == pyproc.Status(False, None, signal.SIGKILL, False)
    assert result.stdout is None and result.stderr is None


def test_200_concurrent_runs_create_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[threading.Thread] = []
    original_start = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        started.append(self)
        original_start(self)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    # Sets of thread ids, not counts: a thread left by an earlier test may end meanwhile, but none may appear.
    python_threads, kernel_threads = _python_threads(), _kernel_threads()
    count = threading.active_count()

    async def main() -> list[aio.Result]:
        results = await asyncio.gather(*[
            aio.run(["sh", "-c", f"echo {i}; echo {i} >&2"], capture=True) for i in range(200)
        ])
        assert _python_threads() <= python_threads
        assert _kernel_threads() <= kernel_threads
        assert threading.active_count() <= count
        loop = asyncio.get_running_loop()
        assert getattr(loop, "_default_executor", None) is None  # nothing went to run_in_executor
        return results

    results = run_async(main())
    assert [(r.returncode, r.stdout, r.stderr) for r in results] == [
        (0, f"{i}\n".encode(), f"{i}\n".encode()) for i in range(200)
    ]
    assert started == []
    assert _python_threads() <= python_threads
    assert _kernel_threads() <= kernel_threads


def test_cancelled_run_leaves_no_child_and_no_zombie(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    async def main() -> int:
        task = asyncio.ensure_future(
            aio.run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"], capture=True))
        pid = await _read_pid(pidfile)
        assert not _gone(pid)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _gone(pid)  # killed and reaped before the CancelledError came out
        return pid

    pid = run_async(main())
    assert _gone(pid)


def test_timeout_kills_the_process_group_and_keeps_partial_output(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    script = f"sleep 60 & echo $! $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; echo started; wait"

    async def main() -> None:
        start = time.monotonic()
        with pytest.raises(pyproc.TimeoutExpired) as info:
            await aio.run(["sh", "-c", script], capture=True, timeout=0.5, new_session=True)
        assert time.monotonic() - start < 30
        assert info.value.stdout == b"started\n"
        assert info.value.stderr == b""
        assert isinstance(info.value, TimeoutError)

    run_async(main())
    grandchild, child = map(int, pidfile.read_text().split())
    assert _gone(child)
    assert _wait_dead(grandchild), "the grandchild in the child's process group survived"


def test_spawn_streams_wait_and_communicate() -> None:
    async def main() -> None:
        proc = await aio.spawn(["sh", "-c", "while read line; do echo got $line; done; exit 5"],
                               stdin=pyproc.PIPE, stdout=pyproc.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.returncode is None and proc.pid > 0
        proc.stdin.write(b"one\n")
        await proc.stdin.drain()
        assert await proc.stdout.readline() == b"got one\n"
        out, err = await proc.communicate(b"two\nthree\n")
        assert (out, err) == (b"got two\ngot three\n", None)
        assert proc.returncode == 5 and await proc.wait() == 5
        assert proc.status is not None and proc.status.exit_code == 5

    run_async(main())


def test_wait_timeout_leaves_child_running_then_kill() -> None:
    async def main() -> None:
        proc = await aio.spawn(["sleep", "60"])
        with pytest.raises(pyproc.TimeoutExpired):
            await proc.wait(timeout=0.05)
        assert proc.returncode is None and not _gone(proc.pid)
        waiters = [asyncio.ensure_future(proc.wait()) for _ in range(3)]
        proc.terminate()
        assert await asyncio.gather(*waiters) == [-signal.SIGTERM] * 3
        assert _gone(proc.pid)

    run_async(main())


def test_child_is_reaped_even_if_nobody_waits() -> None:
    async def main() -> None:
        proc = await aio.spawn(["true"])
        deadline = time.monotonic() + 10
        while proc.returncode is None and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert proc.returncode == 0 and _gone(proc.pid)

    run_async(main())


def test_async_with_waits_on_normal_exit() -> None:
    async def main() -> None:
        async with await aio.spawn(["sh", "-c", "read x; exit 2"], stdin=pyproc.PIPE) as proc:
            pass  # leaving closes stdin (the child's read sees EOF) and waits
        assert proc.returncode == 2

    run_async(main())


def test_async_with_kills_on_error() -> None:
    async def main() -> int:
        with pytest.raises(KeyError):
            async with await aio.spawn(["sleep", "60"]) as proc:
                raise KeyError("boom")
        assert proc.returncode == -signal.SIGKILL
        return proc.pid

    assert _gone(run_async(main()))


def test_bad_input_starts_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="empty"):
            await aio.run([])
        with pytest.raises(FileNotFoundError):
            await aio.run([str(tmp_path / "missing")])
        with pytest.raises(ValueError, match="input"):
            await aio.run(["cat"], input=b"x", stdin=pyproc.DEVNULL)
        with pytest.raises(ValueError, match="capture=True"):
            await aio.run(["true"], capture=True, stdout=pyproc.PIPE)
        with pytest.raises(ValueError, match="timeout"):
            await aio.run(["true"], timeout=-1)
        with pytest.raises(TypeError):
            await aio.run(["true"], no_such_option=1)
        proc = await aio.spawn(["true"])
        with pytest.raises(ValueError, match="stdin=PIPE"):
            await proc.communicate(b"x")
        await proc.wait()

    fds = set(os.listdir("/proc/self/fd"))
    run_async(main())
    assert set(os.listdir("/proc/self/fd")) == fds


def test_signal_pipe_async_for() -> None:
    async def main() -> list[pyproc.SignalEvent]:
        loop = asyncio.get_running_loop()
        got = []
        async with aio.SignalPipe([signal.SIGUSR1, signal.SIGUSR2]) as pipe:
            for delay, sig in ((0.01, signal.SIGUSR1), (0.02, signal.SIGUSR2), (0.03, signal.SIGUSR1)):
                loop.call_later(delay, os.kill, os.getpid(), sig)
            async for event in pipe:
                got.append(event)
                if len(got) == 3:
                    break
            assert await pipe.wait_async(timeout=0.01) == []
        return got

    me = (os.getpid(), os.getuid(), 0)
    assert run_async(main()) == [pyproc.SignalEvent(signal.SIGUSR1, 0, *me[:2], 0),
                                 pyproc.SignalEvent(signal.SIGUSR2, 0, *me[:2], 0),
                                 pyproc.SignalEvent(signal.SIGUSR1, 0, *me[:2], 0)]


def test_signal_pipe_close_ends_async_for() -> None:
    async def main() -> None:
        pipe = aio.SignalPipe([signal.SIGUSR1])
        asyncio.get_running_loop().call_later(0.02, pipe.close)
        events = [event async for event in pipe]
        assert events == [] and pipe.closed

    run_async(main())


def test_exit_watch_without_pidfd_polls_on_the_loop() -> None:
    """Kernels before 5.3 give no pidfd: the loop then polls with wait4(WNOHANG), still without threads."""

    async def main() -> None:
        process = pyproc.spawn(["sh", "-c", "sleep 0.05; exit 4"])
        assert process.pidfd is not None
        os.close(process.pidfd)
        process.pidfd = None
        proc = aio.AsyncProcess(process, asyncio.get_running_loop(), own_group=False)
        assert await proc.wait(timeout=30) == 4
        assert _gone(proc.pid)

    run_async(main())


def test_input_the_child_never_reads_and_stderr_to_stdout() -> None:
    async def main() -> None:
        result = await aio.run(["sh", "-c", "exec 0<&-; echo out; echo err >&2"], input=b"x" * 10_000_000,
                               stdout=pyproc.PIPE, stderr=pyproc.STDOUT)
        assert result.returncode == 0
        assert result.stdout is not None and sorted(result.stdout.splitlines()) == [b"err", b"out"]
        assert result.stderr is None

    run_async(main())


# ---- aio.run on the shared job pool, aio.run_many (issue 15) ---------------------------------------------------


def test_run_shares_one_pool_per_loop_and_closes_it_once_idle() -> None:
    from pyproc import _aio_pool

    fds = set(os.listdir("/proc/self/fd"))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for i in range(5):  # back to back: the same pool serves them
            assert (await aio.run(["echo", str(i)], capture=True)).stdout == f"{i}\n".encode()
            pool = _aio_pool._loop_pools.get(loop)
            assert pool is not None
        results = await asyncio.gather(*[aio.run(["echo", str(i)], capture=True) for i in range(50)])
        assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(50)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert loop not in _aio_pool._loop_pools  # idle for a whole iteration: closed

    run_async(main())
    assert set(os.listdir("/proc/self/fd")) == fds


def test_run_timeout_kills_the_group_without_being_asked(tmp_path: Path) -> None:
    # As pyproc.run(): a timeout puts the child in a group of its own, so the grandchild goes too.
    pidfile = tmp_path / "pids"
    script = f"sleep 60 & echo $! > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; echo started; wait"

    async def main() -> None:
        with pytest.raises(pyproc.TimeoutExpired) as info:
            await aio.run(["sh", "-c", script], capture=True, timeout=0.5)
        assert info.value.stdout == b"started\n"

    run_async(main())
    assert _wait_dead(int(pidfile.read_text())), "the grandchild survived the timeout"


def test_runs_on_loops_in_several_threads_at_once() -> None:
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        async def main() -> None:
            results = await asyncio.gather(*[aio.run(["echo", f"{k}.{i}"], capture=True) for i in range(20)])
            assert [r.stdout for r in results] == [f"{k}.{i}\n".encode() for i in range(20)]

        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_run_many_order_output_errors_and_timeouts() -> None:
    commands: list[Any] = [["sh", "-c", f"sleep 0.0{5 - i % 5}; echo {i}"] for i in range(12)]
    commands[3] = ["/nonexistent/program"]
    commands[7] = pyproc.Job(["sleep", "60"], timeout=0.3)

    async def main() -> tuple[list[pyproc.Result], list[pyproc.Result]]:
        ordered = [r async for r in aio.run_many(commands, jobs=3, capture=True)]
        completed = [r async for r in aio.run_many(commands, jobs=3, capture=True, ordered=False)]
        return ordered, completed

    ordered, completed = run_async(main())
    assert [r.args for r in ordered] == [c.argv if isinstance(c, pyproc.Job) else c for c in commands]
    for i, r in enumerate(ordered):
        if i == 3:
            assert isinstance(r.error, FileNotFoundError) and r.returncode == 127
        elif i == 7:
            assert r.timed_out and r.returncode == -signal.SIGKILL
        else:
            assert (r.returncode, r.stdout, r.error) == (0, f"{i}\n".encode(), None)
    assert sorted(map(repr, (r.args for r in completed))) == sorted(map(repr, (r.args for r in ordered)))
    assert completed[-1].args == ["sleep", "60"]  # the timed-out one ends last


@pytest.mark.parametrize("jobs", [1, 3])
def test_run_many_goes_on_when_jobs_end_as_fast_as_they_start(jobs: int, minimal_exe: str) -> None:
    """Each wake-up runs at most four passes; jobs that fail to start (or end within the pass that started them)
    leave nothing in the epoll set to wake the next one, and aio.run_many waited forever with jobs still queued
    (seen as a hang of the report's jobs benchmark).  The next pass now comes on the loop's next iteration."""
    commands: list[list[str]] = [["/nonexistent/program"]] * 40 + [[minimal_exe]] * 200

    async def main() -> list[pyproc.Result]:
        return [r async for r in aio.run_many(commands, jobs=jobs, capture=True)]

    results = run_async(asyncio.wait_for(main(), 60))
    assert [type(r.error) for r in results[:40]] == [FileNotFoundError] * 40
    assert [(r.returncode, r.error) for r in results[40:]] == [(0, None)] * 200


def _sleepers(n: int = 50) -> Any:
    return (["sleep", "60"] for _ in range(n))


def test_run_many_cancelled_mid_way_leaves_nothing_behind() -> None:
    from leakcheck import no_leaks as strict

    async def main() -> None:
        got = []

        async def consume() -> None:
            async for r in aio.run_many(itertools.chain([["true"]], _sleepers()), jobs=3, capture=True):
                got.append(r)

        task = asyncio.ensure_future(consume())
        while not got:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the sleepers are running now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with strict("aio.run_many cancelled"):
        run_async(main())


def test_run_many_every_other_way_out_leaves_nothing_behind() -> None:
    from leakcheck import no_leaks as strict

    async def exception() -> None:
        with pytest.raises(ZeroDivisionError):
            async for _ in aio.run_many(itertools.chain([["true"]], _sleepers()), jobs=3):
                1 / 0  # noqa: B018

    async def break_out() -> None:
        async for _ in aio.run_many(itertools.chain([["true"]], _sleepers()), jobs=3):
            break  # the iterator is dropped: closed at once

    async def aclose() -> None:
        results = aio.run_many(itertools.chain([["true"]], _sleepers()), jobs=3)
        await results.__anext__()
        await results.aclose()
        with pytest.raises(StopAsyncIteration):
            await results.__anext__()

    async def context() -> None:
        async with aio.run_many(itertools.chain([["true"]], _sleepers()), jobs=3) as results:
            await results.__anext__()

    async def check() -> None:
        with pytest.raises(pyproc.CalledProcessError):
            async for _ in aio.run_many(itertools.chain([["false"]], _sleepers()), jobs=3, check=True):
                pass

    async def bad_command() -> None:
        with pytest.raises(TypeError, match="command 4: argv must be a sequence"):
            async for _ in aio.run_many(itertools.chain(_sleepers(2), [["true"]] * 2, [5]), jobs=3):
                pass

    for way in (exception, break_out, aclose, context, check, bad_command):
        with strict(way.__name__):
            run_async(way())


def test_run_many_fail_fast_and_bad_options() -> None:
    async def main() -> list[pyproc.Result]:
        commands = [["sh", "-c", "sleep 0.3"], ["false"], *(["true"] for _ in range(20))]
        return [r async for r in aio.run_many(commands, jobs=2, fail_fast=True)]

    results = run_async(main())
    assert [r.returncode for r in results[:2]] == [0, 1] and len(results) <= 4
    with pytest.raises(ValueError):
        aio.run_many([["true"]], jobs=0)
    with pytest.raises(TypeError):
        aio.run_many([["true"]], umask="022")


def test_run_many_reads_lazily_with_a_slow_consumer() -> None:
    from pyproc.pool import read_ahead

    read = 0

    def commands() -> Any:
        nonlocal read
        for _ in range(200):
            read += 1
            yield ["true"]

    async def main() -> int:
        n = worst = 0
        async for _ in aio.run_many(commands(), jobs=2):
            n += 1
            worst = max(worst, read - n)
            if n % 20 == 0:
                await asyncio.sleep(0.05)  # the jobs already queued finish meanwhile; nothing more is read
        assert worst <= read_ahead(2)
        return n

    assert run_async(main()) == 200


def test_run_many_and_runs_share_the_loop() -> None:
    async def main() -> None:
        async def many() -> list[bytes | None]:
            return [r.stdout async for r in aio.run_many([["echo", str(i)] for i in range(30)], jobs=2,
                                                          capture=True)]

        listing, *singles = await asyncio.gather(many(), *[aio.run(["echo", "x"], capture=True) for _ in range(10)])
        assert listing == [f"{i}\n".encode() for i in range(30)]
        assert [r.stdout for r in singles] == [b"x\n"] * 10

    run_async(main())
