"""pyproc.pipeline(): stages joined by pipes in one process group, per-stage and pipefail returncodes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

import pyproc
import pyproc.io

# Every test here must leave no fd open in the parent and no child (running or zombie) behind: no_leaks in
# conftest.py checks that.
pytestmark = pytest.mark.usefixtures("no_leaks")


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_start(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(request: object) -> None:
        raise AssertionError("a stage was started for bad input")

    monkeypatch.setattr(pyproc.io, "start", refuse)
    yield


def test_one_stage() -> None:
    res = pyproc.pipeline([["echo", "one"]], capture=True)
    assert res.returncodes == [0]
    assert res.returncode == 0
    assert res.stdout == b"one\n"
    assert len(res.pids) == 1 and res.statuses[0] is not None


def test_two_stages() -> None:
    res = pyproc.pipeline([["printf", "b\\na\\nc\\n"], ["sort"]], capture=True)
    assert res.stdout == b"a\nb\nc\n"
    assert res.returncodes == [0, 0]


def test_five_stages_with_input() -> None:
    data = b"".join(b"%d\n" % i for i in range(100_000))
    res = pyproc.pipeline([["cat"], ["grep", "7"], ["sort", "-n"], ["tail", "-n", "3"], ["tr", "7", "x"]],
                          input=data, capture=True)
    assert res.returncodes == [0] * 5
    assert res.stdout == b"999x9\n9998x\n9999x\n"  # 99979, 99987, 99997


def test_failures_in_the_middle_pipefail() -> None:
    res = pyproc.pipeline([["echo", "x"], ["sh", "-c", "cat; exit 3"], ["cat"], ["sh", "-c", "cat; exit 5"],
                           ["cat"]], capture=True)
    assert res.returncodes == [0, 3, 0, 5, 0]
    assert res.returncode == 5  # the last nonzero, as bash's pipefail
    assert res.stdout == b"x\n"
    # (the failing stage reads its input: echo must not race a reader already gone, and die of SIGPIPE)
    res = pyproc.pipeline([["echo", "x"], ["sh", "-c", "cat >/dev/null; false"], ["wc", "-l"]], capture=True)
    assert res.returncodes == [0, 1, 0]
    assert res.returncode == 1
    assert res.stdout.strip() == b"0"
    with pytest.raises(pyproc.CalledProcessError) as info:
        pyproc.pipeline([["true"], ["sh", "-c", "exit 7"], ["true"]], check=True)
    assert info.value.returncode == 7


def test_stage_killed_by_sigpipe_when_the_reader_stops() -> None:
    # yes never ends by itself: it ends because head exits and the parent holds no read end of yes's pipe.
    t0 = time.monotonic()
    res = pyproc.pipeline([["yes"], ["head", "-n", "2"]], capture=True, timeout=30)
    assert time.monotonic() - t0 < 10
    assert res.stdout == b"y\ny\n"
    assert res.returncodes == [-signal.SIGPIPE, 0]
    assert res.returncode == -signal.SIGPIPE


def test_each_stage_sees_end_of_file() -> None:
    # cat ends only at end of file on its stdin: the parent must not hold a write end of any link.
    res = pyproc.pipeline([["true"], ["cat"], ["cat"], ["wc", "-c"]], capture=True, timeout=30)
    assert res.stdout.strip() == b"0"
    assert res.returncodes == [0, 0, 0, 0]


def test_all_stages_in_one_new_process_group() -> None:
    stage = ["sh", "-c", "cut -d' ' -f5 /proc/$$/stat >&2; cat"]
    res = pyproc.pipeline([stage, stage, stage], capture=True)
    groups = {int(g) for g in res.stderr.split()}
    assert len(res.stderr.split()) == 3
    assert groups == {res.pids[0]}
    assert res.pids[0] != os.getpgrp()


def test_stderr_shared_and_stdout_to_a_file(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "out")
    with open(path, "wb") as f:
        res = pyproc.pipeline([["sh", "-c", "echo e1 >&2; echo data"], ["sh", "-c", "cat; echo e2 >&2"]],
                              stdout=f, stderr=pyproc.PIPE)
    with open(path, "rb") as f:
        assert f.read() == b"data\n"
    assert res.stdout is None
    assert sorted(res.stderr.split()) == [b"e1", b"e2"]


def test_text_mode() -> None:
    res = pyproc.pipeline([["cat"], ["tr", "a", "b"]], input="ça va", capture=True, encoding="utf-8")
    assert res.stdout == "çb vb"


def test_large_data_through_five_stages() -> None:
    data = bytes(range(256)) * (64 << 12)  # 64 MiB
    res = pyproc.pipeline([["cat"]] * 5, input=data, capture=True, timeout=120)
    assert res.stdout == data


def test_timeout_kills_every_stage() -> None:
    t0 = time.monotonic()
    with pytest.raises(pyproc.TimeoutExpired) as info:
        pyproc.pipeline([["sh", "-c", "echo early; sleep 30"], ["cat"], ["sh", "-c", "cat; sleep 30"]],
                        capture=True, timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert info.value.stdout == b"early\n"


def test_max_output() -> None:
    with pytest.raises(pyproc.OutputLimitExceeded) as info:
        pyproc.pipeline([["cat", "/dev/zero"], ["cat"]], capture=True, max_output=1000)
    assert info.value.stdout == bytes(1000)


def test_stage_that_cannot_start() -> None:
    with pytest.raises(FileNotFoundError):
        pyproc.pipeline([["sleep", "30"], ["/nonexistent/program"], ["cat"]], capture=True)


def test_many_pipelines_leave_nothing() -> None:
    for i in range(100):
        res = pyproc.pipeline([["echo", str(i)], ["cat"], ["cat"]], capture=True)
        assert res.stdout == b"%d\n" % i


@pytest.mark.parametrize(
    ("argvs", "kwargs", "error"),
    [
        ([], {}, ValueError),
        ("ls", {}, TypeError),
        ([["ls"], "x"], {}, TypeError),
        ([["ls"], []], {}, ValueError),
        ([["ls"]], {"process_group": 0}, ValueError),
        ([["ls"]], {"new_session": True}, ValueError),
        ([["ls"]], {"timeout": -1}, ValueError),
        ([["ls"]], {"input": b"x", "stdin": pyproc.DEVNULL}, ValueError),
        ([["ls"]], {"stdout": pyproc.STDOUT}, ValueError),
        ([["ls"]], {"capture": True, "stderr": pyproc.DEVNULL}, ValueError),
        ([["ls"]], {"input": "text"}, TypeError),
        ([["ls"]], {"max_output": 5}, ValueError),
        ([["ls"]], {"engine": "warp"}, ValueError),
    ],
)
def test_bad_input_before_any_stage(no_start: None, argvs: object, kwargs: dict[str, object],
                                    error: type) -> None:
    before = _fds()
    with pytest.raises(error):
        pyproc.pipeline(argvs, **kwargs)  # type: ignore[arg-type]
    assert _fds() == before
