"""pyproc.run_many and pyproc.Job (issue 15): order, failures, timeouts, every way out leaving nothing behind, lazy
reading of the commands, per-job options, bad input, threads."""

from __future__ import annotations

import fcntl
import gc
import os
import resource
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import child_pids, settle_children
from leakcheck import no_leaks as no_leaks_strict

import pyproc
import pyproc._pump
import pyproc.pool
from pyproc.pool import read_ahead

pytestmark = pytest.mark.usefixtures("no_leaks")

SH = "/bin/sh"


def _alive(pid: int) -> bool:
    """Whether pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# ---- results: order, contents, status ------------------------------------------------------------------------


def test_results_in_input_order_with_output_status_and_rusage() -> None:
    commands = [[SH, "-c", f"sleep 0.0{9 - i % 10}; echo out{i}; echo err{i} >&2; exit {i % 3}"] for i in range(20)]
    results = list(pyproc.run_many(commands, jobs=4, capture=True))
    assert [r.args for r in results] == commands
    for i, r in enumerate(results):
        assert isinstance(r, pyproc.Result)
        assert (r.returncode, r.stdout, r.stderr, r.error) == (i % 3, f"out{i}\n".encode(), f"err{i}\n".encode(), None)
        assert r.status == pyproc.Status(True, i % 3, None, False)
        assert r.rusage is not None and r.rusage.maxrss_kib > 0
        assert 0 < r.elapsed < 30 and not r.timed_out


def test_as_completed_yields_the_quick_ones_first() -> None:
    commands = [[SH, "-c", "sleep 1; echo slow"], ["echo", "quick1"], ["echo", "quick2"]]
    results = list(pyproc.run_many(commands, jobs=3, capture=True, ordered=False))
    assert [r.stdout for r in results][-1] == b"slow\n"
    assert sorted(r.stdout for r in results) == [b"quick1\n", b"quick2\n", b"slow\n"]
    ordered = list(pyproc.run_many(commands, jobs=3, capture=True))
    assert [r.stdout for r in ordered] == [b"slow\n", b"quick1\n", b"quick2\n"]


def test_never_more_than_jobs_children_at_once(tmp_path: Path) -> None:
    # Each child records its start and end; at no moment do more than `jobs` overlap.
    log = tmp_path / "log"
    script = f'echo "+ $$" >> {log}; sleep 0.05; echo "- $$" >> {log}'
    results = list(pyproc.run_many([[SH, "-c", script]] * 12, jobs=3))
    assert all(r.returncode == 0 for r in results)
    running = peak = 0
    for line in log.read_text().splitlines():
        running += 1 if line.startswith("+") else -1
        peak = max(peak, running)
    assert peak == 3


def test_not_captured_streams_are_none_and_inherited(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with open(out, "wb") as f:
        results = list(pyproc.run_many([["echo", "a"], ["echo", "b"]], jobs=1, stdout=f))
    assert [(r.stdout, r.stderr) for r in results] == [(None, None), (None, None)]
    assert out.read_bytes() == b"a\nb\n"


def test_large_outputs_and_inputs_both_ways_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bigger than a pipe, than a chunk, and (crossover lowered) past chunk mode into map mode; input and output at
    # once, so a pool that wrote all input before reading would deadlock.
    monkeypatch.setattr(pyproc._pump, "chunk_max", 3 * pyproc._pump.lib.PYPROC_OUT_CHUNK + 123)
    sizes = [0, 1, 65535, 65536, 300_000, 1 << 20, 5 << 20]
    jobs = [pyproc.Job(["cat"], input=os.urandom(n)) for n in sizes]
    results = list(pyproc.run_many(jobs, jobs=3, capture=True))
    for job, r in zip(jobs, results, strict=True):
        assert job.input is not None
        assert r.returncode == 0 and r.stdout == job.input.tobytes() and r.stderr == b""


def test_child_closing_stdin_early_drops_the_rest_without_error() -> None:
    results = list(pyproc.run_many([["head", "-c", "5"]] * 3, capture=True, input=b"x" * (4 << 20)))
    assert [(r.returncode, r.stdout, r.error) for r in results] == [(0, b"xxxxx", None)] * 3


def test_children_that_close_their_outputs_early_or_have_none() -> None:
    # The pool reaps a child when its outputs reach end of file if it can; one that closed them and runs on is
    # waited for through its pidfd, and one without output pipes (input only, nothing captured) too.
    commands: list[Any] = [[SH, "-c", "exec >&- 2>&-; sleep 0.3; exit 5"],
                           pyproc.Job([SH, "-c", "cat > /dev/null; exit 6"], input=b"x" * 300_000)]
    started = time.monotonic()
    (closed_early,) = pyproc.run_many(commands[:1], capture=True)
    assert (closed_early.returncode, closed_early.stdout, closed_early.stderr) == (5, b"", b"")
    assert closed_early.elapsed >= 0.3 and time.monotonic() - started >= 0.3
    (input_only,) = pyproc.run_many(commands[1:])
    assert (input_only.returncode, input_only.stdout) == (6, None)


def test_stderr_to_stdout_devnull_and_stdin_pipe() -> None:
    (r,) = pyproc.run_many([[SH, "-c", "echo a; echo b >&2"]], stdout=pyproc.PIPE, stderr=pyproc.STDOUT)
    assert (r.stdout, r.stderr) == (b"a\nb\n", None)
    (r,) = pyproc.run_many([[SH, "-c", "echo a; echo b >&2"]], stdout=pyproc.DEVNULL, stderr=pyproc.PIPE)
    assert (r.stdout, r.stderr) == (None, b"b\n")
    (r,) = pyproc.run_many([["cat"]], capture=True, stdin=pyproc.DEVNULL)
    assert (r.returncode, r.stdout) == (0, b"")
    (r,) = pyproc.run_many([["cat"]], capture=True, stdin=pyproc.PIPE)  # an empty pipe: end of file at once
    assert (r.returncode, r.stdout) == (0, b"")


# ---- commands that cannot start, timeouts -------------------------------------------------------------------


def test_missing_program_in_the_middle_of_1000_jobs(minimal_exe: str) -> None:
    commands: list[Any] = [[minimal_exe]] * 1000
    commands[500] = ["/nonexistent/program", "arg"]
    results = list(pyproc.run_many(commands, capture=True))
    assert len(results) == 1000
    bad = results[500]
    assert isinstance(bad.error, FileNotFoundError) and bad.error.filename == "/nonexistent/program"
    assert "exec" in str(bad.error)
    assert (bad.returncode, bad.stdout, bad.stderr, bad.status, bad.rusage) == (127, b"", b"", None, None)
    with pytest.raises(FileNotFoundError):
        bad.check_returncode()
    assert all(r.returncode == 0 and r.error is None for i, r in enumerate(results) if i != 500)


def test_start_failures_name_the_file_and_the_step(tmp_path: Path) -> None:
    not_executable = tmp_path / "data"
    not_executable.write_text("x")
    results = list(pyproc.run_many([
        [str(not_executable)],
        pyproc.Job(["true"], cwd=tmp_path / "missing"),
        ["no-such-program-anywhere"],
        ["true"],
    ]))
    assert isinstance(results[0].error, PermissionError) and results[0].error.filename == str(not_executable)
    assert isinstance(results[1].error, FileNotFoundError) and "chdir" in str(results[1].error)
    assert results[1].error.filename == str(tmp_path / "missing")
    assert isinstance(results[2].error, FileNotFoundError) and results[2].error.filename == "no-such-program-anywhere"
    assert (results[3].returncode, results[3].error) == (0, None)


def test_per_job_timeout_kills_the_group_grandchild_too_while_others_finish() -> None:
    # The job prints its grandchild's pid, then waits for it: the timeout must kill both (the whole group), and
    # the Result carries what was printed before.
    slow = pyproc.Job([SH, "-c", "sleep 60 & echo $!; wait"], timeout=0.5)
    quick = [[SH, "-c", "sleep 0.2; echo done"]] * 4
    started = time.monotonic()
    results = list(pyproc.run_many([quick[0], slow, *quick[1:]], jobs=3, capture=True))
    assert time.monotonic() - started < 20
    r = results[1]
    assert r.timed_out and isinstance(r.error, pyproc.TimeoutExpired) and r.error.timeout == 0.5
    assert r.returncode == -signal.SIGKILL
    grandchild = int(r.stdout)
    assert r.error.stdout == r.stdout
    assert _gone(grandchild), "the timed-out job's grandchild survived"
    assert all(x.stdout == b"done\n" and not x.timed_out for i, x in enumerate(results) if i != 1)


def test_timeout_for_every_job_and_a_grandchild_holding_the_pipe() -> None:
    # Without its own group the grandchild (which keeps stdout open) would keep the job waiting for end of file.
    results = list(pyproc.run_many([[SH, "-c", "(sleep 60; echo late) & echo early"], ["echo", "ok"]], capture=True,
                                   timeout=0.5))
    assert results[0].timed_out and results[0].stdout == b"early\n"
    assert (results[1].returncode, results[1].stdout, results[1].timed_out) == (0, b"ok\n", False)


def test_check_raises_the_first_failure_and_leaves_no_child() -> None:
    before = child_pids()
    commands = [["true"], [SH, "-c", "exit 3"], ["sleep", "30"], ["sleep", "30"], ["true"]]
    seen = []
    with pytest.raises(pyproc.CalledProcessError) as info:
        for r in pyproc.run_many(commands, jobs=4, capture=True, check=True):
            seen.append(r.args)
    assert info.value.returncode == 3 and info.value.cmd == commands[1]
    assert seen in ([], [commands[0]])  # the first job's result, when it was ready before the failure
    assert settle_children(before) == set()
    with pytest.raises(pyproc.TimeoutExpired):
        list(pyproc.run_many([["sleep", "30"], ["sleep", "30"]], jobs=2, check=True, timeout=0.2))
    assert settle_children(before) == set()


@pytest.mark.parametrize("ordered", [True, False])
def test_check_raises_at_once_without_waiting_for_an_earlier_slow_job(ordered: bool) -> None:
    # The slow first job is killed: waiting 30 s for it would only delay the error.
    before = child_pids()
    started = time.monotonic()
    with pytest.raises(FileNotFoundError):
        list(pyproc.run_many([["sleep", "30"], ["/nonexistent"]], jobs=2, check=True, ordered=ordered))
    with pytest.raises(pyproc.CalledProcessError):
        list(pyproc.run_many([["sleep", "30"], ["false"]], jobs=2, check=True, ordered=ordered))
    assert time.monotonic() - started < 20
    assert settle_children(before) == set()


def test_fail_fast_starts_nothing_after_a_failure_and_lets_the_running_finish(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    commands: list[Any] = [[SH, "-c", "sleep 0.5; echo slow"], ["false"]]
    commands += [[SH, "-c", f"echo {i} >> {marker}"] for i in range(20)]
    results = list(pyproc.run_many(commands, jobs=2, fail_fast=True, capture=True))
    assert [r.args for r in results[:2]] == commands[:2]
    assert results[0].stdout == b"slow\n" and results[1].returncode == 1
    # Jobs already queued or running when the failure came may have started; nothing after them.
    assert len(results) <= 2 + 2
    started = len(marker.read_text().splitlines()) if marker.exists() else 0
    assert started == len(results) - 2


# ---- every way out leaves nothing behind ------------------------------------------------------------------


def _sleepers(n: int = 100) -> Iterator[list[str]]:
    for _ in range(n):
        yield ["sleep", "30"]


@pytest.mark.parametrize("ordered", [True, False])
def test_exception_in_the_consumer_kills_and_reaps_everything(ordered: bool) -> None:
    with no_leaks_strict("exception in the loop"):
        commands = [[SH, "-c", "echo hi"], *_sleepers(10)]
        with pytest.raises(ZeroDivisionError):
            for _ in pyproc.run_many(commands, jobs=4, capture=True, ordered=ordered):
                1 / 0  # noqa: B018


def test_keyboard_interrupt_in_the_consumer_leaves_no_child_zombie_or_fd() -> None:
    with no_leaks_strict("KeyboardInterrupt in the loop"), pytest.raises(KeyboardInterrupt):
        for _ in pyproc.run_many([["true"], *_sleepers()], jobs=3, capture=True):
            raise KeyboardInterrupt


def test_sigint_to_the_process_while_waiting_leaves_no_child_zombie_or_fd() -> None:
    # The main thread is inside the C loop (GIL released, in epoll_wait) when SIGINT comes: Python's handler runs,
    # KeyboardInterrupt propagates, and the pool is closed on the way out.
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    with no_leaks_strict("SIGINT"), pytest.raises(KeyboardInterrupt):
        timer.start()
        try:
            for _ in pyproc.run_many(_sleepers(), jobs=3, capture=True, timeout=60):
                pass
        finally:
            timer.join()


def test_breaking_out_early_closing_and_collecting_the_iterator() -> None:
    with no_leaks_strict("break"):
        for r in pyproc.run_many([["true"], *_sleepers()], jobs=3, capture=True):
            assert r.returncode == 0
            break
        gc.collect()
    with no_leaks_strict("close"):
        results = pyproc.run_many([["true"], *_sleepers()], jobs=3)
        next(results)
        results.close()  # type: ignore[attr-defined]
    with no_leaks_strict("garbage collected"):
        results = pyproc.run_many([["true"], *_sleepers()], jobs=3)
        next(results)
        del results
        gc.collect()
    with no_leaks_strict("never started"):
        results = pyproc.run_many(_sleepers(), jobs=3)
        del results


def test_a_failing_command_generator_kills_what_runs() -> None:
    def commands() -> Iterator[list[str]]:
        yield ["sleep", "30"]
        yield ["true"]
        raise RuntimeError("the producer broke")

    with no_leaks_strict("producer"), pytest.raises(RuntimeError, match="the producer broke"):
        list(pyproc.run_many(commands(), jobs=2))


# ---- lazy reading, bounded memory -------------------------------------------------------------------------


def test_100k_jobs_from_a_generator_are_read_lazily(minimal_exe: str) -> None:
    jobs = 2
    read = 0

    def commands() -> Iterator[list[str]]:
        nonlocal read
        for _ in range(100_000):
            read += 1
            yield [minimal_exe]

    yielded = worst = 0
    rss_after_first = 0
    for r in pyproc.run_many(commands(), jobs=jobs):
        assert r.returncode == 0
        yielded += 1
        worst = max(worst, read - yielded)
        if yielded == 1000:
            rss_after_first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert yielded == 100_000
    assert worst <= read_ahead(jobs), f"read {worst} commands ahead of the results"
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_after_first
    assert grown_kib < 50 << 10, f"peak RSS grew by {grown_kib} KiB over 99k jobs"


def test_ordered_results_wait_for_a_slow_one_without_reading_on_forever() -> None:
    read = 0

    def commands() -> Iterator[list[str]]:
        nonlocal read
        yield [SH, "-c", "sleep 1"]
        for _ in range(1000):
            read += 1
            yield ["true"]

    results = pyproc.run_many(commands(), jobs=2)
    first = next(results)  # only after the slow one is done
    assert first.returncode == 0
    assert read <= read_ahead(2)
    assert sum(1 for _ in results) == 1000


# ---- per-job options, bad input ------------------------------------------------------------------------------


def test_per_job_input_cwd_env_and_shared_options(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    jobs: list[Any] = [
        pyproc.Job(["cat"], input=b"job input"),
        [SH, "-c", "pwd; echo $V"],
        pyproc.Job([SH, "-c", "pwd; echo $V"], cwd=tmp_path / "sub", env={"V": "own", "PATH": os.defpath}),
        [b"/bin/sh", b"-c", b"cat"],  # bytes: the general conversion
        pyproc.Job(["cat"]),  # the shared input
    ]
    results = list(pyproc.run_many(jobs, capture=True, input=b"shared", cwd=tmp_path, env={"V": "all"}))
    assert [r.stdout for r in results] == [
        b"job input", f"{tmp_path}\nall\n".encode(), f"{tmp_path / 'sub'}\nown\n".encode(), b"shared", b"shared"]
    assert results[2].args == jobs[2].argv


def test_job_pickles_with_its_options(tmp_path: Path) -> None:
    import pickle

    job = pyproc.Job([SH, "-c", "pwd; echo $V; cat"], input=bytearray(b"in"), cwd=tmp_path, env={"V": "own"},
                     timeout=5)
    copy = pickle.loads(pickle.dumps(job))
    assert (copy.argv, copy.cwd, copy.env, copy.timeout) == (job.argv, job.cwd, job.env, job.timeout)
    assert copy.input is not None and bytes(copy.input) == b"in"
    assert repr(copy) == repr(job)
    (result,) = pyproc.run_many([copy], capture=True)
    assert result.stdout == f"{tmp_path}\nown\nin".encode()
    assert pickle.loads(pickle.dumps(pyproc.Job(["true"]))).input is None


def test_spawn_options_and_a_program_found_on_path(tmp_path: Path) -> None:
    results = list(pyproc.run_many([[SH, "-c", "umask"], ["sh", "-c", "umask; echo $0"]], capture=True,
                                   umask=0o027))
    assert [r.stdout for r in results] == [b"0027\n", b"0027\nsh\n"]
    results = list(pyproc.run_many([["anything", "-c", "echo $0"]], capture=True, executable="/bin/sh"))
    assert results[0].stdout == b"anything\n"
    with open(os.devnull) as extra:
        fd = extra.fileno()
        results = list(pyproc.run_many([[SH, "-c", f"test -e /proc/self/fd/{fd} && echo kept"]], capture=True,
                                       pass_fds=[fd]))
    assert results[0].stdout == b"kept\n"


@pytest.mark.parametrize("engine", pyproc.ENGINES)
def test_every_engine_with_pipes_added_to_its_own_fd_plan(engine: str) -> None:
    # stdin from /dev/null (the request's own fd plan) and the pool's pipes for stdout and stderr, merged.
    commands: list[Any] = [[SH, "-c", "echo o; echo e >&2; cat"], ["/nonexistent"], pyproc.Job(["cat"])]
    results = list(pyproc.run_many(commands, capture=True, engine=engine, stdin=pyproc.DEVNULL))
    expected = [(0, b"o\n", b"e\n"), (127, b"", b""), (0, b"", b"")]
    assert [(r.returncode, r.stdout, r.stderr) for r in results] == expected
    assert isinstance(results[1].error, FileNotFoundError)
    results = list(pyproc.run_many([pyproc.Job(["cat"], input=b"in")], capture=True, engine=engine))
    assert results[0].stdout == b"in"


def test_job_checks_its_options() -> None:
    with pytest.raises(TypeError, match="timeout"):
        pyproc.Job(["true"], timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        pyproc.Job(["true"], timeout=-1)
    with pytest.raises(TypeError, match="input"):
        pyproc.Job(["true"], input="text")  # type: ignore[arg-type]
    assert "timeout=2" in repr(pyproc.Job(["true"], timeout=2, input=b"ab"))


@pytest.mark.parametrize(("bad", "error", "message"), [
    (5, TypeError, "command 3: argv must be a sequence"),
    ("true", TypeError, "command 3: argv must be a sequence"),
    ([], ValueError, "command 3: argv is empty"),
    (["true", "a\0b"], ValueError, "command 3: .*NUL"),
    (pyproc.Job(["true"], cwd=5), TypeError, "command 3: cwd"),
    (pyproc.Job(["true"], env={"A=B": "1"}), ValueError, "command 3: illegal environment variable"),
])
def test_bad_command_raises_at_that_job_and_kills_what_runs(bad: Any, error: type, message: str) -> None:
    before = child_pids()
    commands = [["sleep", "30"], ["sleep", "30"], ["true"], bad, ["true"]]
    seen = []
    with no_leaks_strict("bad command"), pytest.raises(error, match=message):
        for r in pyproc.run_many(commands, jobs=3):
            seen.append(r)
    assert seen == []
    assert settle_children(before) == set()


def test_job_input_conflicts_with_a_shared_stdin() -> None:
    with pytest.raises(ValueError, match=r"command 0: Job\(input="):
        list(pyproc.run_many([pyproc.Job(["cat"], input=b"x")], stdin=pyproc.DEVNULL))


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"jobs": 0}, ValueError),
    ({"jobs": "2"}, TypeError),
    ({"jobs": True}, TypeError),
    ({"timeout": -1}, ValueError),
    ({"timeout": "1"}, TypeError),
    ({"input": "text"}, TypeError),
    ({"input": b"x", "stdin": pyproc.DEVNULL}, ValueError),
    ({"capture": True, "stdout": pyproc.DEVNULL}, ValueError),
    ({"capture": "yes"}, TypeError),
    ({"check": None}, TypeError),
    ({"umask": "022"}, TypeError),
    ({"engine": "nope"}, ValueError),
    ({"no_such_option": 1}, TypeError),
    ({"stdout": 12345}, OSError),
])
def test_bad_options_raise_at_the_call_before_any_child(kwargs: dict[str, Any], error: type) -> None:
    before = child_pids()
    with pytest.raises(error):
        pyproc.run_many([["true"]], **kwargs)
    assert child_pids() == before


def test_commands_must_be_iterable() -> None:
    with pytest.raises(TypeError):
        pyproc.run_many(5)  # type: ignore[arg-type]


# ---- threads, signals, the pool's own fds ---------------------------------------------------------------------


def test_run_many_under_8_threads_at_once(minimal_exe: str) -> None:
    errors: list[BaseException] = []
    counts = [0] * 8

    def worker(k: int) -> None:
        try:
            commands = [[SH, "-c", f"echo {k}-{i}"] if i % 10 == 0 else [minimal_exe] for i in range(150)]
            for i, r in enumerate(pyproc.run_many(commands, jobs=2, capture=True)):
                assert r.returncode == 0
                assert r.stdout == (f"{k}-{i}\n".encode() if i % 10 == 0 else b"")
                counts[k] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert counts == [150] * 8


def test_fds_of_other_threads_are_never_touched(minimal_exe: str) -> None:
    # Another thread opens, uses and closes pipes all the time: a pool that closed an fd twice, or one it no longer
    # owns, would close this thread's pipe under it (EBADF, or a wrong fd read).
    stop = threading.Event()
    failures: list[str] = []

    def churn() -> None:
        while not stop.is_set():
            r, w = os.pipe()
            try:
                os.write(w, b"ping")
                if os.read(r, 4) != b"ping":
                    failures.append("a pipe read someone else's bytes")
            except OSError as exc:
                failures.append(repr(exc))
            finally:
                os.close(r)
                os.close(w)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        results = list(pyproc.run_many([[minimal_exe]] * 2000, jobs=2, capture=True))
    finally:
        stop.set()
        thread.join()
    assert not failures, failures[:3]
    assert all(r.returncode == 0 for r in results)


def test_a_stdin_given_by_the_caller_keeps_its_flags() -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"shared stdin\n")
        os.close(w)
        w = -1
        flags = fcntl.fcntl(r, fcntl.F_GETFL)
        results = list(pyproc.run_many([["cat"]], stdin=r, capture=True))
        assert results[0].stdout == b"shared stdin\n"
        assert fcntl.fcntl(r, fcntl.F_GETFL) == flags
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_sigchld_ignored_children_reaped_by_the_kernel_do_not_break_the_pool() -> None:
    # With SIGCHLD ignored the kernel reaps children itself and wait4 gives ECHILD: the jobs still end, with no
    # status to give (returncode 0, as Process does).
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        results = list(pyproc.run_many([["echo", "a"], ["true"], [SH, "-c", "exit 3"]] * 5, jobs=3, capture=True))
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert len(results) == 15
    for r in results:
        assert r.error is None and r.returncode in (0, 3)
        assert r.returncode == 0 or r.status is not None
    assert [r.stdout for r in results[:3]] == [b"a\n", b"", b""]


def test_signals_do_not_surface_as_eintr() -> None:
    hits = []
    previous = signal.signal(signal.SIGALRM, lambda *_: hits.append(1))
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    try:
        results = list(pyproc.run_many([[SH, "-c", "sleep 0.05; echo x"]] * 20, jobs=4, capture=True,
                                       input=b"data"))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
    assert hits
    assert [r.stdout for r in results] == [b"x\n"] * 20


# ---- progress -----------------------------------------------------------------------------------------------


def test_progress_bar_with_a_total_and_no_thread_left(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    threads = threading.active_count()
    results = list(pyproc.run_many([["true"]] * 7, progress=True))
    assert len(results) == 7
    err = capsys.readouterr().err
    assert "7/7" in err
    # tqdm's monitor thread would stay for the life of the process and take the signals other threads block.
    assert threading.active_count() == threads


def test_progress_without_tqdm_warns_and_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setattr(pyproc.pool, "_bar_class", None)  # (a bar class made by an earlier test)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = list(pyproc.run_many([["true"]] * 3, progress=True))
    assert len(results) == 3
    assert any(issubclass(w.category, RuntimeWarning) and "tqdm" in str(w.message) for w in caught)
