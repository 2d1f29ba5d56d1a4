"""SignalPipe (the C self-pipe handler), blocked() and take_pending()."""

from __future__ import annotations

import fcntl
import gc
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

import pyproc
import pyproc.signals
from pyproc import PIPE, SignalEvent, SignalPipe
from pyproc.signals import blocked, take_pending

USR1, USR2 = signal.SIGUSR1, signal.SIGUSR2
RT1, RT2, RT3 = signal.SIGRTMIN + 1, signal.SIGRTMIN + 2, signal.SIGRTMIN + 3
SI_USER = 0
CLD_EXITED = 1

pytestmark = pytest.mark.usefixtures("no_leaks")

# Sends N signals alternating between two kinds to a pid with kill(); retries on EAGAIN (a full real-time
# queue), so every one is sent exactly once; pauses 1 ms after every PACE signals (0: never); prints how many
# of each kind it sent.  Signals are given as numbers (see sender_args): a name is refused.
SENDER_C = r"""
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    if (argc != 6)
        return 2;
    pid_t pid = (pid_t)atol(argv[1]);
    long n = atol(argv[2]);
    int kinds[2] = {atoi(argv[3]), atoi(argv[4])};
    long pace = atol(argv[5]);
    if (pid <= 0 || kinds[0] <= 0 || kinds[1] <= 0) { /* atoi gives 0 for a name: kill(pid, 0) sends nothing */
        fprintf(stderr, "sender: bad pid or signal number\n");
        return 2;
    }
    long sent[2] = {0, 0};
    for (long i = 0; i < n; i++) {
        if (pace > 0 && i > 0 && i % pace == 0)
            usleep(1000);
        while (kill(pid, kinds[i & 1]) != 0) {
            if (errno != EAGAIN) {
                perror("kill");
                return 1;
            }
            sched_yield();
        }
        sent[i & 1]++;
    }
    printf("%ld %ld\n", sent[0], sent[1]);
    return 0;
}
"""

SENDER_PY = r"""
import os, sys, time
pid, n, first, second, pace = map(int, sys.argv[1:6])  # int("Signals.SIGUSR1") fails: no signal 0 sent
kinds, sent = (first, second), [0, 0]
for i in range(n):
    if pace > 0 and i > 0 and i % pace == 0:
        time.sleep(0.001)
    while True:
        try:
            os.kill(pid, kinds[i & 1])
            break
        except BlockingIOError:
            os.sched_yield()
    sent[i & 1] += 1
print(sent[0], sent[1])
"""


@pytest.fixture(scope="module")
def sender(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """argv prefix of the flood sender: a C program compiled here when cc exists, else a Python script."""
    directory = tmp_path_factory.mktemp("sender")
    cc = shutil.which("cc")
    if cc is not None:
        source = directory / "sender.c"
        source.write_text(SENDER_C)
        binary = directory / "sender"
        done = subprocess.run([cc, "-O2", "-o", str(binary), str(source)], capture_output=True)
        if done.returncode == 0:
            return [str(binary)]
    script = directory / "sender.py"
    script.write_text(SENDER_PY)
    return [sys.executable, str(script)]


def sender_args(pid: int, count: int, first: int, second: int, pace: int) -> list[str]:
    """The sender's arguments.  Numbers written with int(): str() of a signal.Signals is its name before Python
    3.11 ("Signals.SIGUSR1"), which C's atoi() reads as 0, and kill(pid, 0) sends nothing."""
    return [str(int(value)) for value in (pid, count, first, second, pace)]


def _masks() -> dict[str, int]:
    """The kernel's view of this process's dispositions: the caught and ignored signal masks."""
    masks = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("SigCgt", "SigIgn"):
            masks[key] = int(value, 16)
    return masks


def _bit(sig: int) -> int:
    return 1 << (sig - 1)


def _dispositions() -> tuple[dict[str, int], dict[int, object]]:
    handlers: dict[int, object] = {}
    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            handlers[int(sig)] = signal.getsignal(sig)
    return _masks(), handlers


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.mark.parametrize("kind", ["standard", "realtime"])
def test_flood_from_another_process(sender: list[str], kind: str) -> None:
    """100k signals of two kinds while the main thread spawns and waits for children and reads the pipe.

    What holds exactly: every record is one of the two kinds, from the sender's pid and uid, with code
    SI_USER; for each kind, records read + dropped == deliveries counted by the handler.  Standard signals
    coalesce while one is pending, so 1 <= deliveries <= sent; real-time signals queue (the sender retries
    when the queue is full), so deliveries == sent exactly.  The real-time flood is 20k: the kernel scans its
    whole queue of pending signals for each one it delivers, so a queue of 100k costs a minute of kernel time,
    whoever handles them.
    """
    first, second = (USR1, USR2) if kind == "standard" else (RT1, RT2)
    total = 100_000 if kind == "standard" else 20_000
    before = _dispositions()
    events: list[SignalEvent] = []
    children = 0
    with SignalPipe([first, second], restart=False) as pipe:
        # Paced (1 ms every 200 or 50 signals, about 500 or 400 pauses): the flood lasts long enough to overlap
        # many spawns and waits.
        pace = 200 if kind == "standard" else 50
        argv = [*sender, *sender_args(os.getpid(), total, first, second, pace)]
        flood = pyproc.spawn(argv, stdout=PIPE)
        deadline = time.monotonic() + 120
        while flood.poll() is None:
            assert time.monotonic() < deadline, "the flood did not finish"
            child = pyproc.spawn(["true"])
            waiter = children % 3  # the three ways to wait, each a blocking syscall signals can interrupt
            if waiter == 0:
                assert child.wait() == 0
            elif waiter == 1:
                assert child.wait(timeout=60) == 0
            else:
                assert pyproc.wait_any([child], timeout=60) is child and child.returncode == 0
            children += 1
            events += pipe.read()
        assert flood.stdout is not None
        output = flood.stdout.read()
        flood.stdout.close()
        # The sender is reaped: every signal it sent was delivered on our way back from that wait4.
        events += pipe.read()
        counts = pipe.counts()
    assert flood.returncode == 0, output
    sent = dict(zip((first, second), map(int, output.split()), strict=True))
    assert sent == {first: total // 2, second: total // 2}
    assert children >= 10
    assert {event.signo for event in events} == {first, second}
    for sig in (first, second):
        mine = [event for event in events if event.signo == sig]
        assert mine, f"no {signal.Signals(sig).name if sig < 32 else sig} record"
        assert all(e.pid == flood.pid and e.uid == os.getuid() and e.code == SI_USER for e in mine)
        assert len(mine) + counts[sig].dropped == counts[sig].delivered
        if kind == "realtime":
            assert counts[sig].delivered == sent[sig]
        else:
            assert 1 <= counts[sig].delivered <= sent[sig]
    assert _dispositions() == before
    print(f"{kind}: {children} children spawned during the flood; sent {sent}; counts {counts}")


def test_sender_refuses_signal_names(sender: list[str]) -> None:
    """A signal given by name would be read as signal 0 (kill(pid, 0) sends nothing and succeeds): the sender
    refuses it, so a flood test can never pass on signals that were not sent."""
    with SignalPipe([USR1]) as pipe:
        refused = pyproc.run([*sender, str(os.getpid()), "10", "Signals.SIGUSR1", str(int(USR2)), "0"],
                             capture=True, timeout=60)
        assert refused.returncode != 0
        assert pipe.read() == []
    assert sender_args(1, 2, USR1, USR2, 0) == ["1", "2", str(int(USR1)), str(int(USR2)), "0"]


def test_handler_on_another_thread(sender: list[str]) -> None:
    """With the signals blocked in the main thread, the kernel runs the handler on another thread."""
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, args=(60,))  # created before the block: it takes the signals
    worker.start()
    try:
        with SignalPipe([USR1, USR2]) as pipe, blocked([USR1, USR2]):
            flood = pyproc.spawn([*sender, *sender_args(os.getpid(), 2000, USR1, USR2, 0)], stdout=PIPE)
            assert flood.wait(timeout=60) == 0
            assert flood.stdout is not None
            flood.stdout.close()
            events = pipe.wait(timeout=10)
            deadline = time.monotonic() + 10
            while {e.signo for e in events} != {USR1, USR2} and time.monotonic() < deadline:
                events += pipe.wait(timeout=1)
            assert {e.signo for e in events} == {USR1, USR2}
            assert all(e.pid == flood.pid for e in events)  # read while the main thread still blocks them
    finally:
        stop.set()
        worker.join()


def test_blocking_waits_do_not_surface_eintr(sender: list[str]) -> None:
    """Signals handled while pyproc's C code waits in wait4 / ppoll never come back as InterruptedError."""
    with SignalPipe([USR1, USR2], restart=False) as pipe:
        flood = pyproc.spawn([*sender, *sender_args(os.getpid(), 100000000, USR1, USR2, 0)], stdout=PIPE)
        try:
            interrupted = 0
            for round_ in range(6):
                child = pyproc.spawn(["sleep", "0.1"])
                before = pipe.delivered
                if round_ % 3 == 0:
                    assert child.wait() == 0
                elif round_ % 3 == 1:
                    assert child.wait(timeout=30) == 0
                else:
                    assert pyproc.wait_any([child], timeout=30) is child
                interrupted += pipe.delivered > before
                pipe.read()
            assert interrupted > 0, "no signal arrived during a wait: the test proved nothing"
        finally:
            flood.kill()
            flood.wait()
            assert flood.stdout is not None
            flood.stdout.close()


def test_record_fields_for_sigchld() -> None:
    with SignalPipe([signal.SIGCHLD]) as pipe:
        child = pyproc.spawn(["sh", "-c", "exit 7"])
        assert child.wait() == 7
        events = pipe.wait(timeout=10)
    mine = [e for e in events if e.pid == child.pid]
    assert mine == [SignalEvent(signal.SIGCHLD, CLD_EXITED, child.pid, os.getuid(), 7)]


def test_records_in_order_and_full_pipe_counts_drops() -> None:
    """Real-time signals sent to ourselves are delivered before kill() returns: exact counts."""
    n = 10_000
    with SignalPipe([RT1]) as pipe:
        for _ in range(n):
            os.kill(os.getpid(), RT1)
        events = pipe.read()
        counts = pipe.counts()
        assert counts == {RT1: (n, n - len(events))}
        assert pipe.dropped == n - len(events) > 0  # 10k records of 20 bytes do not fit in a 64 KiB pipe
        assert 0 < len(events) < n
        assert set(events) == {SignalEvent(RT1, SI_USER, os.getpid(), os.getuid(), 0)}
        os.kill(os.getpid(), RT1)  # room again after reading
        assert pipe.read() == [SignalEvent(RT1, SI_USER, os.getpid(), os.getuid(), 0)]
        assert pipe.delivered == n + 1
    assert pipe.counts() == {RT1: (n + 1, n - len(events))}  # frozen at close


def test_dispositions_restored_python_handler_ignore_default() -> None:
    calls: list[int] = []

    def handler(sig: int, frame: object) -> None:
        calls.append(sig)

    old = {USR1: signal.signal(USR1, handler), USR2: signal.signal(USR2, signal.SIG_IGN),
           RT3: signal.signal(RT3, signal.SIG_DFL)}
    try:
        before = _dispositions()
        assert before[0]["SigCgt"] & _bit(USR1) and before[0]["SigIgn"] & _bit(USR2)
        assert not (before[0]["SigCgt"] | before[0]["SigIgn"]) & _bit(RT3)
        with SignalPipe([USR1, USR2, RT3]) as pipe:
            during = _masks()
            for sig in (USR1, USR2, RT3):
                assert during["SigCgt"] & _bit(sig)
                assert not during["SigIgn"] & _bit(sig)
            for sig in (USR1, USR2, RT3):
                os.kill(os.getpid(), sig)
            assert [e.signo for e in pipe.read()] == [USR1, USR2, RT3]
            assert signal.getsignal(USR1) is handler  # Python's record is untouched...
            assert calls == []  # ...but the pipe had the signal
        assert _dispositions() == before
        os.kill(os.getpid(), USR1)  # Python's own C handler is back: the Python handler runs
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.001)
        assert calls == [USR1]
        os.kill(os.getpid(), USR2)  # ignored again (SIG_DFL would have killed us)
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def test_second_owner_refused_and_first_keeps_working() -> None:
    fds = _open_fds()
    with SignalPipe([USR1]) as first:
        with pytest.raises(RuntimeError, match="SIGUSR1 already belongs to another open SignalPipe"):
            SignalPipe([USR1])
        with pytest.raises(RuntimeError, match="SIGUSR1"):
            SignalPipe([USR2, USR1])  # USR2 was installed first, then given back
        with SignalPipe([USR2]) as second:
            os.kill(os.getpid(), USR2)
            assert [e.signo for e in second.read()] == [USR2]
        os.kill(os.getpid(), USR1)
        assert [e.signo for e in first.read()] == [USR1]
    with SignalPipe([USR1]):  # free again after close
        pass
    assert _open_fds() == fds


@pytest.mark.parametrize(
    ("signals", "error", "match"),
    [
        ([signal.SIGKILL], ValueError, "cannot be caught"),
        ([signal.SIGSTOP], ValueError, "cannot be caught"),
        ([signal.SIGSEGV], ValueError, "fault signal"),
        ([0], ValueError, "not a valid signal"),
        ([999], ValueError, "not a valid signal"),
        ([], ValueError, "at least one"),
        (["SIGUSR1"], TypeError, "not a signal number"),
        ([True], TypeError, "not a signal number"),
        ("USR1", TypeError, "iterable of signal numbers"),
        (None, TypeError, "iterable of signal numbers"),
    ],
)
def test_bad_input(signals: object, error: type[Exception], match: str) -> None:
    fds = _open_fds()
    before = _dispositions()
    with pytest.raises(error, match=match):
        SignalPipe(signals)  # type: ignore[arg-type]
    assert _open_fds() == fds
    assert _dispositions() == before


def test_restart_must_be_bool() -> None:
    with pytest.raises(TypeError, match="restart"):
        SignalPipe([USR1], restart="yes")  # type: ignore[arg-type]


def test_single_int_and_signals_enum_accepted() -> None:
    with SignalPipe(USR1) as pipe:  # type: ignore[arg-type]
        assert pipe.signals == {USR1}
    with SignalPipe([signal.Signals.SIGUSR1, signal.Signals.SIGUSR1]) as pipe:
        assert pipe.signals == {USR1}


def test_pipe_fd_is_nonblocking_cloexec_and_read_never_blocks() -> None:
    with SignalPipe([USR1]) as pipe:
        fd = pipe.fileno()
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
        assert not os.get_inheritable(fd)
        assert pipe.read() == []
        start = time.monotonic()
        assert pipe.wait(timeout=0.05) == []
        assert time.monotonic() - start >= 0.04
        threading.Timer(0.05, os.kill, (os.getpid(), USR1)).start()
        assert [e.signo for e in pipe.wait(timeout=30)] == [USR1]
    assert pipe.closed
    with pytest.raises(ValueError, match="closed"):
        pipe.fileno()
    with pytest.raises(ValueError, match="closed"):
        pipe.read()
    pipe.close()  # idempotent


def test_replaced_handler_is_left_in_place_with_a_warning() -> None:
    def theirs(sig: int, frame: object) -> None:
        pass

    old = signal.getsignal(USR1)
    try:
        pipe = SignalPipe([USR1])
        signal.signal(USR1, theirs)
        with pytest.warns(RuntimeWarning, match="replaced"):
            pipe.close()
        assert signal.getsignal(USR1) is theirs
        assert _masks()["SigCgt"] & _bit(USR1)
        with SignalPipe([USR1]):  # the slot was freed all the same
            pass
    finally:
        signal.signal(USR1, old)


def test_unclosed_pipe_warns_and_restores() -> None:
    before = _dispositions()
    pipe = SignalPipe([USR2])
    with pytest.warns(ResourceWarning, match="unclosed"):
        del pipe
        gc.collect()
    assert _dispositions() == before


def test_blocked_and_take_pending() -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with blocked([USR1, RT1]) as previous:
        assert previous == before
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        assert {USR1, RT1} <= mask
        assert take_pending([USR1]) == []
        os.kill(os.getpid(), USR1)
        os.kill(os.getpid(), USR1)  # coalesces with the pending one
        os.kill(os.getpid(), RT1)
        os.kill(os.getpid(), RT1)  # queues
        me = (os.getpid(), os.getuid())
        assert take_pending([USR1, RT1], timeout=1) == [
            SignalEvent(USR1, SI_USER, *me, 0),
            SignalEvent(RT1, SI_USER, *me, 0),
            SignalEvent(RT1, SI_USER, *me, 0),
        ]
        assert take_pending([USR1, RT1]) == []
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
    with pytest.raises(ValueError, match="timeout"):
        take_pending([USR1], timeout=-1)
    with pytest.raises(TypeError), blocked(["x"]):  # type: ignore[list-item]
        pass


def test_forked_child_gets_its_dispositions_back() -> None:
    """After os.fork() the child's pipes are closed: its signals go to the earlier disposition, not the pipe."""
    with SignalPipe([USR1]) as pipe:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then get SIGUSR1 with its default action (termination)
            try:
                os.write(write_end, b"%d" % pipe.closed)
                os.kill(os.getpid(), USR1)
            finally:
                os._exit(99)
        os.close(write_end)
        report = os.read(read_end, 10)
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
        assert report == b"1"
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == USR1
        assert pipe.read() == []  # nothing from the child
        assert not pipe.closed


def test_open_read_close_from_a_non_main_thread() -> None:
    before = _dispositions()
    got: list[object] = []

    def worker() -> None:
        try:
            with SignalPipe([USR1]) as pipe:
                os.kill(os.getpid(), USR1)
                got.extend(pipe.wait(timeout=10))
        except BaseException as exc:  # reported to the main thread's assertion below
            got.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert got == [SignalEvent(USR1, SI_USER, os.getpid(), os.getuid(), 0)]
    assert _dispositions() == before


# ---- closing races another thread's sigaction() (issue 14) ----------------------------------------------------------

# Preloaded into a Python child: wraps sigaction() so that, as another thread could, it installs a foreign handler
# for the armed signal just before the first (and, if asked, the second) call that installs a disposition.
SIGACTION_SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <string.h>
typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
static sigaction_fn real(void)
{
    static sigaction_fn fn;
    if (!fn)
        fn = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    return fn;
}
static void foreign1(int sig) { (void)sig; }
static void foreign2(int sig) { (void)sig; }
static int armed_sig, calls, before_first, before_second;
void shim_arm(int sig, int first, int second)
{
    armed_sig = sig;
    calls = 0;
    before_first = first;
    before_second = second;
}
int shim_current(int sig)
{
    struct sigaction now;
    real()(sig, NULL, &now);
    return now.sa_handler == foreign1 ? 1 : now.sa_handler == foreign2 ? 2 : 0;
}
int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
    if (act && sig == armed_sig) {
        calls++;
        if ((calls == 1 && before_first) || (calls == 2 && before_second)) {
            struct sigaction foreign;
            memset(&foreign, 0, sizeof foreign);
            foreign.sa_handler = calls == 1 ? foreign1 : foreign2;
            sigemptyset(&foreign.sa_mask);
            real()(sig, &foreign, NULL);
        }
    }
    return real()(sig, act, old);
}
"""

SHIM_CHILD = r"""
import ctypes, signal, sys, warnings
import pyproc
shim = ctypes.CDLL(sys.argv[1])
first, second = int(sys.argv[2]), int(sys.argv[3])
pipe = pyproc.SignalPipe([signal.SIGUSR1])
shim.shim_arm(int(signal.SIGUSR1), first, second)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    pipe.close()
shim.shim_arm(0, 0, 0)
print(shim.shim_current(int(signal.SIGUSR1)), [str(w.message) for w in caught])
"""


def _preload_for_sanitized_python(library: Path) -> str:
    """LD_PRELOAD for a Python child: the shim, after the sanitizer runtimes when the suite runs under them (the
    sanitized pyproc cannot load without them, and the runtimes must come first)."""
    if os.environ.get("PYPROC_SANITIZED") != "1":
        return str(library)
    cc = os.environ.get("CC", "gcc")
    runtimes = [subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True,
                               check=True).stdout.strip() for name in ("libasan.so", "libubsan.so")]
    return ":".join([*runtimes, str(library)])


@pytest.mark.parametrize(("first", "second", "expected"), [(1, 0, 1), (1, 1, 2)])
def test_close_never_overwrites_a_handler_installed_meanwhile(tmp_path: Path, first: int, second: int,
                                                               expected: int) -> None:
    """close() found pyproc's handler in place, then put the saved disposition back over whatever was there by then:
    a handler another thread installed between the two calls was lost.  Now the restore is an exchange, and a
    handler it displaces is put back (and one installed while that happens, too: the last one stays)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    # (.ci/wheel-test.sh puts a cc that fails first on PATH, as on a machine with none)
    if cc is None or subprocess.run([cc, "--version"], capture_output=True).returncode != 0:
        pytest.skip("needs a C compiler for the sigaction() shim")
    source = tmp_path / "shim.c"
    source.write_text(SIGACTION_SHIM_C)
    library = tmp_path / "shim.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"], check=True)
    env = {**os.environ, "LD_PRELOAD": _preload_for_sanitized_python(library)}
    done = subprocess.run([sys.executable, "-c", SHIM_CHILD, str(library), str(first), str(second)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    current, warned = done.stdout.split(" ", 1)
    assert int(current) == expected  # the foreign handler installed last is in place
    assert "was replaced while the pipe was open" in warned


def test_close_from_another_thread_during_a_wait_never_polls_another_fd(monkeypatch: pytest.MonkeyPatch) -> None:
    """wait() polled the read end's number while close() in another thread could close it: a closed number is soon
    another fd's, and the poll then waited on that fd (here a pipe that never becomes readable).  Forced: the close,
    and a new pipe on the freed number, come just before the poll."""
    pipe = SignalPipe([USR1])
    number = pipe.fileno()
    other: list[int] = []

    class PollAfterAClose:
        def __init__(self) -> None:
            self._poll = select.poll()

        def register(self, fd: int, events: int) -> None:
            self._poll.register(fd, events)

        def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
            if not other:
                closer = threading.Thread(target=pipe.close)
                closer.start()
                closer.join(timeout=10)
                other.extend(os.pipe())  # takes the freed number
            return self._poll.poll(timeout)

    monkeypatch.setattr(pyproc.signals, "select", types.SimpleNamespace(poll=PollAfterAClose, POLLIN=select.POLLIN))
    try:
        with pytest.raises(ValueError, match="closed"):
            pipe.wait(timeout=2)
    finally:
        monkeypatch.undo()
        for fd in other:
            os.close(fd)
    assert number in other  # the scenario: the read end's number went to another fd


def test_close_from_another_thread_waits_for_a_read_in_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """read() reads the pipe's fd with the GIL released; close() in another thread closed that fd meanwhile, and the
    read could take the data of whatever fd got the number next.  close() now waits for the read to end."""
    pipe = SignalPipe([USR1])
    closer = threading.Thread(target=pipe.close)
    closed_during_read: list[bool] = []

    class ReadAfterAClose:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def read(self, fd: int, n: int) -> bytes:
            if not closed_during_read:
                closer.start()
                closer.join(timeout=0.5)  # blocked, as it must be, while this read holds the pipe
                closed_during_read.append(not closer.is_alive())
            return os.read(fd, n)

    monkeypatch.setattr(pyproc.signals, "os", ReadAfterAClose())
    try:
        pipe.read()
    finally:
        monkeypatch.undo()
        closer.join(timeout=10)
    assert closed_during_read == [False] and pipe.closed
