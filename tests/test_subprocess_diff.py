"""Differential tests: the same cases against the standard library's subprocess and pyproc.subprocess.

Each case is a function of the module under test that returns what a caller can observe (results, file object
types, output); `observe()` turns an exception into its standard-library type, errno, filename, str and the
subprocess attributes.  test_same_as_stdlib runs every case on both modules and compares; the tests further
down are parametrized over both modules with explicit expectations, so each expectation is checked against the
standard library too.

The standard library compared against is the one of the interpreter running the tests: where its behaviour
changed between versions (messages, stdout=STDOUT, a closed .stdin in communicate()), pyproc.subprocess follows
the running one.  Every case applies to every Python version pyproject.toml lists (3.11, 3.12, 3.13) unless its
@case(...) says otherwise (since=, before=: the versions it applies to); test_same_as_stdlib skips a case on the
others, saying which versions it applies to.

With PYPROC_TEST_INSTALLED=1 (see conftest.py) the module under test is the standard `subprocess` module itself
with pyproc.subprocess.install() active, and the standard library's answers are taken with install() undone for
the time of the call (conftest.standard_library()).
"""

from __future__ import annotations

import ast
import contextlib
import errno
import fcntl
import gc
import grp
import os
import pathlib
import pwd
import re
import select
import shutil
import signal
import subprocess as std
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import INSTALLED, child_pids, open_fds, standard_library

import pyproc.subprocess as pyp
from pyproc.process import abandoned, reap_abandoned

# The module under test: pyproc.subprocess, or (PYPROC_TEST_INSTALLED=1) the standard module on pyproc.
TESTED: Any = std if INSTALLED else pyp
PY = sys.executable
ABANDONED_WAIT = 60.0  # seconds no_fd_leak waits at most for abandoned children to exit and be reaped
Case = Callable[[Any], Any]
CASES: dict[str, Case] = {}
VERSIONS: dict[str, tuple[tuple[int, int] | None, tuple[int, int] | None]] = {}


def case(fn: Case | None = None, *, since: tuple[int, int] | None = None,
         before: tuple[int, int] | None = None) -> Any:
    """Registers a differential case; since / before: the Python versions it applies to (default: all)."""

    def register(fn: Case) -> Case:
        name = fn.__name__.removeprefix("case_")
        CASES[name] = fn
        VERSIONS[name] = (since, before)
        return fn

    return register(fn) if fn is not None else register


def applies(name: str) -> str | None:
    """None if case `name` applies to the running Python, else which versions it applies to."""
    since, before = VERSIONS[name]
    here = sys.version_info[:2]
    if (since is None or here >= since) and (before is None or here < before):
        return None
    low = f"{since[0]}.{since[1]}" if since else "any"
    high = f"before {before[0]}.{before[1]}" if before else "and later"
    return f"case {name} applies to Python {low} {high}"


@pytest.fixture(params=["stdlib", "pyproc"])
def sp(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The module for a test parametrized over both: the standard library's own, or the one under test."""
    if request.param == "stdlib":
        with standard_library():
            yield std
    else:
        yield TESTED


def child_import(sp: Any) -> str:
    """The line a child Python script imports `sp` with (as `sp`): the module under test's way, installed or not."""
    if sp is pyp:
        return "import pyproc.subprocess as sp"
    if pyp.is_installed():
        return "import pyproc.subprocess; pyproc.subprocess.install(); import subprocess as sp"
    return "import subprocess as sp"


def describe(exc: BaseException) -> dict[str, Any]:
    """What a caller can see of an exception, by its standard-library class."""
    cls = next(c for c in type(exc).__mro__ if c.__module__ in ("builtins", "subprocess"))
    seen: dict[str, Any] = {"type": cls.__name__, "str": str(exc)}
    if issubclass(cls, OSError):
        seen.update(errno=exc.errno, strerror=exc.strerror, filename=exc.filename)
    for attr in ("returncode", "cmd", "output", "stdout", "stderr", "timeout"):
        if hasattr(exc, attr):
            seen[attr] = getattr(exc, attr)
    return seen


def plain(value: Any) -> Any:
    """value with CompletedProcess objects (no __eq__) turned into comparable tuples."""
    if isinstance(value, std.CompletedProcess):
        return ("CompletedProcess", value.args, value.returncode, value.stdout, value.stderr, repr(value))
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


def observe(fn: Case, mod: Any) -> tuple[str, Any]:
    try:
        return "ok", plain(fn(mod))
    except Exception as exc:
        return "raised", describe(exc)


@contextlib.contextmanager
def no_fd_leak(grace: float = 2.0) -> Iterator[None]:
    """Fails if the block leaves an fd open or a child (running or zombie) behind.

    A Popen collected while its child still runs keeps the child's pidfd (in pyproc.process.abandoned) until the
    child has exited and a later spawn reaps it, as the standard library keeps such a Popen (and its pipes) in
    subprocess._active: that is no leak as long as the child ends.  So the check waits `grace` seconds for
    objects to be collected, and then, while abandoned children are left, until they are reaped (at most
    ABANDONED_WAIT seconds): on a loaded machine a child such as cat can take longer than the grace to see its
    end of file and exit.
    """
    gc.collect()
    before = open_fds()
    children = child_pids()
    yield
    start = time.monotonic()
    while True:
        gc.collect()
        reap_abandoned()  # pidfds of collected Popens whose child had not exited yet
        leaked = open_fds() - before
        waited = time.monotonic() - start
        if not leaked or waited > ABANDONED_WAIT or (waited > grace and not abandoned):
            break
        time.sleep(0.01)
    # listdir's own fd is gone by now; anything else left open is a leak
    assert not leaked, f"fds left open: {sorted(leaked)}"
    deadline = time.monotonic() + 2
    while (left := child_pids() - children) and time.monotonic() < deadline:
        reap_abandoned()
        std._cleanup()  # type: ignore[attr-defined]  # the standard library's own list of such children
        time.sleep(0.01)
    assert not left, f"children left behind: {sorted(left)}"


# ---- exit status, signals ----------------------------------------------------------------------------------


@case
def case_exit_codes(sp: Any) -> Any:
    return [sp.run(["sh", "-c", f"exit {n}"]).returncode for n in (0, 1, 3, 255)]


@case
def case_killed_by_signal(sp: Any) -> Any:
    return sp.run(["sh", "-c", "kill -TERM $$"]).returncode, sp.call(["sh", "-c", "kill -KILL $$"])


@case
def case_completed_process_repr(sp: Any) -> Any:
    cp = sp.run(["sh", "-c", "echo out; echo err >&2; exit 2"], capture_output=True)
    return repr(cp), type(cp).__name__


@case
def case_run_capture_by_path(sp: Any) -> Any:
    # A program named by its path with capture_output=True and nothing else: run()'s shortest way (C-made pipes,
    # one pump that closes them, the child reaped with it).  Output, errors, a signal, check, the pipe objects.
    sh = shutil.which("sh") or "/bin/sh"
    cp = sp.run([sh, "-c", "printf 'o\\0ut'; echo err >&2; exit 3"], capture_output=True)
    killed = sp.run([sh, "-c", "echo x; kill -KILL $$"], capture_output=True)
    try:
        sp.run([sh, "-c", "echo out; exit 5"], capture_output=True, check=True)
    except sp.CalledProcessError as exc:
        checked: Any = (exc.returncode, exc.output, exc.stderr, str(exc))
    big = sp.run([sh, "-c", "head -c 300000 /dev/zero; echo e >&2"], capture_output=True)
    return repr(cp), killed.returncode, killed.stdout, checked, len(big.stdout), big.stderr


@case
def case_check_returncode(sp: Any) -> Any:
    return sp.run(["sh", "-c", "echo o; exit 4"], stdout=sp.PIPE).check_returncode()


# ---- text modes, encodings, bufsize ------------------------------------------------------------------------


@case
def case_text_newlines(sp: Any) -> Any:
    cmd = ["printf", "a\\r\\nb\\rc\\n"]
    return (sp.run(cmd, capture_output=True).stdout, sp.run(cmd, capture_output=True, text=True).stdout,
            sp.run(cmd, capture_output=True, universal_newlines=True).stdout)


@case
def case_encoding_errors(sp: Any) -> Any:
    cmd = ["printf", "\\377caf\\303\\251"]
    return (sp.run(cmd, capture_output=True, encoding="utf-8", errors="replace").stdout,
            sp.run(cmd, capture_output=True, encoding="latin-1").stdout,
            sp.check_output(cmd, errors="surrogateescape", encoding="utf-8"))


@case
def case_decode_error(sp: Any) -> Any:
    return sp.run(["printf", "\\377"], capture_output=True, encoding="utf-8").stdout


@case
def case_text_universal_conflict(sp: Any) -> Any:
    return sp.Popen(["true"], text=True, universal_newlines=False)


@case
def case_text_input(sp: Any) -> Any:
    return sp.run(["cat"], input="héllo\nwörld\r\n", capture_output=True, encoding="utf-8").stdout


@case
def case_str_input_in_binary_mode(sp: Any) -> Any:
    return sp.run(["cat"], input="text", capture_output=True)


@case
def case_bufsize_file_objects(sp: Any) -> Any:
    seen = []
    for bufsize, text in ((0, False), (-1, False), (1, False), (4096, False), (1, True), (-1, True)):
        with warnings.catch_warnings(record=True) as caught:  # bufsize=1 in binary mode warns
            warnings.simplefilter("always")
            p = sp.Popen(["cat"], stdin=sp.PIPE, stdout=sp.PIPE, stderr=sp.PIPE, bufsize=bufsize, text=text)
        seen.append([(w.category.__name__, str(w.message)) for w in caught])
        with p:
            streams = (p.stdin, p.stdout, p.stderr)
            seen.append((bufsize, text, [type(s).__name__ for s in streams],
                         [getattr(s, "line_buffering", None) for s in streams],
                         [getattr(getattr(s, "buffer", s), "raw", None) is None for s in streams],
                         p.text_mode, p.universal_newlines))
    return seen


@case
def case_line_buffered_dialogue(sp: Any) -> Any:
    with sp.Popen(["cat"], stdin=sp.PIPE, stdout=sp.PIPE, bufsize=1, text=True) as p:
        answers = []
        for word in ("one", "two", "three"):
            p.stdin.write(word + "\n")  # line buffered: flushed at the newline
            answers.append(p.stdout.readline())
        p.stdin.close()
    return answers, p.returncode


@case
def case_unbuffered_dialogue(sp: Any) -> Any:
    with sp.Popen(["cat"], stdin=sp.PIPE, stdout=sp.PIPE, bufsize=0) as p:
        p.stdin.write(b"abc\n")
        first = p.stdout.read(4)
        p.stdin.close()
        rest = p.stdout.read()
    return first, rest, p.returncode


@case
def case_bufsize_type(sp: Any) -> Any:
    return sp.Popen(["true"], bufsize="1")


@case
def case_pipesize_type(sp: Any) -> Any:
    return sp.Popen(["true"], pipesize=1.5)


@case
def case_pipesize(sp: Any) -> Any:
    size = 1 << 18
    with sp.Popen(["cat"], stdin=sp.PIPE, stdout=sp.PIPE, stderr=sp.PIPE, pipesize=size) as p:
        sizes = [fcntl.fcntl(s.fileno(), fcntl.F_GETPIPE_SZ) for s in (p.stdin, p.stdout, p.stderr)]
        p.communicate()
    return sizes == [size] * 3, p.pipesize


@case
def case_bad_encoding(sp: Any) -> Any:
    return sp.Popen(["true"], stdout=sp.PIPE, encoding="no-such-codec")


@case
def case_errors_alone_means_text(sp: Any) -> Any:
    return sp.run(["echo", "x"], capture_output=True, errors="strict").stdout


@case
def case_bytes_input_in_text_mode(sp: Any) -> Any:
    return sp.run(["cat"], input=b"bytes", text=True, capture_output=True)


@case
def case_argument_types(sp: Any) -> Any:
    return [describe_or(lambda kw=kw: sp.run(("echo", "ok"), capture_output=True, **kw).stdout, None)
            for kw in ({"bufsize": None}, {"pipesize": None}, {"pipesize": -1}, {"close_fds": 0},
                       {"process_group": "x"}, {"umask": "x"}, {"umask": 1.5}, {"restore_signals": []},
                       {"start_new_session": 0}, {"start_new_session": "x"}, {"restore_signals": None},
                       {"env": None}, {"cwd": None})]


@case
def case_keyword_args(sp: Any) -> Any:
    with sp.Popen(args=["echo", "kw"], stdout=sp.PIPE) as p:
        out = p.stdout.read()
    return out, sp.check_call(args=["true"]), sp.call(args="exit 4", shell=True)


# ---- timeouts ----------------------------------------------------------------------------------------------


@case
def case_run_timeout(sp: Any) -> Any:
    try:
        sp.run(["sleep", "10"], timeout=0.2)
    except sp.TimeoutExpired as exc:
        # without pipes the final wait reports what was left of the timeout: a little under 0.2
        return type(exc).__mro__[-5:], exc.cmd, 0.15 < exc.timeout <= 0.2, exc.stdout, exc.stderr
    return None


@case
def case_run_timeout_with_pipes(sp: Any) -> Any:
    return sp.run(["sleep", "10"], timeout=0.2, capture_output=True, input=b"")


@case
def case_run_timeout_partial_output(sp: Any) -> Any:
    return sp.run(["sh", "-c", "echo partial; echo err >&2; exec sleep 10"], capture_output=True, timeout=1.0)


@case
def case_check_output_timeout(sp: Any) -> Any:
    return sp.check_output(["sleep", "10"], timeout=0.1)


@case
def case_call_timeout(sp: Any) -> Any:
    return sp.call(["sleep", "10"], timeout=0.1)


@case
def case_wait_timeout_then_kill(sp: Any) -> Any:
    p = sp.Popen(["sleep", "10"])
    try:
        p.wait(timeout=0.1)
    except sp.TimeoutExpired as exc:
        first = describe(exc)
    poll = p.poll()
    p.kill()
    return first, poll, p.wait(), p.returncode, p.poll()


@case
def case_communicate_timeout_then_again(sp: Any) -> Any:
    p = sp.Popen(["sh", "-c", "echo one; sleep 1; echo two"], stdout=sp.PIPE)
    select.select([p.stdout], [], [], 10)  # "one" is in the pipe: the timeout below cannot race the child
    try:
        p.communicate(timeout=0.2)
    except sp.TimeoutExpired as exc:
        first = describe(exc)
    out, err = p.communicate()
    return first, out, err, p.returncode


@case
def case_communicate_timeout_then_read_the_pipe(sp: Any) -> Any:
    """After communicate() timed out, .stdout is the caller's again, blocking as before."""
    with sp.Popen(["sh", "-c", "sleep 0.5; echo late"], stdout=sp.PIPE) as p:
        with contextlib.suppress(sp.TimeoutExpired):
            p.communicate(timeout=0.1)
        return os.get_blocking(p.stdout.fileno()), p.stdout.read()


@case
def case_sigchld_ignored(sp: Any) -> Any:
    """With SIGCHLD ignored the kernel reaps children itself: a failed exec still raises its own error (the preexec_fn
    path waited for the failed child with a waitpid that raised ChildProcessError), and returncodes are 0."""
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        seen: list[Any] = []
        for options in ({}, {"preexec_fn": lambda: None}):
            try:
                sp.Popen(["/nonexistent/program"], **options)
            except OSError as exc:
                seen.append(describe(exc))
            with sp.Popen(["sh", "-c", "exit 3"], **options) as p:
                pass
            seen.append(p.returncode)
            seen.append(plain(sp.run(["sh", "-c", "echo out; exit 3"], capture_output=True, **options)))
        return seen
    finally:
        signal.signal(signal.SIGCHLD, previous)


@case
def case_timeout_then_context_exit(sp: Any) -> Any:
    # leaving the with block closes stdin: cat sees end of file, so the exit's wait() returns
    first = None
    with sp.Popen(["sh", "-c", "sleep 0.5; exec cat"], stdin=sp.PIPE, stdout=sp.PIPE) as p:
        try:
            p.communicate(b"x" * (4 << 20), timeout=0.2)
        except sp.TimeoutExpired as exc:
            first = (type(exc).__name__, exc.timeout, exc.stdout)
    return first, p.returncode, p.stdin.closed, p.stdout.closed


@case
def case_communicate_zero_timeout(sp: Any) -> Any:
    p = sp.Popen(["sleep", "5"], stdout=sp.PIPE, stderr=sp.PIPE)
    try:
        return p.communicate(timeout=0)
    finally:
        p.kill()
        p.communicate()


# ---- communicate -------------------------------------------------------------------------------------------


@case
def case_communicate_big_both_ways(sp: Any) -> Any:
    data = os.urandom(1 << 20) * 3
    p = sp.Popen(["sh", "-c", "cat; echo done >&2"], stdin=sp.PIPE, stdout=sp.PIPE, stderr=sp.PIPE)
    out, err = p.communicate(data)
    return out == data, err, p.returncode, p.stdin.closed, p.stdout.closed, p.stderr.closed


@case
def case_communicate_twice(sp: Any) -> Any:
    p = sp.Popen(["sh", "-c", "echo out; echo err >&2"], stdout=sp.PIPE, stderr=sp.PIPE)
    first = p.communicate()
    second = p.communicate()
    try:
        p.communicate(b"more")
    except ValueError as exc:
        third = describe(exc)
    return first, second, third


@case
def case_communicate_twice_single_pipe(sp: Any) -> Any:
    p = sp.Popen(["echo", "x"], stdout=sp.PIPE)
    first = p.communicate()
    return first, p.communicate(timeout=1)


@case
def case_input_child_does_not_read(sp: Any) -> Any:
    closes = ["sh", "-c", "exec 0<&-; echo closed"]
    return (sp.run(["true"], input=b"x" * (1 << 21)).returncode,
            sp.run(closes, input=b"y" * (1 << 20), capture_output=True).stdout)


@case
def case_input_child_closes_stdin_single_pipe(sp: Any) -> Any:
    p = sp.Popen(["true"], stdin=sp.PIPE)
    time.sleep(0.05)
    return p.communicate(b"z" * (1 << 20))


@case
def case_stdin_written_then_communicate(sp: Any) -> Any:
    p = sp.Popen(["cat"], stdin=sp.PIPE, stdout=sp.PIPE)
    p.stdin.write(b"before ")
    return p.communicate(b"after")


@case
def case_stdin_closed_then_communicate(sp: Any) -> Any:
    p = sp.Popen(["cat"], stdin=sp.PIPE, stdout=sp.PIPE)
    p.stdin.close()
    return p.communicate()


@case
def case_communicate_no_pipes(sp: Any) -> Any:
    p = sp.Popen(["true"])
    return p.communicate(), p.communicate(b"ignored"), p.returncode


@case
def case_stderr_to_stdout(sp: Any) -> Any:
    return sp.run(["sh", "-c", "echo a; echo b >&2; echo c"], stdout=sp.PIPE, stderr=sp.STDOUT)


@case
def case_devnull(sp: Any) -> Any:
    return (sp.run(["cat"], stdin=sp.DEVNULL, capture_output=True),
            sp.run(["sh", "-c", "echo x; echo y >&2"], stdout=sp.DEVNULL, stderr=sp.PIPE))


@case
def case_pipeline(sp: Any) -> Any:
    p1 = sp.Popen(["sh", "-c", "seq 1 20000"], stdout=sp.PIPE)
    p2 = sp.Popen(["grep", "7"], stdin=p1.stdout, stdout=sp.PIPE)
    p3 = sp.Popen(["wc", "-l"], stdin=p2.stdout, stdout=sp.PIPE, text=True)
    p1.stdout.close()
    p2.stdout.close()
    out, _ = p3.communicate()
    return out.strip(), p1.wait(), p2.wait(), p3.returncode


@case
def case_stdio_from_files(sp: Any) -> Any:
    with tempfile.TemporaryFile() as src, tempfile.TemporaryFile() as dst:
        src.write(b"from a file\n")
        src.seek(0)
        rc = sp.call(["sh", "-c", "cat; echo to-err >&2"], stdin=src, stdout=dst, stderr=dst.fileno())
        dst.seek(0)
        return rc, dst.read()


# ---- programs, arguments, errors ---------------------------------------------------------------------------


@case
def case_missing_program(sp: Any) -> Any:
    return sp.Popen(["pyproc-no-such-program"])


@case
def case_missing_path(sp: Any) -> Any:
    return sp.run(["/nonexistent/dir/prog", "arg"])


@case
def case_missing_pathlike(sp: Any) -> Any:
    return sp.run([pathlib.Path("/nonexistent/prog")])


@case
def case_missing_bytes(sp: Any) -> Any:
    return sp.run([b"pyproc-no-such-program"])


@case
def case_not_executable(sp: Any, tmp: list[str] = []) -> Any:  # noqa: B006
    with tempfile.NamedTemporaryFile(suffix=".sh") as f:
        f.write(b"#!/bin/sh\necho hi\n")
        f.flush()
        return describe_or(lambda: sp.run([f.name]), f.name)


@case
def case_exec_format_error(sp: Any) -> Any:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "prog")
        with open(path, "wb") as f:
            f.write(b"\x7fELF garbage")
        os.chmod(path, 0o755)
        return describe_or(lambda: sp.run([path]), d)


@case
def case_directory(sp: Any) -> Any:
    return sp.run(["/tmp"])


@case
def case_string_args_without_shell(sp: Any) -> Any:
    return sp.run("echo hello")


@case
def case_string_args_single_program(sp: Any) -> Any:
    return sp.run("true").returncode, sp.run(b"true").returncode, sp.run(pathlib.Path("/bin/true")).returncode


@case
def case_empty_args(sp: Any) -> Any:
    return sp.Popen([])


@case
def case_empty_program(sp: Any) -> Any:
    return sp.run([""])


@case
def case_nul_in_arg(sp: Any) -> Any:
    return sp.run(["echo", "a\0b"])


@case
def case_bad_arg_type(sp: Any) -> Any:
    return sp.run(["echo", 3])


@case
def case_args_types(sp: Any) -> Any:
    return sp.check_output(["echo", b"bytes", pathlib.Path("path"), "str"])


@case
def case_executable(sp: Any) -> Any:
    return (sp.check_output(["whatever-name", "-c", "echo $0"], executable="/bin/sh"),
            describe_or(lambda: sp.run(["true"], executable="/nonexistent/exe"), None))


@case
def case_path_search(sp: Any) -> Any:
    with tempfile.TemporaryDirectory() as d:
        prog = os.path.join(d, "pyproc-test-prog")
        with open(prog, "w") as f:
            f.write("#!/bin/sh\necho found $0\n")
        os.chmod(prog, 0o755)
        env = {"PATH": d}
        return (sp.check_output(["pyproc-test-prog"], env=env).replace(d.encode(), b"D"),
                describe_or(lambda: sp.run(["ls"], env=env), d))


# ---- cwd, env ----------------------------------------------------------------------------------------------


@case
def case_cwd(sp: Any) -> Any:
    return (sp.check_output(["pwd"], cwd="/tmp"), sp.check_output(["pwd"], cwd=b"/"),
            sp.check_output(["pwd"], cwd=pathlib.Path("/usr")))


@case
def case_cwd_missing(sp: Any) -> Any:
    return sp.run(["true"], cwd="/nonexistent/dir")


@case
def case_cwd_missing_pathlike(sp: Any) -> Any:
    return sp.run(["pyproc-no-such-program"], cwd=pathlib.Path("/nonexistent/dir"))


@case
def case_cwd_is_a_file(sp: Any) -> Any:
    return sp.run(["true"], cwd="/etc/passwd")


@case
def case_cwd_relative_program(sp: Any) -> Any:
    return sp.check_output(["./true"], cwd="/bin")


@case
def case_env(sp: Any) -> Any:
    return (sp.check_output(["env"], env={"A": "1", b"B": b"2", "EMPTY": ""}),
            sp.check_output(["env"], env={}))


@case
def case_env_illegal_name(sp: Any) -> Any:
    return sp.run(["env"], env={"A=B": "1"})


@case
def case_env_nul(sp: Any) -> Any:
    return sp.run(["env"], env={"A": "x\0y"})


@case
def case_env_bad_type(sp: Any) -> Any:
    return sp.run(["env"], env={"A": 1})


# ---- shell -------------------------------------------------------------------------------------------------


@case
def case_shell(sp: Any) -> Any:
    return (sp.check_output("echo $((6 * 7)); echo $0", shell=True),
            sp.check_output(["echo $0 $1", "zero", "one"], shell=True),
            sp.run("exit 5", shell=True).returncode,
            sp.check_output("echo $BASH_VERSION | cut -c1", shell=True, executable="/bin/bash") != b"\n")


@case
def case_shell_pathlike(sp: Any) -> Any:
    return sp.run(pathlib.Path("/bin/true"), shell=True)


@case
def case_shell_missing_command(sp: Any) -> Any:
    return sp.run("pyproc-no-such-command", shell=True, capture_output=True).returncode


# ---- Popen: attributes, methods, context manager -----------------------------------------------------------


@case
def case_context_manager(sp: Any) -> Any:
    with sp.Popen(["sh", "-c", "echo hi; exit 7"], stdout=sp.PIPE) as p:
        line = p.stdout.readline()
        stdout = p.stdout
    return line, p.returncode, stdout.closed, repr(p)


@case
def case_context_manager_exception(sp: Any) -> Any:
    try:
        with sp.Popen(["sh", "-c", "sleep 0.1; exit 3"], stdout=sp.PIPE) as p:
            raise KeyError("inside")
    except KeyError:
        pass
    return p.returncode, p.stdout.closed


@case
def case_popen_repr_long(sp: Any) -> Any:
    p = sp.Popen(["echo", "x" * 100], stdout=sp.DEVNULL)
    p.wait()
    return repr(p)


@case
def case_poll_and_signals(sp: Any) -> Any:
    p = sp.Popen(["sleep", "10"])
    running = p.poll()
    p.send_signal(signal.SIGINT)
    rc = p.wait()
    p.terminate()  # after the child is reaped: nothing happens
    p.kill()
    p.send_signal(signal.SIGKILL)
    return running, rc, p.returncode, p.args


@case
def case_terminate(sp: Any) -> Any:
    p = sp.Popen(["sleep", "10"])
    p.terminate()
    return p.wait()


@case
def case_send_bad_signal(sp: Any) -> Any:
    p = sp.Popen(["sleep", "10"])
    try:
        return p.send_signal(10_000)
    finally:
        p.kill()
        p.wait()


@case
def case_startupinfo(sp: Any) -> Any:
    return sp.Popen(["true"], startupinfo=object())


@case
def case_creationflags(sp: Any) -> Any:
    return sp.Popen(["true"], creationflags=1)


@case
def case_bad_stdin_fd(sp: Any) -> Any:
    return sp.Popen(["true"], stdin=987)


@case
def case_bad_fd_names(sp: Any) -> Any:
    # what the error names depends on how the standard library would have started the child
    return [describe_or(lambda argv=argv, kw=kw: sp.run(argv, **kw), None)  # type: ignore[misc]
            for argv in (["true"], ["/bin/true"], [pathlib.Path("/bin/true")])
            for kw in ({"stdin": 987}, {"stdout": 987, "close_fds": False}, {"stderr": 987, "cwd": "/"},
                       {"pass_fds": (876,)}, {"stdin": -7})]


@case
def case_stdout_is_stdout(sp: Any) -> Any:
    return sp.run(["true"], stdout=sp.STDOUT)


@case
def case_pre_exec_failure_with_cwd(sp: Any) -> Any:
    return sp.run(["true"], start_new_session=True, process_group=0, cwd="/")


@case
def case_missing_pathlike_variants(sp: Any) -> Any:
    missing = pathlib.Path("/nonexistent/prog")
    return [describe_or(lambda kw=kw: sp.run([missing], **kw), None)  # type: ignore[misc]
            for kw in ({}, {"close_fds": False}, {"cwd": "/"}, {"umask": 0o22}, {"stdout": sp.DEVNULL},
                       {"executable": missing}, {"preexec_fn": lambda: None})]


@case
def case_stdin_file_object_closed(sp: Any) -> Any:
    f = open(os.devnull)  # noqa: SIM115
    f.close()
    return sp.Popen(["true"], stdin=f)


@case
def case_pass_fds(sp: Any) -> Any:
    r, w = os.pipe()
    try:
        rc = sp.call(["sh", "-c", f"echo through-{w} >&{w}"], pass_fds=(w,))
        os.close(w)
        w = -1
        return rc, os.read(r, 100).replace(str(r + 1).encode(), b"W")
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


@case
def case_close_fds(sp: Any) -> Any:
    r, w = os.pipe()
    os.set_inheritable(r, True)
    try:
        listing = [PY, "-c", "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))"]
        closed = sp.check_output(listing)
        passed = sp.check_output(listing, pass_fds=[r])
        inherited = sp.check_output(listing, close_fds=False)
        return closed, passed.replace(str(r).encode(), b"R"), str(r).encode() in inherited
    finally:
        os.close(r)
        os.close(w)


@case
def case_pass_fds_overrides_close_fds(sp: Any) -> Any:
    r, w = os.pipe()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sp.call(["true"], pass_fds=(r,), close_fds=False)
        return [(w.category.__name__, str(w.message)) for w in caught]
    finally:
        os.close(r)
        os.close(w)


@case
def case_pass_fds_negative(sp: Any) -> Any:
    return sp.Popen(["true"], pass_fds=(-3,))


@case
def case_pass_fds_closed(sp: Any) -> Any:
    return sp.Popen(["true"], pass_fds=(876,))


# ---- process attributes ------------------------------------------------------------------------------------

PRINT_IDS = [PY, "-c", "import os; print(os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid(), "
             "oct(os.umask(0)), os.getuid(), os.getgid(), sorted(os.getgroups()))"]


@case
def case_session_group_umask(sp: Any) -> Any:
    return (sp.check_output(PRINT_IDS), sp.check_output(PRINT_IDS, start_new_session=True),
            sp.check_output(PRINT_IDS, process_group=0), sp.check_output(PRINT_IDS, umask=0o027),
            sp.check_output(PRINT_IDS, umask=0o7777))


@case
def case_session_and_group(sp: Any) -> Any:
    return sp.run(["true"], start_new_session=True, process_group=0)


@case
def case_restore_signals(sp: Any) -> Any:
    sigign = ["sh", "-c", "grep SigIgn /proc/self/status"]
    return sp.check_output(sigign) == sp.check_output(sigign, restore_signals=True), \
        sp.check_output(sigign, restore_signals=False)


@case
def case_user_group(sp: Any) -> Any:
    if os.getuid() != 0:
        return "not root"
    nobody = pwd.getpwnam("nobody")
    nogroup = grp.getgrgid(nobody.pw_gid).gr_name
    ids = ["sh", "-c", "id -u; id -g; id -G"]
    return (sp.check_output(ids, user="nobody", group=nogroup, extra_groups=[nogroup, 0]),
            sp.check_output(ids, user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[]),
            sp.check_output(ids, extra_groups=[nobody.pw_gid]),
            sp.check_output(ids, group=nobody.pw_gid),
            describe_or(lambda: sp.run([PY, "-c", "pass"], user="nobody"), None))


@case
def case_user_unknown(sp: Any) -> Any:
    return sp.run(["true"], user="pyproc-no-such-user")


@case
def case_group_unknown(sp: Any) -> Any:
    return sp.run(["true"], group="pyproc-no-such-group")


@case
def case_group_negative(sp: Any) -> Any:
    return sp.run(["true"], group=-2)


@case
def case_group_bad_type(sp: Any) -> Any:
    return sp.run(["true"], group=1.5)


@case
def case_extra_groups_string(sp: Any) -> Any:
    return sp.run(["true"], extra_groups="wheel")


@case
def case_extra_groups_bad_item(sp: Any) -> Any:
    return sp.run(["true"], extra_groups=[None])


@case
def case_user_negative(sp: Any) -> Any:
    return sp.run(["true"], user=-5)


@case
def case_user_bad_type(sp: Any) -> Any:
    return sp.run(["true"], user=[1])


@case
def case_setuid_refused(sp: Any) -> Any:
    if os.getuid() == 0:
        return sp.run(["true"], user=65534, preexec_fn=None, start_new_session=False, group=65534,
                      extra_groups=[1]).returncode
    return sp.run(["true"], user=0)


# ---- preexec_fn --------------------------------------------------------------------------------------------


@case
def case_preexec_fn(sp: Any) -> Any:
    def child_setup() -> None:
        os.environ["PYPROC_PREEXEC"] = "ran"
        os.write(1, b"preexec wrote\n")

    return sp.check_output(["sh", "-c", "echo $PYPROC_PREEXEC"], preexec_fn=child_setup)


@case
def case_preexec_fn_raises(sp: Any) -> Any:
    def child_setup() -> None:
        raise RuntimeError("boom")

    return sp.run(["true"], preexec_fn=child_setup, capture_output=True)


@case
def case_preexec_fn_exit(sp: Any) -> Any:
    return sp.run(["true"], preexec_fn=sys.exit)


@case
def case_preexec_fn_then_missing_program(sp: Any) -> Any:
    return sp.run(["pyproc-no-such-program"], preexec_fn=lambda: None, cwd="/")


@case
def case_preexec_fn_with_cwd_error(sp: Any) -> Any:
    return sp.run(["true"], preexec_fn=lambda: None, cwd="/nonexistent")


@case
def case_preexec_fn_opens_fd(sp: Any) -> Any:
    listing = [PY, "-c", "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))"]
    return sp.check_output(listing, preexec_fn=lambda: os.open(os.devnull, os.O_RDONLY))


@case
def case_preexec_fn_signal_disposition(sp: Any) -> Any:
    sigign = ["sh", "-c", "grep SigIgn /proc/self/status"]
    return sp.check_output(sigign, preexec_fn=lambda: signal.signal(signal.SIGUSR1, signal.SIG_IGN))


@case
def case_preexec_fn_setsid_umask(sp: Any) -> Any:
    return sp.check_output(PRINT_IDS, preexec_fn=os.setsid, umask=0o022)


# ---- convenience functions ---------------------------------------------------------------------------------


@case
def case_check_output_error(sp: Any) -> Any:
    return sp.check_output(["sh", "-c", "echo partial; echo e >&2; exit 3"], stderr=sp.PIPE)


@case
def case_check_output_signal(sp: Any) -> Any:
    return sp.check_output(["sh", "-c", "kill -9 $$"])


@case
def case_check_output_stdout_arg(sp: Any) -> Any:
    return sp.check_output(["true"], stdout=None)


@case
def case_check_output_check_arg(sp: Any) -> Any:
    return sp.check_output(["true"], check=False)


@case
def case_check_output_input_none(sp: Any) -> Any:
    return sp.check_output(["cat"], input=None), sp.check_output(["cat"], input=None, text=True)


@case
def case_check_call(sp: Any) -> Any:
    return sp.check_call(["true"]), describe_or(lambda: sp.check_call(["false"]), None), \
        describe_or(lambda: sp.check_call(args=["sh", "-c", "exit 9"]), None)


@case
def case_run_check(sp: Any) -> Any:
    return sp.run(["sh", "-c", "echo o; echo e >&2; exit 1"], capture_output=True, check=True, text=True)


@case
def case_run_input_and_stdin(sp: Any) -> Any:
    return sp.run(["cat"], input=b"x", stdin=sp.PIPE)


@case
def case_run_capture_and_stdout(sp: Any) -> Any:
    return sp.run(["true"], capture_output=True, stderr=sp.PIPE)


@case
def case_getstatusoutput(sp: Any) -> Any:
    return (sp.getstatusoutput("echo out; echo err >&2"), sp.getstatusoutput("exit 3"),
            sp.getstatusoutput("kill $$"), sp.getstatusoutput("printf 'no newline'"),
            sp.getstatusoutput("pyproc-no-such-command")[0])


@case
def case_getoutput(sp: Any) -> Any:
    return (sp.getoutput("echo one; echo two"),
            sp.getoutput("printf '\\377'", errors="replace", encoding="utf-8"))


@case
def case_list2cmdline(sp: Any) -> Any:
    return sp.list2cmdline(["a b", 'c"d', "e\\", "", "f\\\\\"g"])


# ---- the pipes' file objects (pyproc makes them when first asked for) ------------------------------------


def numbered(text: str) -> str:
    """text with fd numbers and pids replaced (they may differ between two runs)."""
    return re.sub(r"\d+", "N", text)


def pipe_object(stream: Any) -> Any:
    """What a caller can see of a pipe's file object, open or closed."""
    mode = getattr(stream, "mode", None)  # (a TextIOWrapper made by hand has none)
    reading = mode == "rb" or (mode is None and stream.buffer.mode == "rb")
    seen: list[Any] = [type(stream).__name__, stream.closed, mode, numbered(repr(stream)),
                       type(stream.name).__name__]
    data = b"x" if mode is not None else "x"
    for method, args in (("fileno", ()), ("read", ()) if reading else ("write", (data,)), ("readable", ()),
                         ("writable", ()), ("flush", ())):
        try:
            result = getattr(stream, method)(*args)
            seen.append((method, type(result).__name__))
        except Exception as exc:
            seen.append((method, describe(exc)))
    return seen


@case
def case_pipe_objects_after_communicate(sp: Any) -> Any:
    p = sp.Popen(["cat"], stdin=sp.PIPE, stdout=sp.PIPE, stderr=sp.PIPE)
    out = p.communicate(b"data")
    streams = (p.stdin, p.stdout, p.stderr)
    names = [s.name for s in streams]
    return out, [pipe_object(s) for s in streams], [n - names[0] for n in names], p.returncode


@case
def case_pipe_objects_after_communicate_no_input(sp: Any) -> Any:
    p = sp.Popen(["sh", "-c", "echo out; echo err >&2"], stdin=sp.PIPE, stdout=sp.PIPE, stderr=sp.PIPE)
    out = p.communicate()
    return out, [pipe_object(s) for s in (p.stdin, p.stdout, p.stderr)]


@case
def case_pipe_objects_while_running(sp: Any) -> Any:
    with sp.Popen(["cat"], stdin=sp.PIPE, stdout=sp.PIPE, stderr=sp.PIPE) as p:
        seen = [[type(s).__name__, s.closed, s.mode, os.get_blocking(s.fileno()),
                 stat_kind(s.fileno())] for s in (p.stdin, p.stdout, p.stderr)]
        same = p.stdout is p.stdout  # made once
        p.stdin.write(b"line\n")
        p.stdin.flush()
        seen.append(p.stdout.readline())
    return seen, same, [s.closed for s in (p.stdin, p.stdout, p.stderr)], p.returncode


def stat_kind(fd: int) -> str:
    import stat

    return "fifo" if stat.S_ISFIFO(os.fstat(fd).st_mode) else "other"


@case
def case_one_pipe_object_then_communicate(sp: Any) -> Any:
    # stdout's file object is made (and read from) before communicate(); stdin and stderr are not touched.
    p = sp.Popen(["sh", "-c", "echo first; read x; echo got $x; echo err >&2"], stdin=sp.PIPE, stdout=sp.PIPE,
                 stderr=sp.PIPE)
    first = p.stdout.readline()
    out = p.communicate(b"more\n")
    return first, out, [pipe_object(s) for s in (p.stdin, p.stdout, p.stderr)]


@case
def case_stdin_written_then_communicate_no_input(sp: Any) -> Any:
    p = sp.Popen(["cat"], stdin=sp.PIPE, stdout=sp.PIPE)
    p.stdin.write(b"buffered, not flushed")
    return p.communicate(), p.stdin.closed, p.stdout.closed


@case
def case_context_manager_closes_untouched_pipes(sp: Any) -> Any:
    with sp.Popen(["true"], stdin=sp.PIPE, stdout=sp.PIPE, stderr=sp.PIPE) as p:
        pass
    return [pipe_object(s) for s in (p.stdin, p.stdout, p.stderr)], p.returncode


@case
def case_communicate_after_context_exit(sp: Any) -> Any:
    with sp.Popen(["echo", "x"], stdout=sp.PIPE, stderr=sp.PIPE) as p:
        pass
    return p.communicate(), p.stdout.closed


@case
def case_communicate_stdin_after_context_exit(sp: Any) -> Any:
    with sp.Popen(["cat"], stdin=sp.PIPE, stdout=sp.PIPE) as p:
        pass
    return p.communicate(b"late")


@case
def case_single_pipe_objects_after_communicate(sp: Any) -> Any:
    seen = []
    for kw in ({"stdout": sp.PIPE}, {"stderr": sp.PIPE}, {"stdin": sp.PIPE}):
        p = sp.Popen(["sh", "-c", "cat; echo to-out; echo to-err >&2"], **kw)
        seen.append(p.communicate(b"in" if "stdin" in kw else None))
        seen.append([None if s is None else pipe_object(s) for s in (p.stdin, p.stdout, p.stderr)])
    return seen


@case
def case_check_output_then_again(sp: Any) -> Any:
    p = sp.Popen(["echo", "x"], stdout=sp.PIPE)
    first = p.communicate()
    return first, p.communicate(), pipe_object(p.stdout)


@case
def case_pipe_objects_between_timeout_and_communicate(sp: Any) -> Any:
    p = sp.Popen(["sh", "-c", "echo a; sleep 0.3; echo b; echo e >&2"], stdout=sp.PIPE, stderr=sp.PIPE)
    try:
        p.communicate(timeout=0.05)
        timed_out = False
    except sp.TimeoutExpired:
        timed_out = True
    between = [type(p.stdout).__name__, p.stdout.closed, isinstance(p.stdout.fileno(), int)]
    out = p.communicate()
    return timed_out, between, out, p.stdout.closed, p.stderr.closed, p.returncode


def text_pipe_object(stream: Any) -> Any:
    """pipe_object() for a text-mode pipe: the wrapper's settings and its buffer too."""
    return [pipe_object(stream), stream.encoding, stream.errors, stream.line_buffering,
            getattr(stream, "write_through", None), type(stream.buffer).__name__, stream.buffer.closed]


@case
def case_text_pipe_objects_after_communicate(sp: Any) -> Any:
    seen = []
    for kw in ({"text": True}, {"encoding": "latin-1", "errors": "replace"}, {"universal_newlines": True},
               {"errors": "strict"}, {"encoding": "locale"}):
        p = sp.Popen(["sh", "-c", "cat; printf 'a\\r\\nb\\xe9\\n' >&2"], stdin=sp.PIPE, stdout=sp.PIPE,
                     stderr=sp.PIPE, **kw)
        seen.append((p.communicate("in\r\n"), p.encoding == "locale" or p.encoding == p.stdout.encoding))
        seen.append([text_pipe_object(s) for s in (p.stdin, p.stdout, p.stderr)])
    return seen


@case
def case_text_pipe_objects_while_running(sp: Any) -> Any:
    with sp.Popen(["cat"], stdin=sp.PIPE, stdout=sp.PIPE, text=True, encoding="utf-8") as p:
        seen = [[type(s).__name__, s.closed, s.encoding, s.errors, getattr(s, "write_through", None)]
                for s in (p.stdin, p.stdout)]
        p.stdin.write("é\n")
        p.stdin.flush()
        seen.append(p.stdout.readline())
    return seen, [s.closed for s in (p.stdin, p.stdout)]


@case
def case_text_options_checked(sp: Any) -> Any:
    seen = []
    for kw in ({"stdout": sp.PIPE, "encoding": "rot13"}, {"stdout": sp.PIPE, "encoding": 1},
               {"stdout": sp.PIPE, "text": True, "errors": 1}, {"encoding": "no-such-codec"},
               {"stdin": sp.PIPE, "encoding": "no-such-codec"}, {"stdout": sp.PIPE, "text": True, "errors": "bogus"}):
        def run(kw: dict[str, Any] = kw) -> Any:
            with sp.Popen(["true"], **kw) as p:
                return p.communicate()
        seen.append(describe_or(run, None))
    return seen


@case
def case_text_mode_switched_after_start(sp: Any) -> Any:
    seen = []
    p = sp.Popen(["cat"], stdin=sp.PIPE, stdout=sp.PIPE, stderr=sp.PIPE)
    p.universal_newlines = True  # the pipes stay binary
    seen.append(describe_or(lambda: p.communicate("x"), None))
    p.kill()
    p.wait()
    p.stdin.close()
    p.stdout.close()
    p.stderr.close()
    q = sp.Popen(["cat"], stdin=sp.PIPE, stdout=sp.PIPE, stderr=sp.PIPE, text=True)
    q.universal_newlines = False  # the pipes stay text
    seen.append(q.communicate(b"y\r\n"))
    return seen


@case
def case_text_pipes_warn_when_collected(sp: Any) -> Any:
    def finished() -> Any:
        p = sp.Popen(["true"], stdin=sp.PIPE, stdout=sp.PIPE, stderr=sp.PIPE, encoding="latin-1")
        p.wait()
        return p

    return collected_warnings(finished)


@case
def case_text_single_pipe(sp: Any) -> Any:
    return (sp.check_output(["printf", "a\\r\\nb"], text=True),
            sp.run(["sh", "-c", "printf 'e\\r' >&2"], stderr=sp.PIPE, encoding="ascii").stderr,
            sp.run(["sh", "-c", "cat >/dev/null"], input="i\n", text=True).returncode)


@case
def case_devnull_and_stdout_combinations(sp: Any) -> Any:
    # where the child's fds 0-2 lead (pipe / /dev/null / the parent's), for str and bytes argv (two paths)
    script = "for f in 0 1 2; do readlink /proc/$$/fd/$f; done; cat; echo err >&2"
    seen = []
    for kw in ({"stdin": sp.DEVNULL, "stdout": sp.PIPE}, {"stdout": sp.PIPE, "stderr": sp.STDOUT},
               {"stdin": sp.PIPE, "stdout": sp.DEVNULL, "stderr": sp.STDOUT},
               {"stdin": sp.DEVNULL, "stdout": sp.PIPE, "stderr": sp.DEVNULL},
               {"stdin": sp.PIPE, "stdout": sp.PIPE, "stderr": sp.PIPE}):
        for argv in (["sh", "-c", script], [b"sh", "-c", script], ["/bin/sh", "-c", script]):
            with sp.Popen(argv, **kw) as p:
                out = p.communicate(b"in" if kw.get("stdin") == sp.PIPE else None)
            seen.append((sorted(kw.items()), [None if o is None else numbered(o.decode()) for o in out],
                         p.returncode, [s is None for s in (p.stdin, p.stdout, p.stderr)]))
    return seen


def collected_warnings(make: Callable[[], Any]) -> list[tuple[str, str]]:
    """The warnings emitted while the object make() returns is dropped and collected."""
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        obj = make()
        del obj
        gc.collect()
    return [(w.category.__name__, numbered(str(w.message))) for w in caught]


@case
def case_unclosed_pipes_warn_when_collected(sp: Any) -> Any:
    def finished() -> Any:
        p = sp.Popen(["true"], stdin=sp.PIPE, stdout=sp.PIPE, stderr=sp.PIPE)
        p.wait()
        return p

    def closed_by_communicate() -> Any:
        p = sp.Popen(["true"], stdin=sp.PIPE, stdout=sp.PIPE, stderr=sp.PIPE)
        p.communicate()
        return p

    def one_closed() -> Any:
        p = sp.Popen(["true"], stdin=sp.PIPE, stdout=sp.PIPE, stderr=sp.PIPE)
        p.stdin.close()
        p.wait()
        return p

    return [collected_warnings(make) for make in (finished, closed_by_communicate, one_closed)]


@case
def case_pipe_attribute_replaced(sp: Any) -> Any:
    p = sp.Popen(["sh", "-c", "echo err >&2"], stdout=sp.PIPE, stderr=sp.PIPE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p.stdout = None  # the pipe's file object is dropped: closed, with the warning of an unclosed file
        gc.collect()
    return [numbered(str(w.message)) for w in caught], p.communicate(), p.stdout, p.returncode


# ---- what a drop-in must also get right: generic aliases, a stdin left unread, attributes as plain attributes,
# the ranges of ids, the hooks subclasses override ----------------------------------------------------------


@case
def case_generic_aliases(sp: Any) -> Any:
    import types

    class Sub(sp.Popen[str]):  # a generic alias as a base class: the class itself
        pass

    with Sub(["echo", "x"], stdout=sp.PIPE, text=True) as p:
        out = p.communicate()[0]
    popen_alias, completed_alias = sp.Popen[bytes], sp.CompletedProcess[str]
    return (type(popen_alias) is types.GenericAlias, popen_alias.__origin__ is sp.Popen, popen_alias.__args__,
            type(completed_alias) is types.GenericAlias, completed_alias.__args__, Sub.__bases__ == (sp.Popen,),
            out)


@case
def case_stdin_left_unread(sp: Any) -> Any:
    """The caller wrote to .stdin (the bytes wait in its buffer), the child exited without reading: flushing and
    closing .stdin meet a broken pipe in communicate(), with and without a timeout, with and without input, and
    in the with block's exit."""
    seen = []
    for stdout, stderr, text, input, timeout in [
            (sp.PIPE, None, False, b"in", None), (sp.PIPE, None, False, b"in", 5), (None, None, False, b"in", 5),
            (None, None, False, b"in", None), (sp.PIPE, None, False, None, None), (sp.PIPE, None, False, None, 5),
            (sp.PIPE, sp.PIPE, False, b"in", 5), (sp.PIPE, sp.PIPE, True, "in", None), (None, None, True, "", 5)]:
        p = sp.Popen(["true"], stdin=sp.PIPE, stdout=stdout, stderr=stderr, text=text)
        p.wait()  # gone: nobody reads the pipe any more
        p.stdin.write("x" * 10 if text else b"x" * 10)
        seen.append((describe_or(lambda p=p, input=input, timeout=timeout: p.communicate(input, timeout), None),
                     p.stdin.closed))
        seen.append(describe_or(lambda p=p: p.__exit__(None, None, None), None))
    with contextlib.ExitStack() as stack:
        p = stack.enter_context(sp.Popen(["true"], stdin=sp.PIPE))
        p.wait()
        p.stdin.write(b"x" * 10)
        seen.append(describe_or(stack.close, None))  # the with block's exit: closing .stdin raises
    return seen


@case
def case_pipe_attributes_deleted(sp: Any) -> Any:
    p = sp.Popen(["cat"], stdin=sp.PIPE, stdout=sp.PIPE, stderr=sp.PIPE)
    seen: list[Any] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del p.stdout  # the file object dropped: closed, with the unclosed-file warning
        gc.collect()
    seen.append([numbered(str(w.message)) for w in caught])
    seen.append(describe_or(lambda: p.stdout, None))
    seen.append(hasattr(p, "stdout"))
    seen.append(describe_or(lambda: delattr(p, "stdout"), None))
    seen.append(describe_or(lambda: p.communicate(b"x"), None))  # (communicate needs .stdout)
    p.stdout = None
    seen.append(describe_or(lambda: p.communicate(b"x"), None))
    err = p.stderr
    del p.stderr
    seen.append((err.closed, describe_or(p.wait, None)))
    err.close()
    return seen


@case
def case_pipe_attributes_patched(sp: Any) -> Any:
    """unittest.mock.patch.object on the pipe attributes: replaced inside the block, the originals back after."""
    import io
    from unittest import mock

    p = sp.Popen(["sh", "-c", "cat; echo err >&2"], stdin=sp.PIPE, stdout=sp.PIPE, stderr=sp.PIPE)
    with mock.patch.object(p, "stdout", io.BytesIO(b"fake")), mock.patch.object(p, "stdin", None):
        inside = (p.stdout.read(), p.stdin)
    stdout = p.stdout
    with mock.patch.object(p, "stderr", io.BytesIO(b"fake err")):
        inside += (p.stderr.read(),)
    after = (p.stdout is stdout, type(p.stdin).__name__, type(p.stderr).__name__)
    return inside, after, p.communicate(b"real"), p.returncode


@case
def case_ids_out_of_range(sp: Any) -> Any:
    """user / group / extra_groups: the range checks and messages of the standard library's conversion."""
    big = [2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**63 + 5, 2**64 - 1, 2**64, 2**100]
    kwargs: list[dict[str, Any]] = [{"user": v} for v in big] + [{"group": v} for v in big]
    kwargs += [{"extra_groups": [v]} for v in big if v != 2**31]
    kwargs += [{"extra_groups": [0, 2**64]}, {"group": 2**64, "extra_groups": [2**64]},
               {"group": 2**64, "user": 2**64}, {"extra_groups": [2**64], "user": 2**64},
               {"group": 2**64, "umask": 1.5}, {"group": 2**64, "pass_fds": [-1]},
               {"extra_groups": [0] * 65537}, {"user": True, "group": False}]
    return [(sorted((k, v if not isinstance(v, list) or len(v) < 3 else len(v)) for k, v in kw.items()),
             describe_or(lambda kw=kw: sp.run(["true"], **kw).returncode, None)) for kw in kwargs]


@case
def case_empty_extra_groups(sp: Any) -> Any:
    """extra_groups=[] drops every supplementary group (setgroups with none), where None leaves them."""
    if os.geteuid() != 0:
        return "needs root (setgroups)"
    saved = os.getgroups()
    os.setgroups([1, 2])
    try:
        return sp.check_output(["id", "-G"], extra_groups=[]), sp.check_output(["id", "-G"])
    finally:
        os.setgroups(saved)


def recording_popen(sp: Any, calls: list[Any]) -> Any:
    """A subclass of sp.Popen whose documented-private hooks record their calls and call the original."""

    class Recording(sp.Popen):  # type: ignore[name-defined,misc]
        def _get_handles(self, stdin: Any, stdout: Any, stderr: Any) -> Any:
            calls.append(("_get_handles", stdin, stdout, stderr))
            return super()._get_handles(stdin, stdout, stderr)

        def _execute_child(self, *args: Any) -> Any:
            # (args, executable, ..., env, startupinfo, creationflags, shell, ...: the standard signature)
            calls.append(("_execute_child", len(args), args[0], args[1], args[6], args[7], args[8], args[9]))
            return super()._execute_child(*args)

        def _communicate(self, input: Any, endtime: Any, orig_timeout: Any) -> Any:
            calls.append(("_communicate", input, endtime is None, orig_timeout))
            return super()._communicate(input, endtime, orig_timeout)

        def _wait(self, timeout: Any) -> Any:
            calls.append(("_wait", timeout if timeout is None else 0 < timeout <= 10))  # (what was left of 10 s)
            return super()._wait(timeout)

    return Recording


@case
def case_hooks_overridden(sp: Any) -> Any:
    calls: list[Any] = []
    popen = recording_popen(sp, calls)
    with popen(["sh", "-c", "echo out; echo err >&2"], stdout=sp.PIPE, stderr=sp.PIPE) as p:
        calls.append(p.communicate())
    with popen(["echo", "x"], stdout=sp.PIPE) as p:
        calls.append(p.communicate())
    with popen(["true"]) as p:
        calls.append(p.wait())
    with popen(["cat"], stdin=sp.PIPE, stdout=sp.PIPE, text=True) as p:
        calls.append(p.communicate("in", timeout=10))
    return calls


@case
def case_execute_child_replaced(sp: Any) -> Any:
    """An _execute_child that starts the child by its own means and sets pid: poll, wait and signals reach it."""

    class Spawned(sp.Popen):  # type: ignore[name-defined,misc]
        def _execute_child(self, args: Any, executable: Any, *rest: Any) -> None:
            self.pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 7"], os.environ)
            self._child_created = True

    class Sleeping(sp.Popen):  # type: ignore[name-defined,misc]
        def _execute_child(self, args: Any, executable: Any, *rest: Any) -> None:
            self.pid = os.posix_spawn("/bin/sleep", ["sleep", "30"], os.environ)
            self._child_created = True

    p = Spawned(["not run"])
    first = (p.wait(), p.returncode, p.poll())
    q = Sleeping(["not run"])
    running = q.poll()
    q.terminate()
    return first, running, q.wait()


@case
def case_hooks_patched(sp: Any) -> Any:
    """unittest.mock.patch.object on Popen's hooks reaches every way of starting and waiting (run()'s too)."""
    from unittest import mock

    seen: list[Any] = []
    with mock.patch.object(sp.Popen, "_execute_child", side_effect=OSError(errno.EIO, "patched")):
        seen.append(describe_or(lambda: sp.run(["true"]), None))
        seen.append(describe_or(lambda: sp.run(["true"], capture_output=True), None))
        seen.append(describe_or(lambda: sp.Popen(["true"], stdout=sp.PIPE, stderr=sp.STDOUT), None))
    with mock.patch.object(sp.Popen, "_get_handles", side_effect=OSError(errno.EMFILE, "patched")):
        seen.append(describe_or(lambda: sp.check_output(["true"]), None))

    def communicate(self: Any, input: Any = None, timeout: Any = None) -> Any:
        self.wait()
        return b"fake out", b"fake err"

    with mock.patch.object(sp.Popen, "communicate", autospec=True, side_effect=communicate):
        seen.append(plain(sp.run(["true"], capture_output=True)))
    with mock.patch.object(sp.Popen, "_communicate", return_value=(b"o", b"e")):
        seen.append(plain(sp.run(["true"], capture_output=True)))
    return seen


def describe_or(fn: Callable[[], Any], strip: str | None) -> Any:
    """observe() for a nested call, with a temporary path replaced so that results compare across runs."""
    kind, seen = observe(lambda _: fn(), None)
    if strip and isinstance(seen, dict):
        seen = {k: (v.replace(strip, "TMP") if isinstance(v, str) else v) for k, v in seen.items()}
    return kind, seen


# ---- the differential test ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_as_stdlib(name: str) -> None:
    if (versions := applies(name)) is not None:
        pytest.skip(versions)
    fn = CASES[name]
    with standard_library():
        expected = observe(fn, std)
    with no_fd_leak():
        got = observe(fn, TESTED)
    assert got == expected


def test_leak_check_waits_for_abandoned_children() -> None:
    """A Popen collected while its child still runs is no leak once the child ends: no_fd_leak waits for it.

    Regression: stdin_closed_then_communicate once reported "fds left open: [15]" under load.  Its Popen is
    dropped (communicate() raised) while cat has not yet seen its end of file, so the child's pidfd waits in
    pyproc.process.abandoned until cat exits and is reaped; the check gave that 2 s and cat took longer.  Here a
    child that outlives a 0.1 s grace stands for the slow cat.
    """

    def case(sp: Any) -> Any:
        p = sp.Popen(["sh", "-c", "sleep 0.5; exec cat"], stdin=sp.PIPE, stdout=sp.PIPE)
        p.stdin.close()
        return p.pid > 0  # p is dropped here, its child still running

    with standard_library():
        expected = observe(case, std)
    started = time.monotonic()
    with no_fd_leak(grace=0.1):
        got = observe(case, TESTED)
        assert abandoned  # the collected Popen's child still runs: its pidfd is parked, not leaked
    assert time.monotonic() - started >= 0.4  # the check waited for the child, not just the grace
    assert got == expected


PUMP_CASES = ["communicate_big_both_ways", "timeout_then_context_exit", "communicate_timeout_then_again",
              "communicate_twice",
              "input_child_does_not_read", "run_timeout_partial_output", "stdin_written_then_communicate",
              "text_input", "str_input_in_binary_mode", "communicate_zero_timeout", "stderr_to_stdout",
              "pipe_objects_after_communicate", "one_pipe_object_then_communicate",
              "single_pipe_objects_after_communicate", "context_manager_closes_untouched_pipes",
              "unclosed_pipes_warn_when_collected", "text_pipe_objects_after_communicate",
              "text_mode_switched_after_start", "communicate_timeout_then_read_the_pipe"]


@pytest.mark.parametrize("name", PUMP_CASES)
def test_selectors_pump_same_as_stdlib(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback pump (selectors) keeps working where pyproc.io's C pump is what communicate() uses."""
    from pyproc import _subprocess_pump

    monkeypatch.setattr(_subprocess_pump, "_Pump", None)
    fn = CASES[name]
    with standard_library():
        expected = observe(fn, std)
    with no_fd_leak():
        got = observe(fn, TESTED)
    assert got == expected


# ---- explicit expectations, checked on both modules --------------------------------------------------------


def test_missing_program_error(sp: Any) -> None:
    with pytest.raises(FileNotFoundError) as info:
        sp.Popen(["pyproc-no-such-program", "arg"])
    assert info.value.errno == 2
    assert info.value.filename == "pyproc-no-such-program"
    assert str(info.value) == "[Errno 2] No such file or directory: 'pyproc-no-such-program'"


def test_bad_cwd_reports_cwd(sp: Any) -> None:
    with pytest.raises(FileNotFoundError) as info:
        sp.run(["true"], cwd="/nonexistent/pyproc")
    assert info.value.filename == "/nonexistent/pyproc"


def test_exceptions_are_the_stdlib_classes(sp: Any) -> None:
    assert sp.SubprocessError is std.SubprocessError
    with pytest.raises(std.CalledProcessError) as called:
        sp.check_call(["false"])
    assert called.value.returncode == 1
    assert str(called.value) == "Command '['false']' returned non-zero exit status 1."
    with pytest.raises(std.TimeoutExpired) as timeout:
        sp.run(["sleep", "10"], timeout=0.05)
    assert 0 < timeout.value.timeout <= 0.05  # what was left of it when the final wait timed out
    with pytest.raises(sp.TimeoutExpired):
        sp.run(["sleep", "10"], timeout=0.05)


def test_preexec_fn_failure(sp: Any) -> None:
    def fail() -> None:
        raise ValueError("in the child")

    with no_fd_leak(), pytest.raises(std.SubprocessError) as info:
        sp.Popen(["true"], preexec_fn=fail)
    assert type(info.value) is std.SubprocessError
    assert str(info.value) == "Exception occurred in preexec_fn."


def test_preexec_fn_runs_in_child_before_exec(sp: Any, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "marker"

    def child_setup() -> None:
        marker.write_text(str(os.getpid()))

    p = sp.Popen(["true"], preexec_fn=child_setup)
    assert p.wait() == 0
    assert marker.read_text() == str(p.pid)


def test_resource_warning_for_running_child(sp: Any) -> None:
    gc.collect()  # Popen objects of earlier tests, kept in reference cycles, must not warn in here
    p = sp.Popen(["sleep", "10"])
    pid = p.pid
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        del p
        gc.collect()
    messages = [str(w.message) for w in caught if w.category is ResourceWarning]
    assert messages == [f"subprocess {pid} is still running"]
    os.kill(pid, signal.SIGKILL)
    # the module reaps the abandoned child later, without blocking: at the next Popen
    def state() -> str:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ")[1][0]
        except FileNotFoundError:
            return "gone"

    deadline = time.monotonic() + 5
    while state() not in ("Z", "gone") and time.monotonic() < deadline:  # SIGKILL takes a moment
        time.sleep(0.005)
    while state() != "gone" and time.monotonic() < deadline:
        sp.call(["true"])
        time.sleep(0.01)
    assert state() == "gone"


def test_no_warning_for_finished_child(sp: Any) -> None:
    p = sp.Popen(["true"])
    p.wait()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        del p
        gc.collect()
    assert not [w for w in caught if w.category is ResourceWarning]


def test_timeout_kills_child(sp: Any) -> None:
    with pytest.raises(sp.TimeoutExpired) as info:
        sp.run(["sh", "-c", "echo $$; exec sleep 30"], stdout=sp.PIPE, timeout=0.5)
    pid = int(info.value.stdout)
    assert not os.path.exists(f"/proc/{pid}")


def test_wait_timeout_keeps_child(sp: Any) -> None:
    with sp.Popen(["sleep", "10"]) as p:
        t0 = time.monotonic()
        with pytest.raises(sp.TimeoutExpired):
            p.wait(timeout=0.2)
        assert time.monotonic() - t0 >= 0.19
        assert p.poll() is None
        p.kill()
    assert p.returncode == -signal.SIGKILL


def test_popen_generic_alias(sp: Any) -> None:
    """Popen[bytes] and CompletedProcess[str] are types.GenericAlias, usable in annotations evaluated at run time
    and as base classes."""
    import types
    import typing

    assert type(sp.Popen[bytes]) is types.GenericAlias
    assert type(sp.CompletedProcess[str]) is types.GenericAlias
    assert sp.Popen[bytes].__origin__ is sp.Popen and sp.Popen[bytes].__args__ == (bytes,)

    def annotated(p: sp.Popen[bytes]) -> sp.CompletedProcess[str]:  # type: ignore[name-defined]
        raise NotImplementedError

    hints = typing.get_type_hints(annotated, localns={"sp": sp})
    assert hints["p"] == types.GenericAlias(sp.Popen, (bytes,))
    assert hints["return"] == types.GenericAlias(sp.CompletedProcess, (str,))


def test_pyproc_popen_waits_through_pidfd() -> None:
    with pyp.Popen(["sleep", "0.1"]) as p:
        assert p._proc is not None and p._proc.pidfd is not None
    assert p.returncode == 0


def test_names_match_stdlib() -> None:
    windows = ("STARTF", "SW_", "STD_", "CREATE_", "ABOVE_", "BELOW_", "HIGH_", "IDLE_", "NORMAL_",
               "REALTIME_",
               "STARTUPINFO", "DETACHED_", "Handle")
    missing = [name for name in std.__all__ if name not in pyp.__all__ and not name.startswith(windows)]
    assert missing == []
    import inspect

    def params(fn: Any) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    names = ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput")
    methods = ("poll", "wait", "communicate", "send_signal", "terminate", "kill", "_execute_child", "_get_handles",
               "_communicate", "_wait")
    with standard_library():
        standard = {name: params(getattr(std, name)) for name in names}
        standard.update({f"Popen.{name}": params(getattr(std.Popen, name)) for name in methods})
    for name in names:
        assert params(getattr(TESTED, name)) == standard[name], name
    for name in methods:
        assert params(getattr(TESTED.Popen, name)) == standard[f"Popen.{name}"], name


def test_threads_spawn_concurrently() -> None:
    import threading

    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(15):
                out = pyp.run(["sh", "-c", f"echo {n}-{i}; echo e{n} >&2"], capture_output=True, text=True)
                assert (out.stdout, out.stderr, out.returncode) == (f"{n}-{i}\n", f"e{n}\n", 0)
        except BaseException as exc:
            errors.append(exc)

    with no_fd_leak():
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_keyboard_interrupt_during_wait(sp: Any) -> None:
    """^C in wait(): a short extra wait for the child (it likely got the SIGINT too), then the interrupt."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    p = sp.Popen(["sleep", "10"])
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            p.wait()
        elapsed = time.monotonic() - t0
        assert 0.3 <= elapsed < 2  # 0.1 s to the interrupt, then the 0.25 s grace wait
        assert p.returncode is None and p._sigint_wait_secs == 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        p.kill()
        p.wait()
    assert p.returncode == -signal.SIGKILL


@pytest.mark.parametrize("how", ["call", "run", "run_capture", "run_capture_timeout", "communicate", "wait",
                                 "check_output"])
def test_keyboard_interrupt_in_calls(sp: Any, how: str) -> None:
    """^C (a KeyboardInterrupt from a SIGALRM handler, 0.1 s in) while a call waits for a child that runs on:
    the standard library waits once more, 0.25 s, for the child (which likely got the SIGINT too), then lets the
    interrupt go on and kills the child -- no open-ended wait.  check_output() reads its one pipe directly: the
    interrupt goes on at once."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    argv = ["sleep", "10"]
    calls = {
        "call": lambda: sp.call(argv),
        "run": lambda: sp.run(argv),
        "run_capture": lambda: sp.run(argv, capture_output=True),
        "run_capture_timeout": lambda: sp.run(argv, capture_output=True, timeout=30),
        "check_output": lambda: sp.check_output(argv),
    }
    popen = sp.Popen(argv, stdout=sp.PIPE, stderr=sp.PIPE) if how in ("communicate", "wait") else None
    calls["communicate"] = lambda: popen.communicate()
    calls["wait"] = lambda: popen.wait()
    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        with no_fd_leak():
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            t0 = time.monotonic()
            interrupted = False
            try:
                calls[how]()
            except KeyboardInterrupt:  # (not kept: its traceback holds the Popen, whose collection reaps the child)
                interrupted = True
            elapsed = time.monotonic() - t0
            assert interrupted
            if popen is not None:
                assert popen.returncode is None and popen._sigint_wait_secs == 0
                with popen:
                    popen.kill()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert elapsed < 5  # the child sleeps 10 s: nothing waited for it to end
    if how != "check_output":
        assert elapsed >= 0.3  # 0.1 s to the interrupt, then the 0.25 s wait for the child


@pytest.mark.parametrize("mask", ["NO_CLONE3", "NO_CLONE3|NO_CLONE_PIDFD", "NO_CLOSE_RANGE|NO_PROC_FD"])
def test_popen_on_kernel_fallbacks(mask: str) -> None:
    """Popen works on the paths older kernels take (clone(2), no CLONE_PIDFD, no close_range or /proc)."""
    from pyproc._lib import lib

    bits = 0
    for name in mask.split("|"):
        bits |= getattr(lib, f"PYPROC_FORCE_{name}")
    r, w = os.pipe()
    lib.pyproc_set_forced_fallbacks(bits)
    try:
        with no_fd_leak():
            out = pyp.run([PY, "-c", "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))"],
                          capture_output=True, pass_fds=[w], timeout=30)
            listed = ast.literal_eval(out.stdout.decode())
            assert {0, 1, 2, w} <= set(listed) and len(listed) == 5  # and listdir's own fd: nothing else
            with pytest.raises(FileNotFoundError):
                pyp.run(["pyproc-no-such-program"])
            with pyp.Popen(["sleep", "5"]) as p:
                with pytest.raises(pyp.TimeoutExpired):
                    p.wait(timeout=0.05)
                p.terminate()
            assert p.returncode == -signal.SIGTERM
    finally:
        lib.pyproc_set_forced_fallbacks(0)
        os.close(r)
        os.close(w)


def test_pipe_objects_made_once_across_threads() -> None:
    """Threads asking for a pipe's file object at once (pyproc makes it on first access) all get the same one,
    and one closing the Popen while another asks never leaves a file object on a closed fd."""
    import threading

    with no_fd_leak():
        for _ in range(100):
            p = pyp.Popen(["true"], stdout=pyp.PIPE, stderr=pyp.PIPE)
            barrier = threading.Barrier(3)
            got: list[Any] = []

            def ask(p: Any = p, barrier: threading.Barrier = barrier, got: list[Any] = got) -> None:
                barrier.wait()
                got.append(p.stdout)

            threads = [threading.Thread(target=ask) for _ in range(2)]
            for t in threads:
                t.start()
            barrier.wait()
            with p:
                stderr = p.stderr  # the with block closes both pipes, whichever side made the file object
            for t in threads:
                t.join()
            assert got[0] is got[1] is p.stdout
            assert p.stdout.closed and stderr.closed


def test_pipes_with_the_parents_stdio_closed(sp: Any, tmp_path: pathlib.Path) -> None:
    """New pipes land on fds 0-2 when the parent has them closed: the child still gets each at the right fd."""
    out = tmp_path / "out"
    code = f"""if True:
        import os
        {child_import(sp)}
        for fd in (0, 1, 2):
            os.close(fd)
        seen = [sp.run(["echo", "x"], capture_output=True).stdout,
                sp.run(["cat"], input=b"in", capture_output=True).stdout,
                sp.run(["sh", "-c", "echo e >&2"], stderr=sp.PIPE).stderr,
                sp.run(["sh", "-c", "cat; echo o; echo e >&2"], input=b"i", capture_output=True)]
        seen[-1] = [seen[-1].returncode, seen[-1].stdout, seen[-1].stderr]
        with open({str(out)!r}, "w") as f:
            f.write(repr(seen))
    """
    std.run([PY, "-c", code], check=True, stdin=std.DEVNULL, stdout=std.DEVNULL, stderr=std.DEVNULL)
    assert out.read_text() == repr([b"x\n", b"in", b"e\n", [0, b"io\n", b"e\n"]])


def test_pipes_when_fds_run_out(sp: Any, tmp_path: pathlib.Path) -> None:
    """EMFILE while making the pipes: OSError without a filename, nothing left open, and the next call works."""
    out = tmp_path / "out"
    code = f"""if True:
        import os, resource
        {child_import(sp)}
        report = open({str(out)!r}, "w")
        filler = []
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        while True:
            try:
                filler.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        seen = []
        for free in range(4):  # fewer free fds than the four pipe ends need
            for fd in filler[:free]:
                os.close(fd)
            try:
                sp.run(["true"], capture_output=True)
                seen.append(("ok", free))
            except OSError as exc:
                seen.append((type(exc).__name__, exc.errno, exc.filename, str(exc), free))
            filler[:free] = [os.open(os.devnull, os.O_RDONLY) for _ in range(free)]  # all free fds came back
        for fd in filler[:16]:
            os.close(fd)
        seen.append(sp.run(["echo", "x"], capture_output=True).stdout)
        report.write(repr(seen))
        report.close()
    """
    std.run([PY, "-c", code], check=True)
    emfile = ("OSError", 24, None, "[Errno 24] Too many open files")
    assert out.read_text() == repr([(*emfile, free) for free in range(4)] + [b"x\n"])


def test_path_search_follows_environ(sp: Any, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PATH search sees changes to os.environ["PATH"] between calls (pyproc keeps searches per PATH)."""
    prog = tmp_path / "pyproc-path-prog"
    prog.write_text("#!/bin/sh\necho here\n")
    prog.chmod(0o755)
    with pytest.raises(FileNotFoundError):
        sp.run([prog.name])
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert sp.check_output([prog.name]) == b"here\n"
    prog.unlink()
    with pytest.raises(FileNotFoundError):
        sp.run([prog.name])
    monkeypatch.delenv("PATH")
    assert sp.check_output(["sh", "-c", "echo default"]) == b"default\n"  # os.defpath


def test_preexec_fn_from_a_thread(sp: Any) -> None:
    import threading

    got: list[Any] = []

    def worker() -> None:
        def setup() -> None:
            os.environ["X"] = "t"

        got.append(observe(lambda m: m.check_output(["sh", "-c", "echo $X"], preexec_fn=setup), sp))

    with no_fd_leak():
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    assert got == [("ok", b"t\n")]
