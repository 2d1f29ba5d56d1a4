"""Fuzzing the public API with hypothesis: only documented exceptions, never a crash, hang, leaked fd or
zombie.

Each API has its own strategies and test functions, in two sizes: a bounded number of examples in the default
run and a long run behind @pytest.mark.slow (`pytest -m slow tests/test_fuzz.py`).  The strategies produce
values together with what the documentation promises for them:

- "ok": valid, the spawn must succeed (and the child must behave as asked);
- "bad": invalid, TypeError or ValueError, raised in the parent before any child exists (checked: the C spawn
  function is never called);
- "parent-os": OSError raised in the parent before any child exists (a closed fd named as a source);
- an OSError subclass: valid arguments the child cannot carry out (missing program, bad cwd, ...).

After every example the process's fd table must be identical and no child of ours may remain (running or
zombie). Tests for APIs that land later (pyproc.run) are skipped until they exist.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import resource
import select
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from leakcheck import Snapshot

import pyproc

FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
SLOW = settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
FAST_CHILD = settings(FAST, max_examples=60)  # examples that start a Python child (~30 ms each)
SLOW_CHILD = settings(SLOW, max_examples=600)

_spawn_module = sys.modules["pyproc.spawn"]
_SCRATCH = tempfile.mkdtemp(prefix="pyproc-fuzz-")
_NOT_EXECUTABLE = os.path.join(_SCRATCH, "not-executable")
pathlib.Path(_NOT_EXECUTABLE).write_text("#!/bin/sh\nexit 0\n")
_A_FILE = os.path.join(_SCRATCH, "a-file")
pathlib.Path(_A_FILE).write_text("x")
_DEVNULL_FILE = open(os.devnull, "rb")  # noqa: SIM115 - lives for the module: a file object to pass as stdio
_CLOSED_FD = 4000  # never opened by anything here (checked in _closed_fd())


def _closed_fd() -> int:
    try:
        os.fstat(_CLOSED_FD)
    except OSError:
        return _CLOSED_FD
    raise AssertionError(f"fd {_CLOSED_FD} is open: pick another closed fd for the fuzz tests")


class _CountingLib:
    """Stands in for pyproc.spawn's `lib`: counts calls of the C spawn, to prove errors came before any
    child."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.spawn_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)

    def pyproc_spawn(self, *args: Any) -> Any:
        self.spawn_calls += 1
        return self._lib.pyproc_spawn(*args)


@contextlib.contextmanager
def _counting_spawns() -> Iterator[_CountingLib]:
    real = _spawn_module.lib
    counting = _CountingLib(real)
    _spawn_module.lib = counting
    try:
        yield counting
    finally:
        _spawn_module.lib = real


def _finish(proc: pyproc.Process, what: str, timeout: float = 20.0) -> int:
    """Closes the Process's pipes and waits for it; a child still running after timeout is a hang."""
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(BrokenPipeError):
                stream.close()
    try:
        return proc.wait(timeout=timeout)
    except pyproc.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{what}: the child did not finish within {timeout} s") from None


# ---- strategies: (value, expectation) ----------------------------------------------------------------------

OK, BAD, PARENT_OS = "ok", "bad", "parent-os"
BAD_OR_PARENT_OS = "bad-or-parent-os"

_safe_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12)
_safe_bytes = st.binary(max_size=12).filter(lambda b: b"\0" not in b)
_nul_text = st.tuples(_safe_text, _safe_text).map(lambda ab: ab[0] + "\0" + ab[1])
_env_key = st.text(
    st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcxyz0123456789"), min_size=1, max_size=8
).filter(lambda k: k != "PATH" and not k.startswith("LD_"))


def _arg_ok() -> st.SearchStrategy[Any]:
    return st.one_of(_safe_text, _safe_bytes, _safe_text.map(pathlib.PurePosixPath))


# program, its extra arguments and the expected result: a returncode, or the OSError the exec gives.
_PROGRAMS: list[tuple[Any, Any]] = [
    ("true", 0),
    (b"true", 0),
    ("/bin/true", 0),
    (pathlib.Path("/bin/true"), 0),
    ("false", 1),
    ("pyproc-fuzz-no-such-program", FileNotFoundError),
    ("/nonexistent-dir/prog", FileNotFoundError),
    (_SCRATCH, PermissionError),
    (_NOT_EXECUTABLE, PermissionError),
    ("./pyproc-fuzz-missing", FileNotFoundError),
]


@st.composite
def argv_cases(draw: st.DrawFn) -> tuple[Any, Any]:
    """(argv, expectation): expectation is a returncode, an OSError subclass or BAD."""
    kind = draw(
        st.sampled_from(["program", "program", "program", "sh", "bad-container", "bad-element", "nul"])
    )
    if kind == "sh":
        code = draw(st.integers(0, 255))
        return draw(st.sampled_from([list, tuple]))(["sh", "-c", f"exit {code}"]), code
    if kind == "bad-container":
        return draw(
            st.sampled_from(["true", b"true", pathlib.Path("true"), None, 5, {"true": 1}, [], ()])
        ), BAD
    program, expected = draw(st.sampled_from(_PROGRAMS))
    rest = draw(st.lists(_arg_ok(), max_size=4))
    if kind == "bad-element":
        junk = draw(st.sampled_from([None, 5, 1.5, object(), ["x"], True]))
        rest.insert(draw(st.integers(0, len(rest))), junk)
        return [program, *rest], BAD
    if kind == "nul":
        rest.insert(draw(st.integers(0, len(rest))), draw(st.one_of(_nul_text, _nul_text.map(os.fsencode))))
        return [program, *rest], BAD
    return [program, *rest], expected


env_cases = st.one_of(
    st.just((None, OK)),
    st.dictionaries(
        st.one_of(_env_key, _env_key.map(os.fsencode)), st.one_of(_safe_text, _safe_bytes), max_size=6
    ).map(lambda env: (env, OK)),
    st.sampled_from(
        [
            ([("A", "1")], BAD),
            ("A=1", BAD),
            (5, BAD),
            ({"A": None}, BAD),
            ({1: "x"}, BAD),
            ({"A=B": "x"}, BAD),
            ({"": "x"}, BAD),
            ({"A": "x\0y"}, BAD),
            ({"A\0": "x"}, BAD),
            ({"A": "\ud800"}, BAD),
            ({"A": 1}, BAD),
        ]
    ),
)

cwd_cases = st.sampled_from(
    [
        (None, OK),
        (_SCRATCH, OK),
        (os.fsencode(_SCRATCH), OK),
        (pathlib.Path(_SCRATCH), OK),
        ("/", OK),
        ("/nonexistent-pyproc-dir", FileNotFoundError),
        (_A_FILE, NotADirectoryError),
        ("a\0b", BAD),
        (5, BAD),
        (1.5, BAD),
        ([_SCRATCH], BAD),
    ]
)

_SAFE_RLIMITS = [
    resource.RLIMIT_CORE,
    resource.RLIMIT_FSIZE,
    resource.RLIMIT_NOFILE,
    resource.RLIMIT_CPU,
    resource.RLIMIT_MEMLOCK,
    resource.RLIMIT_MSGQUEUE,
    resource.RLIMIT_SIGPENDING,
]
_RLIMIT_FLOOR = {resource.RLIMIT_NOFILE: 64, resource.RLIMIT_CPU: 30}


@st.composite
def _valid_rlimit(draw: st.DrawFn) -> tuple[int, Any]:
    res = draw(st.sampled_from(_SAFE_RLIMITS))
    _, hard_now = resource.getrlimit(res)
    top = (1 << 40) if hard_now == resource.RLIM_INFINITY else hard_now
    floor = min(_RLIMIT_FLOOR.get(res, 0), top)
    hard = draw(st.integers(floor, top))
    soft = draw(st.integers(floor, hard))
    if hard_now == resource.RLIM_INFINITY and draw(st.booleans()):
        hard = -1
    return res, draw(st.sampled_from([(soft, hard), hard]))


rlimits_cases = st.one_of(
    st.just((None, OK)),
    st.dictionaries(st.sampled_from(_SAFE_RLIMITS), st.just(0), max_size=0).map(lambda d: (d, OK)),
    st.lists(_valid_rlimit(), min_size=1, max_size=3).map(lambda items: (dict(items), OK)),
    st.sampled_from(
        [
            ({-1: 5}, BAD),
            ({True: 5}, BAD),
            ({"nofile": 5}, BAD),
            ({resource.RLIMIT_CORE: (10, 5)}, BAD),
            ({resource.RLIMIT_CORE: -2}, BAD),
            ({resource.RLIMIT_CORE: 1 << 64}, BAD),
            ({resource.RLIMIT_CORE: "1"}, BAD),
            ({resource.RLIMIT_CORE: (1, 2, 3)}, BAD),
            ([(resource.RLIMIT_CORE, 1)], BAD),
            ({999: 5}, OSError),  # a resource the kernel does not know: setrlimit fails in the child
        ]
    ),
)

umask_cases = st.one_of(
    st.just((None, OK)),
    st.sampled_from([0, 0o022, 0o777]).map(lambda m: (m, OK)),
    st.integers(0, 0o777).map(lambda m: (m, OK)),
    st.one_of(st.integers(max_value=-1), st.integers(min_value=0o1000)).map(lambda m: (m, BAD)),
    st.sampled_from([(True, BAD), ("022", BAD), (1.0, BAD)]),
)
_VALID_SIGNALS = sorted(int(s) for s in signal.valid_signals())
sigmask_cases = st.one_of(
    st.just((None, OK)),
    st.lists(st.sampled_from(_VALID_SIGNALS), max_size=8).map(lambda s: (s, OK)),
    st.sampled_from(
        [
            ([0], BAD),
            ([signal.NSIG], BAD),
            ([-1], BAD),
            (["SIGINT"], BAD),
            ("12", BAD),
            (5, BAD),
            ([True], BAD),
            ([32], BAD),
            ([33], BAD),
        ]
    ),
)
pdeathsig_cases = st.one_of(
    st.just((None, OK)),
    st.just((0, OK)),
    st.sampled_from(_VALID_SIGNALS).map(lambda s: (s, OK)),
    st.sampled_from([(-1, BAD), (signal.NSIG, BAD), (True, BAD), ("SIGKILL", BAD), (1.5, BAD)]),
)


@st.composite
def session_cases(draw: st.DrawFn) -> tuple[Any, Any, Any]:
    """(new_session, process_group, expectation)."""
    new_session, ns_kind = draw(
        st.sampled_from([(False, OK), (True, OK), (0, OK), (1, OK), ("yes", BAD), (None, BAD)])
    )
    group, group_kind = draw(
        st.sampled_from(
            [
                (None, OK),
                (0, OK),
                (os.getpgrp(), OK),
                (-1, BAD),
                (True, BAD),
                ("0", BAD),
                (2**22 + 12345, PermissionError),
            ]
        )
    )
    if BAD in (ns_kind, group_kind):
        return new_session, group, BAD
    if new_session and group is not None:
        return new_session, group, BAD  # documented conflict
    if new_session and group is None:
        return new_session, group, OK
    return new_session, group, group_kind


def _stdio_case(name: str) -> st.SearchStrategy[tuple[Any, Any]]:
    cases: list[tuple[Any, Any]] = [
        (None, OK),
        (pyproc.PIPE, OK),
        (pyproc.DEVNULL, OK),
        (_DEVNULL_FILE, OK),
        (-4, BAD),
        (True, BAD),
        ("x", BAD),
        (1.5, BAD),
        (_CLOSED_FD, PARENT_OS),
    ]
    cases.append((pyproc.STDOUT, OK if name == "stderr" else BAD))
    return st.sampled_from(cases)


bool_cases = st.sampled_from([(False, OK), (True, OK), (0, OK), (1, OK), (None, BAD), ("no", BAD)])
engine_cases = st.one_of(
    st.sampled_from(pyproc.ENGINES).map(lambda e: (e, OK)),
    st.sampled_from([("bogus", BAD), ("", BAD), (None, BAD), (1, BAD), ("CLONE", BAD)]),
)


def _combine(kinds: list[Any]) -> Any:
    """The documented outcome of a call whose arguments have these expectations (first BAD, then parent
    errors, then what the child reports)."""
    if BAD in kinds and PARENT_OS in kinds:
        return BAD_OR_PARENT_OS  # both are checked in the parent, in an order that is the code's business
    if BAD in kinds:
        return BAD
    if PARENT_OS in kinds:
        return PARENT_OS
    child_errors = [k for k in kinds if isinstance(k, type)]
    if len(child_errors) > 1:
        return OSError  # which step fails first is the child's business
    if child_errors:
        return child_errors[0]
    return OK


# ---- spawn(): every argument -------------------------------------------------------------------------------


def _check_spawn_arguments(data: st.DataObject) -> None:
    # Half the examples have only valid arguments (a child starts or the child reports an OSError), so that
    # valid combinations are not drowned by the many ways to be invalid.
    valid_only = data.draw(st.booleans(), "valid_only")

    def pick(strategy: st.SearchStrategy[Any], label: str) -> Any:
        if valid_only:
            strategy = strategy.filter(lambda case: case[-1] not in (BAD, PARENT_OS))
        return data.draw(strategy, label)

    argv, argv_kind = pick(argv_cases(), "argv")
    env, env_kind = pick(env_cases, "env")
    cwd, cwd_kind = pick(cwd_cases, "cwd")
    umask, umask_kind = pick(umask_cases, "umask")
    rlimits, rlimits_kind = pick(rlimits_cases, "rlimits")
    sigmask, sigmask_kind = pick(sigmask_cases, "sigmask")
    pdeathsig, pdeathsig_kind = pick(pdeathsig_cases, "pdeathsig")
    new_session, process_group, session_kind = pick(session_cases(), "session")
    engine, engine_kind = pick(engine_cases, "engine")
    stdio = {name: pick(_stdio_case(name), name) for name in ("stdin", "stdout", "stderr")}
    flags = {name: pick(bool_cases, name) for name in ("close_fds", "no_new_privs", "restore_signals")}
    kinds = [
        env_kind,
        cwd_kind,
        umask_kind,
        rlimits_kind,
        sigmask_kind,
        pdeathsig_kind,
        session_kind,
        engine_kind,
        *(kind for _, kind in stdio.values()),
        *(kind for _, kind in flags.values()),
    ]
    if engine == "posix_spawn" and (umask is not None or rlimits or pdeathsig or flags["no_new_privs"][0]):
        kinds.append(BAD)  # documented: posix_spawn cannot express these
    if isinstance(argv_kind, int):
        kinds_with_program = [*kinds, OK]
        expected_code: int | None = argv_kind
    else:
        kinds_with_program = [*kinds, argv_kind]
        expected_code = None
    expected = _combine(kinds_with_program)
    what = f"spawn({argv!r}, engine={engine!r}, env={env!r}, cwd={cwd!r}, ...) expected {expected}"
    snapshot = Snapshot()
    with _counting_spawns() as counting:
        try:
            proc = pyproc.spawn(
                argv,
                engine=engine,
                env=env,
                cwd=cwd,
                umask=umask,
                rlimits=rlimits,
                sigmask=sigmask,
                pdeathsig=pdeathsig,
                new_session=new_session,
                process_group=process_group,
                stdin=stdio["stdin"][0],
                stdout=stdio["stdout"][0],
                stderr=stdio["stderr"][0],
                close_fds=flags["close_fds"][0],
                no_new_privs=flags["no_new_privs"][0],
                restore_signals=flags["restore_signals"][0],
            )
        except (TypeError, ValueError) as exc:
            assert expected in (BAD, BAD_OR_PARENT_OS), f"{what}: raised {exc!r}"
            assert counting.spawn_calls == 0, f"{what}: {exc!r} raised after the C spawn was called"
            assert str(exc), f"{what}: {type(exc).__name__} without a message"
        except OSError as exc:
            assert expected != OK and expected != BAD, f"{what}: raised {exc!r}"
            assert exc.errno, f"{what}: {exc!r} has no errno"
            if expected in (PARENT_OS, BAD_OR_PARENT_OS):
                assert counting.spawn_calls == 0, f"{what}: {exc!r} raised after the C spawn was called"
            else:
                assert isinstance(exc, expected), f"{what}: raised {exc!r}"
                assert "in the child" in str(exc) or "posix_spawn" in str(exc), (
                    f"{what}: {exc!r} says not where"
                )
        else:
            returncode = _finish(proc, what)
            assert expected == OK, f"{what}: started (returncode {returncode})"
            assert expected_code is not None
            assert returncode == expected_code, f"{what}: returncode {returncode}"  # limits chosen harmless
            assert proc.pidfd is None
    snapshot.check(what)


@FAST
@given(st.data())
def test_fuzz_spawn_arguments(data: st.DataObject) -> None:
    _check_spawn_arguments(data)


@pytest.mark.slow
@SLOW
@given(st.data())
def test_fuzz_spawn_arguments_long(data: st.DataObject) -> None:
    _check_spawn_arguments(data)


# ---- spawn(): fd plans, verified in the child --------------------------------------------------------------

# The child reports every open fd (found without opening anything) with its identity, on its own pipe.
_REPORT_FD = 200
_FD_REPORTER = (
    "import os\n"
    "out = []\n"
    "for fd in range(1024):\n"
    "    try:\n"
    "        st = os.fstat(fd)\n"
    "    except OSError:\n"
    "        continue\n"
    "    out.append(f'{fd} {st.st_dev} {st.st_ino}')\n"
    f"os.write({_REPORT_FD}, ('\\n'.join(out) + '\\n').encode())\n"
)


def _identity(fd: int) -> tuple[int, int]:
    st_ = os.fstat(fd)
    return st_.st_dev, st_.st_ino


def _read_until_eof(fd: int, timeout: float) -> bytes:
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "the child's report did not end in time (hang)"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


@st.composite
def fd_plans(draw: st.DrawFn) -> dict[str, Any]:
    """Parent fds (pipes and /dev/null, some moved to low or colliding numbers) and a plan over them."""
    return {
        "n_pipes": draw(st.integers(1, 5)),
        "moves": draw(st.lists(st.integers(3, 40), max_size=4, unique=True)),
        "targets": draw(st.lists(st.integers(0, 40), min_size=1, max_size=8, unique=True)),
        "choices": draw(st.lists(st.integers(0, 10**6), min_size=8, max_size=8)),
        "target_from_pool": draw(st.lists(st.booleans(), min_size=8, max_size=8)),
        "pass_count": draw(st.integers(0, 2)),
        "as_file_object": draw(st.booleans()),
        "engine": draw(st.sampled_from(pyproc.ENGINES)),
        "close_fds": draw(st.booleans()),
        "inheritable_extra": draw(st.booleans()),
    }


def _check_fd_plan(plan: dict[str, Any]) -> None:
    snapshot = Snapshot()
    opened: list[int] = []
    try:
        report_r, report_w = os.pipe()
        opened += [report_r, report_w]
        pool: list[int] = []
        for _ in range(plan["n_pipes"]):
            r, w = os.pipe()
            opened += [r, w]
            pool += [r, w]
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        opened.append(devnull)
        pool.append(devnull)
        # Move some pool fds to chosen numbers, so that sources collide with targets (swaps, cycles).
        for i, number in enumerate(plan["moves"]):
            if number in opened or _is_open(number):
                continue
            source = pool[i % len(pool)]
            os.dup2(source, number, inheritable=False)
            opened.append(number)
            pool.append(number)
        extra = None
        if plan["inheritable_extra"]:  # an inheritable fd outside the plan: only close_fds=False passes it
            extra, extra_w = os.pipe()
            os.set_inheritable(extra, True)
            opened += [extra, extra_w]
        targets = [t for t in plan["targets"] if t != _REPORT_FD]
        mapping: dict[int, int] = {}
        for i, target in enumerate(targets):
            candidates = (
                pool if not plan["target_from_pool"][i] else [fd for fd in pool if fd in targets] or pool
            )
            mapping[target] = candidates[plan["choices"][i] % len(candidates)]
        mapping[_REPORT_FD] = report_w
        pass_fds = [fd for fd in pool if fd not in mapping][: plan["pass_count"]]
        expected = {target: _identity(source) for target, source in mapping.items()}
        expected.update({fd: _identity(fd) for fd in pass_fds})
        for fd in (0, 1, 2):
            if fd not in expected and _is_open(fd):
                expected[fd] = _identity(fd)
        if not plan["close_fds"]:
            for fd in range(1024):
                if fd not in expected and _is_open(fd) and os.get_inheritable(fd):
                    expected[fd] = _identity(fd)
        fds_arg: dict[int, Any] = dict(mapping)
        if plan["as_file_object"]:
            fds_arg[_REPORT_FD] = _FileNo(report_w)
        what = f"fds={mapping} pass_fds={pass_fds} plan={plan}"
        proc = pyproc.spawn(
            [sys.executable, "-I", "-S", "-c", _FD_REPORTER],
            fds=fds_arg,
            pass_fds=pass_fds,
            engine=plan["engine"],
            close_fds=plan["close_fds"],
        )
        os.close(report_w)
        opened.remove(report_w)
        report = _read_until_eof(report_r, 30)
        returncode = _finish(proc, what)
        assert returncode == 0, f"{what}: the reporter failed ({returncode})"
        seen = {}
        for line in report.decode().splitlines():
            fd_s, dev_s, ino_s = line.split()
            seen[int(fd_s)] = (int(dev_s), int(ino_s))
        assert seen == expected, f"{what}: the child has {seen}, expected {expected}"
        if extra is not None and extra not in mapping:  # (a target fd of the same number replaces it)
            reached = _identity(extra) in seen.values()
            assert reached == (not plan["close_fds"]), (
                f"{what}: inheritable fd {extra} reached the child: {reached}"
            )
    finally:
        for fd in opened:
            os.close(fd)
    snapshot.check(f"fd plan {plan}")


class _FileNo:
    """An object with fileno(), as fds= accepts."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@FAST_CHILD
@given(fd_plans())
def test_fuzz_fd_plan_reaches_the_child(plan: dict[str, Any]) -> None:
    _check_fd_plan(plan)


@pytest.mark.slow
@SLOW_CHILD
@given(fd_plans())
def test_fuzz_fd_plan_reaches_the_child_long(plan: dict[str, Any]) -> None:
    _check_fd_plan(plan)


# Invalid fd plans: bad keys, bad sources, closed fds, conflicts with stdio and pass_fds.
fd_plan_junk = st.sampled_from(
    [
        ({-1: 1}, (), BAD),
        ({"1": 1}, (), BAD),
        ({True: 1}, (), BAD),
        ({1.0: 1}, (), BAD),
        ({3: -1}, (), BAD),
        ({3: "x"}, (), BAD),
        ({3: None}, (), BAD),
        ({3: True}, (), BAD),
        ({3: _CLOSED_FD}, (), PARENT_OS),
        ([(3, 1)], (), BAD),
        ({3: 1}, [_CLOSED_FD], PARENT_OS),
        ({3: 1}, [-3], BAD),
        ({3: 1}, ["x"], BAD),
        ({3: 1}, 5, BAD),
        ({3: 1}, [3], BAD),
        ({3: _FileNo(-5)}, (), BAD),
        ({3: _FileNo(_CLOSED_FD)}, (), PARENT_OS),
        ({0: 1}, (), "stdin-conflict"),
        (None, [0], "stdin-conflict"),
        ({5: 1}, (), OK),
        ({1: 1}, [1], OK),
        ({3: 2, 2: 3}, (), OSError),  # parent fd 3 may or may not be open: either way a documented outcome
    ]
)


def _check_fd_plan_junk(case: tuple[Any, Any, Any], engine: str, use_stdin_pipe: bool) -> None:
    fds, pass_fds, kind = case
    if kind == "stdin-conflict":
        kind = BAD if use_stdin_pipe else OK
    what = f"fds={fds!r} pass_fds={pass_fds!r} engine={engine} stdin={'PIPE' if use_stdin_pipe else None}"
    snapshot = Snapshot()
    with _counting_spawns() as counting:
        try:
            proc = pyproc.spawn(
                ["true"],
                fds=fds,
                pass_fds=pass_fds,
                engine=engine,
                stdin=pyproc.PIPE if use_stdin_pipe else None,
            )
        except (TypeError, ValueError) as exc:
            assert kind == BAD, f"{what}: raised {exc!r}"
            assert counting.spawn_calls == 0, f"{what}: {exc!r} raised after the C spawn was called"
        except OSError as exc:
            assert kind in (PARENT_OS, OSError), f"{what}: raised {exc!r}"
            if kind == PARENT_OS:
                assert counting.spawn_calls == 0, f"{what}: {exc!r} raised after the C spawn was called"
        else:
            assert kind in (OK, OSError), f"{what}: started"
            assert _finish(proc, what) == 0
    snapshot.check(what)


@FAST
@given(fd_plan_junk, st.sampled_from(pyproc.ENGINES), st.booleans())
def test_fuzz_fd_plan_junk(case: tuple[Any, Any, Any], engine: str, use_stdin_pipe: bool) -> None:
    _check_fd_plan_junk(case, engine, use_stdin_pipe)


# ---- spawn(): process state reaches the child --------------------------------------------------------------

_STATE_REPORTER = (
    "import ctypes, os, resource, sys\n"
    "mask = os.umask(0)\n"
    "status = dict(line.split(':', 1) for line in open('/proc/self/status') if ':' in line)\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "sig = ctypes.c_int(0)\n"
    "libc.prctl(2, ctypes.byref(sig), 0, 0, 0)\n"  # PR_GET_PDEATHSIG
    "limits = {r: resource.getrlimit(r) for r in map(int, sys.argv[1:])}\n"
    "print(repr((mask, int(status['SigBlk'], 16), int(status['NoNewPrivs']), sig.value, os.getpgrp(),"
    " os.getsid(0), os.getpid(), limits)))\n"
)


@st.composite
def state_cases(draw: st.DrawFn) -> dict[str, Any]:
    engine = draw(st.sampled_from(pyproc.ENGINES))
    full = engine != "posix_spawn"
    return {
        "engine": engine,
        "umask": draw(st.one_of(st.none(), st.integers(0, 0o777))) if full else None,
        "sigmask": draw(st.one_of(st.none(), st.lists(st.sampled_from(_VALID_SIGNALS), max_size=10))),
        "no_new_privs": draw(st.booleans()) if full else False,
        "pdeathsig": draw(st.one_of(st.none(), st.sampled_from([signal.SIGTERM, signal.SIGUSR1, 40])))
        if full
        else None,
        "session": draw(st.sampled_from(["none", "new_session", "group0", "own_group"])),
        "rlimits": dict(draw(st.lists(_valid_rlimit(), max_size=3))) if full else None,
    }


def _mask_bits(signals: list[int]) -> int:
    return sum(1 << (sig - 1) for sig in set(signals) if sig not in (signal.SIGKILL, signal.SIGSTOP))


def _check_state(case: dict[str, Any]) -> None:
    import ast

    snapshot = Snapshot()
    session = case["session"]
    rlimits = case["rlimits"] or {}
    proc = pyproc.spawn(
        [sys.executable, "-I", "-S", "-c", _STATE_REPORTER, *map(str, rlimits)],
        stdout=pyproc.PIPE,
        engine=case["engine"],
        umask=case["umask"],
        sigmask=case["sigmask"],
        no_new_privs=case["no_new_privs"],
        pdeathsig=case["pdeathsig"],
        rlimits=case["rlimits"],
        new_session=session == "new_session",
        process_group={"group0": 0, "own_group": os.getpgrp()}.get(session),
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    returncode = _finish(proc, str(case))
    assert returncode == 0, f"{case}: the reporter failed ({returncode}): {out!r}"
    mask, blocked, nnp, deathsig, pgrp, sid, pid, limits = ast.literal_eval(out.decode())
    if case["umask"] is not None:
        assert mask == case["umask"], case
    else:
        current = os.umask(0)
        os.umask(current)
        assert mask == current, case
    parent_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    expected_blocked = _mask_bits(case["sigmask"] if case["sigmask"] is not None else list(parent_mask))
    assert blocked == expected_blocked, f"{case}: SigBlk {blocked:#x}, expected {expected_blocked:#x}"
    assert nnp == int(bool(case["no_new_privs"])), case
    assert deathsig == (case["pdeathsig"] or 0), case
    if session == "new_session":
        assert sid == pid and pgrp == pid, case
    elif session == "group0":
        assert pgrp == pid and sid == os.getsid(0), case
    else:
        assert pgrp == os.getpgrp() and sid == os.getsid(0), case
    for res, limit in rlimits.items():
        soft, hard = limit if isinstance(limit, tuple) else (limit, limit)
        want = tuple(resource.RLIM_INFINITY if v == -1 else v for v in (soft, hard))
        assert tuple(limits[res]) == want, f"{case}: rlimit {res} is {limits[res]}, expected {want}"
    snapshot.check(str(case))


@FAST_CHILD
@given(state_cases())
def test_fuzz_process_state_reaches_the_child(case: dict[str, Any]) -> None:
    _check_state(case)


@pytest.mark.slow
@SLOW_CHILD
@given(state_cases())
def test_fuzz_process_state_reaches_the_child_long(case: dict[str, Any]) -> None:
    _check_state(case)


# ---- spawn() + pipes: sizes through cat, from several threads at once --------------------------------------


def _check_pipe_sizes(sizes: list[int], engine: str) -> None:
    snapshot = Snapshot()
    errors: list[BaseException] = []

    def one(size: int) -> None:
        try:
            data = os.urandom(min(size, 4096)) * (size // 4096 + 1)
            data = data[:size]
            proc = pyproc.spawn(["cat"], stdin=pyproc.PIPE, stdout=pyproc.PIPE, engine=engine)
            assert proc.stdin is not None and proc.stdout is not None
            writer = threading.Thread(target=lambda: (proc.stdin.write(data), proc.stdin.close()))  # type: ignore
            writer.start()
            got = proc.stdout.read()
            writer.join(30)
            assert not writer.is_alive(), "the writer hangs"
            assert _finish(proc, f"cat of {size} bytes") == 0
            assert got == data, f"cat of {size} bytes gave {len(got)} bytes"
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(size,)) for size in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a thread hangs"
    if errors:
        raise errors[0]
    snapshot.check(f"sizes {sizes}")


_sizes = st.lists(
    st.one_of(st.sampled_from([0, 1, 4095, 4096, 4097, 65535, 65536, 65537]), st.integers(0, 1 << 20)),
    min_size=1,
    max_size=4,
)


@FAST_CHILD
@given(_sizes, st.sampled_from(pyproc.ENGINES))
def test_fuzz_pipe_sizes(sizes: list[int], engine: str) -> None:
    _check_pipe_sizes(sizes, engine)


# ---- Process and wait_any: random sequences of operations --------------------------------------------------

_timeouts = st.one_of(
    st.none(),
    st.floats(-1, 0.05),
    st.sampled_from([0, 0.0, -0.0, float("inf"), float("-inf"), 1e300, -1e300, 10**30]),
)
_junk_timeouts = st.sampled_from([float("nan"), "1", b"1", [1], True])
_signals = st.one_of(
    st.sampled_from([0, signal.SIGTERM, signal.SIGKILL, signal.SIGUSR1, signal.SIGCONT, signal.SIGSTOP]),
    st.sampled_from([-1, signal.NSIG, 10**12, -(10**12), True, "TERM", 1.5, None]),
)
_ops = st.lists(
    st.tuples(
        st.sampled_from(["wait", "poll", "send_signal", "wait_any", "returncode"]),
        st.integers(0, 3),
        st.one_of(_timeouts, _junk_timeouts),
        _signals,
    ),
    max_size=12,
)
_children = st.lists(
    st.sampled_from([["true"], ["false"], ["sleep", "0.03"], ["sleep", "30"], ["sh", "-c", "exit 7"]]),
    min_size=1,
    max_size=4,
)
_WAIT_ERRORS = (TypeError, ValueError, pyproc.TimeoutExpired)


def _long(timeout: Any) -> bool:
    return isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 1


def _end(proc: pyproc.Process) -> None:
    """Makes sure proc ends soon (it may be `sleep 30`, or stopped by an earlier SIGSTOP)."""
    proc.kill()
    proc.send_signal(signal.SIGCONT)


def _check_process_ops(argvs: list[list[str]], ops: list[tuple[str, int, Any, Any]], engine: str) -> None:
    snapshot = Snapshot()
    procs = [pyproc.spawn(argv, engine=engine) for argv in argvs]
    try:
        for op, index, timeout, sig in ops:
            proc = procs[index % len(procs)]
            what = f"{op} on {proc.args} (timeout={timeout!r}, sig={sig!r}, engine={engine})"
            try:
                if op == "wait":
                    if timeout is None or _long(timeout):  # let a wait without a (practical) limit end
                        _end(proc)
                    code = proc.wait(timeout=timeout)
                    assert code == proc.returncode and proc.status is not None, what
                elif op == "poll":
                    code = proc.poll()
                    assert code is None or code == proc.returncode, what
                elif op == "send_signal":
                    proc.send_signal(sig)
                elif op == "wait_any":
                    chosen = procs[: index + 1]
                    if timeout is None or _long(timeout):
                        _end(chosen[-1])
                    done = pyproc.wait_any(chosen, timeout=timeout)
                    assert done in chosen and done.returncode is not None, what
                else:
                    reaped = proc.returncode is not None
                    assert not reaped or proc.pidfd is None, f"{what}: a reaped child keeps its pidfd"
            except _WAIT_ERRORS as exc:
                assert op in ("wait", "wait_any", "send_signal"), f"{what}: {exc!r}"
                if isinstance(exc, pyproc.TimeoutExpired):
                    assert op != "send_signal", what
                else:
                    assert str(exc), f"{what}: {exc!r} without a message"
            except (OSError, OverflowError) as exc:
                # as os.kill and subprocess: a number that is no signal is EINVAL (OverflowError beyond C's int)
                bad_signal = op == "send_signal" and not (isinstance(sig, int) and 0 <= sig < signal.NSIG)
                assert bad_signal, f"{what}: {exc!r}"
                assert isinstance(exc, OverflowError) or exc.errno == errno.EINVAL, f"{what}: {exc!r}"
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                proc.send_signal(signal.SIGCONT)
            code = proc.wait(timeout=30)
            assert code == proc.returncode and proc.pidfd is None
    snapshot.check(f"process ops {ops}")


@FAST_CHILD
@given(_children, _ops, st.sampled_from(pyproc.ENGINES))
def test_fuzz_process_operations(argvs: list[list[str]], ops: list[Any], engine: str) -> None:
    _check_process_ops(argvs, ops, engine)


@pytest.mark.slow
@SLOW_CHILD
@given(_children, _ops, st.sampled_from(pyproc.ENGINES))
def test_fuzz_process_operations_long(argvs: list[list[str]], ops: list[Any], engine: str) -> None:
    _check_process_ops(argvs, ops, engine)


# ---- run() (issue 3): active once pyproc.run exists --------------------------------------------------------


def _need_run() -> Any:
    if not hasattr(pyproc, "run"):
        pytest.skip("pyproc.run is not there yet (issue 3)")
    return pyproc.run


def _check_run(data: st.DataObject) -> None:
    run = _need_run()
    size = data.draw(st.one_of(st.sampled_from([0, 1, 65535, 65536, 65537]), st.integers(0, 1 << 21)), "size")
    payload = (os.urandom(min(size, 8192)) * (size // 8192 + 1))[:size]
    engine = data.draw(st.sampled_from(pyproc.ENGINES), "engine")
    script, expect_out, expect_err, code = data.draw(
        st.sampled_from(
            [
                ("cat", payload, b"", 0),
                ("cat; exit 3", payload, b"", 3),
                ("cat >&2", b"", payload, 0),
                ("head -c 100 >/dev/null; echo done", b"done\n", b"", 0),  # stops reading early
                ("exec 0<&-; echo closed", b"closed\n", b"", 0),  # closes stdin at once
            ]
        ),
        "script",
    )
    what = f"run(sh -c {script!r}, input={size} bytes, engine={engine})"
    snapshot = Snapshot()
    result = run(["sh", "-c", script], input=payload, capture=True, timeout=60, engine=engine)
    assert result.returncode == code, f"{what}: returncode {result.returncode}"
    assert result.stdout == expect_out, f"{what}: stdout of {len(result.stdout)} bytes"
    assert result.stderr == expect_err, f"{what}: stderr of {len(result.stderr)} bytes"
    snapshot.check(what)


@FAST_CHILD
@given(st.data())
def test_fuzz_run_input_sizes(data: st.DataObject) -> None:
    _check_run(data)


@pytest.mark.slow
@SLOW_CHILD
@given(st.data())
def test_fuzz_run_input_sizes_long(data: st.DataObject) -> None:
    _check_run(data)


def _check_run_failures(data: st.DataObject) -> None:
    run = _need_run()
    case = data.draw(
        st.sampled_from(
            [
                (["sleep", "10"], {"timeout": 0.05}, pyproc.TimeoutExpired),
                (["sh", "-c", "sleep 10 & echo started; wait"], {"timeout": 0.2}, pyproc.TimeoutExpired),
                (["sh", "-c", "exit 5"], {"check": True}, pyproc.CalledProcessError),
                (["head", "-c", "100000", "/dev/zero"], {"max_output": 1000}, pyproc.OutputLimitExceeded),
                (["pyproc-fuzz-no-such-program"], {}, FileNotFoundError),
                (["true"], {"cwd": "/nonexistent-pyproc-dir"}, FileNotFoundError),
                (["true"], {"input": "text, not bytes"}, TypeError),
                (["true"], {"timeout": -1}, (ValueError, pyproc.TimeoutExpired)),
                (["true"], {"capture": True, "stdout": pyproc.PIPE}, (ValueError, TypeError, type(None))),
            ]
        ),
        "case",
    )
    argv, kwargs, expected = case
    kwargs = {**kwargs, "engine": data.draw(st.sampled_from(pyproc.ENGINES), "engine")}
    what = f"run({argv}, **{kwargs})"
    snapshot = Snapshot()
    started = time.monotonic()
    try:
        run(argv, capture=kwargs.pop("capture", True), **kwargs)
    except BaseException as exc:
        assert isinstance(exc, expected), f"{what}: raised {exc!r}"
    else:
        assert isinstance(None, expected), f"{what}: did not raise {expected}"
    assert time.monotonic() - started < 10, f"{what}: took {time.monotonic() - started:.1f} s"
    snapshot.check(what)


@FAST
@given(st.data())
def test_fuzz_run_failures(data: st.DataObject) -> None:
    _check_run_failures(data)


def _check_run_limits_and_text(data: st.DataObject) -> None:
    """max_output around the output's size, text mode round trips, timeouts that keep the partial output."""
    run = _need_run()
    engine = data.draw(st.sampled_from(pyproc.ENGINES), "engine")
    mode = data.draw(st.sampled_from(["limit", "text", "timeout"]), "mode")
    snapshot = Snapshot()
    if mode == "limit":
        size = data.draw(st.one_of(st.sampled_from([0, 1, 65536]), st.integers(0, 1 << 20)), "size")
        limit = data.draw(
            st.one_of(st.just(size), st.just(max(size - 1, 0)), st.integers(0, 1 << 20)), "limit"
        )
        what = f"run(head -c {size}, max_output={limit}, engine={engine})"
        argv = ["head", "-c", str(size), "/dev/zero"]
        if size > limit:
            with pytest.raises(pyproc.OutputLimitExceeded) as info:
                run(argv, capture=True, max_output=limit, timeout=60, engine=engine)
            out = info.value.output
            assert isinstance(out, bytes) and len(out) <= limit and out == bytes(len(out)), what
        else:
            result = run(argv, capture=True, max_output=limit, timeout=60, engine=engine)
            assert result.returncode == 0 and result.stdout == bytes(size), what
    elif mode == "text":
        text = data.draw(st.text(st.characters(blacklist_categories=("Cs",)), max_size=2000), "text")
        what = f"run(cat, input={len(text)} chars, encoding=utf-8, engine={engine})"
        result = run(["cat"], input=text, capture=True, encoding="utf-8", timeout=60, engine=engine)
        # (text mode may translate newlines as io.TextIOWrapper does: compare with that translation)
        assert result.stdout in (text, text.replace("\r\n", "\n").replace("\r", "\n")), what
        assert result.stderr == "", what
    else:
        lines = data.draw(st.integers(0, 50), "lines")
        what = f"run(print {lines} lines then sleep, timeout, engine={engine})"
        script = f"i=0; while [ $i -lt {lines} ]; do echo line$i; i=$((i+1)); done; exec sleep 30"
        started = time.monotonic()
        with pytest.raises(pyproc.TimeoutExpired) as info:
            run(["sh", "-c", script], capture=True, timeout=0.25, engine=engine)
        assert time.monotonic() - started < 10, f"{what}: the timeout took {time.monotonic() - started:.1f} s"
        partial = info.value.output or b""
        expected = "".join(f"line{i}\n" for i in range(lines)).encode()
        assert expected.startswith(partial), f"{what}: partial output {partial[:80]!r} is not a prefix"
    snapshot.check(what)


@FAST_CHILD
@given(st.data())
def test_fuzz_run_limits_text_timeouts(data: st.DataObject) -> None:
    _check_run_limits_and_text(data)


@pytest.mark.slow
@SLOW_CHILD
@given(st.data())
def test_fuzz_run_limits_text_timeouts_long(data: st.DataObject) -> None:
    _check_run_limits_and_text(data)


# ---- regressions the fuzzing found (deterministic, so that they never come back unnoticed) -----------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        (
            {"env": [("A", "1")]},
            TypeError,
        ),  # was AttributeError from the PATH search, before env's type check
        ({"env": "A=1"}, TypeError),
        ({"sigmask": [32]}, ValueError),  # was OSError(EINVAL) from sigaddset in C (glibc reserves 32 and 33)
        ({"engine": "posix_spawn", "umask": 0}, ValueError),  # was OSError(ENOTSUP) from C: umask=0 is falsy
    ],
)
def test_fuzz_regressions(kwargs: dict[str, Any], error: type[BaseException]) -> None:
    snapshot = Snapshot()
    with _counting_spawns() as counting, pytest.raises(error):
        pyproc.spawn(["true"], **kwargs)
    assert counting.spawn_calls == 0
    snapshot.check(str(kwargs))


@pytest.mark.parametrize("timeout", [float("inf"), 1e300, float("-inf"), -1e300])
def test_fuzz_regressions_wait_timeouts(timeout: float) -> None:
    # were OverflowError (int() of an infinite number of nanoseconds)
    snapshot = Snapshot()
    proc = pyproc.spawn(["true"])
    if timeout > 0:
        assert proc.wait(timeout=timeout) == 0
    else:
        with contextlib.suppress(pyproc.TimeoutExpired):
            proc.wait(timeout=timeout)
        assert proc.wait() == 0
    other = pyproc.spawn(["true"])
    if timeout > 0:
        assert pyproc.wait_any([other], timeout=timeout) is other
    else:
        with contextlib.suppress(pyproc.TimeoutExpired):
            pyproc.wait_any([other], timeout=timeout)
        assert other.wait() == 0
    snapshot.check(f"timeout {timeout}")


def teardown_module() -> None:
    _DEVNULL_FILE.close()
