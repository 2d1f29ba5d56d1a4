"""Drives pyproc's C paths for .ci/valgrind.sh (run under valgrind memcheck, not collected by pytest).

Every engine, the fd plan (swaps, cycles, more than 16 actions, pass_fds), process state (cwd, env, umask,
rlimits, sigmask, session, group, pdeathsig, no_new_privs), the forced fallbacks, failures reported from the
child (missing program along PATH, bad cwd, a failing dup2), the child side alone (pyproc_exec_child after
os.fork), the waits (wait, wait with timeout, poll, wait_any, signals, the pidfd's holders) and run_many's job
pool.

Under valgrind the CLONE_VM engines become plain forks (valgrind cannot run a child in the parent's memory),
so a failure the child writes into the parent's memory is lost and the parent sees exit status 127 instead of
an OSError; and glibc's posix_spawn does the same.  The driver accepts either there: its purpose is to run the
C code under memcheck, whose verdict is what counts.  It exits nonzero if a path it expects to work does not.

Usage: python tests/valgrind_driver.py [--rounds N]
"""

from __future__ import annotations

import argparse
import errno
import os
import resource
import signal
import sys
import tempfile
import threading

import pyproc
import pyproc._pump
from pyproc._lib import ffi, lib

EXACT_ENGINES = (
    "fork",
)  # engines whose failures reach the parent as under a real kernel, even under valgrind


def check(condition: bool, what: str) -> None:
    if not condition:
        print(f"valgrind_driver: FAILED: {what}", file=sys.stderr)
        sys.exit(3)


def expect_failure(engine: str, exc_type: type[BaseException], what: str, **kwargs: object) -> None:
    argv = kwargs.pop("argv", ["true"])
    try:
        proc = pyproc.spawn(argv, engine=engine, **kwargs)  # type: ignore[arg-type]
    except exc_type:
        return
    code = proc.wait()
    check(
        engine not in EXACT_ENGINES and code == 127,
        f"{what} with engine {engine}: started, returncode {code}",
    )


def read_all(proc: pyproc.Process) -> bytes:
    assert proc.stdout is not None
    with proc.stdout:
        return proc.stdout.read()


def engine_round(engine: str, scratch: str) -> None:
    full = engine != "posix_spawn"
    # plain, pipes, stderr to stdout, env, cwd
    code = pyproc.spawn(["true"], engine=engine).wait()
    check(code == 0 or engine not in EXACT_ENGINES, f"true ({engine}): {code}")
    proc = pyproc.spawn(
        ["sh", "-c", "echo out; echo err >&2; pwd; echo $PYPROC_X"],
        engine=engine,
        stdout=pyproc.PIPE,
        stderr=pyproc.STDOUT,
        stdin=pyproc.DEVNULL,
        cwd=scratch,
        env={"PYPROC_X": "y", "PATH": os.defpath},
    )
    out = read_all(proc)
    code = proc.wait()
    if engine in EXACT_ENGINES:
        check(code == 0 and out == f"out\nerr\n{scratch}\ny\n".encode(), f"sh ({engine}): {code} {out!r}")
    # an fd plan with a swap, a cycle and more than 16 actions (the malloc'd scratch), plus pass_fds
    pipes = [os.pipe() for _ in range(10)]
    fds = [fd for pair in pipes for fd in pair]
    try:
        plan = {3: fds[4], 4: fds[3], 5: fds[6], 6: fds[7], 7: fds[5]}
        plan.update({20 + i: fd for i, fd in enumerate(fds)})
        pass_fds = [fd for fd in fds if fd not in plan][:2]
        proc = pyproc.spawn(["true"], engine=engine, fds=plan, pass_fds=pass_fds)
        check(proc.wait() == 0 or engine not in EXACT_ENGINES, f"fd plan ({engine})")
        for close_fds in (True, False):
            proc = pyproc.spawn(["true"], engine=engine, fds={0: fds[0], 1: fds[1]}, close_fds=close_fds)
            proc.wait()
    finally:
        for fd in fds:
            os.close(fd)
    # process state
    options: dict[str, object] = {"sigmask": [signal.SIGUSR1, signal.SIGTERM], "restore_signals": False}
    if full:
        options.update(
            umask=0o027,
            rlimits={resource.RLIMIT_CORE: (0, 0), resource.RLIMIT_FSIZE: 1 << 30},
            pdeathsig=signal.SIGTERM,
            no_new_privs=True,
        )
    for session in ({"new_session": True}, {"process_group": 0}):
        proc = pyproc.spawn(["true"], engine=engine, **session, **options)  # type: ignore[arg-type]
        proc.wait()
    # failures the child reports
    expect_failure(
        engine,
        FileNotFoundError,
        "missing program",
        argv=["pyproc-vg-no-such-program"],
        env={"PATH": f"{scratch}:/nonexistent:{os.defpath}"},
    )
    expect_failure(engine, FileNotFoundError, "bad cwd", cwd="/nonexistent-pyproc-vg")
    expect_failure(engine, PermissionError, "a directory as program", argv=[scratch])
    if full:
        expect_failure(
            engine,
            OSError,
            "dup2 beyond RLIMIT_NOFILE",
            fds={resource.getrlimit(resource.RLIMIT_NOFILE)[0] + 10: 0},
        )
        expect_failure(engine, OSError, "unknown rlimit", rlimits={999: 1})
    # waits (strict only where the engine works as on a real kernel under valgrind, see the module's doc)
    exact = engine in EXACT_ENGINES
    proc = pyproc.spawn(["sleep", "5"], engine=engine)
    try:
        proc.wait(timeout=0.01)
        check(not exact, f"wait(timeout) on sleep 5 returned ({engine})")
    except pyproc.TimeoutExpired:
        pass
    check(proc.poll() is None or not exact, f"poll of a running child ({engine})")
    proc.terminate()
    code = proc.wait()
    check(code == -signal.SIGTERM or not exact, f"terminate ({engine}): {code}")
    procs = [pyproc.spawn(["sleep", "5"], engine=engine), pyproc.spawn(["true"], engine=engine)]
    first = pyproc.wait_any(procs, timeout=20)
    check(first is procs[1] or not exact, f"wait_any ({engine})")
    for proc in procs:
        proc.kill()
        proc.wait()
        check(proc.rusage is not None and proc.status is not None, f"status/rusage ({engine})")


def fallback_round() -> None:
    """The clone engine with each forced fallback (clone(2), no CLONE_PIDFD, no close_range, no
    /proc/self/fd)."""
    masks = [
        lib.PYPROC_FORCE_NO_CLONE3,
        lib.PYPROC_FORCE_NO_CLONE_PIDFD,
        lib.PYPROC_FORCE_NO_CLOSE_RANGE,
        lib.PYPROC_FORCE_NO_CLOSE_RANGE | lib.PYPROC_FORCE_NO_PROC_FD,
    ]
    before = lib.pyproc_get_forced_fallbacks()
    try:
        for mask in masks:
            lib.pyproc_set_forced_fallbacks(mask)
            r, w = os.pipe()
            try:
                proc = pyproc.spawn(["true"], engine="clone", fds={5: w}, pass_fds=[r])
                check(proc.wait() == 0, f"fallback mask {mask}")
            finally:
                os.close(r)
                os.close(w)
    finally:
        lib.pyproc_set_forced_fallbacks(before)


def exec_child_round() -> None:
    """pyproc_exec_child after a fork done here (pyproc.subprocess's preexec_fn path) and the error record."""
    spawn_module = sys.modules["pyproc.spawn"]
    for argv, want_error in ((["true"], False), (["pyproc-vg-no-such-program"], True)):
        request = spawn_module.prepare(argv)
        r, w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            lib.pyproc_exec_child(request.c, w, parent)
            os._exit(126)  # not reached
        os.close(w)
        got = ffi.new("int *")
        res = ffi.new("struct pyproc_spawn_result *")
        err = lib.pyproc_read_child_error(r, got, res)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        check(err == 0 and bool(got[0]) == want_error, f"exec_child {argv}: err {err} got {got[0]}")
        if want_error:
            check(
                res.fail_errno != 0 and os.waitstatus_to_exitcode(status) == 127, f"exec_child {argv} record"
            )


def direct_round() -> None:
    """wait.c's poll paths called directly on pipes (valgrind has no pidfd_open, so Process objects get
    none)."""
    r, w = os.pipe()
    try:
        exited = ffi.new("int *")
        remaining = ffi.new("int64_t *")
        check(
            lib.pyproc_wait_pidfd(r, 1_000_000, exited, remaining) == 0 and not exited[0],
            "wait_pidfd timeout",
        )
        os.write(w, b"x")
        check(lib.pyproc_wait_pidfd(r, -1, exited, remaining) == 0 and exited[0], "wait_pidfd ready")
        r2, w2 = os.pipe()
        try:
            fds = ffi.new("int[]", [r2, r2, r])
            index = ffi.new("int *")
            check(
                lib.pyproc_wait_any(fds, 3, 5_000_000_000, index, remaining) == 0 and index[0] == 2,
                "wait_any",
            )
            check(
                lib.pyproc_wait_any(fds, 2, 1_000_000, index, remaining) == 0 and index[0] == -1,
                "wait_any timeout",
            )
            check(lib.pyproc_wait_any(fds, 0, 0, index, remaining) != 0, "wait_any of nothing")
        finally:
            os.close(r2)
            os.close(w2)
        bad = ffi.new("int[]", [w + 1000])
        check(lib.pyproc_wait_any(bad, 1, 0, index, remaining) != 0, "wait_any of a closed fd")
        pidfd = ffi.new("int *")
        lib.pyproc_pidfd_open(os.getpid(), pidfd)
        if pidfd[0] >= 0:
            os.close(pidfd[0])
    finally:
        os.close(r)
        os.close(w)


def pidfd_round() -> None:
    """A child's pidfd shared between threads (wait.c): holds, the reap's retirement, the last holder's close; a
    signal without a pidfd; the pump's flags put back after a timeout; a child stack for a forced page size."""
    proc = pyproc.spawn(["sleep", "5"], engine="fork")
    child = ffi.new("struct pyproc_child *")
    stand_in, other_end = os.pipe()  # stands for the pidfd: valgrind gives none
    try:
        check(lib.pyproc_child_hold_pidfd(child) == 0, "hold")
        check(lib.pyproc_child_send_signal(child, proc.pid, -1, signal.SIGKILL) == 0, "signal without a pidfd")
        check(lib.pyproc_child_reap(child, proc.pid, stand_in, 0) == 0 and child.reaped, "reap")
        check(lib.pyproc_child_hold_pidfd(child) == errno.ESRCH, "no hold after the reap")
        os.fstat(stand_in)  # still open: held
        lib.pyproc_child_release_pidfd(child, stand_in)  # the last holder closes it
        try:
            os.fstat(stand_in)
            check(False, "the last holder closes a retired pidfd")
        except OSError:
            pass
    finally:
        os.close(other_end)
    check(proc.wait() == 0 and proc.status is None, "a child reaped behind the Process's back")
    late = pyproc.spawn(["sh", "-c", "sleep 0.5; echo late"], stdout=pyproc.PIPE, engine="fork")
    try:
        late.communicate(timeout=0.05)
        check(False, "communicate timeout")
    except pyproc.TimeoutExpired:
        pass
    assert late.stdout is not None
    check(os.get_blocking(late.stdout.fileno()), "the pump put the flags back")
    check(late.communicate(timeout=30) == (b"late\n", None), "communicate after a timeout")
    codes: list[int] = []
    lib.pyproc_set_forced_page_size(64 << 10)
    try:
        thread = threading.Thread(target=lambda: codes.append(pyproc.spawn(["true"], engine="clone").wait()))
        thread.start()
        thread.join()
    finally:
        lib.pyproc_set_forced_page_size(0)
    check(codes == [0], f"clone with 64 KiB pages: {codes}")


def signals_round() -> None:
    """sigpipe.c (issue 6) when it is there: the handler's records, read back; a flood of one signal."""
    if not hasattr(pyproc, "SignalPipe"):
        return
    with pyproc.SignalPipe([signal.SIGUSR1, signal.SIGUSR2]) as pipe:
        for _ in range(50):
            os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR2)
        events = []
        for _ in range(100):
            events += pipe.wait(timeout=5)
            if any(e.signo == signal.SIGUSR2 for e in events):
                break
        check(any(e.signo == signal.SIGUSR2 for e in events), f"SignalPipe events {events[:3]}")
        pipe.counts()


def cow_round() -> None:
    """cow.c (issue 4) when it is there: fork timing and copy-on-write on a small region."""
    cow = getattr(pyproc, "cow", None) or sys.modules.get("pyproc.cow")
    if cow is None:
        try:
            import pyproc.cow as cow
        except ImportError:
            return
    result = cow.measure_fork(4 << 20, state="dirty", engines=("fork_exit", "clone", "fork"), repeat=2)
    check(result.times_ns["clone"].min > 0, "measure_fork")
    for state in ("clean", "fragmented"):
        cow.measure_fork(1 << 20, state=state, engines=("fork_exit",), repeat=1, warmup=0)
    cow_result = cow.measure_cow(2 << 20, repeat=1)
    check(cow_result.n_pages == (2 << 20) // 4096, "measure_cow")


def io_round() -> None:
    """io.c (issue 3) when it is there: the pump both ways, limits, timeouts, read_full/write_full, pipelines."""
    if not hasattr(pyproc, "run"):
        return
    data = bytes(range(256)) * 1024  # 256 KiB: more than a pipe holds, both ways at once
    for engine in ("fork", "clone"):
        result = pyproc.run(["cat"], input=data, capture=True, engine=engine)
        check(engine != "fork" or (result.returncode == 0 and result.stdout == data), f"run cat ({engine})")
    # Chunk mode past one chunk, then the copy out by two threads (16 MiB and more), then map mode (the crossover
    # lowered: the switch).
    medium = bytes(range(256)) * (12 << 10)  # 3 MiB
    check(pyproc.run(["cat"], input=medium, capture=True).stdout == medium, "run cat 3 MiB (chunks)")
    large = bytes(range(256)) * (65 << 12)  # 16.25 MiB
    check(pyproc.run(["cat"], input=large, capture=True).stdout == large, "run cat 16 MiB (chunks, two copiers)")
    del large
    saved = pyproc._pump.chunk_max
    pyproc._pump.chunk_max = (1 << 20) + 123
    try:
        check(pyproc.run(["cat"], input=medium, capture=True).stdout == medium, "run cat 3 MiB (map mode)")
    finally:
        pyproc._pump.chunk_max = saved
    result = pyproc.run(["sh", "-c", "echo out; echo err >&2"], capture=True, engine="fork", encoding="utf-8")
    check(result.stdout == "out\n" and result.stderr == "err\n", f"run text {result.stdout!r}")
    try:
        pyproc.run(["head", "-c", "100000", "/dev/zero"], capture=True, max_output=1000, engine="fork")
        check(False, "max_output")
    except pyproc.OutputLimitExceeded as exc:
        check(len(exc.output or b"") <= 1000, "max_output partial output")
    try:
        pyproc.run(["sh", "-c", "echo partial; exec sleep 5"], capture=True, timeout=0.5, engine="fork")
        check(False, "timeout")
    except pyproc.TimeoutExpired:
        pass
    r, w = os.pipe()
    try:
        check(pyproc.write_full(w, b"x" * 1000) == 1000, "write_full")
        check(pyproc.read_full(r, 1000) == b"x" * 1000, "read_full")
    finally:
        os.close(r)
        os.close(w)
    piped = pyproc.pipeline([["cat"], ["tr", "a", "b"], ["cat"]], input=b"aaa" * 10000, capture=True,
                            engine="fork")
    check(piped.returncode == 0 and piped.stdout == b"bbb" * 10000, f"pipeline {piped.returncodes}")
    with pyproc.spawn(["cat"], stdin=pyproc.PIPE, stdout=pyproc.PIPE, engine="fork") as proc:
        out, _ = proc.communicate(data, timeout=30)
        check(out == data, "communicate")


def pool_round() -> None:
    """pool.c (issue 15): run_many's pumps in one epoll loop, inputs, a start failure, a timeout, map mode, and
    closing with children running (kill, reap, free)."""
    data = bytes(range(256)) * 1024
    commands: list[object] = [pyproc.Job(["cat"], input=data), ["sh", "-c", "echo out; echo err >&2"],
                              ["/nonexistent/program"], pyproc.Job(["sleep", "5"], timeout=0.3)]
    results = list(pyproc.run_many(commands * 2, jobs=3, capture=True))
    check(all(r.stdout == data for r in results[0::4]), "run_many cat")
    check(all((r.stdout, r.stderr) == (b"out\n", b"err\n") for r in results[1::4]), "run_many sh")
    check(all(r.returncode == 127 for r in results[2::4]), "run_many missing program")
    check(all(r.timed_out for r in results[3::4]), "run_many timeout")
    medium = bytes(range(256)) * (12 << 10)
    saved = pyproc._pump.chunk_max
    pyproc._pump.chunk_max = (1 << 20) + 123
    try:
        results = list(pyproc.run_many([pyproc.Job(["cat"], input=medium)] * 2, capture=True, engine="fork"))
        check(all(r.stdout == medium for r in results), "run_many cat 3 MiB (map mode)")
    finally:
        pyproc._pump.chunk_max = saved
    running = pyproc.run_many([["true"]] + [["sleep", "5"]] * 4, jobs=3, capture=True, ordered=False)
    first = next(running)
    check(first.returncode == 0, "run_many early close")
    running.close()  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory(prefix="pyproc-vg-") as scratch:
        for _ in range(rounds):
            for engine in pyproc.ENGINES:
                engine_round(engine, scratch)
            fallback_round()
            exec_child_round()
            direct_round()
            pidfd_round()
            signals_round()
            io_round()
            pool_round()
            cow_round()
    print(f"valgrind_driver: ok ({rounds} round(s), engines {', '.join(pyproc.ENGINES)})")


if __name__ == "__main__":
    main()
