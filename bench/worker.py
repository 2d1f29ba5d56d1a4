"""A measurement worker: a Python process holding a parent region of a given size and state, that runs the timed
calls it is sent (one JSON request per line, one JSON answer per line) and answers with raw samples.

The driver (bench.run) keeps a small-parent worker for the whole run and starts one big-parent worker per (size,
state), and alternates between them, so that "from a big parent" vs "from a small parent" is measured side by side.

Every Python-level figure is timed here with time.perf_counter_ns() around the call exactly as a user writes it
(``pyproc.spawn(argv).wait()``, ``subprocess.run(argv)``, ...); C floors time themselves (CLOCK_MONOTONIC).

This module is also the ``__main__`` that multiprocessing's "spawn" start method re-imports in its children, so it
keeps its imports light at the top.
"""

from __future__ import annotations

import ctypes
import functools
import json
import mmap
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, ClassVar

from bench import tied
from bench.harness import pinned

PAGE = 4096
STATES = ("clean", "dirty", "thp")
"""Parent memory states: 4 KiB pages mapped and never touched, 4 KiB pages written, THP (MADV_HUGEPAGE) written."""


def mp_target() -> None:
    """What the multiprocessing start methods run in the child: nothing."""


MARGIN = 1 << 30
"""Memory left free when a parent region is dirtied (the machine is shared; never wake the OOM killer)."""


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _smaps_rollup() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        pass
    return out


class Region:
    """The parent's memory: an anonymous private mapping of `size` bytes in `state`."""

    def __init__(self, size: int, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"unknown memory state {state!r}: expected one of {', '.join(STATES)}")
        self.size = size
        self.state = state
        self.touch_ns = 0
        self.map: mmap.mmap | None = None
        if size <= 0:
            return
        available = _mem_available()
        if state != "clean" and size + MARGIN > available:
            raise MemoryError(f"a {size >> 20} MiB {state} parent does not fit now: MemAvailable is "
                              f"{available >> 20} MiB and {MARGIN >> 20} MiB are kept free")
        self.map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.map.madvise(mmap.MADV_HUGEPAGE if state == "thp" else mmap.MADV_NOHUGEPAGE)
        if state == "clean":
            return
        t0 = time.perf_counter_ns()
        region = self.map
        for offset in range(0, size, PAGE):  # one write per 4 KiB page: every page is now private and dirty
            region[offset] = 1
        self.touch_ns = time.perf_counter_ns() - t0

    def describe(self) -> dict[str, Any]:
        rollup = _smaps_rollup()
        return {"size": self.size, "state": self.state, "touch_ns": self.touch_ns,
                "rss_kib": rollup.get("Rss", 0), "anon_huge_kib": rollup.get("AnonHugePages", 0)}


def _check(rc: int | None, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"{what} exited with {rc}")


def spawner(method: str, argv: list[str]) -> Callable[[], None]:
    """One spawn+wait of argv by `method`, as a user would write it."""
    if method == "pyproc clone, bare C calls":
        import importlib

        from pyproc._lib import ffi, lib  # type: ignore[import-not-found,unused-ignore]

        request = importlib.import_module("pyproc.spawn")._DEFAULT_REQUEST
        packed = "\0".join(argv).encode()
        argc, clone = len(argv), lib.PYPROC_ENGINE_CLONE

        def call() -> None:
            child = ffi.new("struct pyproc_child *")
            err = lib.pyproc_spawn_child(request, packed, len(packed), argc, clone, child)
            if err:
                raise OSError(err, os.strerror(err), argv[0])
            res = child.spawn
            lib.pyproc_child_reap(child, res.pid, res.pidfd, 0)
            _check(child.returncode, method)
        return call
    if method.startswith("pyproc "):
        import pyproc

        engine = method.split(" ", 1)[1]
        if engine == "default":
            def call() -> None:
                _check(pyproc.spawn(argv).wait(), method)
        else:
            def call() -> None:
                _check(pyproc.spawn(argv, engine=engine).wait(), method)
        return call
    if method == "subprocess.run":
        def call() -> None:
            _check(subprocess.run(argv).returncode, method)
        return call
    if method == "pyproc.subprocess.run":
        import pyproc.subprocess as psub  # type: ignore[import-not-found,unused-ignore]

        def call() -> None:
            _check(psub.run(argv).returncode, method)
        return call
    if method == "os.posix_spawn":
        def call() -> None:
            pid = os.posix_spawn(argv[0], argv, os.environ)
            _check(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), method)
        return call
    if method == "os.fork+execv":
        def call() -> None:
            pid = os.fork()
            if pid == 0:
                try:
                    os.execv(argv[0], argv)
                finally:
                    os._exit(127)
            _check(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), method)
        return call
    if method.startswith("multiprocessing "):
        import multiprocessing

        ctx: Any = multiprocessing.get_context(method.split(" ", 1)[1])

        def call() -> None:
            proc = ctx.Process(target=mp_target)
            proc.start()
            proc.join()
            _check(proc.exitcode, method)
        return call
    raise ValueError(f"unknown spawn method {method!r}")


class FloorServer:
    """A C floor kept running between batches (`spawnloop - ARGV`, `readloop - ARGV`, `pipeloop - SIZE ARGV`,
    `jobloop K - ARGV`), so
    that it is as warm as this worker: a freshly started process runs its first iterations slowly (page faults,
    caches, the scheduler's view of a new task), which would bias a floor started per batch.  It keeps the CPU
    affinity of the request that started it: the requests that share a server are pinned alike (bench.harness)."""

    _servers: ClassVar[dict[tuple[str, ...], FloorServer]] = {}

    def __init__(self, cmd: list[str]) -> None:
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)

    @classmethod
    def get(cls, cmd: list[str]) -> FloorServer:
        key = tuple(cmd)
        server = cls._servers.get(key)
        if server is None or server.proc.poll() is not None:
            server = cls._servers[key] = cls(cmd)
        return server

    def _fail(self) -> RuntimeError:
        self.proc.kill()
        _, err = self.proc.communicate()
        self._servers.pop(tuple(self.cmd), None)
        return RuntimeError(f"C floor {os.path.basename(self.cmd[0])} failed: {err.strip() or 'no output'}")

    def send(self, n: int) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(f"{n}\n")
            self.proc.stdin.flush()
        except OSError:
            raise self._fail() from None

    def spawn_times(self) -> list[int]:
        """The answer of spawnloop: one line of ns."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise self._fail()
        return [int(x) for x in line.split()]

    def pairs(self) -> list[tuple[int, int]]:
        """The answer of readloop / pipeloop: "ns bytes" lines up to "."."""
        assert self.proc.stdout is not None
        out: list[tuple[int, int]] = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise self._fail()
            if line.strip() == ".":
                return out
            ns, got = line.split()
            out.append((int(ns), int(got)))


def c_floor_spawn(floor: str, argv: list[str], n: int) -> list[int]:
    """n spawn+wait times (ns) from the C loop, kept warm between batches."""
    server = FloorServer.get([floor, "-", *argv])
    server.send(n)
    return server.spawn_times()


@functools.cache
def in_process_floor(libfloor: str) -> Any:
    """libfloor.so's floor_spawn_timed: vfork+execve+waitpid timed in C, from this (Python) process."""
    func = ctypes.CDLL(libfloor).floor_spawn_timed
    func.restype = ctypes.c_longlong
    return func


def op_spawn(req: dict[str, Any]) -> dict[str, Any]:
    method, argv, n = req["method"], req["argv"], int(req["n"])
    if method == "C floor":
        return {"ns": c_floor_spawn(req["floor"], argv, n)}
    if method == "C floor, in this process":
        timed = in_process_floor(req["libfloor"])
        c_argv = (ctypes.c_char_p * (len(argv) + 1))(*[os.fsencode(a) for a in argv], None)
        samples = [int(timed(c_argv)) for _ in range(n)]
        if min(samples) < 0:
            raise RuntimeError(f"C floor (in this process): spawn of {argv} failed")
        return {"ns": samples}
    if method == "pyproc clone, C only":
        # pyproc's clone engine timed in C around the spawn and the reap (pyproc.cow.ForkTimer): the same call
        # with no Python in the timed part, from this same parent.
        from pyproc.cow import ForkTimer  # type: ignore[import-not-found,unused-ignore]

        timer = ForkTimer(argv[0])
        return {"ns": [timer.sample("clone") for _ in range(n)]}
    call = spawner(method, argv)
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        call()
        samples.append(clock() - t0)
    return {"ns": samples}


def op_throughput(req: dict[str, Any]) -> dict[str, Any]:
    """Spawns per second from `threads` threads, each spawning in a loop for `seconds`."""
    method, argv, threads, seconds = req["method"], req["argv"], int(req["threads"]), float(req["seconds"])
    if method == "C floor":
        # `threads` concurrent C loops (warmed up first); each reports its own per-spawn times.
        servers = [FloorServer([req["floor"], "-", *argv]) for _ in range(threads)]
        try:
            for server in servers:
                server.send(50)
                server.spawn_times()
            n = max(20, int(seconds / 60e-6))
            for server in servers:
                server.send(n)
            rate = 0.0
            for server in servers:
                times = server.spawn_times()
                rate += len(times) / (sum(times) / 1e9)
        finally:
            for server in servers:
                server.proc.kill()
                server.proc.communicate()
        return {"per_second": rate}
    call = spawner(method, argv)
    call()  # warm-up
    counts = [0] * threads
    errors: list[BaseException] = []
    deadline = time.perf_counter() + seconds
    barrier = threading.Barrier(threads + 1)

    def loop(i: int) -> None:
        barrier.wait()
        try:
            while time.perf_counter() < deadline:
                call()
                counts[i] += 1
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    t0 = time.perf_counter_ns()
    deadline = time.perf_counter() + seconds
    barrier.wait()
    for t in workers:
        t.join()
    elapsed = time.perf_counter_ns() - t0
    if errors:
        raise errors[0]
    return {"per_second": sum(counts) / (elapsed / 1e9), "count": sum(counts), "elapsed_ns": elapsed}


_INPUTS: dict[int, bytes] = {}


def _input(size: int) -> bytes:
    if size not in _INPUTS:
        _INPUTS.clear()
        _INPUTS[size] = b"x" * size
    return _INPUTS[size]


def io_call(kind: str, method: str, size: int, minimal: str) -> Callable[[], int]:
    """One I/O call; returns the number of bytes that came back (checked by the caller)."""
    head = ["head", "-c", str(size), "/dev/zero"]
    if kind in ("capture", "capture_medium"):
        argv = head
    elif kind == "cat":
        argv = ["cat"]
    elif kind == "minimal":
        argv = [minimal]
    else:
        raise ValueError(f"unknown I/O kind {kind!r}")
    data = _input(size) if kind == "cat" else None
    if method == "pyproc spawn+wait, no capture":
        call = spawner("pyproc default", argv)  # the spawn table's call, which checks the exit status

        def spawn_wait() -> int:
            call()
            return 0  # nothing captured
        return spawn_wait
    if method == "pyproc":
        import pyproc

        run = pyproc.run  # type: ignore[attr-defined,unused-ignore]
        if data is not None:
            return lambda: len(run(argv, input=data, capture=True).stdout)
        return lambda: len(run(argv, capture=True).stdout)
    if method in ("subprocess", "pyproc.subprocess"):
        if method == "subprocess":
            mod: Any = subprocess
        else:
            import pyproc.subprocess as mod  # type: ignore[import-not-found,no-redef,unused-ignore]
        if data is not None:
            def communicate() -> int:
                with mod.Popen(argv, stdin=mod.PIPE, stdout=mod.PIPE) as proc:
                    out, _ = proc.communicate(data)
                return len(out)
            return communicate
        return lambda: len(mod.run(argv, capture_output=True).stdout)
    raise ValueError(f"unknown I/O method {method!r}")


def op_io(req: dict[str, Any]) -> dict[str, Any]:
    kind, method, size, n = req["kind"], req["method"], int(req["size"]), int(req["n"])
    expected = 0 if kind == "minimal" else size
    if method == "C floor":
        from shutil import which

        if kind == "cat":
            cmd = [req["pipeloop"], "-", str(size), which("cat") or "/bin/cat"]
        elif kind in ("capture", "capture_medium"):
            cmd = [req["readloop"], "-", which("head") or "/usr/bin/head", "-c", str(size), "/dev/zero"]
        else:
            cmd = [req["readloop"], "-", req["minimal"]]
        server = FloorServer.get(cmd)
        server.send(n)
        pairs = server.pairs()
        if any(got != expected for _, got in pairs):
            raise RuntimeError(f"C floor moved the wrong number of bytes: {pairs}")
        return {"ns": [ns for ns, _ in pairs]}
    call = io_call(kind, method, size, req["minimal"])
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        got = call()
        samples.append(time.perf_counter_ns() - t0)
        if got != expected:
            raise RuntimeError(f"{method} {kind}: got {got} bytes, expected {expected}")
    return {"ns": samples}


def op_jobs(req: dict[str, Any]) -> dict[str, Any]:
    """n jobs, k children at a time, by one way (bench.jobs): one sample, the batch's ns per job; or, for the
    one-after-another ways, one sample per call."""
    from bench import jobs

    method, argv, k, n = req["method"], req["argv"], int(req["k"]), int(req["n"])
    if method in jobs.SEQUENTIAL:
        return {"ns": jobs.sequential(method, argv)(n)}
    if method == jobs.FLOOR:
        server = FloorServer.get([req["jobloop"], str(k), "-", *argv])
        server.send(n)
        ((total, _),) = server.pairs()
    else:
        total = jobs.batch(method, argv, k)(n)
    return {"ns": [round(total / n)]}


def op_cow(req: dict[str, Any]) -> dict[str, Any]:
    """Calls pyproc.cow (issue 4) and returns its results as plain data."""
    from pyproc import cow  # type: ignore[attr-defined,unused-ignore]

    func = getattr(cow, req["func"])
    result = func(*req.get("args", ()), **req.get("kwargs", {}))
    return {"result": to_plain(result)}


def to_plain(value: Any) -> Any:
    """A pyproc result (dataclass, mapping, sequence, number) as JSON-ready data."""
    import dataclasses

    for name in ("to_dict", "as_dict", "asdict"):
        method = getattr(value, name, None)
        if callable(method):
            return to_plain(method())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return repr(value)


OPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "spawn": op_spawn, "throughput": op_throughput, "io": op_io, "cow": op_cow, "jobs": op_jobs,
}


def main() -> None:
    tied.tie_to_parent()
    size, state = int(sys.argv[1]), sys.argv[2]
    # The protocol runs on private copies of stdin/stdout; the children we start get /dev/null as 0 and 1.
    proto_in = os.fdopen(os.dup(0), "r")
    proto_out = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        region = Region(size, state)
        hello: dict[str, Any] = {"ready": region.describe()}
    except BaseException as exc:
        hello = {"error": f"{type(exc).__name__}: {exc}"}
    proto_out.write(json.dumps(hello) + "\n")
    proto_out.flush()
    if "error" in hello:
        return
    for line in proto_in:
        req = json.loads(line)
        if req.get("op") == "exit":
            break
        try:
            with pinned(req.get("cpu")):  # the short spawn+wait series: see bench.harness
                answer = OPS[req["op"]](req)
        except BaseException as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        proto_out.write(json.dumps(answer) + "\n")
        proto_out.flush()


if __name__ == "__main__":
    main()
