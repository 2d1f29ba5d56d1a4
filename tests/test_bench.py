"""The benchmark report (issue 5): a --quick run produces report.md, results.json and the plots, the figures are
sane, bad sizes are refused, a missing compiler is a clear error; the C floors (the job pool's included) do the
work they stand for and fail clearly.

bench/ lives in the source tree, not in the wheel, and runs as `python -m bench` from the source tree's root: these
tests run it that way (a subprocess; nothing is imported from the source tree here) and are skipped when tests/ is
not next to a bench package (pyproc installed, tests copied elsewhere).  The harness's and the report's own unit
tests are in bench/test_harness.py, bench/test_report.py and bench/test_jobs.py, which test_bench_unit_tests runs (in
a subprocess).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import pyproc
import pyproc.aio

BENCH_ROOT = Path(__file__).resolve().parent.parent
PNG_NAMES = ("spawn_vs_parent_size.png", "cow_per_page.png", "pipe_throughput.png", "spawns_per_second.png",
             "jobs_per_second.png")
JOB_WAYS = ("pyproc.run_many", "pyproc.aio.run_many", "ThreadPoolExecutor + pyproc.run",
            "ThreadPoolExecutor + subprocess.run", "asyncio.create_subprocess_exec + Semaphore", "xargs -P", "C floor")
"""bench.jobs.METHODS (this file imports nothing from the source tree)."""


def _bench_importable() -> str | None:
    if not (BENCH_ROOT / "bench" / "__main__.py").is_file():
        return f"no bench package next to tests/ ({BENCH_ROOT}): not the source tree"
    check = "import bench.run, bench.report, bench.plots, numpy, matplotlib, tqdm"
    proc = subprocess.run([sys.executable, "-c", check], cwd=BENCH_ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return f"the bench package is not importable: {proc.stderr.strip().splitlines()[-1:]}"
    return None


_why = _bench_importable()
if _why:
    pytest.skip(_why, allow_module_level=True)


def _run_bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=BENCH_ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("bench")
    proc = _run_bench("--quick", "--no-progress", "--out", str(out))
    if proc.returncode == 3 and "no C compiler" in proc.stderr:
        pytest.skip(proc.stderr.strip())
    return out, proc


def _median(entry: dict[str, Any]) -> float:
    stats = entry["stats"]
    assert stats is not None, entry.get("skipped")
    return float(stats["median"])


def test_quick_run_writes_report_json_and_plots(quick_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = quick_run
    assert proc.returncode == 0, proc.stderr
    assert "targets:" in proc.stdout  # the terminal summary
    report = (out / "report.md").read_text()
    for heading in ("## Machine", "## Targets", "## Reading", "## spawn+wait of /bin/true",
                    "## spawn+wait of the minimal executable against parent size", "## I/O",
                    "## Spawns per second", "## What each step of a spawn costs, timed in C",
                    "## Many children, K at a time (jobs per second)",
                    "## pyproc.subprocess.install(): the standard library's subprocess and asyncio, installed vs not"):
        assert heading in report
    for name in PNG_NAMES:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(data) > 10_000, name


def test_quick_run_figures_are_sane(quick_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = quick_run
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    machine = results["meta"]["machine"]
    assert machine["cores_online"] >= 1 and machine["kernel"] and machine["python"]

    spawn = results["spawn"]["minimal"]["series"]
    for name in ("pyproc default", "pyproc clone", "subprocess.run", "os.fork+execv", "C floor"):
        samples = [x for r in spawn[name]["rounds_ns"] for x in r]
        cfg = results["meta"]["config"]
        assert len(samples) == cfg["spawn_rounds"] * cfg["spawn_batch"], name
        assert all(isinstance(x, int) and 1_000 < x < 10_000_000_000 for x in samples), name
        assert statistics.median(samples) == _median(spawn[name])

    # At the largest size, with dirty 4 KiB pages, fork+exec copies the page tables: slower than the clone engine,
    # and slower than itself from the small parent; the clone engine does not grow like it.
    dirty = [p for p in results["sweep"]["points"] if p["state"] == "dirty"]
    big = max(dirty, key=lambda p: p["size"])
    m = big["methods"]
    assert _median(m["os.fork+execv"]["big"]) > 2 * _median(m["pyproc default"]["big"])
    assert _median(m["pyproc fork"]["big"]) > _median(m["pyproc default"]["big"])
    assert m["os.fork+execv"]["big_vs_small"]["ratio"] > 1.5
    assert big["parent"]["rss_kib"] * 1024 >= big["size"]  # the pages really were dirtied

    # Pipe throughput of the C loop is a real transfer rate (bytes were checked by the worker).
    capture = results["io"]["capture"]
    assert capture["size"] > 0 and _median(capture["series"]["C floor"]) > 0

    # The steps table (bench.spawnparts): every way measured, the floor is its own unit, and pyproc's default steps
    # cost at least the plain clone they add to (each a median of rounds timed in C).
    parts = results["spawn"]["parts"]
    rows = {r["way"]: r for r in parts["rows"]}
    assert parts["rounds"] == results["meta"]["config"]["parts_rounds"]
    assert {"vfork+execve+waitpid", "clone", "clone+CLONE_PIDFD", "clone+all_of_pyproc"} <= set(rows)
    assert rows["vfork+execve+waitpid"]["vs_floor"] == 1.0
    assert all(1_000 < r["median_ns"] < 1_000_000_000 for r in rows.values())
    assert rows["clone+all_of_pyproc"]["vs_floor_min"] <= rows["clone+all_of_pyproc"]["vs_floor"]
    assert "clone+all_of_pyproc+capture" in rows

    # run(minimal exe, capture) is set against a spawn+wait that captures nothing, in the same rounds.
    minimal = results["io"]["minimal"]["series"]
    assert _median(minimal["pyproc spawn+wait, no capture"]) > 0

    targets = {t["name"]: t for t in results["targets"]}
    # Issue 19's restated bounds: against the C floor timed in the same process and the bare C calls; the C floor
    # in its own process is no target.
    restated = {name: t for name, t in targets.items() if t["issue"] == 19}
    assert {(t["op"], t["bound"]) for t in restated.values()} == {("<=", 1.25), ("<=", 1.10), (">=", 1.4)}
    assert len(restated) == 4
    assert "spawn minimal exe: pyproc default vs C floor" not in targets
    assert "ceiling:" in targets["run(minimal exe, capture): subprocess.run(capture_output=True) vs pyproc"]["note"]
    # The medium capture row (issue 3's regression guard) is measured in every run, quick or not.
    medium = results["io"]["capture_medium"]
    assert medium["size"] == results["meta"]["config"]["medium_io_size"]
    for name in ("pyproc", "subprocess"):
        assert _median(medium["series"][name]) > 0, name
    guard = targets[f"capture {medium['size'] >> 20} MiB: subprocess.run(capture_output=True) vs pyproc"]
    assert guard["ratio"] is not None and guard["bound"] == 1.0 and guard["op"] == ">="
    for t in results["targets"]:
        assert t["held"] in (True, False, None)
        assert (t["held"] is None) == (t["ratio"] is None)
        if t["ratio"] is None:
            assert t["skipped"], t["name"]  # a target not measured says why


def test_quick_run_many_children(quick_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = quick_run
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    cfg = results["meta"]["config"]
    many = results["jobs"]
    assert many["ks"] == cfg["jobs_ks"] == sorted({1, 2, 4, len(os.sched_getaffinity(0))})
    absent = {"pyproc.run_many": not hasattr(pyproc, "run_many"),
              "pyproc.aio.run_many": not hasattr(pyproc.aio, "run_many")}
    for workload in ("minimal", "true"):
        series = many[workload]["series"]
        assert len(series) == len(JOB_WAYS) * len(many["ks"])
        for k in many["ks"]:
            for way in JOB_WAYS:
                entry = series[f"{way}, K={k}"]
                if absent.get(way):
                    assert entry["skipped"].startswith("not in this build"), (way, k)
                    continue
                assert entry["skipped"] is None, (way, k, entry["skipped"])
                per_job = [x for r in entry["rounds_ns"] for x in r]
                assert len(per_job) == cfg["jobs_rounds"], (way, k)
                assert all(1_000 < x < 1_000_000_000 for x in per_job), (way, k, per_job)
    sequential = many["sequential"]["series"]
    for way in ("pyproc.run, one after another", "await pyproc.aio.run, one after another"):
        assert len([x for r in sequential[way]["rounds_ns"] for x in r]) == cfg["jobs_seq_rounds"] * cfg[
            "jobs_seq_batch"]
    rss = many["rss"]
    if absent["pyproc.run_many"]:
        assert rss["skipped"].startswith("not in this build")
    else:
        assert rss["jobs"] == cfg["jobs_rss_count"] and rss["peak_rss_end_kib"] >= rss["peak_rss_after_first_kib"] > 0
    by_issue: dict[int, int] = {}
    for t in results["targets"]:
        by_issue[t["issue"]] = by_issue.get(t["issue"], 0) + 1
    assert by_issue[15] == 8 and by_issue[16] == 2


def test_job_pool_floor_runs_k_at_a_time_and_reads_both_pipes(
        quick_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    out, proc = quick_run
    assert proc.returncode == 0, proc.stderr
    jobloop = json.loads((out / "results.json").read_text())["meta"]["floors"]["jobloop"]
    # Each job holds a file in running/ while it runs (never more than K at once) and waits, bounded, until K jobs
    # have started (so K run at once, or it fails); it writes 5 bytes to stdout and 3 to stderr.
    (tmp_path / "running").mkdir()
    script = (f'cd "{tmp_path}"; touch running/$$; [ "$(ls running | wc -l)" -le 3 ] || exit 9; echo x >> started; '
              'i=0; while [ "$(wc -l < started)" -lt 3 ]; do i=$((i+1)); [ $i -gt 2000 ] && exit 8; sleep 0.01; done; '
              "rm running/$$; printf 12345; printf 678 >&2")
    got = subprocess.run([jobloop, "3", "10", "/bin/sh", "-c", script], capture_output=True, text=True,
                         timeout=120, check=False)
    assert got.returncode == 0, got.stderr
    ns, nbytes = (int(x) for x in got.stdout.split())
    assert ns > 0 and nbytes == 80
    assert (tmp_path / "started").read_text() == "x\n" * 10
    # Batches from stdin, each answered by "ns bytes" and "."; K larger than the batch is fine.
    got = subprocess.run([jobloop, "4", "-", "/bin/sh", "-c", "printf ab"], input="3\n1\n", capture_output=True,
                         text=True, timeout=60, check=True)
    lines = got.stdout.splitlines()
    assert [line.split()[1] for line in lines[0::2]] == ["6", "2"] and lines[1::2] == [".", "."]


def test_job_pool_floor_fails_clearly_and_leaves_nothing_running(
        quick_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    out, proc = quick_run
    assert proc.returncode == 0, proc.stderr
    jobloop = json.loads((out / "results.json").read_text())["meta"]["floors"]["jobloop"]

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([jobloop, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False)

    bad = run("2", "3", str(tmp_path / "missing"))
    assert bad.returncode == 1 and "failed: exit status 127" in bad.stderr and not bad.stdout
    bad = run("2", "5", "/bin/false")
    assert bad.returncode == 1 and "exit status 1" in bad.stderr
    bad = run("1", "2", "/bin/sh", "-c", "kill -9 $$")
    assert bad.returncode == 1 and "killed by signal 9" in bad.stderr
    for args in (("0", "3", "/bin/true"), ("x", "3", "/bin/true"), ("2", "0", "/bin/true"), ("2", "3"),
                 ("5000", "1", "/bin/true")):
        bad = run(*args)
        assert bad.returncode == 2 and "usage" in bad.stderr, args
    bad = run("2", "-", "/bin/true", stdin="many\n")
    assert bad.returncode == 2 and "not a count" in bad.stderr
    # One job fails while the others sleep: the pool kills and reaps them and exits at once.
    script = (f'mkdir "{tmp_path}/first" 2>/dev/null && {{ sleep 0.3; exit 3; }}; echo $$ >> "{tmp_path}/pids"; '
              "exec sleep 60")
    bad = run("3", "6", "/bin/sh", "-c", script)
    assert bad.returncode == 1 and "exit status 3" in bad.stderr
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, signal.SIG_DFL)


def test_bench_unit_tests() -> None:
    """The harness's and the report's unit tests: synthetic results through the target logic, and tiny real batches
    of every way of running many jobs."""
    files = ["bench/test_harness.py", "bench/test_report.py", "bench/test_jobs.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], cwd=BENCH_ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]


def test_sizes_that_do_not_fit_are_refused() -> None:
    proc = _run_bench("--sizes", "64M,1000T", "--out", os.devnull, timeout=60)
    assert proc.returncode == 2
    assert "do not fit" in proc.stderr and "MemAvailable" in proc.stderr
    proc = _run_bench("--sizes", "lots", "--out", os.devnull, timeout=60)
    assert proc.returncode == 2 and "not a size" in proc.stderr


@pytest.mark.parametrize("compilers", ["none on PATH", "all failing"])
def test_no_compiler_is_one_clear_line(compilers: str, tmp_path: Path) -> None:
    # No compiler at all, or (as in a machine without one, .ci/wheel-test.sh) cc, gcc, clang and $CC that fail.
    path = tmp_path / "bin"
    path.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CC"}
    env.update(PATH=str(path), PYPROC_BENCH_CACHE=str(tmp_path / "cache"))
    if compilers == "all failing":
        for name in ("cc", "gcc", "clang"):
            (path / name).write_text("#!/bin/sh\nexit 1\n")
            (path / name).chmod(0o755)
        env.update(PATH=f"{path}:{os.environ['PATH']}", CC="false")
    for module, args in (("bench", ["--quick", "--out", str(tmp_path / "o")]), ("bench.spawnparts", [])):
        proc = subprocess.run([sys.executable, "-m", module, *args], cwd=BENCH_ROOT, env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        assert proc.returncode == 3, proc.stderr
        assert proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"python -m {module}: no C compiler found"), proc.stderr
        if compilers == "all failing":
            assert "$CC (/" in lines[0] and "exits 1" in lines[0]
    assert not (tmp_path / "o").exists()


def test_c_floors_run(quick_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = quick_run
    assert proc.returncode == 0, proc.stderr
    floors = json.loads((out / "results.json").read_text())["meta"]["floors"]
    assert subprocess.run([floors["minimal"]], check=False).returncode == 0
    times = subprocess.run([floors["spawnloop"], "3", floors["minimal"]], capture_output=True, text=True,
                           check=True).stdout.split()
    assert len(times) == 3 and all(int(x) > 0 for x in times)
    got = subprocess.run([floors["readloop"], "1", "/bin/sh", "-c", "printf 12345"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert int(got[1]) == 5
    got = subprocess.run([floors["pipeloop"], "1", "100000", "/bin/cat"], capture_output=True, text=True,
                         check=True).stdout.split()
    assert int(got[1]) == 100000
    bad = subprocess.run([floors["spawnloop"], "1", str(out / "missing")], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 1 and "failed" in bad.stderr
    parts = subprocess.run([floors["spawnparts"], "2", floors["minimal"]], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert len(parts) == 10 and all(len(line.split()) == 3 and int(line.split()[1]) > 0 for line in parts)
    bad = subprocess.run([floors["spawnparts"], "1", str(out / "missing")], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 1 and "failed" in bad.stderr
    bad = subprocess.run([floors["spawnparts"], "0", floors["minimal"]], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_a_busy_bench_worker_dies_with_the_report(tmp_path: Path) -> None:
    """`python -m bench` killed (not by a Ctrl-C, which reaches the whole group): its worker, busy with a request,
    is killed by the kernel at once (bench.tied), instead of finishing the request first (a sweep's worker holds
    gigabytes for minutes)."""
    script = (
        "import json, sys, time\n"
        "from bench.harness import Worker\n"
        "w = Worker(0, 'clean')\n"
        "w.proc.stdin.write(json.dumps({'op': 'spawn', 'method': 'subprocess.run', 'argv': ['sleep', '30'],"
        " 'n': 1}) + '\\n')\n"
        "w.proc.stdin.flush()\n"
        "print(w.proc.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=BENCH_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        watch = os.pidfd_open(worker)  # (not our child: its pidfd says when it has exited)
        deadline = time.monotonic() + 10
        sleeper: list[int] = []
        while not sleeper and time.monotonic() < deadline:  # the worker's `sleep 30`, to clean up after
            with open(f"/proc/{worker}/task/{worker}/children") as f:
                sleeper = [int(pid) for pid in f.read().split()]
            time.sleep(0.01)
        assert sleeper, "the worker did not start its request's child"
    finally:
        parent.kill()
        parent.wait()
    try:
        assert select.select([watch], [], [], 10)[0], "the worker outlived the report's process"
    finally:
        os.close(watch)
        for pid in sleeper:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
