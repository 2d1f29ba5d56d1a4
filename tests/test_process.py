"""pyproc.Process and wait_any: pidfd waits with timeouts, status, rusage, signals, collection."""

from __future__ import annotations

import errno
import gc
import os
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from conftest import child_pids, settle_children

import pyproc
import pyproc.process
from pyproc._lib import ffi, lib


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


# ---- one Process, several threads: the pidfd is never used after the reap closed it (issue 14) ----------------


class _LibHook:
    """Stands in for a module's `lib`: once, in the calling thread, runs `hook` just before (or after) the first call
    to one of `names`, so that a test can put another thread's work at exactly that point of the call."""

    def __init__(self, names: set[str], hook: Callable[[], None], after: bool = False) -> None:
        self._names = names
        self._hook = hook
        self._after = after
        self.ran = False

    def __getattr__(self, name: str) -> Any:
        func = getattr(lib, name)
        if name not in self._names:
            return func

        def hooked(*args: Any) -> Any:
            if self.ran:
                return func(*args)
            self.ran = True
            if not self._after:
                self._hook()
                return func(*args)
            result = func(*args)
            self._hook()
            return result

        return hooked


def _in_another_thread(work: Callable[[], None]) -> None:
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()


def _spawn_onto_fd(number: int, argv: list[str]) -> pyproc.Process:
    """Spawns argv so that its pidfd is fd `number` when that number is free (every lower free fd is filled while
    the spawn runs): what the kernel does anyway when `number` is the lowest free fd, as after a close."""
    fillers = []
    while True:
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        if fd >= number:
            os.close(fd)
            break
        fillers.append(fd)
    try:
        return pyproc.spawn(argv)
    finally:
        for fd in fillers:
            os.close(fd)


def _kill_and_reap(proc: pyproc.Process, reused: list[pyproc.Process], number: int) -> Callable[[], None]:
    """Another thread's work: proc killed and reaped, then a new child whose pidfd takes proc's old number."""

    def work() -> None:
        os.kill(proc.pid, signal.SIGKILL)  # (not reaped yet: the pid is still proc's)
        assert proc.wait() == -signal.SIGKILL
        reused.append(_spawn_onto_fd(number, ["sleep", "30"]))

    return lambda: _in_another_thread(work)


def _end(proc: pyproc.Process) -> None:
    proc.kill()
    proc.wait()


def _race_a_reap(monkeypatch: pytest.MonkeyPatch,
                 names: set[str]) -> tuple[pyproc.Process, int, list[pyproc.Process], _LibHook]:
    """(proc, its pidfd's number, reused, hook): a running child, and pyproc.process's lib hooked so that just
    before the first call to one of `names` another thread kills and reaps it, then spawns the next child (into
    reused), whose pidfd takes the old number if it is free."""
    proc = pyproc.spawn(["sleep", "30"])
    number = proc.pidfd
    assert number is not None
    reused: list[pyproc.Process] = []
    hook = _LibHook(names, _kill_and_reap(proc, reused, number))
    monkeypatch.setattr(pyproc.process, "lib", hook)
    return proc, number, reused, hook


def test_signal_racing_a_reap_never_reaches_the_next_child(no_leaks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's forced interleaving: send_signal has read the pidfd's number; another thread reaps the child and
    spawns the next one, whose pidfd takes that number.  The signal must go nowhere, not to the new child."""
    proc, number, reused, hook = _race_a_reap(monkeypatch, {"pyproc_send_signal", "pyproc_child_send_signal"})
    proc.send_signal(signal.SIGTERM)  # a no-op: proc has been reaped
    monkeypatch.undo()
    assert hook.ran
    (other,) = reused
    try:
        assert other.pidfd == number  # the scenario: the new child's pidfd has the old one's number
        assert proc.returncode == -signal.SIGKILL
        with pytest.raises(pyproc.TimeoutExpired):
            other.wait(timeout=0.2)  # still running: SIGTERM did not reach it
    finally:
        _end(other)
    assert other.returncode == -signal.SIGKILL


def test_wait_timeout_racing_a_reap_never_waits_for_the_next_child(no_leaks: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """wait(timeout) has read the pidfd's number when another thread reaps the child and the next child's pidfd
    takes that number: the wait must end with the first child's returncode, not wait on the second child."""
    proc, number, reused, hook = _race_a_reap(monkeypatch, {"pyproc_wait_pidfd", "pyproc_child_wait_pidfd"})
    try:
        assert proc.wait(timeout=2) == -signal.SIGKILL
    finally:
        monkeypatch.undo()
        for other in reused:
            assert other.pidfd == number and other.poll() is None
            _end(other)
    assert hook.ran and reused


@pytest.mark.parametrize("when", ["before the hold", "while held"])
def test_wait_any_racing_a_reap_never_waits_for_the_next_child(no_leaks: None, monkeypatch: pytest.MonkeyPatch,
                                                               when: str) -> None:
    """wait_any has read the pidfds' numbers when another thread reaps one child and spawns the next: it returns the
    reaped child, and a pidfd it holds is not closed under its poll (the next child gets another number)."""
    names = {"pyproc_wait_any"} if when == "while held" else {"pyproc_wait_any", "pyproc_child_hold_pidfd"}
    proc, number, reused, hook = _race_a_reap(monkeypatch, names)
    try:
        assert pyproc.wait_any([proc], timeout=2) is proc
    finally:
        monkeypatch.undo()
        other_pidfds = [other.pidfd for other in reused]
        for other in reused:
            assert other.poll() is None
            _end(other)
    assert hook.ran and reused
    assert proc.returncode == -signal.SIGKILL and proc.pidfd is None
    # Polled after the reap: the number was free for the next child; held across it: it was not.
    assert (other_pidfds[0] == number) == (when == "before the hold")


def test_a_held_pidfd_stays_open_across_the_reap_until_released(no_leaks: None) -> None:
    proc = pyproc.spawn(["true"])
    number = proc.pidfd
    assert number is not None
    assert lib.pyproc_child_hold_pidfd(proc._c) == 0
    try:
        assert proc.wait() == 0 and proc.pidfd is None
        assert os.readlink(f"/proc/self/fd/{number}") == "anon_inode:[pidfd]"  # retired, not closed: still held
        assert lib.pyproc_child_hold_pidfd(proc._c) == errno.ESRCH  # no new holder once reaped
        assert lib.pyproc_child_send_signal(proc._c, proc.pid, number, signal.SIGKILL) == errno.ESRCH
        exited = ffi.new("int *")
        assert lib.pyproc_child_wait_pidfd(proc._c, number, 0, exited, ffi.NULL) == 0 and exited[0]
    finally:
        lib.pyproc_child_release_pidfd(proc._c, number)
    with pytest.raises(FileNotFoundError):
        os.readlink(f"/proc/self/fd/{number}")  # closed by its last holder


def test_wait_with_timeout_racing_poll_from_another_thread(no_leaks: None) -> None:
    """The issue's first interleaving, with real threads: the child has exited (not reaped); one thread waits with
    a timeout while another polls.  The poll's reap closed the pidfd under the wait (EBADF, 3% of the rounds)."""
    failures: list[BaseException] = []
    for _ in range(500):
        proc = pyproc.spawn(["true"])
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, still unreaped
        start = threading.Barrier(2)

        def wait(proc: pyproc.Process = proc, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                proc.wait(timeout=5)
            except BaseException as exc:  # collected, asserted on below
                failures.append(exc)

        def poll(proc: pyproc.Process = proc, start: threading.Barrier = start) -> None:
            start.wait()
            proc.poll()

        threads = [threading.Thread(target=wait), threading.Thread(target=poll)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert proc.returncode == 0 and proc.pidfd is None
    assert failures == []


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
