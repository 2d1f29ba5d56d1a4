"""pyproc.dask.run_many against a real distributed.LocalCluster (worker processes, 2 workers).

These tests need dask.distributed (pip install -e '.[test,dask]'); without it they are skipped, saying so.  CI
installs it (.ci/dask.sh) so they run there.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import process_stats

import pyproc

SH = "/bin/sh"
STOP_SECONDS = 10.0  # a generous bound on a stop that the test cannot wait for
NEED_DISTRIBUTED = "pyproc.dask's tests need dask.distributed: pip install -e '.[test,dask]' (CI's .ci/dask.sh does)"


def test_import_pyproc_imports_no_dask() -> None:
    code = "import sys, pyproc, pyproc.aio, pyproc.subprocess; print(sorted(m for m in sys.modules " \
           "if m.split('.')[0] in ('dask', 'distributed') or m == 'pyproc.dask'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _import_distributed() -> Any:
    """distributed, imported with every signal blocked: native threads that start at import (numpy's OpenBLAS
    threads) inherit that mask and live as long as the process; with it, they never take a signal that the other
    tests send to this process and block in their own thread."""
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        return pytest.importorskip("distributed", reason=NEED_DISTRIBUTED)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _cluster(threads: int) -> Any:
    distributed = _import_distributed()
    return distributed.LocalCluster(n_workers=2, threads_per_worker=threads, processes=True,
                                    dashboard_address=":0", silence_logs=40)


def _blocked_mask(task: int) -> int | None:
    """The signal mask of a thread of this process (None: it ended)."""
    try:
        with open(f"/proc/self/task/{task}/status") as f:
            return next(int(line.split()[1], 16) for line in f if line.startswith("SigBlk:"))
    except (OSError, StopIteration):
        return None


@pytest.fixture(scope="module", autouse=True)
def _leave_no_dask_behind() -> Iterator[None]:
    """What Dask leaves in this process would break later tests, so it goes after the module: the resource tracker
    that multiprocessing starts for LocalCluster's workers (a child of this process, for the tests that check for
    leftover children; multiprocessing starts it again when needed), and distributed's offload thread (it outlives
    every Client, and a thread that does not block the signals the tests block receives them)."""
    tasks_before = set(os.listdir("/proc/self/task"))
    yield
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if stop is not None:
        stop()
    if "distributed" in sys.modules:
        import distributed.utils

        offload = getattr(distributed.utils, "_offload_executor", None)
        if offload is not None:
            offload.shutdown(wait=True)
    # Any thread left (numpy's, see _import_distributed) must block every signal a thread can block.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        everything = _blocked_mask(threading.get_native_id())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    open_to_signals = []
    for task in set(os.listdir("/proc/self/task")) - tasks_before:
        blocked = _blocked_mask(int(task))
        if blocked is not None and blocked != everything:
            open_to_signals.append(task)
    assert open_to_signals == [], f"threads left by the Dask tests that could take signals: {open_to_signals}"


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A 2-worker LocalCluster of worker processes (2 threads each: two batches of a run may land on a worker)."""
    distributed = _import_distributed()
    with _cluster(2) as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def pdask() -> Any:
    _import_distributed()
    import pyproc.dask

    return pyproc.dask


# ---- what the workers hold (run there through client.run) -----------------------------------------------------


def _worker_state() -> tuple[int, list[int]]:
    """(batches of any run in this worker process, pids of its children)."""
    from pyproc import _dask_worker

    with _dask_worker._lock:
        batches = sum(run.batches for run in _dask_worker._runs.values())
    children = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                children += [int(pid) for pid in f.read().split()]
        except OSError:
            pass
    return batches, children


def assert_workers_idle(client: Any, timeout: float = 10.0) -> None:
    """No batch of any run left on the workers and no child of a worker process (allowing a moment to settle)."""
    deadline = time.monotonic() + timeout
    while True:
        states = client.run(_worker_state)
        if all(batches == 0 and not children for batches, children in states.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"workers still busy (batches, children): {states}")
        time.sleep(0.05)


def processes_with(marker: str) -> list[int]:
    """Pids of the processes on this machine whose command line holds marker."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(name))
        except OSError:
            pass
    return found


def assert_no_process_with(marker: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while processes_with(marker):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes left on the machine: {processes_with(marker)}")
        time.sleep(0.05)


# ---- order, per-job results, options ---------------------------------------------------------------------------


def test_order_kept_and_batches_run_on_every_worker(client: Any, pdask: Any) -> None:
    n = 3000
    commands = [[SH, "-c", f"echo {i} $PPID"] for i in range(n)]
    results = list(pdask.run_many(client, commands, capture=True))
    assert [r.args for r in results] == commands
    lines = [r.stdout.split() for r in results]
    assert [int(line[0]) for line in lines] == list(range(n))
    assert all(r.returncode == 0 and r.error is None and r.stderr == b"" for r in results)
    # The children's parent is a worker process: both workers ran batches.
    assert {int(line[1]) for line in lines} == set(client.run(os.getpid).values())
    assert all(r.status is not None and r.status.exit_code == 0 and r.rusage is not None for r in results)
    assert_workers_idle(client)


def test_as_completed_yields_every_result_once(client: Any, pdask: Any) -> None:
    # Early batches run long, so later ones come back first.
    commands = [[SH, "-c", f"sleep {0.3 if i < 4 else 0}; echo {i}"] for i in range(200)]
    results = list(pdask.run_many(client, commands, capture=True, ordered=False, batch_size=4))
    assert sorted(int(r.stdout) for r in results) == list(range(200))
    assert [int(r.stdout) for r in results] != list(range(200))
    assert_workers_idle(client)


def test_per_job_failures_travel_back(client: Any, pdask: Any, tmp_path: Path) -> None:
    commands: list[Any] = [[SH, "-c", "echo ok"]] * 100
    commands[10] = ["no-such-program-pyproc-dask"]
    commands[20] = [SH, "-c", "echo err >&2; exit 3"]
    commands[30] = pyproc.Job([SH, "-c", "echo partial; sleep 30"], timeout=0.5)
    commands[40] = pyproc.Job([SH, "-c", "pwd; cat"], input=b"in", cwd=tmp_path)
    commands[50] = pyproc.Job(["true"], cwd=tmp_path / "missing")
    commands[60] = [SH, "-c", "kill -SEGV $$"]
    results = list(pdask.run_many(client, commands, capture=True, batch_size=16))
    assert len(results) == 100
    missing = results[10]
    assert missing.returncode == 127 and isinstance(missing.error, FileNotFoundError)
    assert missing.status is None and "exec" in str(missing.error)
    assert results[20].returncode == 3 and results[20].stderr == b"err\n" and results[20].error is None
    timed = results[30]
    assert timed.timed_out and isinstance(timed.error, pyproc.TimeoutExpired) and timed.stdout == b"partial\n"
    assert timed.returncode == -signal.SIGKILL
    assert results[40].stdout == f"{tmp_path}\nin".encode()
    assert isinstance(results[50].error, FileNotFoundError) and "chdir" in str(results[50].error)
    assert results[60].status is not None and results[60].status.signal == signal.SIGSEGV
    others = [r for i, r in enumerate(results) if i not in (10, 20, 30, 40, 50, 60)]
    assert all(r.returncode == 0 and r.stdout == b"ok\n" for r in others)
    assert all(r.rusage is not None and r.rusage.maxrss_kib > 0 for r in others)
    assert_workers_idle(client)


def test_jobs_per_worker_bounds_the_children_of_a_worker(client: Any, pdask: Any) -> None:
    # Each command prints its worker, start and end (ns); at no moment may a worker run more than jobs_per_worker
    # of them, although each worker has 2 threads and so may hold 2 batches of the run at once.
    command = [SH, "-c", "s=$(date +%s%N); sleep 0.2; echo $PPID $s $(date +%s%N)"]
    for jobs in (1, 3):
        results = list(pdask.run_many(client, [command] * 24, capture=True, jobs_per_worker=jobs, batch_size=3))
        spans: dict[int, list[tuple[int, int]]] = {}
        for r in results:
            worker, start, end = map(int, r.stdout.split())
            spans.setdefault(worker, []).append((start, end))
        peak = 0
        for intervals in spans.values():
            events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
            peak = max(peak, *itertools.accumulate(delta for _, delta in events))
        assert peak <= jobs
        if jobs > 1:
            assert peak >= 2
    assert_workers_idle(client)


def test_progress_bar(client: Any, pdask: Any, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    results = list(pdask.run_many(client, [["true"]] * 50, progress=True, batch_size=10))
    assert len(results) == 50
    assert "50/50" in capsys.readouterr().err


# ---- failures that end the run: check, fail_fast, bad commands, an exception in the loop ------------------------


def test_check_raises_and_stops_every_batch(client: Any, pdask: Any) -> None:
    marker = f"pyproc-check-{uuid.uuid4().hex}"
    commands: list[Any] = [[SH, "-c", f"sleep 60 # {marker}"]] * 40
    # Beside a long one in the first batch (a later batch could wait behind a long batch on the same worker: one
    # batch of a run runs its children on a worker at a time, and the failure is seen when it runs).
    commands[0] = [SH, "-c", "exit 4"]
    started = time.monotonic()
    with pytest.raises(pyproc.CalledProcessError) as raised:
        list(pdask.run_many(client, commands, check=True, batch_size=6))
    assert raised.value.returncode == 4
    # The stop waited for the batches: no child is left when the exception arrives (a batch the scheduler had
    # already handed to a worker may still start, see that the run is stopped, and return at once).
    assert_no_process_with(marker, timeout=0)
    assert_workers_idle(client, timeout=2)
    assert time.monotonic() - started < 30


def test_check_raises_a_start_error(client: Any, pdask: Any) -> None:
    with pytest.raises(FileNotFoundError):
        list(pdask.run_many(client, [["true"]] * 30 + [["no-such-program-pyproc-dask"]], check=True))
    assert_workers_idle(client, timeout=2)


def test_fail_fast_starts_nothing_after_a_failure(client: Any, pdask: Any) -> None:
    commands: list[Any] = [[SH, "-c", "exit 2"]] + [[SH, "-c", "sleep 0.05"]] * 400
    results = list(pdask.run_many(client, commands, fail_fast=True, batch_size=4))
    assert results[0].returncode == 2
    assert len(results) < 100  # the batches out at the failure finish; nothing after them is submitted
    assert all(r.returncode == 0 for r in results[1:])
    assert_workers_idle(client)


def test_exception_in_the_consumer_stops_every_batch(client: Any, pdask: Any) -> None:
    marker = f"pyproc-consumer-{uuid.uuid4().hex}"
    commands = [[SH, "-c", "echo first"]] + [[SH, "-c", f"sleep 60 # {marker}"]] * 40
    started = time.monotonic()
    with pytest.raises(ZeroDivisionError):
        for result in pdask.run_many(client, commands, capture=True, batch_size=1, ordered=False,
                                     jobs_per_worker=4):
            assert result.stdout == b"first\n"
            deadline = time.monotonic() + 10  # long commands run by now
            while not processes_with(marker) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert processes_with(marker)
            1 / 0  # noqa: B018
    assert_no_process_with(marker, timeout=0)
    assert_workers_idle(client, timeout=2)
    assert time.monotonic() - started < 30


def test_closing_the_iterator_early_stops_every_batch(client: Any, pdask: Any) -> None:
    marker = f"pyproc-close-{uuid.uuid4().hex}"
    commands = [[SH, "-c", "echo first"]] + [[SH, "-c", f"echo x; sleep 60 # {marker}"]] * 30
    results = pdask.run_many(client, commands, capture=True, timeout=120, batch_size=1, ordered=False)
    assert next(results).stdout == b"first\n"
    deadline = time.monotonic() + 10
    while not processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert processes_with(marker)
    results.close()
    assert_no_process_with(marker, timeout=0)
    assert_workers_idle(client, timeout=2)


def test_an_iterator_dropped_in_the_clients_event_loop_stops_every_batch(client: Any, pdask: Any) -> None:
    # The garbage collector may finalise an abandoned iterator in any thread, the client's event loop included,
    # where blocking calls cannot be made: the stop is then scheduled on the loop.
    marker = f"pyproc-dropped-{uuid.uuid4().hex}"
    commands = [[SH, "-c", "echo first"]] + [[SH, "-c", f"sleep 60 # {marker}"]] * 10
    results = pdask.run_many(client, commands, capture=True, batch_size=1, ordered=False)
    assert next(results).stdout == b"first\n"
    deadline = time.monotonic() + 10
    while not processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert processes_with(marker)
    holder = [results]
    del results
    client.loop.add_callback(holder.pop)  # its last reference goes in the loop's thread
    assert_no_process_with(marker, timeout=STOP_SECONDS)
    assert_workers_idle(client)


def test_bad_command_raises_from_its_worker(client: Any, pdask: Any) -> None:
    commands: list[Any] = [["true"]] * 50
    commands[23] = []
    with pytest.raises(ValueError, match="starts at command 20"):
        list(pdask.run_many(client, commands, batch_size=10))
    assert_workers_idle(client)


def test_bad_arguments_raise_before_any_task(client: Any, pdask: Any) -> None:
    with pytest.raises(TypeError, match=r"distributed\.Client"):
        pdask.run_many("tcp://scheduler", [["true"]])
    for kwargs, error in [
        ({"batch_size": 0}, ValueError), ({"batch_size": "5"}, TypeError), ({"jobs_per_worker": 0}, ValueError),
        ({"jobs": 2}, TypeError), ({"stdin": 0}, ValueError), ({"stdout": sys.stdout}, ValueError),
        ({"pass_fds": [0]}, ValueError), ({"capture": "yes"}, TypeError), ({"timeout": -1}, ValueError),
        ({"check": "no"}, TypeError), ({"ordered": None}, TypeError), ({"no_such_option": 1}, TypeError),
    ]:
        with pytest.raises(error):
            pdask.run_many(client, [["true"]], **kwargs)


# ---- a worker killed mid-run -----------------------------------------------------------------------------------


def test_a_worker_killed_mid_run_loses_no_result(pdask: Any, tmp_path: Path) -> None:
    distributed = _import_distributed()
    marker = f"pyproc-killed-{uuid.uuid4().hex}"
    runs = tmp_path / "runs"
    runs.mkdir()
    n = 300
    # Each command leaves a file per run (a command of the lost batch may run twice) and prints its number.
    commands = [[SH, "-c", f"touch {runs}/{i}.$$; sleep 0.02; echo {i} # {marker}"] for i in range(n)]
    with _cluster(1) as cluster, distributed.Client(cluster) as c:
        pids = list(c.run(os.getpid).values())
        results = []
        for result in pdask.run_many(c, commands, capture=True, batch_size=25):
            results.append(result)
            if len(results) == 30:
                os.kill(pids[0], signal.SIGKILL)  # mid-run: the batches it holds are lost with it
        assert [int(r.stdout) for r in results] == list(range(n))  # every result, once each, in order
        assert all(r.returncode == 0 for r in results)
        counts = Counter(int(name.split(".")[0]) for name in os.listdir(runs))
        assert set(counts) == set(range(n))
        assert pids[0] not in c.run(os.getpid).values()  # it was replaced
        assert_workers_idle(c)
    assert_no_process_with(marker)  # pdeathsig: the lost worker's children died with it


# ---- many commands -----------------------------------------------------------------------------------------------


def test_100k_commands_from_a_generator_read_lazily(client: Any, pdask: Any, minimal_exe: str) -> None:
    n, batch = 100_000, 2500
    read = 0
    lead = 0
    lock = threading.Lock()

    def commands() -> Iterator[list[str]]:
        nonlocal read
        for _ in range(n):
            with lock:
                read += 1
            yield [minimal_exe]

    done = 0
    for result in pdask.run_many(client, commands(), batch_size=batch):
        assert result.returncode == 0
        done += 1
        lead = max(lead, read - done)
    assert done == n
    # At most 2 batches per worker out at once, and the one being read.
    assert lead <= (pdask.BATCHES_PER_WORKER * 2 + 1) * batch
    assert_workers_idle(client)


def test_batch_size_chosen_from_measures(client: Any, pdask: Any, minimal_exe: str) -> None:
    results = list(pdask.run_many(client, [[minimal_exe]] * 5000))
    assert len(results) == 5000 and all(r.returncode == 0 for r in results)
    cost = pdask.measure_task_cost(client)
    assert 0 < cost < 5


def test_batch_sizer_rule(pdask: Any) -> None:
    sizer = pdask.BatchSizer(task_cost=0.002, jobs=2, workers=2, total=None)
    assert sizer.size() == 4  # 2 * jobs until a batch came back
    sizer.observe(100, 0.01)  # 0.1 ms a command on the worker
    assert sizer.size() == 400  # 2 ms / (5% * 0.1 ms)
    sizer.observe(0, 0.0)  # an empty batch says nothing
    assert sizer.size() == 400
    slow = pdask.BatchSizer(task_cost=0.002, jobs=3, workers=2, total=None)
    slow.observe(2, 2.0)  # 1 s a command: every child slot busy, no less
    assert slow.size() == 3
    fast = pdask.BatchSizer(task_cost=0.5, jobs=1, workers=2, total=None)
    fast.observe(1000, 0.01)  # 10 us a command, costly tasks: capped at 2 s of work
    assert fast.size() == 200_000
    known = pdask.BatchSizer(task_cost=0.5, jobs=1, workers=2, total=8000)
    known.observe(1000, 0.01)
    assert known.size() == 1000  # a quarter of each worker's share


# ---- the worker side's kill, in this process (no Dask needed) ----------------------------------------------------


def _group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of group pgid."""
    return [pid for pid, fields in process_stats() if int(fields[2]) == pgid and fields[0] != b"Z"]


def test_kill_thread_children_kills_this_threads_children_and_their_groups() -> None:
    from pyproc import _dask_worker

    leader = pyproc.spawn([SH, "-c", "sleep 60 & wait"], process_group=0)
    plain = pyproc.spawn(["sleep", "60"])
    elsewhere: list[pyproc.Process] = []
    spawned, done = threading.Event(), threading.Event()

    def spawn_elsewhere() -> None:
        # The thread lives on while the test runs: a dead thread's children pass to another thread of the process.
        elsewhere.append(pyproc.spawn(["sleep", "60"]))
        spawned.set()
        done.wait(30)

    other = threading.Thread(target=spawn_elsewhere)
    other.start()
    spawned.wait(10)
    try:
        deadline = time.monotonic() + 10
        while len(_group_members(leader.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(_group_members(leader.pid)) == 2  # sh and its sleep
        me = threading.get_native_id()
        assert _dask_worker.kill_thread_children(me, leaders_only=True) == 1
        assert leader.wait(5) == -signal.SIGKILL
        deadline = time.monotonic() + 5
        while _group_members(leader.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _group_members(leader.pid) == []  # the grandchild went with its group
        assert plain.poll() is None
        assert _dask_worker.kill_thread_children(me) == 1
        assert plain.wait(5) == -signal.SIGKILL
        assert elsewhere[0].poll() is None  # another thread's child is not this thread's
        assert _dask_worker.kill_thread_children(me) == 0
    finally:
        for proc in (leader, plain, *elsewhere):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        done.set()
        other.join()
