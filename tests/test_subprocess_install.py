"""pyproc.subprocess.install() / uninstall() / installed(), `python -m pyproc.subprocess`, and asyncio's subprocess
support with install() active.

The asyncio tests run every expectation twice, on plain asyncio and with install() active (the `mode` fixture),
so each expectation is checked against asyncio's own behaviour on the running Python too.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from asyncio import unix_events
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from conftest import INSTALLED, standard_library

import pyproc.subprocess as pyp
from pyproc import _aio_subprocess, _subprocess_install

pytestmark = pytest.mark.usefixtures("no_leaks")

NAMES = ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput")
LOOP = unix_events._UnixSelectorEventLoop  # type: ignore[attr-defined]
METHOD = "_make_subprocess_transport"
PY = sys.executable


@contextlib.contextmanager
def clean() -> Iterator[dict[str, Any]]:
    """The standard module as it is without install() (undone for the block when the run is installed), and
    what it holds: {name: object} for NAMES and the loop's method."""
    with standard_library():
        assert not pyp.is_installed()
        before = {name: vars(subprocess)[name] for name in NAMES}
        before[METHOD] = LOOP.__dict__[METHOD]
        yield before
        if pyp.is_installed():  # a failed test must not leave it installed for the next ones
            pyp.uninstall()


def current() -> dict[str, Any]:
    now = {name: vars(subprocess)[name] for name in NAMES}
    now[METHOD] = LOOP.__dict__[METHOD]
    return now


def assert_ours() -> None:
    assert subprocess.Popen is pyp.Popen
    for name in NAMES[1:]:
        assert getattr(subprocess, name).__wrapped__ is getattr(pyp, name), name
    assert LOOP.__dict__[METHOD] is _aio_subprocess.make_subprocess_transport


# ---- install / uninstall / installed() -------------------------------------------------------------------


def test_nothing_patched_at_import() -> None:
    code = textwrap.dedent(f"""
        import subprocess, asyncio.unix_events as u
        names = {NAMES!r}
        originals = [getattr(subprocess, n) for n in names] + [u._UnixSelectorEventLoop._make_subprocess_transport]
        import pyproc, pyproc.subprocess, pyproc.aio, pyproc._aio_subprocess, pyproc._subprocess_install
        now = [getattr(subprocess, n) for n in names] + [u._UnixSelectorEventLoop._make_subprocess_transport]
        assert all(a is b for a, b in zip(originals, now, strict=True)), now
        assert subprocess.Popen.__module__ == "subprocess" and not pyproc.subprocess.is_installed()
        print("untouched")
    """)
    done = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "untouched\n", "")


def test_install_and_uninstall_restore_the_exact_objects() -> None:
    with clean() as before:
        pyp.install()
        assert pyp.is_installed()
        assert_ours()
        installed_objects = current()
        pyp.install()  # idempotent: nothing changes
        assert current() == installed_objects and all(current()[k] is v for k, v in installed_objects.items())
        for name in ("DEVNULL", "PIPE", "STDOUT", "CalledProcessError", "TimeoutExpired", "SubprocessError",
                     "CompletedProcess", "list2cmdline"):
            assert getattr(subprocess, name) is getattr(pyp, name), name  # the standard library's own
        pyp.uninstall()
        assert not pyp.is_installed()
        assert all(current()[k] is v for k, v in before.items())
        pyp.uninstall()  # idempotent
        assert all(current()[k] is v for k, v in before.items())


def test_installed_block() -> None:
    with clean() as before:
        with pyp.installed():
            assert_ours()
            with pyp.installed():  # nested: the outer block still holds it
                assert_ours()
            assert_ours()
        assert all(current()[k] is v for k, v in before.items())
        with pytest.raises(ZeroDivisionError), pyp.installed():
            1 / 0  # noqa: B018
        assert all(current()[k] is v for k, v in before.items())
        with pyp.installed():
            pyp.install()  # an explicit install() outlives the block
        assert_ours()
        pyp.uninstall()
        with pyp.installed():
            pyp.uninstall()  # takes effect at once, inside the block too
            assert not pyp.is_installed()
        assert all(current()[k] is v for k, v in before.items())


def test_uninstall_leaves_a_later_replacement_in_place() -> None:
    with clean() as before:
        pyp.install()
        replacement = object()
        subprocess.check_output = replacement  # type: ignore[assignment]
        try:
            with pytest.warns(RuntimeWarning, match=r"subprocess\.check_output had been replaced"):
                pyp.uninstall()
            assert subprocess.check_output is replacement
            assert all(current()[k] is v for k, v in before.items() if k != "check_output")
        finally:
            subprocess.check_output = before["check_output"]


def test_install_from_many_threads() -> None:
    with clean() as before:
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def churn(n: int) -> None:
            try:
                barrier.wait()
                for i in range(300):
                    if (n + i) % 3 == 0:
                        pyp.install()
                    elif (n + i) % 3 == 1:
                        pyp.uninstall()
                    else:
                        with pyp.installed():
                            assert pyp.is_installed()  # (another thread's uninstall() may undo it: read once)
                    state = current()
                    ours = state["Popen"] is pyp.Popen
                    assert ours == (state["run"] is not before["run"]) or pyp.is_installed() != ours
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=churn, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        pyp.uninstall()
        assert errors == []
        assert all(current()[k] is v for k, v in before.items())


def test_code_that_imported_subprocess_before_install() -> None:
    """This test module imported subprocess before install(): its calls through the module go to pyproc."""
    with clean() as before, pyp.installed():
        with subprocess.Popen(["echo", "x"], stdout=subprocess.PIPE) as p:
            assert type(p) is pyp.Popen and p._proc is not None
            assert p.communicate() == (b"x\n", None)
        done = subprocess.run(["sh", "-c", "echo out; exit 3"], capture_output=True)
        assert (done.returncode, done.stdout) == (3, b"out\n")
        with pytest.raises(subprocess.CalledProcessError) as info:
            subprocess.check_output(["false"])
        assert type(info.value) is pyp.CalledProcessError
        assert subprocess.getstatusoutput("echo hi; exit 2") == (2, "hi")
        assert before["run"] is _subprocess_install._standard["run"]  # (a name bound before keeps its object)


def test_names_patched_after_install_are_used() -> None:
    """As with the standard library, run() calls whatever subprocess.Popen is at the time (a test's mock), and
    check_output() whatever subprocess.run is: install()'s functions then run the standard library's own."""
    with clean(), pyp.installed():
        standard_popen = _subprocess_install._standard["Popen"]
        made: list[Any] = []

        class Recording(standard_popen):  # type: ignore[valid-type,misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                made.append(args[0])
                super().__init__(*args, **kwargs)

        with mock.patch("subprocess.Popen", Recording):
            assert subprocess.run(["echo", "a"], capture_output=True).stdout == b"a\n"
            assert subprocess.call(["true"]) == 0
            assert subprocess.check_call(["true"]) == 0
            assert subprocess.check_output(["echo", "b"]) == b"b\n"
            assert subprocess.getoutput("echo c") == "c"
        assert made == [["echo", "a"], ["true"], ["true"], ["echo", "b"], "echo c"]
        fake = subprocess.CompletedProcess(["x"], 0, "fake\n", "")
        with mock.patch("subprocess.run", return_value=fake) as run:
            assert subprocess.check_output(["x"]) == "fake\n"
            assert subprocess.getoutput("x") == "fake"
        assert run.call_count == 2
        with mock.patch("subprocess.call", return_value=7) as call, pytest.raises(subprocess.CalledProcessError):
            subprocess.check_call(["x"])
        assert call.call_count == 1
        assert_ours()


def test_installed_signatures_are_the_standard_ones() -> None:
    def params(fn: Any) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    with clean() as before, pyp.installed():
        for name in NAMES:
            assert params(getattr(subprocess, name)) == params(before[name]), name


def test_installed_mode_of_the_suite() -> None:
    """PYPROC_TEST_INSTALLED=1 (CI's second run of the subprocess tests): the standard module is on pyproc for
    the whole run; otherwise nothing is installed."""
    assert pyp.is_installed() == INSTALLED
    assert (subprocess.Popen is pyp.Popen) == INSTALLED


# ---- python -m pyproc.subprocess ---------------------------------------------------------------------------

REPORT = """
import asyncio, json, os, subprocess, sys
async def transport():
    proc = await asyncio.create_subprocess_exec("true")
    await proc.wait()
    return type(proc._transport).__module__
print(json.dumps({"name": __name__, "argv": sys.argv, "path0": sys.path[0], "popen": subprocess.Popen.__module__,
                  "out": subprocess.run(["echo", "x"], capture_output=True, text=True).stdout,
                  "transport": asyncio.run(transport()), "main": sys.modules["__main__"].__dict__ is globals()}))
sys.exit(int(os.environ.get("EXIT_WITH", "0")))
"""


def run_python(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ, PYTHONWARNINGS="default", **(env or {}))
    environ.pop("PYPROC_TEST_INSTALLED", None)
    return subprocess.run([PY, *args], capture_output=True, text=True, cwd=cwd, env=environ, timeout=120)


def test_run_a_script_installed(tmp_path: Path) -> None:
    script = tmp_path / "sub" / "prog.py"
    script.parent.mkdir()
    script.write_text(REPORT)
    plain = run_python(str(script), "a", "--b", cwd=tmp_path)
    installed = run_python("-m", "pyproc.subprocess", str(script), "a", "--b", cwd=tmp_path,
                           env={"EXIT_WITH": "3"})
    assert plain.returncode == 0, plain.stderr
    assert installed.returncode == 3, installed.stderr
    assert installed.stderr == ""  # (no runpy warning about pyproc.subprocess run as __main__)
    seen, expected = json.loads(installed.stdout), json.loads(plain.stdout)
    assert expected["popen"] == "subprocess" and expected["transport"] == "asyncio.unix_events"
    assert seen["popen"] == "pyproc.subprocess" and seen["transport"] == "pyproc._aio_subprocess"
    for key in ("name", "argv", "path0", "out", "main"):
        assert seen[key] == expected[key], key
    assert seen["argv"] == [str(script), "a", "--b"] and seen["path0"] == str(script.parent)


def test_run_a_module_installed(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "prog.py").write_text(REPORT)
    env = {"PYTHONPATH": str(tmp_path)}
    plain = run_python("-m", "pkg.prog", "x", cwd=tmp_path, env=env)
    installed = run_python("-m", "pyproc.subprocess", "-m", "pkg.prog", "x", cwd=tmp_path, env=env)
    assert plain.returncode == installed.returncode == 0, (plain.stderr, installed.stderr)
    seen, expected = json.loads(installed.stdout), json.loads(plain.stdout)
    assert (seen["popen"], seen["transport"]) == ("pyproc.subprocess", "pyproc._aio_subprocess")
    for key in ("name", "argv", "out", "main"):
        assert seen[key] == expected[key], key
    assert seen["argv"] == [str(package / "prog.py"), "x"]


def test_run_installed_errors(tmp_path: Path) -> None:
    usage = run_python("-m", "pyproc.subprocess", cwd=tmp_path)
    assert usage.returncode == 2 and "usage: python -m pyproc.subprocess" in usage.stderr
    helped = run_python("-m", "pyproc.subprocess", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "usage:" in helped.stdout
    no_module = run_python("-m", "pyproc.subprocess", "-m", cwd=tmp_path)
    assert no_module.returncode == 2 and "usage:" in no_module.stderr
    missing = run_python("-m", "pyproc.subprocess", str(tmp_path / "nope.py"), cwd=tmp_path)
    assert missing.returncode == 2 and "can't open file" in missing.stderr
    failing = tmp_path / "fail.py"
    failing.write_text("raise ValueError('from the script')\n")
    raised = run_python("-m", "pyproc.subprocess", str(failing), cwd=tmp_path)
    assert raised.returncode == 1 and "ValueError: from the script" in raised.stderr
    unknown = run_python("-m", "pyproc.subprocess", "-m", "pyproc_no_such_module", cwd=tmp_path)
    assert unknown.returncode == 1 and "No module named pyproc_no_such_module" in unknown.stderr


# ---- asyncio, plain and installed ------------------------------------------------------------------------


@pytest.fixture(params=["asyncio", "installed"])
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    with clean():
        if request.param == "installed":
            with pyp.installed():
                yield request.param
        else:
            yield request.param


def ours(mode: str, transport: Any) -> None:
    """The transport is the one the mode gives: pyproc's with install(), asyncio's without."""
    assert isinstance(transport, _aio_subprocess.SubprocessTransport) == (mode == "installed")


def arun(coro: Any) -> Any:
    return asyncio.run(coro)


def test_communicate(mode: str) -> None:
    async def main() -> Any:
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", "cat; echo err >&2; exit 3", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        ours(mode, proc._transport)
        assert isinstance(proc, asyncio.subprocess.Process) and proc.returncode is None
        assert isinstance(proc.stdout, asyncio.StreamReader) and isinstance(proc.stdin, asyncio.StreamWriter)
        assert repr(proc) == f"<Process {proc.pid}>"
        out = await proc.communicate(b"data" * 100000)
        return out, proc.returncode, await proc.wait()

    assert arun(main()) == ((b"data" * 100000, b"err\n"), 3, 3)


def test_streams_with_flow_control(mode: str) -> None:
    """A small reader limit: the read transport is paused and resumed many times; lines and bytes arrive whole."""

    async def main() -> Any:
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", "seq 20000; head -c 3000000 /dev/zero >&2", stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, limit=256)
        ours(mode, proc._transport)
        assert proc.stdout is not None and proc.stderr is not None
        stdout, stderr = proc.stdout, proc.stderr

        async def lines() -> list[bytes]:
            got = []
            while line := await stdout.readline():
                got.append(line)
            return got

        async def count() -> int:
            total = 0
            while chunk := await stderr.read(1000):
                total += len(chunk)
            return total

        got, total = await asyncio.gather(lines(), count())
        return len(got), got[0], got[-1], total, await proc.wait()

    assert arun(main()) == (20000, b"1\n", b"20000\n", 3000000, 0)


def test_stdin_writer(mode: str) -> None:
    async def main() -> Any:
        proc = await asyncio.create_subprocess_exec("wc", "-c", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        ours(mode, proc._transport)
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stdin.can_write_eof()
        for _ in range(50):
            proc.stdin.write(b"x" * 100000)
            await proc.stdin.drain()
        proc.stdin.write_eof()
        out = await proc.stdout.read()
        proc.stdin.close()
        await proc.stdin.wait_closed()
        return out.strip(), await proc.wait()

    assert arun(main()) == (b"5000000", 0)


def test_stdin_of_a_child_that_exits(mode: str) -> None:
    async def main() -> Any:
        proc = await asyncio.create_subprocess_exec("true", stdin=subprocess.PIPE)
        assert proc.stdin is not None
        await proc.wait()
        proc.stdin.write(b"x" * 1000000)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await proc.stdin.drain()
        proc.stdin.close()
        return proc.returncode, await proc.communicate()

    assert arun(main()) == (0, (None, None))


@pytest.mark.parametrize("how", ["terminate", "kill", "send_signal"])
def test_signals(mode: str, how: str) -> None:
    async def main() -> Any:
        proc = await asyncio.create_subprocess_exec("sleep", "30")
        ours(mode, proc._transport)
        if how == "send_signal":
            proc.send_signal(signal.SIGUSR1)
        else:
            getattr(proc, how)()
        code = await proc.wait()
        with pytest.raises(ProcessLookupError):  # the transport is finished: no process to signal
            proc.kill()
        return code

    expected = {"terminate": -signal.SIGTERM, "kill": -signal.SIGKILL, "send_signal": -signal.SIGUSR1}[how]
    assert arun(main()) == expected


def test_cancelled_waits_leave_the_child_running(mode: str) -> None:
    async def main() -> Any:
        proc = await asyncio.create_subprocess_exec("sleep", "30", stdout=subprocess.PIPE)
        for waiting in (proc.wait(), proc.communicate()):
            task = asyncio.ensure_future(waiting)
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert proc.returncode is None
        proc.kill()
        return await proc.wait()

    assert arun(main()) == -signal.SIGKILL


def test_cancelled_start_leaves_nothing(mode: str) -> None:
    """Cancelled while create_subprocess_exec connects the pipes: the child is killed and waited for."""

    async def main() -> None:
        task = asyncio.ensure_future(asyncio.create_subprocess_exec("sleep", "30", stdout=subprocess.PIPE,
                                                                    stderr=subprocess.PIPE))
        await asyncio.sleep(0)  # the task has started the child and waits for its pipes
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    arun(main())  # (no_leaks: no fd, no child, zombie or running, left behind)


class Recorder(asyncio.SubprocessProtocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.events: list[Any] = []
        self.done = loop.create_future()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append(("connection_made", transport.get_pid() > 0, transport.get_returncode(),
                            [transport.get_pipe_transport(fd) is not None for fd in (0, 1, 2)]))

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.events.append(("data", fd, data))

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self.events.append(("pipe_connection_lost", fd, exc))

    def process_exited(self) -> None:
        self.events.append(("process_exited", self.transport.get_returncode()))

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("connection_lost", exc))
        self.done.set_result(None)


def test_protocol_callbacks(mode: str) -> None:
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(
            lambda: Recorder(loop), "sh", "-c", "read x; echo $x; echo err >&2; exit 5", stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ours(mode, transport)
        assert protocol.events == [("connection_made", True, None, [True, True, True])]
        popen = transport.get_extra_info("subprocess")
        assert type(popen) is (pyp.Popen if mode == "installed" else subprocess.Popen)
        assert [type(f) for f in (popen.stdin, popen.stdout, popen.stderr)] == [io.FileIO] * 3
        assert transport.get_pipe_transport(1).get_extra_info("pipe") is popen.stdout
        stdin = transport.get_pipe_transport(0)
        stdin.write(b"out\n")
        stdin.close()
        await protocol.done
        assert transport.get_returncode() == 5 and transport.get_pid() == popen.pid and popen.returncode == 5
        transport.close()
        assert transport.is_closing()
        return protocol.events

    events = arun(main())
    assert events[0][0] == "connection_made" and events[-1] == ("connection_lost", None)
    kinds = [e[0] for e in events]
    assert kinds.count("process_exited") == 1 and ("process_exited", 5) in events
    assert sorted(e[1] for e in events if e[0] == "pipe_connection_lost") == [0, 1, 2]
    for fd, data in ((1, b"out\n"), (2, b"err\n")):
        mine = [e for e in events if e[0] in ("data", "pipe_connection_lost") and e[1] == fd]
        assert b"".join(e[2] for e in mine[:-1]) == data and mine[-1] == ("pipe_connection_lost", fd, None)


def test_transport_close_kills(mode: str) -> None:
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(lambda: Recorder(loop), "sleep", "30",
                                                         stdout=subprocess.PIPE)
        ours(mode, transport)
        transport.close()
        await protocol.done
        return transport.get_returncode(), transport.get_extra_info("subprocess").returncode

    assert arun(main()) == (-signal.SIGKILL, -signal.SIGKILL)


def test_start_errors(mode: str) -> None:
    async def main() -> Any:
        seen = []
        for args, kwargs in [(["pyproc-no-such-program"], {}), (["true"], {"cwd": "/nonexistent/pyproc"}),
                             (["true"], {"stdin": 12345}), (["true"], {"preexec_fn": lambda: 1 / 0})]:
            try:
                await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, **kwargs)
                seen.append("started")
            except Exception as exc:
                seen.append((type(exc).__name__, str(exc)))
        return seen

    assert arun(main()) == [
        ("FileNotFoundError", "[Errno 2] No such file or directory: 'pyproc-no-such-program'"),
        ("FileNotFoundError", "[Errno 2] No such file or directory: '/nonexistent/pyproc'"),
        ("OSError", "[Errno 9] Bad file descriptor"),
        ("SubprocessError", "Exception occurred in preexec_fn."),
    ]


def test_shell_and_stderr_to_stdout(mode: str) -> None:
    async def main() -> Any:
        proc = await asyncio.create_subprocess_shell("echo $WORD; echo err >&2", stdout=subprocess.PIPE,
                                                     stderr=subprocess.STDOUT, env={"WORD": "shell"})
        ours(mode, proc._transport)
        return await proc.communicate(), proc.returncode

    assert arun(main()) == ((b"shell\nerr\n", None), 0)


def test_many_at_once(mode: str) -> None:
    async def one(i: int) -> bytes:
        proc = await asyncio.create_subprocess_exec("sh", "-c", "echo $0", str(i), stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
        return out

    async def main() -> list[bytes]:
        return list(await asyncio.gather(*(one(i) for i in range(40))))

    assert arun(main()) == [f"{i}\n".encode() for i in range(40)]


def test_loop_in_another_thread(mode: str) -> None:
    got: list[Any] = []

    async def main() -> Any:
        proc = await asyncio.create_subprocess_exec("echo", "thread", stdout=subprocess.PIPE)
        return await proc.communicate()

    def worker() -> None:
        try:
            got.append(asyncio.run(main()))
        except BaseException as exc:
            got.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert got == [(b"thread\n", None)]


def test_installed_asyncio_starts_no_thread() -> None:
    """No watcher thread (3.11's default starts one per child) and no second pidfd: the child's own, on the
    loop."""
    with clean(), pyp.installed():
        threads: list[int] = []

        async def main() -> None:
            procs = [await asyncio.create_subprocess_exec("sleep", "0.2") for _ in range(5)]
            threads.append(threading.active_count())
            for proc in procs:
                await proc.wait()

        before = threading.active_count()
        with mock.patch("os.pidfd_open", side_effect=AssertionError("a second pidfd")), \
                warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # nor the child-watcher API (3.12+)
            arun(main())
        assert threads == [before]


def test_installed_asyncio_uses_a_patched_popen() -> None:
    """subprocess.Popen patched after install() (a test's mock): asyncio's own transport, with that Popen."""
    with clean(), pyp.installed():
        made: list[Any] = []

        class Recording(_subprocess_install._standard["Popen"]):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                made.append(args[0])
                super().__init__(*args, **kwargs)

        async def main() -> Any:
            proc = await asyncio.create_subprocess_exec("echo", "patched", stdout=subprocess.PIPE)
            return type(proc._transport).__module__, await proc.communicate()

        with mock.patch("subprocess.Popen", Recording):
            assert arun(main()) == ("asyncio.unix_events", (b"patched\n", None))
        assert made == [("echo", "patched")]


def test_bench_installed_runs() -> None:
    """`python -m bench.installed` (source tree only: bench/ is not in the wheel) measures both rows, installed
    vs not, and says so; tiny counts, no timing asserted (the figures are the benchmark's, not a test's)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "installed.py").is_file():
        pytest.skip(f"no bench package next to tests/ ({root}): not the source tree")
    environ = dict(os.environ)
    environ.pop("PYPROC_TEST_INSTALLED", None)
    done = subprocess.run([PY, "-m", "bench.installed", "--rounds", "2", "--batch", "3", "--json"], cwd=root,
                          capture_output=True, text=True, timeout=300, env=environ)
    if done.returncode != 0 and "no C compiler" in done.stderr:
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert list(results) == ["subprocess.run", "asyncio.create_subprocess_exec + communicate"]
    for row in results.values():
        assert row["standard"]["n"] == row["installed"]["n"] == 6  # 2 rounds of 3 calls, warm-up dropped
        assert row["standard"]["median"] > 0 and row["installed"]["median"] > 0
        # the speed-up is standard / installed (> 1: installed faster), its spread the per-round ratios
        assert row["speedup"]["ratio"] == pytest.approx(row["standard"]["median"] / row["installed"]["median"])
        assert 0 < row["speedup"]["min"] <= row["speedup"]["max"]
    assert [row["target"] for row in results.values()] == [1.4, 1.5]
