"""pyproc.io: read_full / write_full, run(), Process.communicate() and the C pump behind them."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import process_stats

import pyproc
import pyproc._pump
import pyproc.io

F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def _pipe_capacity() -> int:
    r, w = os.pipe()
    try:
        return int(fcntl.fcntl(w, F_GETPIPE_SZ))
    finally:
        os.close(r)
        os.close(w)


PIPE_CAP = _pipe_capacity()
CHUNK = pyproc._lib.lib.PYPROC_OUT_CHUNK  # the pump's chunk size (chunk mode, below the crossover)
CROSSOVER = pyproc._pump.chunk_max  # outputs past this many bytes leave chunk mode for one growing mapping

# Every test here must leave no fd open in the parent and no child (running or zombie) behind: no_leaks in
# conftest.py checks that after each test (and some tests check it themselves at a precise point).
pytestmark = pytest.mark.usefixtures("no_leaks")


def _pattern(n: int) -> bytes:
    """n bytes that are not all the same, so that a reordering or a lost chunk shows."""
    block = bytes(range(251)) * 17  # 4267 bytes: not a divisor of any pipe or page size
    return (block * (n // len(block) + 1))[:n]


def _children() -> list[tuple[int, str]]:
    """(pid, state) of every child of this process, zombies included."""
    me = os.getpid()
    return [(pid, fields[0].decode()) for pid, fields in process_stats() if int(fields[1]) == me]


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _gone(pid: int, within: float = 5.0) -> bool:
    """True once pid no longer runs (gone, or a zombie nobody reaped yet)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def no_start(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fails the test if run()/pipeline() starts a child: bad input must be refused before."""

    def refuse(request: object) -> None:
        raise AssertionError("a child was started for bad input")

    monkeypatch.setattr(pyproc.io, "start", refuse)
    monkeypatch.setattr(pyproc.io, "_start_piped", refuse)  # the direct path (pipes made by the C side)
    yield


# ---- read_full / write_full --------------------------------------------------------------------------------


def test_read_full_write_full_through_a_pipe_larger_than_its_capacity() -> None:
    data = _pattern(PIPE_CAP * 8 + 123)
    r, w = os.pipe()
    try:
        writer = threading.Thread(target=lambda: (pyproc.write_full(w, data), os.close(w)))
        writer.start()
        got = pyproc.read_full(r, len(data))
        writer.join()
        assert got == data
        assert pyproc.read_full(r, 10) == b""  # end of file: fewer bytes (none), no error
    finally:
        os.close(r)


def test_read_full_returns_short_at_end_of_file() -> None:
    r, w = os.pipe()
    os.write(w, b"abc")
    os.close(w)
    assert pyproc.read_full(r, 100) == b"abc"
    os.close(r)


def test_read_full_and_write_full_wait_out_eagain_on_non_blocking_fds() -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    data = _pattern(PIPE_CAP * 4)
    try:
        reader_result: list[bytes] = []
        reader = threading.Thread(target=lambda: reader_result.append(pyproc.read_full(r, len(data))))
        reader.start()
        time.sleep(0.05)  # the reader meets an empty non-blocking pipe first: EAGAIN, then poll
        assert pyproc.write_full(w, data) == len(data)
        reader.join(10)
        assert reader_result == [data]
    finally:
        os.close(r)
        os.close(w)


def test_write_full_to_a_closed_reader_is_broken_pipe_not_sigpipe() -> None:
    # Run in a child interpreter with SIGPIPE at its default action: the write must give EPIPE, not kill it.
    code = textwrap.dedent("""
        import os, signal, pyproc
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        r, w = os.pipe()
        os.close(r)
        try:
            pyproc.write_full(w, b"x" * 100000)
        except BrokenPipeError:
            print("EPIPE")
        r2, w2 = os.pipe()
        os.close(r2)
        res = pyproc.run(["head", "-c", "1"], input=b"y" * 10_000_000, capture=True)
        print(res.returncode, len(res.stdout))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["EPIPE", "0", "1"]


def test_read_full_write_full_bad_arguments() -> None:
    with pytest.raises(TypeError):
        pyproc.read_full("3", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pyproc.read_full(-1, 1)
    with pytest.raises(ValueError):
        pyproc.read_full(0, -1)
    with pytest.raises(TypeError):
        pyproc.write_full(1, "text")  # type: ignore[arg-type]
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        pyproc.read_full(r, 1)
    assert info.value.errno == 9  # EBADF
    with pytest.raises(OSError) as info:
        pyproc.write_full(w, b"x")
    assert info.value.errno == 9


@contextlib.contextmanager
def _sigalrm_flood() -> Iterator[list[int]]:
    """SIGALRM every 0.2 ms to a counting Python handler while the block runs; yields [number of signals so far]."""
    hits = [0]

    def handler(signum: int, frame: object) -> None:
        hits[0] += 1

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    try:
        yield hits
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)


def test_read_full_write_full_under_a_flood_of_signals() -> None:
    with _sigalrm_flood() as hits:
        data = _pattern(32 << 20)
        r, w = os.pipe()
        # The child holds its stdout open 0.3 s after the data: read_full (asked for one byte more) is blocked
        # then, and interrupted again and again.
        proc = pyproc.spawn(["sh", "-c", "cat; sleep 0.3"], stdin=pyproc.PIPE, stdout=w)
        os.close(w)
        assert proc.stdin is not None
        sender = threading.Thread(target=lambda: (pyproc.write_full(proc.stdin.fileno(), data),  # type: ignore
                                                  proc.stdin.close()))  # type: ignore[union-attr]
        sender.start()
        got = pyproc.read_full(r, len(data) + 1)
        sender.join()
        os.close(r)
        proc.wait()
    assert got == data
    assert hits[0] > 10


# ---- run: sizes and directions -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, PIPE_CAP - 1, PIPE_CAP, PIPE_CAP + 1, 3 * PIPE_CAP + 7])
def test_run_round_trip_sizes(size: int) -> None:
    data = _pattern(size)
    res = pyproc.run(["cat"], input=data, capture=True)
    assert res.returncode == 0
    assert res.stdout == data
    assert res.stderr == b""


@pytest.mark.parametrize("size", [0, 1, PIPE_CAP - 1, PIPE_CAP, PIPE_CAP + 1, 5 << 20])
def test_run_output_only_sizes(size: int) -> None:
    res = pyproc.run(["head", "-c", str(size), "/dev/zero"], stdout=pyproc.PIPE)
    assert res.stdout == bytes(size)
    assert res.stderr is None


def test_run_64mib_both_ways_at_once_does_not_deadlock() -> None:
    # The classic deadlock: the child writes 64 MiB to stderr before it reads its 64 MiB of input, then echoes
    # the input.  Writing all input before reading (or reading one pipe only) hangs; the pump must not.
    size = 64 << 20
    data = _pattern(size)
    script = f"head -c {size} /dev/zero >&2; cat"
    res = pyproc.run(["sh", "-c", script], input=data, capture=True, timeout=120)
    assert res.returncode == 0
    assert len(res.stderr) == size and res.stderr == bytes(size)
    assert res.stdout == data


def test_communicate_64mib_both_ways_at_once() -> None:
    size = 64 << 20
    data = _pattern(size)
    proc = pyproc.spawn(["sh", "-c", f"cat; head -c {size} /dev/zero >&2"], stdin=pyproc.PIPE,
                        stdout=pyproc.PIPE, stderr=pyproc.PIPE)
    out, err = proc.communicate(data, timeout=120)
    assert out == data
    assert err == bytes(size)
    assert proc.returncode == 0
    assert proc.stdout is None or proc.stdout.closed


def test_large_output_is_intact() -> None:
    # Past 1 MiB the output is handed over by moving pages: check every byte, the head and tail pieces too.
    size = (48 << 20) + 4097
    data = _pattern(size)
    res = pyproc.run(["cat"], input=data, capture=True)
    assert len(res.stdout) == size
    assert res.stdout == data
    assert res.stdout[:100] == data[:100] and res.stdout[-5000:] == data[-5000:]


def test_child_closing_stdin_early_drops_the_rest_without_error() -> None:
    res = pyproc.run(["head", "-c", "5"], input=_pattern(20 << 20), capture=True)
    assert res.returncode == 0
    assert res.stdout == _pattern(5)
    res = pyproc.run(["true"], input=_pattern(PIPE_CAP * 3))
    assert res.returncode == 0


def test_input_never_read_and_stdin_closed_by_child() -> None:
    res = pyproc.run(["sh", "-c", "exec 0<&-; echo done"], input=_pattern(PIPE_CAP * 2), capture=True)
    assert res.stdout == b"done\n"


def test_stderr_to_stdout() -> None:
    res = pyproc.run(["sh", "-c", "echo out; echo err >&2"], stdout=pyproc.PIPE, stderr=pyproc.STDOUT)
    assert res.stdout == b"out\nerr\n"
    assert res.stderr is None


def test_result_fields_and_check() -> None:
    res = pyproc.run(["sh", "-c", "echo hi; exit 3"], capture=True)
    assert res.returncode == 3
    assert res.status is not None and res.status.exit_code == 3
    assert res.rusage is not None
    assert res.elapsed > 0
    with pytest.raises(pyproc.CalledProcessError) as info:
        res.check_returncode()
    assert info.value.stdout == b"hi\n"
    with pytest.raises(pyproc.CalledProcessError) as info:
        pyproc.run(["sh", "-c", "echo out; echo err >&2; exit 4"], capture=True, check=True)
    assert (info.value.returncode, info.value.stdout, info.value.stderr) == (4, b"out\n", b"err\n")
    res = pyproc.run(["sh", "-c", "kill -9 $$"])
    assert res.returncode == -9
    assert res.stdout is None


SH = shutil.which("sh") or "/bin/sh"
PGRP = "read -r _ _ _ _ pgrp _ < /proc/$$/stat; echo $$ $pgrp"  # the child's pid and process group


@pytest.mark.parametrize(
    ("script", "options"),
    [
        ("echo out; echo err >&2; exit 3", {"capture": True}),
        ("echo out; echo err >&2", {"stdout": pyproc.PIPE, "stderr": pyproc.STDOUT}),
        ("echo out", {"stdout": pyproc.PIPE}),
        ("echo err >&2", {"stderr": pyproc.PIPE}),
        ("cat; echo err >&2", {"input": b"in\x00put", "capture": True}),
        ("cat >&2", {"input": "t\u00e9xt", "capture": True, "encoding": "utf-8"}),
        ("exec 0<&-; echo closed", {"input": b"x" * 200_000, "capture": True}),
        (PGRP, {"capture": True, "timeout": 30}),  # a timeout puts the child in its own group
        (PGRP, {"capture": True, "process_group": 0}),
    ],
)
def test_run_direct_and_general_paths_agree(script: str, options: dict[str, object]) -> None:
    # A program given as a str with default spawn options takes the direct path (argv packed, pipes made by the C
    # side with the spawn; a bare name with its PATH candidates kept per name); as bytes, the general one (argv
    # converted, pipes made in Python).  Same results.
    results = []
    for program in (SH, "sh", os.fsencode(SH)):
        res = pyproc.run([program, "-c", script], **options)  # type: ignore[arg-type]
        out = res.stdout
        if script == PGRP:
            assert isinstance(out, bytes)
            pid, pgrp = out.split()
            assert pid == pgrp  # its own group on both paths
            out = b"own group"
        results.append((res.returncode, out, res.stderr))
    assert results[0] == results[1] == results[2]


DIRECT_RUN_IN_CHILD = r"""
import os, resource, sys, pyproc
mode = sys.argv[1]
if mode == "closed-stdio":
    os.close(0)
    os.close(1)  # the pipes made for the child may now land on fds 0 and 1: the plan must move them first
    res = pyproc.run(["/bin/sh", "-c", "cat; echo err >&2"], input=b"in", capture=True)
    assert (res.returncode, res.stdout, res.stderr) == (0, b"in", b"err\n"), res
elif mode == "emfile":
    before = sorted(os.listdir("/proc/self/fd"))
    highest = max(int(fd) for fd in before)
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 3, highest + 3))  # room for one pipe, not two
    try:
        pyproc.run(["/bin/true"], capture=True)
    except OSError as exc:
        assert exc.errno == 24, exc  # EMFILE
    else:
        raise AssertionError("no EMFILE")
    assert sorted(os.listdir("/proc/self/fd")) == before  # the first pipe was closed again
os.write(2, b"ok")
"""


@pytest.mark.parametrize("mode", ["closed-stdio", "emfile"])
def test_run_direct_path_edges(mode: str) -> None:
    # Run in a fresh Python: one whose fds 0 and 1 are closed, one with no room for the second pipe.
    res = pyproc.run([sys.executable, "-c", DIRECT_RUN_IN_CHILD, mode], stderr=pyproc.PIPE, timeout=60)
    assert (res.returncode, res.stderr) == (0, b"ok")


def test_run_passes_spawn_options() -> None:
    env = {"X": "42", "PATH": os.defpath}
    res = pyproc.run(["sh", "-c", 'echo "$X"; pwd'], capture=True, env=env, cwd="/")
    assert res.stdout == b"42\n/\n"


def test_run_exec_failure_raises_and_leaves_nothing() -> None:
    before = _fds()
    with pytest.raises(FileNotFoundError):
        pyproc.run(["/nonexistent/program"], input=b"x", capture=True)
    assert _fds() == before
    assert _children() == []


# ---- text mode ---------------------------------------------------------------------------------------------


def test_text_mode() -> None:
    res = pyproc.run(["cat"], input="héllo\r\nwörld", capture=True, encoding="utf-8")
    assert res.stdout == "héllo\r\nwörld"  # decoded, no newline translation
    assert res.stderr == ""
    res = pyproc.run(["printf", r"a\377b"], capture=True, encoding="utf-8", errors="replace")
    assert res.stdout == "a\ufffdb"
    res = pyproc.run(["printf", "caf\\351"], capture=True, encoding="latin-1")
    assert res.stdout == "café"
    with pytest.raises(UnicodeDecodeError):
        pyproc.run(["printf", r"\377"], capture=True, encoding="utf-8")


def test_text_input_needs_text_mode(no_start: None) -> None:
    with pytest.raises(TypeError, match="text mode"):
        pyproc.run(["cat"], input="text")


# ---- timeouts ----------------------------------------------------------------------------------------------


def test_timeout_raises_with_partial_output_and_reaps() -> None:
    t0 = time.monotonic()
    with pytest.raises(pyproc.TimeoutExpired) as info:
        pyproc.run(["sh", "-c", "echo partial; echo err >&2; sleep 30"], capture=True, timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert info.value.stdout == b"partial\n"
    assert info.value.stderr == b"err\n"
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, subprocess.TimeoutExpired)
    assert _children() == []


def test_timeout_kills_grandchildren() -> None:
    with pytest.raises(pyproc.TimeoutExpired) as info:
        pyproc.run(["sh", "-c", "sleep 30 & echo $!; wait"], capture=True, timeout=0.5)
    assert info.value.stdout
    grandchild = int(info.value.stdout)
    assert _gone(grandchild)


def test_grandchild_holding_the_pipe_does_not_outlive_the_timeout() -> None:
    # The child exits at once; a grandchild in a session of its own (out of reach of the group kill) keeps the
    # stdout pipe open.  run() must give up at its deadline, not wait for end of file.
    t0 = time.monotonic()
    with pytest.raises(pyproc.TimeoutExpired) as info:
        pyproc.run(["sh", "-c", "setsid sleep 30 & echo $!"], capture=True, timeout=1.0)
    elapsed = time.monotonic() - t0
    escaped = int(info.value.stdout)
    with contextlib.suppress(ProcessLookupError):
        os.kill(escaped, signal.SIGKILL)
    assert elapsed < 4
    assert _children() == []


def test_child_that_closes_its_pipes_but_runs_on_hits_the_timeout() -> None:
    t0 = time.monotonic()
    with pytest.raises(pyproc.TimeoutExpired) as info:
        pyproc.run(["sh", "-c", "echo bye; exec >&- 2>&-; sleep 30"], capture=True, timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert info.value.stdout == b"bye\n"
    assert _children() == []


def test_timeout_puts_the_child_in_its_own_group() -> None:
    res = pyproc.run(["sh", "-c", "ps -o pgid= -p $$ 2>/dev/null || cut -d' ' -f5 /proc/$$/stat"],
                     capture=True, timeout=10)
    pgid = int(res.stdout.split()[0])
    assert pgid != os.getpgrp()
    res = pyproc.run(["sh", "-c", "cut -d' ' -f5 /proc/$$/stat"], capture=True)
    assert int(res.stdout) == os.getpgrp()  # without a timeout, the child stays in ours


def test_communicate_timeout_keeps_state_and_resumes() -> None:
    proc = pyproc.spawn(["sh", "-c", "cat; echo first; sleep 0.7; echo second"], stdin=pyproc.PIPE,
                        stdout=pyproc.PIPE)
    with pytest.raises(pyproc.TimeoutExpired) as info:
        proc.communicate(b"input\n", timeout=0.3)
    assert info.value.stdout == b"input\nfirst\n"
    assert proc.returncode is None
    with pytest.raises(ValueError):
        proc.communicate(b"again")
    out, err = proc.communicate(timeout=10)
    assert out == b"input\nfirst\nsecond\n"
    assert err is None
    assert proc.returncode == 0


def test_communicate_timeout_leaves_the_pipes_blocking() -> None:
    """The pump makes the parent's pipe ends non-blocking while it runs; they share their open file description with
    proc.stdout, so after a timeout proc.stdout reads as before (it read None: the flag was left set)."""
    proc = pyproc.spawn(["sh", "-c", "sleep 0.5; echo late"], stdout=pyproc.PIPE)
    with pytest.raises(pyproc.TimeoutExpired):
        proc.communicate(timeout=0.1)
    assert proc.stdout is not None
    assert proc.stdout.read() == b"late\n"
    proc.stdout.close()
    assert proc.wait() == 0


def test_the_pump_keeps_and_restores_the_callers_fd_flags() -> None:
    """While the pump runs, O_NONBLOCK is added to each fd's flags (the others kept: O_APPEND here; an fd its owner
    made non-blocking is left alone); when it returns each pipe end has its flags back, including stdin's, which the
    pump closes once the child stopped reading.  Seen through dups, which share the flags (communicate() closes the
    pipes' file objects at the end)."""
    proc = pyproc.spawn(["sh", "-c", "exec sleep 60"], stdin=pyproc.PIPE, stdout=pyproc.PIPE, stderr=pyproc.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.fileno(), proc.stderr.fileno()
    fcntl.fcntl(out, fcntl.F_SETFL, fcntl.fcntl(out, fcntl.F_GETFL) | os.O_APPEND)
    os.set_blocking(err, False)
    dups = [os.dup(fd) for fd in (out, err, proc.stdin.fileno())]
    try:
        before = [fcntl.fcntl(fd, fcntl.F_GETFL) for fd in dups]
        during: list[int] = []

        def peek_then_end_the_child() -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not fcntl.fcntl(dups[0], fcntl.F_GETFL) & os.O_NONBLOCK:
                time.sleep(0.001)  # until the pump runs
            during.extend(fcntl.fcntl(fd, fcntl.F_GETFL) for fd in dups)
            proc.kill()  # the pump then sees end of file on stdout and stderr, EPIPE on stdin

        peek = threading.Thread(target=peek_then_end_the_child)
        peek.start()
        assert proc.communicate(b"x" * (8 << 20), timeout=60) == (b"", b"")  # more than the stdin pipe holds
        peek.join()
        assert during == [before[0] | os.O_NONBLOCK, before[1], before[2] | os.O_NONBLOCK]
        assert [fcntl.fcntl(fd, fcntl.F_GETFL) for fd in dups] == before
        assert before[0] & os.O_APPEND and not before[0] & os.O_NONBLOCK and not before[2] & os.O_NONBLOCK
    finally:
        for fd in dups:
            os.close(fd)
    assert proc.returncode == -signal.SIGKILL


def test_fd_flags_are_back_while_signal_handlers_run() -> None:
    """A signal interrupts the pump (EINTR): Python's handler runs between two C calls, with the flags back."""
    proc = pyproc.spawn(["sh", "-c", "sleep 0.4; echo late"], stdout=pyproc.PIPE)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen: list[bool] = []
    previous = signal.signal(signal.SIGALRM, lambda signo, frame: seen.append(os.get_blocking(fd)))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
        assert proc.communicate(timeout=10) == (b"late\n", None)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert seen and all(seen)


def test_communicate_input_needs_a_stdin_pipe() -> None:
    proc = pyproc.spawn(["true"], stdout=pyproc.PIPE)
    with pytest.raises(ValueError, match="stdin"):
        proc.communicate(b"x")
    assert proc.communicate() == (b"", None)


# ---- chunk mode / map mode: the crossover -------------------------------------------------------------------
# Below CROSSOVER an output is read into pooled chunks and copied once into the result; past it, into one mapping
# whose pages are moved into the result.  Every byte must come back, at every boundary, with every feature.


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_output_at_the_crossover(delta: int) -> None:
    data = _pattern(CROSSOVER + delta)
    res = pyproc.run(["cat"], input=data, capture=True, timeout=120)
    assert len(res.stdout) == len(data)
    assert res.stdout == data


@pytest.mark.parametrize("size", [pyproc._pump.SMALL - 1, pyproc._pump.SMALL, CHUNK - 1, CHUNK, CHUNK + 1,
                                  2 * CHUNK - 1, 2 * CHUNK, 3 * CHUNK + 12344, 3 * CHUNK + 12345,
                                  3 * CHUNK + 12346, 5 * CHUNK + 1])
def test_chunk_boundaries_and_a_lowered_crossover(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    # The crossover lowered to an odd size, so that chunk boundaries, the switch to map mode (the chunks copied
    # into the mapping) and what follows are all crossed here, on both streams at once.
    monkeypatch.setattr(pyproc._pump, "chunk_max", 3 * CHUNK + 12345)
    data = _pattern(size)
    res = pyproc.run(["sh", "-c", "tee /dev/stderr"], input=data, capture=True, timeout=60)
    assert res.stdout == data
    assert res.stderr == data


def test_chunks_are_reused_without_stale_bytes() -> None:
    # The pool gives chunks back to later runs: a shorter, different output after a longer one must not show
    # anything of the first (and two streams at once take different chunks).
    first = _pattern(CHUNK * 6 + 99)
    assert pyproc.run(["cat"], input=first, capture=True).stdout == first
    second = bytes(reversed(_pattern(CHUNK * 2 + 7)))
    res = pyproc.run(["sh", "-c", "tee /dev/stderr"], input=second, capture=True)
    assert res.stdout == second and res.stderr == second
    assert pyproc.run(["head", "-c", str(CHUNK + 5), "/dev/zero"], capture=True).stdout == bytes(CHUNK + 5)


@pytest.mark.parametrize("limit_delta", [-1, 0, 1])
def test_max_output_across_a_lowered_crossover(monkeypatch: pytest.MonkeyPatch, limit_delta: int) -> None:
    crossover = 2 * CHUNK + 777
    monkeypatch.setattr(pyproc._pump, "chunk_max", crossover)
    limit = crossover + limit_delta
    data = _pattern(crossover + 3 * CHUNK)
    with pytest.raises(pyproc.OutputLimitExceeded) as info:
        pyproc.run(["cat"], input=data, capture=True, max_output=limit, timeout=60)
    assert info.value.stdout == data[:limit]
    exact = pyproc.run(["cat"], input=data[:limit], capture=True, max_output=limit, timeout=60)
    assert exact.stdout == data[:limit]


@pytest.mark.parametrize("limit_delta", [-1, 1])
def test_max_output_at_the_crossover(limit_delta: int) -> None:
    limit = CROSSOVER + limit_delta
    with pytest.raises(pyproc.OutputLimitExceeded) as info:
        pyproc.run(["head", "-c", str(CROSSOVER + CHUNK), "/dev/zero"], capture=True, max_output=limit,
                   timeout=120)
    assert len(info.value.stdout) == limit
    assert info.value.stdout == bytes(limit)


@pytest.mark.parametrize("crossover", [None, 2 * CHUNK + 1])
def test_timeout_partial_output_and_resume_in_either_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str],
                                                          crossover: int | None) -> None:
    # communicate() with a timeout gives a copy of what was read (chunk mode: the chunks copied out; with the
    # lowered crossover: from the mapping), keeps the state, and finishes later with every byte.
    if crossover is not None:
        monkeypatch.setattr(pyproc._pump, "chunk_max", crossover)
    head = _pattern(5 * CHUNK + 3)
    tail = b"tail" * 1000
    path = os.path.join(tmp_path, "head")
    with open(path, "wb") as f:
        f.write(head)
    proc = pyproc.spawn(["sh", "-c", f"cat '{path}'; sleep 1; printf %s {tail.decode()}"], stdout=pyproc.PIPE)
    with pytest.raises(pyproc.TimeoutExpired) as info:
        proc.communicate(timeout=0.5)
    assert info.value.stdout == head
    out, _ = proc.communicate(timeout=30)
    assert out == head + tail
    assert proc.returncode == 0


def test_text_mode_medium_output() -> None:
    text = "äöü€ line\n" * 300_000  # about 4.5 MB of UTF-8: chunk mode, characters split across chunks
    res = pyproc.run(["cat"], input=text.encode(), capture=True, encoding="utf-8")
    assert res.stdout == text


# ---- max_output --------------------------------------------------------------------------------------------


def test_max_output_kills_and_carries_what_was_read() -> None:
    t0 = time.monotonic()
    with pytest.raises(pyproc.OutputLimitExceeded) as info:
        pyproc.run(["cat", "/dev/zero"], capture=True, max_output=100_000)
    assert time.monotonic() - t0 < 10
    assert info.value.stdout == bytes(100_000)
    assert info.value.limit == 100_000
    assert _children() == []


def test_max_output_on_stderr_and_exact_fit() -> None:
    with pytest.raises(pyproc.OutputLimitExceeded) as info:
        pyproc.run(["sh", "-c", "echo small; head -c 5000 /dev/zero >&2"], capture=True, max_output=4096)
    assert info.value.stdout == b"small\n"
    assert info.value.stderr == bytes(4096)
    res = pyproc.run(["head", "-c", "4096", "/dev/zero"], capture=True, max_output=4096)
    assert res.stdout == bytes(4096)
    res = pyproc.run(["true"], capture=True, max_output=0)
    assert res.stdout == b""
    with pytest.raises(pyproc.OutputLimitExceeded):
        pyproc.run(["echo"], capture=True, max_output=0)


def test_max_output_large() -> None:
    limit = (8 << 20) + 5
    with pytest.raises(pyproc.OutputLimitExceeded) as info:
        pyproc.run(["cat", "/dev/zero"], capture=True, max_output=limit)
    assert len(info.value.stdout) == limit


# ---- signals -----------------------------------------------------------------------------------------------


def test_run_under_a_flood_of_signals() -> None:
    with _sigalrm_flood() as hits:
        data = _pattern(24 << 20)
        res = pyproc.run(["cat"], input=data, capture=True)
        slow = pyproc.run(["sh", "-c", "sleep 0.3; echo late"], capture=True, timeout=30)
        proc = pyproc.spawn(["cat"], stdin=pyproc.PIPE, stdout=pyproc.PIPE)
        out, _ = proc.communicate(data)
    assert res.stdout == data
    assert slow.stdout == b"late\n"
    assert out == data
    assert hits[0] > 50


def test_signals_from_another_process() -> None:
    hits = [0]

    def handler(signum: int, frame: object) -> None:
        hits[0] += 1

    old = signal.signal(signal.SIGUSR1, handler)
    flood = textwrap.dedent(f"""
        import os, time
        end = time.time() + 1.5
        while time.time() < end:
            os.kill({os.getpid()}, {int(signal.SIGUSR1)})
            time.sleep(0.0001)
    """)
    sender = subprocess.Popen([sys.executable, "-c", flood])
    try:
        res = pyproc.run(["sh", "-c", "sleep 1; head -c 3000000 /dev/zero"], capture=True, timeout=30)
    finally:
        sender.wait()
        signal.signal(signal.SIGUSR1, old)
    assert res.stdout == bytes(3_000_000)
    assert hits[0] > 10


@pytest.mark.parametrize("sleep", ["sleep", shutil.which("sleep") or "/bin/sleep"])  # general path, direct path
def test_exception_from_a_signal_handler_kills_and_reaps(sleep: str) -> None:
    class Stop(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Stop

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    before = _fds()
    try:
        with pytest.raises(Stop):
            pyproc.run([sleep, "30"], capture=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert _children() == []
    assert _fds() == before


# ---- resources ---------------------------------------------------------------------------------------------


def test_no_fd_leaks_and_no_zombies_after_1000_runs() -> None:
    pyproc.run(["true"], capture=True)
    paths = {name: shutil.which(name) or name for name in ("true", "echo", "cat")}
    before = _fds()
    for i in range(1000):
        # Half the rounds name the programs by path: run()'s direct paths (pipes made in C, the capture path).
        true, echo, cat = (paths[n] if i % 8 >= 4 else n for n in ("true", "echo", "cat"))
        if i % 4 == 0:
            res = pyproc.run([true])
        elif i % 4 == 1:
            res = pyproc.run([echo, str(i)], capture=True)
        elif i % 4 == 2:
            res = pyproc.run([cat], input=b"x" * i, capture=True, timeout=30)
        else:
            with pytest.raises(pyproc.OutputLimitExceeded):
                pyproc.run([echo, "too long"], capture=True, max_output=2)
            continue
        assert res.returncode == 0
    assert _fds() == before
    assert _children() == []


# ---- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"timeout": "1"}, TypeError),
        ({"timeout": -1}, ValueError),
        ({"timeout": float("nan")}, ValueError),
        ({"max_output": -1, "capture": True}, ValueError),
        ({"max_output": 1.5, "capture": True}, TypeError),
        ({"max_output": 10}, ValueError),  # nothing captured
        ({"input": 123}, TypeError),
        ({"input": b"x", "stdin": pyproc.DEVNULL}, ValueError),
        ({"capture": True, "stdout": pyproc.DEVNULL}, ValueError),
        ({"encoding": 8}, TypeError),
        ({"encoding": "no-such-codec"}, LookupError),
        ({"errors": 8}, TypeError),
        ({"engine": "warp"}, ValueError),
        ({"stdout": "file"}, TypeError),
        ({"cwd": 3.5}, TypeError),
    ],
)
def test_run_bad_input_before_any_child(no_start: None, kwargs: dict[str, object], error: type) -> None:
    before = _fds()
    with pytest.raises(error):
        pyproc.run(["cat"], **kwargs)  # type: ignore[arg-type]
    assert _fds() == before


def test_run_bad_argv(no_start: None) -> None:
    with pytest.raises(ValueError):
        pyproc.run([])
    with pytest.raises(TypeError):
        pyproc.run("ls")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pyproc.run(["a\0b"])


def test_communicate_bad_arguments() -> None:
    proc = pyproc.spawn(["cat"], stdin=pyproc.PIPE, stdout=pyproc.PIPE)
    with pytest.raises(TypeError):
        proc.communicate("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        proc.communicate(b"x", timeout=-1)
    assert proc.communicate(b"ok") == (b"ok", None)


@pytest.mark.parametrize("shift", [0, 8, 2048])
def test_large_output_handover_moved_or_copied(monkeypatch: pytest.MonkeyPatch, shift: int) -> None:
    # Whole pages are moved into the bytes object when its data and the buffer's share their page offset
    # (shift 0, with glibc's allocator), otherwise copied (any other shift).  Both must give every byte back.
    # The crossover is lowered so that 6 MiB goes through map mode (and leaves chunk mode at an odd offset).
    lead = pyproc._pump.lead()
    monkeypatch.setattr(pyproc._pump, "page_lead", (lead + shift) % os.sysconf("SC_PAGESIZE"))
    monkeypatch.setattr(pyproc._pump, "chunk_max", CHUNK + 12345)
    size = (6 << 20) + 333
    data = _pattern(size)
    res = pyproc.run(["cat"], input=data, capture=True)
    assert res.stdout == data


def test_communicate_with_streams_the_caller_already_closed() -> None:
    proc = pyproc.spawn(["sh", "-c", "echo out"], stdin=pyproc.PIPE, stdout=pyproc.PIPE, stderr=pyproc.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.close()
    proc.stderr.close()
    with pytest.raises(ValueError, match="stdin"):
        proc.communicate(b"x")
    assert proc.communicate(timeout=10) == (b"out\n", None)
    assert proc.returncode == 0


# ---- Result crosses processes (pyproc.dask ships Results back from its workers) --------------------------------


def _same_result(a: pyproc.Result, b: pyproc.Result) -> None:
    for name in ("args", "returncode", "stdout", "stderr", "elapsed", "status", "rusage", "timed_out"):
        assert getattr(a, name) == getattr(b, name), name


def test_result_pickles_with_status_rusage_and_error() -> None:
    import pickle

    ran = pyproc.run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
                     capture=True)
    assert ran.rusage is not None and ran.rusage.maxrss_kib > 0
    again = pickle.loads(pickle.dumps(ran))
    _same_result(ran, again)
    assert again.status == pyproc.Status(True, 3, None, False) and again.error is None
    with pytest.raises(pyproc.CalledProcessError) as raised:
        again.check_returncode()
    assert raised.value.stderr == b"err\n"

    missing, killed, signalled = pyproc.run_many(
        [["no-such-program-pyproc"], ["sleep", "5"], [sys.executable, "-c", "import os; os.abort()"]],
        capture=True, timeout=0.5)
    for result in (missing, killed, signalled):
        copy = pickle.loads(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        _same_result(result, copy)
        assert type(copy.error) is type(result.error)
    copy = pickle.loads(pickle.dumps(missing))
    assert copy.status is None and copy.rusage is None and copy.returncode == 127
    assert isinstance(copy.error, FileNotFoundError) and copy.error.errno == missing.error.errno
    assert str(copy.error) == str(missing.error)
    copy = pickle.loads(pickle.dumps(killed))
    assert copy.timed_out and isinstance(copy.error, pyproc.TimeoutExpired) and copy.error.timeout == 0.5
    copy = pickle.loads(pickle.dumps(signalled))
    assert copy.status is not None and copy.status.signal == signal.SIGABRT and copy.rusage == signalled.rusage


def test_result_without_a_child_pickles() -> None:
    import pickle

    bare = pyproc.Result(["x"], 0, b"o", None)
    copy = pickle.loads(pickle.dumps(bare))
    _same_result(bare, copy)
    assert copy.status is None and copy.rusage is None
