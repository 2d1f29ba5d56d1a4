"""pyproc.Process and wait_any: pidfd waits with timeouts, status, rusage, signals, collection."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import threading
import time
import warnings

import pytest
from conftest import child_pids, settle_children

import pyproc


def test_pidfd_and_wait_timeout(no_leaks: None) -> None:
    proc = pyproc.spawn(["sleep", "30"])
    assert isinstance(proc.pidfd, int) and proc.pidfd >= 0
    assert not os.get_inheritable(proc.pidfd)
    for exc_type in (pyproc.TimeoutExpired, subprocess.TimeoutExpired, TimeoutError):
        with pytest.raises(exc_type) as info:
            proc.wait(timeout=0.05)
        assert info.value.timeout == 0.05
        assert info.value.cmd == ["sleep", "30"]
    assert proc.poll() is None and proc.returncode is None
    proc.kill()
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert proc.pidfd is None  # closed once reaped
    assert proc.status == pyproc.Status(exited=False, exit_code=None, signal=signal.SIGKILL, core_dumped=False)


def test_wait_timeout_zero_on_finished_child(no_leaks: None) -> None:
    proc = pyproc.spawn(["true"])
    assert proc.wait(timeout=10) == 0
    assert proc.wait(timeout=0) == 0  # already reaped: no error, same answer


def test_status_and_rusage(no_leaks: None) -> None:
    proc = pyproc.spawn(["sh", "-c", "exit 3"])
    assert proc.rusage is None and proc.status is None
    assert proc.wait() == 3
    assert proc.status == pyproc.Status(exited=True, exit_code=3, signal=None, core_dumped=False)
    assert proc.status.returncode == 3
    # A child that burns CPU shows it in its rusage, which comes from wait4 with the status.
    busy = pyproc.spawn(["sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
    busy.wait()
    assert busy.rusage is not None
    assert busy.rusage.utime + busy.rusage.stime > 0
    assert busy.rusage.maxrss_kib > 0
    assert busy.rusage.minflt > 0


def test_terminate_send_signal_and_after_reap(no_leaks: None) -> None:
    proc = pyproc.spawn(["sleep", "30"])
    proc.terminate()
    assert proc.wait() == -signal.SIGTERM
    proc.send_signal(signal.SIGKILL)  # reaped already: a no-op, never a signal to a recycled pid
    proc.kill()
    stopped = pyproc.spawn(["sleep", "30"])
    stopped.send_signal(signal.SIGINT)
    assert stopped.wait() == -signal.SIGINT


def test_core_dump_flag(no_leaks: None) -> None:
    proc = pyproc.spawn(["sh", "-c", "kill -QUIT $$"], rlimits={__import__("resource").RLIMIT_CORE: 0})
    assert proc.wait() == -signal.SIGQUIT
    assert proc.status is not None and proc.status.signal == signal.SIGQUIT and not proc.status.exited


def test_context_manager_closes_pipes_and_waits(no_leaks: None) -> None:
    with pyproc.spawn(["sh", "-c", "cat >/dev/null"], stdin=pyproc.PIPE, stdout=pyproc.PIPE) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"x" * 10)
    assert proc.returncode == 0
    assert proc.stdin.closed and proc.stdout.closed


def test_context_manager_child_closed_stdin_early(no_leaks: None) -> None:
    # The child exits without reading: closing our buffered stdin must not raise BrokenPipeError.
    with pyproc.spawn(["true"], stdin=pyproc.PIPE) as proc:
        assert proc.stdin is not None
        proc.wait()
        proc.stdin.write(b"data that nobody reads")
    assert proc.returncode == 0


def test_wait_any_returns_first_and_reaps_only_it(no_leaks: None) -> None:
    slow = [pyproc.spawn(["sleep", "30"]) for _ in range(2)]
    quick = pyproc.spawn(["sh", "-c", "exit 9"])
    first = pyproc.wait_any([*slow, quick], timeout=20)
    assert first is quick and quick.returncode == 9
    assert all(proc.poll() is None for proc in slow)
    with pytest.raises(pyproc.TimeoutExpired):
        pyproc.wait_any(slow, timeout=0.05)
    for proc in slow:
        proc.kill()
    assert {pyproc.wait_any(slow).returncode, pyproc.wait_any(slow).returncode} == {-signal.SIGKILL}
    for proc in slow:
        proc.wait()


def test_wait_any_never_reaps_other_children(no_leaks: None) -> None:
    # A child started by other code (os.posix_spawn) exits first; wait_any on ours must not steal its status.
    other = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 5"], os.environ)
    ours = pyproc.spawn(["sh", "-c", "sleep 0.2; exit 6"])
    assert pyproc.wait_any([ours], timeout=20) is ours
    assert ours.returncode == 6
    pid, status = os.waitpid(other, 0)
    assert pid == other and os.waitstatus_to_exitcode(status) == 5


def test_wait_any_bad_input() -> None:
    with pytest.raises(ValueError):
        pyproc.wait_any([])
    with pytest.raises(TypeError):
        pyproc.wait_any([1234])  # type: ignore[list-item]


def test_collected_running_process_warns_and_is_reaped_later() -> None:
    children_before = child_pids()
    proc = pyproc.spawn(["sleep", "0.2"])
    pid = proc.pid
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del proc
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) and str(pid) in str(w.message) for w in caught)
    assert pid in child_pids()  # left running
    time.sleep(0.4)
    pyproc.spawn(["true"]).wait()  # the next spawn reaps what was abandoned and has finished
    assert settle_children(children_before) == set()


def test_collected_finished_process_is_reaped_silently() -> None:
    children_before = child_pids()
    proc = pyproc.spawn(["true"])
    time.sleep(0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del proc
        gc.collect()
    assert settle_children(children_before, timeout=0) == set()


def test_wait_releases_the_gil(no_leaks: None) -> None:
    counter = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            counter[0] += 1

    thread = threading.Thread(target=spin)
    thread.start()
    try:
        proc = pyproc.spawn(["sleep", "0.3"])
        before = counter[0]
        proc.wait()
        during = counter[0] - before
    finally:
        stop.set()
        thread.join()
    assert during > 1000  # the other thread kept running Python while we waited


def test_wait_from_two_threads(no_leaks: None) -> None:
    proc = pyproc.spawn(["sh", "-c", "sleep 0.2; exit 4"])
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(proc.wait())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert results == [4, 4]


def test_signal_during_wait_runs_handler_without_eintr(no_leaks: None) -> None:
    hits: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signo, frame: hits.append(signo))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
        proc = pyproc.spawn(["sleep", "0.3"])
        assert proc.wait() == 0
        proc = pyproc.spawn(["sleep", "0.3"])
        with pytest.raises(pyproc.TimeoutExpired):
            proc.wait(timeout=0.1)
        assert proc.wait(timeout=10) == 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert hits  # the handler ran while we were in C waiting, and no EINTR surfaced


def test_keyboard_interrupt_interrupts_wait(no_leaks: None) -> None:
    proc = pyproc.spawn(["sleep", "30"])
    timer = threading.Timer(0.1, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            proc.wait()
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()


def test_repr() -> None:
    proc = pyproc.spawn(["true"])
    proc.wait()
    assert f"pid={proc.pid}" in repr(proc) and "returncode=0" in repr(proc)


def _imported_modules(module: object) -> set[str]:
    """The pyproc modules a module imports (at any level: inside functions too), by their short names."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(module))  # type: ignore[arg-type]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names.add(node.module or "")
            names.update(alias.name for alias in node.names if not node.module)
    return names


def test_data_flows_one_way_process_and_pump_do_not_import_upwards() -> None:
    # The pump's Python side (pyproc._pump) is under Process, run() and run_many(); neither it nor process.py
    # may reach back into the modules built on them (an import circle: process.py used to import pyproc.io).
    import pyproc._pump
    import pyproc.process

    assert _imported_modules(pyproc._pump) <= {"_lib", "errors", "process"}  # process: for type hints only
    assert _imported_modules(pyproc.process) <= {"_lib", "_pump", "errors"}
