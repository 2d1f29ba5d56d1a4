"""pyproc.spawn: every engine with every child action, the exec error matrix, fds, signals, threads, bad input."""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import resource
import select
import signal
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import child_pids, open_fds, settle_children

import pyproc
from pyproc._lib import ffi, lib

ENGINES = [engine for engine in pyproc.ENGINES]
PY = sys.executable

# A child that reports its own state as JSON on fd 1: the fds it holds, its signal masks, ids, limits, cwd, env.
PROBE = r"""
import json, os, sys, resource
def fds():
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + name)
        except OSError:
            continue  # the directory fd listdir used, closed already
        out.append([int(name), target])
    return sorted(out)
status = {}
with open("/proc/self/status") as f:
    for line in f:
        key, _, value = line.partition(":")
        status[key] = value.strip()
json.dump({
    "fds": fds(), "SigBlk": int(status["SigBlk"], 16), "SigIgn": int(status["SigIgn"], 16),
    "SigCgt": int(status["SigCgt"], 16), "NoNewPrivs": int(status["NoNewPrivs"]),
    "pid": os.getpid(), "sid": os.getsid(0), "pgid": os.getpgid(0), "cwd": os.getcwd(),
    "umask": os.umask(0), "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    "env": dict(os.environ), "argv": sys.argv[1:],
}, sys.stdout)
"""


def probe(engine: str = "auto", args: tuple[str, ...] = (), **options: Any) -> dict[str, Any]:
    """Runs PROBE with the options and returns what it saw (it must exit 0)."""
    read_end, write_end = os.pipe()
    try:
        proc = pyproc.spawn([PY, "-S", "-c", PROBE, *args], engine=engine, stdout=write_end, **options)
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    assert proc.wait() == 0, data
    result: dict[str, Any] = json.loads(data)
    return result


def signal_state(engine: str = "auto", **options: Any) -> dict[str, int]:
    """SigBlk / SigIgn / SigCgt of a child that is not Python (Python ignores SIGPIPE and SIGXFSZ itself)."""
    with pyproc.spawn(["cat", "/proc/self/status"], engine=engine, stdout=pyproc.PIPE, **options) as proc:
        assert proc.stdout is not None
        lines = proc.stdout.read().decode().splitlines()
    assert proc.returncode == 0
    fields = dict(line.split(":", 1) for line in lines)
    state = {key: int(fields[key].strip(), 16) for key in ("SigBlk", "SigIgn", "SigCgt")}
    if engine == "posix_spawn":
        # glibc's posix_spawn sets its internal signals (32: cancellation, 33: setxid) to SIG_IGN in the child;
        # that is glibc's behaviour, asserted here so that a change shows, then taken out of the comparison.
        glibc_internal = mask(32, 33)
        assert state["SigIgn"] & glibc_internal == glibc_internal
        state["SigIgn"] &= ~glibc_internal
    return state


def mask(*signals: int) -> int:
    return sum(1 << (sig - 1) for sig in signals)


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ---- child actions, every engine ----------------------------------------------------------------------------------


def test_exit_code_and_argv(engine: str, no_leaks: None) -> None:
    assert pyproc.spawn(["sh", "-c", "exit 7"], engine=engine).wait() == 7
    seen = probe(engine, args=("a b", "", "\u00e9"))
    assert seen["argv"] == ["a b", "", "\u00e9"]


ARGV_TO_FILE = "import json, sys; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))"


@pytest.mark.parametrize("count", [0, 1, 27, 28, 29, 1000])
def test_direct_argv(count: int, tmp_path: Path, no_leaks: None) -> None:
    # No options and str arguments: spawn() passes argv as one packed bytes object that C splits (an array on the
    # stack below 32 arguments, malloc'd from 32 on: 27..29 extra arguments straddle that).  Every argument,
    # empty ones and non-ASCII ones included, must arrive exactly.
    out = tmp_path / "argv.json"
    args = ["" if i % 7 == 0 else f"arg {i} \u00e9" * (i % 3 + 1) for i in range(count)]
    proc = pyproc.spawn((PY, "-S", "-c", ARGV_TO_FILE, str(out), *args))
    assert proc.wait() == 0
    assert json.loads(out.read_text()) == args
    assert proc.status is not None and proc.status.exit_code == 0 and proc.rusage is not None


def test_direct_exec_failure(tmp_path: Path, no_leaks: None) -> None:
    missing = str(tmp_path / "missing")
    children_before = child_pids()
    with pytest.raises(FileNotFoundError) as info:
        pyproc.spawn([missing, "x"])
    assert info.value.filename == missing
    assert "exec" in str(info.value)
    assert child_pids() == children_before  # the failed child was reaped


def test_packed_argv_must_match_argc(no_leaks: None) -> None:
    # The C side checks that argc strings fill the packed buffer exactly; a mismatch starts nothing.
    request = importlib.import_module("pyproc.spawn")._DEFAULT_REQUEST
    child = ffi.new("struct pyproc_child *")
    children_before = child_pids()
    for argc in (1, 3):  # two strings packed: one too few, one too many
        err = lib.pyproc_spawn_child(request, b"/bin/true\0x", 11, argc, lib.PYPROC_ENGINE_CLONE, child)
        assert err == errno.EINVAL
        assert child.spawn.pid == 0 and child.spawn.fail_stage == lib.PYPROC_STAGE_PARENT
    assert child_pids() == children_before


def test_stdio_pipes(engine: str, no_leaks: None) -> None:
    with pyproc.spawn(["sh", "-c", "read x; echo out:$x; echo err:$x >&2"], engine=engine,
                      stdin=pyproc.PIPE, stdout=pyproc.PIPE, stderr=pyproc.PIPE) as proc:
        assert proc.stdin and proc.stdout and proc.stderr
        proc.stdin.write(b"hi\n")
        proc.stdin.close()
        assert proc.stdout.read() == b"out:hi\n"
        assert proc.stderr.read() == b"err:hi\n"
    assert proc.returncode == 0


def test_stderr_to_stdout_and_devnull(engine: str, no_leaks: None) -> None:
    with pyproc.spawn(["sh", "-c", "echo a; echo b >&2; cat"], engine=engine, stdin=pyproc.DEVNULL,
                      stdout=pyproc.PIPE, stderr=pyproc.STDOUT) as proc:
        assert proc.stdout is not None
        assert proc.stdout.read() == b"a\nb\n"
    assert proc.returncode == 0


def test_file_objects_and_fds(engine: str, tmp_path: Path, no_leaks: None) -> None:
    path = tmp_path / "out"
    with open(path, "wb") as f:
        assert pyproc.spawn(["sh", "-c", "echo to-file"], engine=engine, stdout=f).wait() == 0
    assert path.read_bytes() == b"to-file\n"


def test_fd_plan_swap_and_cycle(engine: str, no_leaks: None) -> None:
    # Three pipes; the child's fds 3, 4, 5 get them in a rotated order, and 0 <-> 1 swap as well.
    pipes = [os.pipe() for _ in range(3)]
    try:
        reads = [r for r, _ in pipes]
        writes = [w for _, w in pipes]
        # Put the write ends at fds 3.., so the plan's sources are also its targets (a cycle).
        plan = {writes[0]: writes[1], writes[1]: writes[2], writes[2]: writes[0]}
        writer = "import os, sys\nfor fd in sys.argv[1:]: os.write(int(fd), fd.encode() + b'\\n')"
        proc = pyproc.spawn([PY, "-S", "-c", writer, *map(str, plan)], engine=engine, fds=plan)
        for w in writes:
            os.close(w)
        outputs = {}
        for i, r in enumerate(reads):
            with os.fdopen(r, "rb") as f:
                outputs[writes[i]] = f.read()
        assert proc.wait() == 0
        # The child's fd writes[0] was the parent's writes[1], so pipe 1 received "writes[0]".
        assert outputs[writes[1]] == f"{writes[0]}\n".encode()
        assert outputs[writes[2]] == f"{writes[1]}\n".encode()
        assert outputs[writes[0]] == f"{writes[2]}\n".encode()
    finally:
        for fd in (fd for pair in pipes for fd in pair):
            with contextlib.suppress(OSError):
                os.close(fd)


def test_stdin_stdout_swap(engine: str, no_leaks: None) -> None:
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    try:
        # fds={0: x, 1: y} where x and y are given as each other's targets' sources after a dup to 0/1 would
        # clobber: exercise it through a mapping whose sources are 1 and 0 themselves.
        saved0, saved1 = os.dup(0), os.dup(1)
        try:
            os.dup2(to_child_r, 1)  # parent's fd 1 is now the pipe the child must read
            os.dup2(from_child_w, 0)  # parent's fd 0 is now the pipe the child must write
            proc = pyproc.spawn(["sh", "-c", "read x; echo got:$x"], engine=engine, fds={0: 1, 1: 0})
        finally:
            os.dup2(saved0, 0)
            os.dup2(saved1, 1)
            os.close(saved0)
            os.close(saved1)
        os.close(to_child_r)
        os.close(from_child_w)
        os.write(to_child_w, b"swap\n")
        os.close(to_child_w)
        with os.fdopen(from_child_r, "rb") as f:
            assert f.read() == b"got:swap\n"
        assert proc.wait() == 0
    finally:
        for fd in (to_child_r, to_child_w, from_child_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def test_child_sees_exactly_its_fds(engine: str, no_leaks: None) -> None:
    stray = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(stray, True)  # inheritable on purpose: close_fds must still keep it out
    passed = os.open(os.devnull, os.O_RDONLY)
    mapped = os.open(os.devnull, os.O_RDONLY)
    try:
        seen = probe(engine, pass_fds=[passed], fds={40: mapped})
        fds = [fd for fd, _ in seen["fds"]]
        assert fds == sorted({0, 1, 2, passed, 40})
        not_closed = probe(engine, close_fds=False)
        assert stray in [fd for fd, _ in not_closed["fds"]]
        assert mapped not in [fd for fd, _ in not_closed["fds"]]  # CLOEXEC fds never pass
    finally:
        for fd in (stray, passed, mapped):
            os.close(fd)


def test_cwd_env_umask(engine: str, tmp_path: Path, no_leaks: None) -> None:
    options: dict[str, Any] = {"cwd": tmp_path, "env": {"PYPROC_X": "1", b"B": b"\xff"}}
    if engine != "posix_spawn":
        options["umask"] = 0o027
    seen = probe(engine, **options)
    assert seen["cwd"] == str(tmp_path)
    assert seen["env"]["PYPROC_X"] == "1"
    assert os.fsencode(seen["env"]["B"]) == b"\xff"
    if engine != "posix_spawn":
        assert seen["umask"] == 0o027


def test_session_and_process_group(engine: str, no_leaks: None) -> None:
    seen = probe(engine, new_session=True)
    assert seen["sid"] == seen["pid"] == seen["pgid"]
    seen = probe(engine, process_group=0)
    assert seen["pgid"] == seen["pid"] and seen["sid"] == os.getsid(0)


def test_rlimits_pdeathsig_no_new_privs(engine: str, no_leaks: None) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    options: dict[str, Any] = {"rlimits": {resource.RLIMIT_NOFILE: (64, min(hard, 128))},
                               "no_new_privs": True, "pdeathsig": signal.SIGTERM}
    if engine == "posix_spawn":
        with pytest.raises(ValueError, match="posix_spawn' cannot express"):
            pyproc.spawn(["true"], engine=engine, **options)
        return
    seen = probe(engine, **options)
    assert seen["nofile"] == [64, min(hard, 128)]
    assert seen["NoNewPrivs"] == 1
    assert probe(engine)["NoNewPrivs"] == 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("engine", [e for e in ENGINES if e != "posix_spawn"])
def test_pdeathsig_kills_the_child_when_its_parent_exits(engine: str, no_leaks: None) -> None:
    # An intermediate Python process starts `sleep` with pdeathsig and exits; the sleep must die with it.
    middle = (f"import pyproc, signal\n"
              f"p = pyproc.spawn(['sleep', '30'], engine={engine!r}, pdeathsig=signal.SIGKILL)\n"
              f"print(p.pid, flush=True)\n")
    with pyproc.spawn([PY, "-c", middle], stdout=pyproc.PIPE) as proc:
        assert proc.stdout is not None
        grandchild = int(proc.stdout.read())
    assert proc.returncode == 0
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(grandchild)


def test_signal_state(engine: str, no_leaks: None) -> None:
    previous_usr1 = signal.signal(signal.SIGUSR1, lambda *_: None)
    previous_usr2 = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        seen = signal_state(engine)
        assert seen["SigCgt"] == 0  # the parent's handler never reaches the program
        assert seen["SigIgn"] == mask(signal.SIGUSR2)  # ignored stays ignored; SIGPIPE/SIGXFSZ restored
        assert seen["SigBlk"] == mask(signal.SIGHUP)  # the parent thread's mask
        kept = signal_state(engine, restore_signals=False)
        assert kept["SigIgn"] == mask(signal.SIGUSR2, signal.SIGPIPE, signal.SIGXFSZ)  # as Python set them
        chosen = signal_state(engine, sigmask=[signal.SIGTERM, signal.SIGUSR1])
        assert chosen["SigBlk"] == mask(signal.SIGTERM, signal.SIGUSR1)
        assert signal_state(engine, sigmask=[])["SigBlk"] == 0
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        signal.signal(signal.SIGUSR1, previous_usr1)
        signal.signal(signal.SIGUSR2, previous_usr2)
    # The parent's own mask is untouched by spawning.
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == old_mask


def test_path_search_uses_env_path(engine: str, tmp_path: Path, no_leaks: None) -> None:
    script = tmp_path / "only-here"
    script.write_text("#!/bin/sh\nexit 5\n")
    script.chmod(0o755)
    assert pyproc.spawn(["only-here"], engine=engine, env={"PATH": f"/nonexistent:{tmp_path}"}).wait() == 5
    with pytest.raises(FileNotFoundError):
        pyproc.spawn(["only-here"], engine=engine, env={"PATH": "/nonexistent"})
    assert pyproc.spawn(["whatever-name"], executable=script, engine=engine).wait() == 5


def test_bare_names_take_the_direct_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_leaks: None) -> None:
    # A program named without a slash and every option at its default: spawn(), run(capture=True) and run() with a
    # timeout (its own process group) start it without the general conversion, with PATH's candidates tried in
    # order as execvp does (a file that is not executable is passed over) and PATH's value at the time of the call.
    dirs = {}
    for name, mode, text in (("first", 0o644, "echo first"), ("second", 0o755, "echo second; exit 7"),
                             ("third", 0o755, "echo third")):
        dirs[name] = tmp_path / name
        dirs[name].mkdir()
        program = dirs[name] / "pyproc-named"
        program.write_text(f"#!/bin/sh\n{text}\n")
        program.chmod(mode)
    spawn_module = importlib.import_module("pyproc.spawn")
    io_module = importlib.import_module("pyproc.io")
    general: list[str] = []

    def counting(name: str, real: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            general.append(name)
            return real(*args, **kwargs)
        return counted

    for module, name in ((spawn_module, "_prepare"), (io_module, "prepare")):
        monkeypatch.setattr(module, name, counting(name, getattr(module, name)))
    monkeypatch.setenv("PATH", f"{dirs['first']}:{dirs['second']}")
    assert pyproc.spawn(["pyproc-named"]).wait() == 7
    for options in ({}, {"timeout": 30}):
        res = pyproc.run(["pyproc-named", "x"], capture=True, **options)  # type: ignore[arg-type]
        assert (res.returncode, res.stdout, res.stderr) == (7, b"second\n", b"")
    monkeypatch.setenv("PATH", f"{dirs['third']}:{dirs['second']}")
    assert pyproc.run(["pyproc-named"], capture=True).stdout == b"third\n"
    assert general == []
    # No executable candidate: execvp's error (EACCES from the file that is not executable), direct paths too.
    monkeypatch.setenv("PATH", f"{dirs['first']}:{tmp_path / 'missing'}")
    for start in (lambda: pyproc.spawn(["pyproc-named"]), lambda: pyproc.run(["pyproc-named"], capture=True)):
        with pytest.raises(PermissionError) as info:
            start()
        assert info.value.filename == "pyproc-named"  # as the general path and subprocess name it
        assert "in the child, exec" in str(info.value)


# ---- exec errors --------------------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    not_executable = tmp_path / "not-executable"
    not_executable.write_text("#!/bin/sh\nexit 0\n")
    not_executable.chmod(0o644)
    bad_format = tmp_path / "bad-format"
    bad_format.write_bytes(b"\x7fELF garbage that is not a program")
    bad_format.chmod(0o755)
    return {"dir": tmp_path, "not_executable": not_executable, "bad_format": bad_format}


def test_exec_error_matrix(engine: str, files: dict[str, Path], no_leaks: None) -> None:
    children_before = child_pids()
    cases: list[tuple[list[Any], dict[str, Any], type[OSError], int, str | None]] = [
        (["/nonexistent/program"], {}, FileNotFoundError, errno.ENOENT, "/nonexistent/program"),
        (["no-such-program-pyproc"], {}, FileNotFoundError, errno.ENOENT, "no-such-program-pyproc"),
        ([files["not_executable"]], {}, PermissionError, errno.EACCES, str(files["not_executable"])),
        ([files["bad_format"]], {}, OSError, errno.ENOEXEC, str(files["bad_format"])),
        (["/etc/passwd/x"], {}, NotADirectoryError, errno.ENOTDIR, "/etc/passwd/x"),
        (["true"], {"cwd": files["dir"] / "missing"}, FileNotFoundError, errno.ENOENT,
         str(files["dir"] / "missing")),
        (["true", "x" * 300_000], {}, OSError, errno.E2BIG, None),
    ]
    for argv, options, exc_type, err, filename in cases:
        with pytest.raises(exc_type) as info:
            pyproc.spawn(argv, engine=engine, **options)
        assert info.value.errno == err, (argv, options, info.value)
        if filename is not None:
            assert info.value.filename == filename
        stage = "chdir" if "cwd" in options else "exec"
        if engine == "posix_spawn":  # glibc does not say which step failed: the message says posix_spawn
            stage = "posix_spawn: chdir" if "cwd" in options else "posix_spawn"
        assert f"in the child, {stage}" in str(info.value)
    # Every failed child was reaped: none is left, not even as a zombie.
    assert settle_children(children_before) == set()


def test_permission_error_on_a_directory(engine: str, tmp_path: Path, no_leaks: None) -> None:
    with pytest.raises(PermissionError) as info:
        pyproc.spawn([str(tmp_path)], engine=engine)
    assert info.value.filename == str(tmp_path)


# ---- bad input: clear errors in the parent, no child, no fd --------------------------------------------------------


BAD_INPUTS: list[tuple[str, list[Any], dict[str, Any], type[Exception], str]] = [
    ("empty argv", [], {}, ValueError, "argv is empty"),
    ("str argv", "ls", {}, TypeError, "sequence"),  # type: ignore[list-item]
    ("int in argv", ["true", 3], {}, TypeError, r"argv\[1\] must be"),
    ("NUL in argv", ["true", "a\0b"], {}, ValueError, "NUL"),
    ("NUL in env value", ["true"], {"env": {"A": "x\0"}}, ValueError, "NUL"),
    ("NUL in env key", ["true"], {"env": {"A\0": "x"}}, ValueError, "NUL"),
    ("= in env key", ["true"], {"env": {"A=B": "x"}}, ValueError, "illegal environment variable name"),
    ("env not a mapping", ["true"], {"env": ["A=1"]}, TypeError, "mapping"),
    ("NUL in cwd", ["true"], {"cwd": "/tmp\0"}, ValueError, "NUL"),
    ("unknown engine", ["true"], {"engine": "spoon"}, ValueError, "unknown engine"),
    ("engine type", ["true"], {"engine": 3}, TypeError, "engine must be a str"),
    ("negative fd", ["true"], {"stdout": -5}, ValueError, "not a file descriptor"),
    ("closed fd", ["true"], {"stdout": 987}, OSError, "not open"),
    ("closed pass_fd", ["true"], {"pass_fds": [986]}, OSError, "not open"),
    ("bad stdin type", ["true"], {"stdin": "file"}, TypeError, "stdin must be"),
    ("STDOUT for stdin", ["true"], {"stdin": pyproc.STDOUT}, ValueError, "only valid for stderr"),
    ("stdout and fds[1]", ["true"], {"stdout": 2, "fds": {1: 2}}, ValueError, "both say"),
    ("negative child fd", ["true"], {"fds": {-1: 2}}, ValueError, "negative"),
    ("session and group", ["true"], {"new_session": True, "process_group": 0}, ValueError, "conflict"),
    ("negative group", ["true"], {"process_group": -2}, ValueError, "process_group"),
    ("umask range", ["true"], {"umask": 0o1000}, ValueError, "umask"),
    ("bad signal", ["true"], {"pdeathsig": 999}, ValueError, "not a signal"),
    ("bad sigmask", ["true"], {"sigmask": [0]}, ValueError, "not a signal"),
    ("rlimit soft > hard", ["true"], {"rlimits": {resource.RLIMIT_NOFILE: (10, 5)}}, ValueError, "above"),
    ("rlimit type", ["true"], {"rlimits": {resource.RLIMIT_NOFILE: "x"}}, TypeError, "must be an int"),
    ("posix_spawn umask", ["true"], {"engine": "posix_spawn", "umask": 0}, ValueError, "cannot express umask"),
    ("empty program", [""], {}, ValueError, "empty"),
    # A path and no options: spawn() tries its packed-argv path first, which must hand these to the same checks.
    ("NUL in argv, direct", ["/bin/true", "a\0b"], {}, ValueError, r"argv\[1\] contains a NUL"),
    ("NUL in program, direct", ["/bin/tr\0ue"], {}, ValueError, r"argv\[0\] contains a NUL"),
    ("int in argv, direct", ("/bin/true", 3), {}, TypeError, r"argv\[1\] must be"),
    ("empty argv tuple", (), {}, ValueError, "argv is empty"),
]


@pytest.mark.parametrize(("argv", "options", "exc_type", "message"),
                         [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_bad_input(argv: list[Any], options: dict[str, Any], exc_type: type[Exception], message: str,
                   no_leaks: None) -> None:
    children_before = child_pids()
    with pytest.raises(exc_type, match=message):
        pyproc.spawn(argv, stdout=options.pop("stdout", None), **options)
    assert child_pids() == children_before  # raised in the parent, before any child existed


def test_bad_input_with_pipes_closes_them(no_leaks: None) -> None:
    # stdin=PIPE is opened before stderr turns out to be wrong: the pipe must be closed again.
    with pytest.raises(OSError):
        pyproc.spawn(["true"], stdin=pyproc.PIPE, stdout=pyproc.PIPE, stderr=999)


# ---- many children, many threads ----------------------------------------------------------------------------------


def test_1000_spawns_leave_no_fd_and_no_zombie() -> None:
    fds_before = open_fds()
    children_before = child_pids()
    for i in range(1000):
        proc = pyproc.spawn(["/bin/true"] if i % 2 else ["sh", "-c", "exit 3"],
                            stdout=pyproc.DEVNULL if i % 3 == 0 else None)
        assert proc.wait() == (0 if i % 2 else 3)
    for _ in range(50):  # failures too
        with pytest.raises(FileNotFoundError):
            pyproc.spawn(["/nonexistent"], stdin=pyproc.PIPE)
    assert open_fds() == fds_before
    assert child_pids() == children_before


def test_eight_threads_spawning_at_once(engine: str, no_leaks: None) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for _ in range(25):
                with pyproc.spawn(["sh", "-c", f"echo {n}; exit {n}"], engine=engine, stdout=pyproc.PIPE) as proc:
                    assert proc.stdout is not None
                    assert proc.stdout.read() == f"{n}\n".encode()
                assert proc.returncode == n
        except BaseException as exc:  # reported below, with the thread's number
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive()
    assert errors == []


# ---- fallbacks the kernel would force on older systems -------------------------------------------------------------


@pytest.fixture
def forced() -> Iterator[Any]:
    yield lib.pyproc_set_forced_fallbacks
    lib.pyproc_set_forced_fallbacks(0)


@pytest.mark.parametrize("mask_name", [
    ["PYPROC_FORCE_NO_CLONE3"],
    ["PYPROC_FORCE_NO_CLONE3", "PYPROC_FORCE_NO_CLONE_PIDFD"],
    ["PYPROC_FORCE_NO_CLOSE_RANGE"],
    ["PYPROC_FORCE_NO_CLOSE_RANGE", "PYPROC_FORCE_NO_PROC_FD"],
])
def test_fallbacks(mask_name: list[str], forced: Any, engine: str, no_leaks: None) -> None:
    forced(sum(getattr(lib, name) for name in mask_name))
    stray = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(stray, True)
    try:
        seen = probe(engine, pass_fds=[stray])
        assert [fd for fd, _ in seen["fds"]] == [0, 1, 2, stray]
        seen = probe(engine)
        assert [fd for fd, _ in seen["fds"]] == [0, 1, 2]
        assert signal_state(engine)["SigIgn"] == 0
        proc = pyproc.spawn(["sh", "-c", "exit 4"], engine=engine)
        if engine != "posix_spawn":
            assert proc.pidfd is not None  # from pidfd_open when clone gave none
        assert proc.wait() == 4
        with pytest.raises(FileNotFoundError):
            pyproc.spawn(["/nonexistent"], engine=engine)
    finally:
        os.close(stray)


def test_fallback_handlers_reset(forced: Any, no_leaks: None) -> None:
    # Without clone3's CLONE_CLEAR_SIGHAND the child resets caught signals itself.
    forced(lib.PYPROC_FORCE_NO_CLONE3)
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        assert signal_state("clone")["SigCgt"] == 0
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_static_and_script_targets(tmp_path: Path, engine: str, no_leaks: None) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho \"$0 $1\"\n")
    script.chmod(stat.S_IRWXU)
    with pyproc.spawn([script, "arg"], engine=engine, stdout=pyproc.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stdout.read() == f"{script} arg\n".encode()


def test_stale_build_is_refused_clearly() -> None:
    # A package whose version differs from the one compiled into pyproc._native must not import quietly.
    fake_version = ("import sys, types\n"
                    "m = types.ModuleType('pyproc._version'); m.__version__ = '0.0.0-stale'\n"
                    "sys.modules['pyproc._version'] = m\n"
                    "import pyproc\n")
    with pyproc.spawn([PY, "-c", fake_version], stderr=pyproc.PIPE) as proc:
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
    assert proc.returncode == 1
    assert "ImportError" in err and "0.0.0-stale" in err and "rebuild" in err


# ---- SIGCHLD ignored: the kernel reaps children itself (issue 14) ---------------------------------------------------


@pytest.fixture
def sigchld_ignored() -> Iterator[None]:
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, previous)


@pytest.mark.parametrize(("engine_name", "mask_names"), [
    ("auto", []),
    ("clone", ["PYPROC_FORCE_NO_CLONE3"]),
    ("clone", ["PYPROC_FORCE_NO_CLONE3", "PYPROC_FORCE_NO_CLONE_PIDFD"]),
    ("vfork", []),
    ("posix_spawn", []),
    ("fork", []),
])
def test_sigchld_ignored_a_child_that_ran_is_no_failure(sigchld_ignored: None, forced: Any, engine_name: str,
                                                        mask_names: list[str], no_leaks: None) -> None:
    """The engines without CLONE_PIDFD open the pidfd after the exec; a fast child may be reaped by the kernel
    first.  That child ran its program: no exception, no signal to its (perhaps recycled) pid, no pidfd, and waiting
    says what it can (returncode 0, no status), as for every child when SIGCHLD is ignored."""
    forced(sum(getattr(lib, name) for name in mask_names))
    without_pidfd = 0
    for _ in range(300):
        proc = pyproc.spawn(["true"], engine=engine_name)
        without_pidfd += proc.pidfd is None
        proc.send_signal(signal.SIGTERM)  # exited or about to: never an error, never another process
        assert proc.wait() == 0
        assert proc.status is None and proc.rusage is None and proc.pidfd is None
    proc = pyproc.spawn(["sh", "-c", "exit 3"], engine=engine_name)
    assert proc.wait(timeout=10) == 0  # the kernel kept no status (subprocess says 0 too)
    if engine_name == "auto":
        assert without_pidfd == 0  # clone3 gives the pidfd with the child: nothing to race


def test_sigchld_ignored_run_and_popen(sigchld_ignored: None, no_leaks: None) -> None:
    import pyproc.subprocess as psub

    result = pyproc.run(["sh", "-c", "echo out; exit 3"], capture=True)
    assert (result.returncode, result.stdout, result.status) == (0, b"out\n", None)
    assert psub.run(["sh", "-c", "echo out; exit 3"], capture_output=True).stdout == b"out\n"
    with psub.Popen(["sh", "-c", "exit 3"], preexec_fn=lambda: None) as popen:  # the fork done in Python
        pass
    assert popen.returncode == 0


def test_no_pidfd_for_a_pid_that_is_not_an_unreaped_child(sigchld_ignored: None, no_leaks: None) -> None:
    """pidfd_open takes any pid: after the kernel reaped our child its pid may be another process's.  pyproc opens a
    pidfd (or signals a pid) only while the pid is still an unreaped child of ours."""
    pidfd = ffi.new("int *")
    stranger = os.getppid()  # alive, and not our child: what a recycled pid would be
    assert lib.pyproc_pidfd_open(stranger, pidfd) == 0 and pidfd[0] == -1
    assert lib.pyproc_send_signal(stranger, -1, 0) == errno.ESRCH
    proc = pyproc.spawn(["true"])
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{proc.pid}") and time.monotonic() < deadline:  # reaped by the kernel
        time.sleep(0.005)
    assert lib.pyproc_pidfd_open(proc.pid, pidfd) == 0 and pidfd[0] == -1
    assert lib.pyproc_send_signal(proc.pid, -1, signal.SIGKILL) == errno.ESRCH
    assert proc.wait() == 0


# ---- the clone child's stack on kernels with large pages (issue 14) -------------------------------------------------


@pytest.mark.parametrize("page_size", [16 << 10, 64 << 10])
@pytest.mark.parametrize("mask_name", [None, "PYPROC_FORCE_NO_CLONE3"])
def test_clone_stack_with_large_pages(page_size: int, mask_name: str | None, forced: Any, no_leaks: None) -> None:
    """arm64 and ppc64le kernels may use 16 KiB or 64 KiB pages.  The stack is one guard page plus at least 64 KiB:
    with a 64 KiB page it was all guard page, and every child died of SIGSEGV before its exec."""
    if mask_name:
        forced(getattr(lib, mask_name))
    codes: list[Any] = []

    def spawn_in_a_fresh_thread() -> None:  # a thread maps its stack at its first spawn, and keeps it
        try:
            codes.append(pyproc.spawn(["sh", "-c", "exit 7"], engine="clone").wait())
            codes.append(pyproc.run(["echo", "x"], capture=True).stdout)
        except BaseException as exc:  # asserted on below
            codes.append(exc)

    lib.pyproc_set_forced_page_size(page_size)
    try:
        thread = threading.Thread(target=spawn_in_a_fresh_thread)
        thread.start()
        thread.join(timeout=60)
    finally:
        lib.pyproc_set_forced_page_size(0)
    assert codes == [7, b"x\n"]


def _mappings() -> dict[str, list[str]]:
    """This process's mappings (address range -> VmFlags), from /proc/self/smaps."""
    found: dict[str, list[str]] = {}
    current = ""
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and fields[0] == "VmFlags:":
                found[current] = fields[1:]
            elif fields and "-" in fields[0] and not fields[0].endswith(":"):
                current = fields[0]
    return found


@pytest.mark.parametrize("mask_name", [None, "PYPROC_FORCE_NO_CLONE3"])
def test_clone_stack_is_wiped_on_fork_not_copied(mask_name: str | None, forced: Any, no_leaks: None) -> None:
    """A thread's clone stack is MADV_WIPEONFORK (issue 19): a fork() of the parent (multiprocessing, os.fork) no
    longer write-protects it, so the next child started on it takes no copy-on-write fault on it, and the forked
    child gets zeroed pages there, from which it can still spawn.  Once clone(2) used it (clone3 refused), it is
    copied on fork again: glibc's clone(2) puts the child's function on that stack, which a tool that runs a
    CLONE_VM child as a fork (valgrind) would otherwise hand over wiped."""
    if mask_name:
        forced(getattr(lib, mask_name))
    seen: list[Any] = []

    def spawn_in_a_fresh_thread() -> None:  # a thread maps its stack at its first spawn, and keeps it
        try:
            before = _mappings()
            seen.append(pyproc.spawn(["sh", "-c", "exit 7"], engine="clone").wait())
            seen.append({span: flags for span, flags in _mappings().items() if span not in before})
            with warnings.catch_warnings():  # 3.12+: a fork with threads running; this one is the point of the test
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:  # the forked child: spawn from the same thread, on the wiped stack
                code = 1
                try:
                    code = 0 if pyproc.spawn(["sh", "-c", "exit 5"], engine="clone").wait() == 5 else 2
                finally:
                    os._exit(code)
            seen.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
            seen.append(pyproc.spawn(["sh", "-c", "exit 6"], engine="clone").wait())
        except BaseException as exc:  # asserted on below
            seen.append(exc)

    thread = threading.Thread(target=spawn_in_a_fresh_thread)
    thread.start()
    thread.join(timeout=60)
    assert len(seen) == 4 and seen[0] == 7, seen
    new = seen[1]
    def size(span: str) -> int:
        low, high = span.split("-")
        return int(high, 16) - int(low, 16)

    wiped = [span for span, flags in new.items() if "wf" in flags]
    page = os.sysconf("SC_PAGESIZE")
    usable = -(-(64 << 10) // page) * page  # the stack above its guard page (a mapping of its own)
    stacks = [span for span, flags in new.items() if "wr" in flags and size(span) == usable]
    assert len(stacks) == 1, new
    assert wiped == ([] if mask_name else stacks), new
    assert seen[2:] == [0, 6]
    assert stacks[0] not in _mappings()  # unmapped with its thread


# ---- posix_spawn, close_fds=False: an inheritable fd numbered like a scratch copy (issue 14) ------------------------


def test_posix_spawn_swap_keeps_an_inheritable_fd_above_the_plan(no_leaks: None) -> None:
    """A swap needs a scratch copy of a source.  It was made in the child on the first number above the plan, where
    an inheritable fd of the parent (close_fds=False) was then lost to the child."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    r3, w3 = os.pipe()
    low, high = 60, 61
    try:
        os.dup2(w1, low)
        os.dup2(w2, high)
        os.dup2(w3, high + 1, inheritable=True)  # the number the first scratch copy took
        for fd in (w1, w2, w3):
            os.close(fd)
        script = f"import os; os.write({low}, b'to-{low}'); os.write({high}, b'to-{high}'); os.write({high + 1}, b'by')"
        proc = pyproc.spawn([PY, "-S", "-c", script], engine="posix_spawn", close_fds=False,
                            fds={low: high, high: low})
        for fd in (low, high, high + 1):
            os.close(fd)
        assert proc.wait() == 0
        assert os.read(r1, 100) == f"to-{high}".encode()  # swapped
        assert os.read(r2, 100) == f"to-{low}".encode()
        assert os.read(r3, 100) == b"by"
    finally:
        for fd in (r1, r2, r3):
            os.close(fd)


@pytest.mark.parametrize("copied_step_first", [False, True])
def test_posix_spawn_scratch_copy_is_not_another_steps_target(no_leaks: None, copied_step_first: bool) -> None:
    """A source that is also a target is copied in the parent before the spawn.  The copy took the lowest free
    number, which can be the target of another step of the plan: that step replaced the copy in the child before
    the copy was read, and the child got the wrong file (a flaky test_fuzz_fd_plan_reaches_the_child)."""
    pipes = [os.pipe() for _ in range(3)]
    readers = [r for r, _ in pipes]
    high = 70
    try:
        os.dup2(pipes[1][1], high)  # a source that is also a target: the copied one
        lowest_free = os.dup(0)
        os.close(lowest_free)  # where F_DUPFD_CLOEXEC(0) puts the copy, and the first step's target
        plan = {lowest_free: pipes[0][1], high: pipes[2][1]}
        plan = {high + 1: high, **plan} if copied_step_first else {**plan, high + 1: high}
        script = f"import os; [os.write(fd, str(fd).encode()) for fd in ({lowest_free}, {high}, {high + 1})]"
        proc = pyproc.spawn([PY, "-S", "-c", script], engine="posix_spawn", close_fds=False, fds=plan)
        os.close(high)
        for _, w in pipes:
            os.close(w)
        assert proc.wait() == 0
        got = [os.read(r, 100) for r in readers]
        # pipe 0 reached by the low target, pipe 1 (the copied source) by high + 1, pipe 2 by high
        assert got == [str(lowest_free).encode(), str(high + 1).encode(), str(high).encode()], plan
    finally:
        for r in readers:
            os.close(r)


# ---- pyproc_exec_child: the pdeathsig check after a fork done by the caller (issue 14) -----------------------------


def test_exec_child_pdeathsig_when_the_parent_died_first(no_leaks: None) -> None:
    """pyproc_exec_child runs in the child of a fork done by the caller (pyproc.subprocess's preexec_fn path).  If
    the parent dies before the child's prctl(PR_SET_PDEATHSIG), no signal will ever come, so the child compares its
    parent with the pid that forked it and kills itself.  That pid must be the caller's, taken before the fork: the
    child's own getppid() already names the reaper."""
    request = sys.modules["pyproc.spawn"].prepare([PY, "-S", "-c", "print('ran')"], pdeathsig=signal.SIGKILL)
    read_end, write_end = os.pipe()
    request.c.fd_actions = request.keep(ffi.new("struct pyproc_fd_action[]", [(1, write_end, 0)]))
    request.c.n_fd_actions = 1
    middle = os.fork()
    if middle == 0:  # the parent of the child below, which exits at once
        try:
            parent = os.getpid()
            if os.fork() == 0:
                try:
                    while os.getppid() == parent:  # until the parent is gone
                        time.sleep(0.001)
                    lib.pyproc_exec_child(request.c, os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC), parent)
                finally:
                    os._exit(126)
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        assert os.waitpid(middle, 0)[1] == 0
        chunks = []
        while select.select([read_end], [], [], 30)[0]:  # the child's stdout: at end of file once it is gone
            chunk = os.read(read_end, 100)
            if not chunk:
                break
            chunks.append(chunk)
        else:
            pytest.fail("the orphaned child did not end")
    finally:
        os.close(read_end)
    assert chunks == []  # killed by its pdeathsig before the exec


# ---- stderr=STDOUT with the parent's fd 1 closed and stdin=PIPE: as the standard library (issue 14) -----------------

# The child reports (are fds 0 and 2 one open file, is fd 0 a pipe, what is fd 1) to the file named by argv[1].
STDIO_REPORT = """if True:
    import os, sys
    seen = []
    for fd in (0, 1, 2):
        try:
            seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            seen.append(None)
    with open(sys.argv[1], "w") as report:
        report.write(repr([seen[0] == seen[2], seen[0].startswith("pipe:"), seen[1]]))
"""

# Starts the child with stdin=PIPE and stderr=STDOUT after closing fd 1: the stdin pipe's read end lands on fd 1.
STDIO_STARTER = """if True:
    import os, sys
    import subprocess, pyproc, pyproc.subprocess
    how, report, child = sys.argv[1], sys.argv[2], sys.argv[3]
    argv = [sys.executable, "-S", "-c", child, report]
    os.close(1)
    if how in ("stdlib", "pyproc.subprocess"):
        sp = subprocess if how == "stdlib" else pyproc.subprocess
        proc = sp.Popen(argv, stdin=sp.PIPE, stderr=sp.STDOUT)
        proc.stdin.close()
        proc.wait()
    elif how == "run":
        pyproc.run(argv, input=b"", stderr=pyproc.STDOUT)
    else:
        proc = pyproc.spawn(argv, stdin=pyproc.PIPE, stderr=pyproc.STDOUT, engine=how)
        proc.stdin.close()
        proc.wait()
"""


@pytest.mark.parametrize("how", ["pyproc.subprocess", "run", *ENGINES])
def test_stderr_to_stdout_with_fd_1_closed_is_as_the_standard_library(how: str, tmp_path: Path) -> None:
    """The stdin pipe's read end takes the free fd 1; stderr=STDOUT then copies fd 1, so the child's stderr is its
    own stdin, and its fd 1 (that pipe end, close-on-exec) is closed: what the standard library does too."""
    def seen(starter: str) -> str:
        report = tmp_path / f"{starter}.report"
        subprocess.run([PY, "-c", STDIO_STARTER, starter, str(report), STDIO_REPORT], check=True, timeout=60)
        return report.read_text()

    expected = seen("stdlib")
    assert expected == repr([True, True, None])
    assert seen(how) == expected
