"""report.md, results.json and the terminal summary, from the results of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import jobsreport, spawnparts
from .config import GiB, fmt_size
from .harness import Series, fmt_ns, fmt_ratio, ratio, target
from .tables import stats_row, table


def _series(d: dict[str, Any]) -> dict[str, Series]:
    """The Series of a suite section (live objects during a run, rebuilt from JSON otherwise)."""
    if "_series" in d:
        live: dict[str, Series] = d["_series"]
        return live
    return {k: Series(k, v["rounds_ns"], v["skipped"]) for k, v in d["series"].items()}


def _point_series(point: dict[str, Any], method: str, which: str) -> Series:
    v = point["methods"][method][which]
    return Series(v["name"], v["rounds_ns"], v["skipped"])


def largest_points(results: dict[str, Any], state: str) -> dict[str, Any] | None:
    """The sweep point of the largest size in `state`, or None."""
    points = [p for p in results.get("sweep", {}).get("points", []) if p["state"] == state]
    return max(points, key=lambda p: p["size"]) if points else None


def _absent(name: str) -> Series:
    return Series(name, skipped=f"{name} is not in these results")


def capture_cost_ns(results: dict[str, Any]) -> float | None:
    """The capture's own kernel work (two pipes read to end of file), timed in C by the steps table: what
    clone+capture_2_pipes adds to the plain clone; None when the table is not in these results."""
    rows = {r["way"]: r for r in results.get("spawn", {}).get("parts", {}).get("rows", [])}
    row = rows.get(spawnparts.CAPTURE)
    return None if row is None else float(row["added_to_clone_ns"])


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issues' speed targets, each a ratio from side-by-side samples of this run, and whether it held.

    The spawn and minimal-run bounds are issue 19's restatement of issues 2 and 3's: the C floor in its own process
    stays in the tables as information (issue 19: measured out of reach from a Python parent)."""
    out = []
    sp = _series(results["spawn"]["minimal"])

    def s(name: str) -> Series:
        return sp.get(name) or _absent(name)

    def why(*names: str) -> str | None:
        return next((s(n).skipped for n in names if s(n).skipped), None)

    out.append(target("spawn minimal exe: pyproc default vs C floor in the same process", 19,
                      ratio(s("pyproc default"), s(INPROC)), "<=", 1.25,
                      "median pyproc.spawn(argv).wait() / median C vfork+execve+waitpid timed in C, called from the "
                      "same Python worker", why("pyproc default", INPROC)))
    out.append(target("spawn minimal exe: pyproc default vs bare C calls", 19,
                      ratio(s("pyproc default"), s(BARE)), "<=", 1.10,
                      "median pyproc.spawn(argv).wait() / median of the same two C calls (spawn, reap) made from "
                      "Python with nothing around them", why("pyproc default", BARE)))
    out.append(target("spawn minimal exe: subprocess.run vs pyproc default", 2,
                      ratio(s("subprocess.run"), s("pyproc default")), ">=", 1.35,
                      "median subprocess.run / median pyproc default", why("pyproc default")))
    out.append(target("spawn minimal exe: os.posix_spawn vs pyproc clone", 2,
                      ratio(s("os.posix_spawn"), s("pyproc clone")), ">=", 1.4,
                      "median os.posix_spawn+os.waitpid / median pyproc engine='clone'", why("pyproc clone")))
    big = largest_points(results, "dirty")
    if big is None:
        out.append(target("4 GiB dirty parent: pyproc default vs small parent", 2, None, "<=", 1.2, "",
                          "no dirty sweep point"))
    else:
        note = "" if big["size"] == 4 * GiB else f"measured at {fmt_size(big['size'])}, the largest size of this run"
        m = big["methods"]
        out.append(target(f"{fmt_size(big['size'])} dirty parent: pyproc default vs small parent", 2,
                          m["pyproc default"]["big_vs_small"], "<=", 1.2,
                          "median from the big parent / median from the small parent, interleaved",
                          m["pyproc default"]["skipped"], note))
        out.append(target(f"{fmt_size(big['size'])} dirty parent: os.fork+execv grows with the parent", 2,
                          m["os.fork+execv"]["big_vs_small"], ">=", 1.5,
                          "median from the big parent / median from the small parent (shown growing: >= 1.5x)",
                          None, note))
    io = results.get("io", {})
    for kind, name, issue, bound in (("capture", "capture 1 GiB", 3, 2.5), ("cat", "1 GiB through cat", 3, 2.5),
                                     ("minimal", "run(minimal exe, capture)", 19, 1.4)):
        if kind not in io:
            continue
        io_s = _series(io[kind])
        size_note = "" if kind == "minimal" or io[kind]["size"] == GiB else \
            f"measured with {fmt_size(io[kind]['size'])}"
        label = name if not size_note else name.replace("1 GiB", fmt_size(io[kind]["size"]))
        std = "Popen.communicate" if kind == "cat" else "subprocess.run(capture_output=True)"
        out.append(target(f"{label}: {std} vs pyproc", issue, ratio(io_s["subprocess"], io_s["pyproc"]), ">=", bound,
                          f"median {std} / median pyproc", io_s["pyproc"].skipped,
                          size_note or _ceiling_note(io_s)))
        if kind == "capture":
            out.append(target(f"{label}: C read loop vs pyproc.run", 3, ratio(io_s["C floor"], io_s["pyproc"]), ">=",
                              1.3, "median C read() loop into malloc'd memory / median pyproc.run(capture=True)",
                              io_s["pyproc"].skipped, size_note))
        if kind == "minimal":
            out.append(_capture_bound(io_s, capture_cost_ns(results)))
        out.append(target(f"{label}: pyproc.subprocess keeps pyproc's gain", 7,
                          ratio(io_s["pyproc"], io_s["pyproc.subprocess"]), ">=", 0.90,
                          "(stdlib/pyproc.subprocess) / (stdlib/pyproc) = median pyproc / median pyproc.subprocess; "
                          "within 10%", io_s["pyproc.subprocess"].skipped or io_s["pyproc"].skipped, size_note))
    if "capture_medium" in io:
        io_s = _series(io["capture_medium"])
        out.append(target(f"capture {fmt_size(io['capture_medium']['size'])}: subprocess.run(capture_output=True) vs "
                          "pyproc", 3, ratio(io_s["subprocess"], io_s["pyproc"]), ">=", 1.0,
                          "median subprocess.run(capture_output=True) / median pyproc.run(capture=True)",
                          io_s["pyproc"].skipped,
                          "the project's own regression guard (issue 3): a medium output must not be slower than "
                          "subprocess; measured after the big captures (glibc's mmap threshold raised)"))
    out += jobsreport.targets(results)
    out += installed_targets(results)
    out += dask_targets(results)
    return out


INSTALLED_ROWS = (("subprocess.run(capture_output=True)", "subprocess.run", 1.4),
                  ("asyncio.create_subprocess_exec + communicate", "asyncio.create_subprocess_exec + communicate", 1.5))
"""Issue 16's rows (minimal executable, both outputs captured, interleaved in one process; the standard way's time
/ the installed way's): (the target's name, bench.installed's row, the bound)."""


def installed_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 16's two targets, read from `python -m bench.installed`'s answer (run.installed_suite)."""
    inst = results.get("installed")
    if inst is None:
        return []
    rows = inst.get("rows", {})
    return [target(f"installed vs not (minimal exe): {name}", 16, (rows.get(row) or {}).get("speedup"), ">=", bound,
                   "median standard / median installed, interleaved in one process",
                   inst.get("skipped") or (None if row in rows else f"python -m bench.installed gave no row {row!r}"))
            for name, row, bound in INSTALLED_ROWS]


def _installed_lines(results: dict[str, Any]) -> list[str]:
    inst = results.get("installed")
    if inst is None:
        return []
    lines = ["## pyproc.subprocess.install(): the standard library's subprocess and asyncio, installed vs not", "",
             "The standard library's own calls, as code that imported `subprocess` or uses asyncio writes them, with "
             "`pyproc.subprocess.install()` active and without it, interleaved in one process (`python -m "
             "bench.installed`); the minimal executable, both outputs captured.", ""]
    if "skipped" in inst:
        return [*lines, f"Not measured: {inst['skipped']}.", ""]
    from .installed import table  # (imports pyproc.subprocess: only when there is something to show)

    return [*lines, *table(inst["rows"]), ""]


def dask_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 18's two targets, from `python -m bench.dask_bench`'s summary (run.dask_suite)."""
    d = results.get("dask")
    if d is None:
        return []
    if "skipped" in d:
        from .dask_bench import TARGETS  # (imports no dask)

        return [target(name, 18, None, op, bound, what, d["skipped"]) for name, op, bound, what in TARGETS]
    return list(d["summary"]["targets"])


def _dask_lines(results: dict[str, Any]) -> list[str]:
    d = results.get("dask")
    if d is None:
        return []
    lines = ["## Past one machine: pyproc.dask.run_many on a Dask LocalCluster", "",
             "`python -m bench.dask_bench`: the same jobs (the minimal executable, both outputs captured) as "
             "`client.map(subprocess.run, ...)`, as `pyproc.dask.run_many` (batches run by pyproc.run_many on the "
             "workers) and as `pyproc.run_many` in this process on as many children as the cluster has workers, "
             "interleaved.", ""]
    if "skipped" in d:
        return [*lines, f"Not measured: {d['skipped']}.", ""]
    from .dask_bench import report as dask_report

    return [*lines, dask_report(d["summary"], d["workers"]), ""]


def _capture_bound(io_s: dict[str, Series], pipes_ns: float | None) -> dict[str, Any]:
    """Issue 19: run(capture=True) of the minimal executable costs at most 1.10x its spawn+wait (same rounds) plus
    the capture's own kernel work timed in C."""
    name = "run(minimal exe, capture): pyproc.run vs spawn+wait + C capture cost"
    what = ("median pyproc.run(capture=True) / (median pyproc.spawn(argv).wait() in the same rounds + what two pipes "
            "read to end of file add to a clone in C, from the spawn-steps table)")
    run, ceiling = io_s.get("pyproc") or _absent("pyproc"), io_s.get(CEILING) or _absent(CEILING)
    if pipes_ns is None:
        return target(name, 19, None, "<=", 1.10, what, "the spawn-steps table (bench.spawnparts) is not in this run")
    return target(name, 19, ratio(run, ceiling, plus=max(pipes_ns, 0.0)), "<=", 1.10, what,
                  run.skipped or ceiling.skipped, f"C capture cost {fmt_ns(max(pipes_ns, 0.0))}")


INPROC = "C floor, in this process"
"""The spawn table's C floor timed in C but called from the Python worker: the kernel work from a Python parent."""
BARE = "pyproc clone, bare C calls"
"""The spawn table's row making only pyproc's two C calls from Python: the least any Python wrapper pays."""


CEILING = "pyproc spawn+wait, no capture"
"""The minimal-run comparison's contender that captures nothing: the least a run(capture=True) can cost."""


def _ceiling_note(s: dict[str, Series]) -> str:
    """For run(minimal exe, capture): the most any capture can gain over subprocess, measured in the same rounds."""
    if CEILING not in s or "subprocess" not in s:
        return ""
    r = ratio(s["subprocess"], s[CEILING])
    if r is None:
        return ""
    return (f"ceiling: subprocess.run(capture_output=True) is {fmt_ratio(r)} pyproc.spawn(argv).wait() with nothing "
            "captured, in the same rounds; a capture does that work and more")


def _bound(t: dict[str, Any]) -> str:
    unit = t.get("unit", "x")
    return f"{t['op']} {t['bound']}" + ("" if unit == "x" else f" {unit}")


def _held(t: dict[str, Any]) -> str:
    if t["held"] is None:
        return "skipped"
    return "**yes**" if t["held"] else "**NO**"


def _spawn_table(series: dict[str, Series]) -> list[str]:
    rows = []
    refs = [(n, series.get(n)) for n in ("C floor", "pyproc default", "pyproc fork")]
    for name, s in series.items():
        row = [name, *stats_row(s)]
        for _, ref in refs:
            row.append("n/a" if ref is None or s.skipped else fmt_ratio(ratio(s, ref)))
        rows.append(row)
    return table(["way", "median", "min", "max", "n", "vs C floor", "vs pyproc default", "vs pyproc fork engine"],
                  rows)


def _pinning_sentence(meta: dict[str, Any]) -> str:
    """How the short spawn+wait series were run (pinned since issue 19), for the Method section."""
    cpu = meta.get("spawn_cpu")
    if cpu is None:  # results from before the series were pinned
        return "The spawn series ran unpinned."
    return (f"The short spawn+wait series (the spawn tables, the steps table, the sweep and the minimal run with "
            f"output captured) ran with the worker pinned to CPU {cpu}, so that every way's child ran on its "
            "parent's CPU: a child the scheduler places on another CPU costs every way alike tens of microseconds "
            "more (40 to 56 us on a 2-vCPU VM whose idle CPU halts, issue 19), and whether it does depends on what "
            "the parent did just before, not on the way measured. The captures, throughput and many-children "
            "suites are not pinned.")


def _machine_lines(m: dict[str, Any]) -> list[str]:
    def gib(v: Any) -> str:
        return f"{v / GiB:.1f} GiB" if isinstance(v, int) else "?"
    hp = m.get("hugepages_total")
    rows = [
        ["CPU", f"{m['cpu_model']} ({m['arch']})"],
        ["cores", f"{m['cores_online']} online, {m['cores_usable']} usable by this run"],
        ["memory", f"{gib(m.get('mem_total'))} total, {gib(m.get('mem_available'))} available at start"],
        ["kernel", f"Linux {m['kernel']}"],
        ["C library", str(m.get("glibc"))],
        ["Python", str(m["python"])],
        ["pyproc", str(m.get("pyproc"))],
        ["THP", f"enabled={m.get('thp_enabled')}, defrag={m.get('thp_defrag')}"],
        ["overcommit_memory", str(m.get("overcommit_memory"))],
        ["huge pages (hugetlb)", f"{hp} reserved ({m.get('hugepages_free')} free) of "
         f"{(m.get('hugepage_size') or 0) // 1024} KiB" if hp is not None else "?"],
        ["load average at start", str(m.get("loadavg"))],
    ]
    return table(["", ""], rows)


def _load(m: dict[str, Any]) -> tuple[float, int] | None:
    """(1-minute load average, usable cores), when known."""
    try:
        return float(str(m.get("loadavg", "")).split()[0]), int(m.get("cores_usable") or 1)
    except (ValueError, IndexError):
        return None


def _reading(results: dict[str, Any], tg: list[dict[str, Any]]) -> list[str]:
    """A few plain sentences reading the figures of this run."""
    out = []
    sp = _series(results["spawn"]["minimal"])
    floor, default = sp["C floor"], sp["pyproc default"]
    if default.samples and floor.samples:
        out.append(f"From a small parent, starting and reaping the minimal static executable costs "
                   f"{fmt_ns(floor.median)} in plain C (vfork+execve+waitpid) and {fmt_ns(default.median)} through "
                   f"pyproc.spawn(argv).wait() from Python ({default.median / floor.median:.2f}x the C floor). "
                   f"The C floor in its own process is shown for information, not as a target: a spawn made from a "
                   f"Python parent is set against the same C work done from that parent (issue 19).")
    inproc = sp.get(INPROC)
    if inproc is not None and inproc.samples and floor.samples and default.samples:
        out.append(f"The same C vfork+execve+waitpid, timed in C but called from the Python worker, takes "
                   f"{fmt_ns(inproc.median)} ({inproc.median / floor.median:.2f}x the C floor's own process): the "
                   f"kernel work of a spawn from a Python parent; pyproc's default is "
                   f"{default.median / inproc.median:.2f}x that (target: at most 1.25x, issue 19).")
    bare = sp.get(BARE)
    if bare is not None and bare.samples and floor.samples and default.samples:
        out.append(f"Making only pyproc's two C calls from Python (spawn, reap; argv packed beforehand) takes "
                   f"{fmt_ns(bare.median)} ({bare.median / floor.median:.2f}x the C floor): the least any Python "
                   f"wrapper over them pays; pyproc.spawn(argv).wait() adds "
                   f"{fmt_ns(max(default.median - bare.median, 0))} to it ({default.median / bare.median:.2f}x; "
                   f"target: at most 1.10x, issue 19).")
    conly = sp.get("pyproc clone, C only")
    if conly is not None and conly.samples and floor.samples:
        crossing = ""
        if bare is not None and bare.samples:
            crossing = (f"; making the same two calls from Python, with nothing else around them (the bare calls' "
                        f"row), costs {fmt_ns(max(bare.median - conly.median, 0))} more: the price of calling C from "
                        f"Python around a spawn")
        out.append(f"pyproc's clone engine timed in C around the same spawn and reap, from the same parent, takes "
                   f"{fmt_ns(conly.median)} ({conly.median / floor.median:.2f}x the C floor){crossing}.")
    by_way = {r["way"]: r for r in results["spawn"].get("parts", {}).get("rows", [])}
    if {"clone+all_of_pyproc", "clone+CLONE_PIDFD", "clone+pidfd_open", spawnparts.FLOOR} <= set(by_way):
        floor_ns = by_way[spawnparts.FLOOR]["median_ns"]
        steps, pidfd, late = (by_way[k]["added_to_clone_ns"] for k in
                              ("clone+all_of_pyproc", "clone+CLONE_PIDFD", "clone+pidfd_open"))
        out.append(f"Timed in C in one process, the steps pyproc's default engine adds to a plain CLONE_VM|CLONE_VFORK "
                   f"clone (pidfd, rusage, two signal resets, closing fds) cost {steps / 1e3:.2f} µs, "
                   f"{steps / floor_ns:.1%} of the C floor; the pidfd from CLONE_PIDFD alone is {pidfd / 1e3:.2f} µs "
                   f"({pidfd / floor_ns:.1%}). It is what lets pyproc never signal a recycled pid; pidfd_open() "
                   f"once clone has returned costs {late / 1e3:.2f} µs (it overlaps the child's run) but could open "
                   f"a recycled pid if something else reaped the child first.")
    sub, osfork = sp["subprocess.run"], sp["os.fork+execv"]
    if sub.samples and default.samples and osfork.samples:
        out.append(f"subprocess.run takes {fmt_ns(sub.median)} ({sub.median / default.median:.2f}x pyproc's "
                   f"default) and os.fork+os.execv {fmt_ns(osfork.median)} "
                   f"({osfork.median / default.median:.2f}x) even from this small parent.")
    big = largest_points(results, "dirty")
    if big is not None:
        m = big["methods"]
        f_small = _point_series(big, "os.fork+execv", "small")
        f_big = _point_series(big, "os.fork+execv", "big")
        d_big = _point_series(big, "pyproc default", "big")
        d_small = _point_series(big, "pyproc default", "small")
        if f_big.samples and d_big.samples:
            out.append(f"From a parent holding {fmt_size(big['size'])} of dirty 4 KiB pages, os.fork+execv takes "
                       f"{fmt_ns(f_big.median)} (it was {fmt_ns(f_small.median)} from the small parent): fork "
                       f"copies the page tables of the whole parent, so its cost grows with the parent's memory. "
                       f"pyproc's default (clone with CLONE_VM|CLONE_VFORK, which copies no page tables) takes "
                       f"{fmt_ns(d_big.median)} there against {fmt_ns(d_small.median)} from the small parent "
                       f"({fmt_ratio(m['pyproc default']['big_vs_small'])})"
                       + (": it does not grow with the parent." if d_big.median <= 1.2 * d_small.median else
                          ": more than the 1.2x target allows in this run."))
        mpf = m.get("multiprocessing fork")
        mps = m.get("multiprocessing spawn")
        if mpf and mps and mpf["big"]["stats"] and mps["big"]["stats"]:
            out.append(f"multiprocessing's 'fork' start method pays the same page-table copy "
                       f"({fmt_ns(mpf['big']['stats']['median'])} at that size), while 'spawn' "
                       f"({fmt_ns(mps['big']['stats']['median'])}) pays for a fresh interpreter whatever the size.")
    io = results.get("io", {})
    for kind, what, factor in (("capture", "Capturing {} of a child's stdout", 1),
                               ("cat", "Sending {} through cat and reading it back", 2)):
        if kind in io:
            s = _series(io[kind])
            size = io[kind]["size"]
            parts = [f"{n} {factor * size / s[n].median * 1e9 / GiB:.2f} GiB/s" for n in s if s[n].samples]
            out.append(what.format(fmt_size(size)) + " (bytes moved per second): " + ", ".join(parts) + ".")
    if "minimal" in io:
        s = _series(io["minimal"])
        if all(n in s and s[n].samples for n in ("pyproc", "subprocess", CEILING)):
            out.append(f"Running the minimal executable with both outputs captured takes {fmt_ns(s['pyproc'].median)} "
                       f"through pyproc.run(capture=True) and {fmt_ns(s['subprocess'].median)} through "
                       f"subprocess.run(capture_output=True) ({s['subprocess'].median / s['pyproc'].median:.2f}x); "
                       f"pyproc.spawn(argv).wait(), capturing nothing, takes {fmt_ns(s[CEILING].median)} in the same "
                       f"rounds, so no capture can be more than "
                       f"{s['subprocess'].median / s[CEILING].median:.2f}x faster than subprocess's here.")
            pipes_ns = capture_cost_ns(results)
            if pipes_ns is not None:
                least = s[CEILING].median + max(pipes_ns, 0)
                out.append(f"The capture's own kernel work (two pipes read to end of file) costs "
                           f"{pipes_ns / 1e3:.2f} µs timed in C (the steps table); added to that spawn+wait, it "
                           f"leaves at most {s['subprocess'].median / least:.2f}x for any run(capture=True) against "
                           f"subprocess.run(capture_output=True). pyproc.run(capture=True) costs "
                           f"{s['pyproc'].median / least:.2f}x that sum (target: at most 1.10x, issue 19) and "
                           f"subprocess.run(capture_output=True) {s['subprocess'].median / s['pyproc'].median:.2f}x "
                           f"pyproc's (target: at least 1.4x, issue 19).")
    out += jobsreport.reading(results)
    out += _cow_reading(results.get("cow", {}))
    held = [t for t in tg if t["held"] is True]
    missed = [t for t in tg if t["held"] is False]
    skipped = [t for t in tg if t["held"] is None]
    out.append(f"Of the {len(tg)} targets, {len(held)} held, {len(missed)} did not"
               + (f" ({'; '.join(t['name'] for t in missed)})" if missed else "")
               + (f", and {len(skipped)} could not be measured in this run" if skipped else "") + ".")
    out.append("These machines are shared and noisy: an absolute time is a fact about one run; the ratios, measured "
               "side by side in one run, are the claim.")
    return out


def _cow_reading(cow: dict[str, Any]) -> list[str]:
    from .cowdata import cow_rows, fork_rows

    out = []
    rows = {(r["pages"], r["phase"]): r for r in cow_rows(cow) if "skipped" not in cow}
    if ("4k", "write") in rows and ("4k", "rewrite") in rows:
        w, rw = rows[("4k", "write")], rows[("4k", "rewrite")]
        out.append(f"After fork, the first write to each 4 KiB page costs the child {w['ns_per_page']:.0f} ns "
                   f"({w['ms_per_gib']:.0f} ms per GiB, {w['faults_per_page']:.2f} minor faults per page), a write "
                   f"to a page already copied {rw['ns_per_page']:.0f} ns: this is the bill fork defers.")
    if ("thp", "write") in rows:
        t = rows[("thp", "write")]
        huge = t["anon_huge_kib"] or 0
        out.append(f"With transparent huge pages ({huge / 1024:.0f} MiB of the region really huge), a copy-on-write "
                   f"write costs {t['ns_per_page']:.0f} ns per 4 KiB page, with {t['faults_per_page']:.3g} minor "
                   "faults per 4 KiB page: "
                   + ("the kernel copies 4 KiB at a time, not 2 MiB." if t["faults_per_page"] > 0.5
                      else "the kernel copies whole huge pages."))
    frows = [r for r in fork_rows(cow) if r["pages"] == "4k" and r["method"] in ("fork_exec", "clone")]
    frag = [r for r in frows if r["state"] == "fragmented"]
    dirty = {(r["method"], r["size"]): r for r in frows if r["state"] == "dirty"}
    common = {r["size"] for r in frag} & {size for _, size in dirty}
    if common:
        size = max(common)
        fe = next((r for r in frag if r["size"] == size and r["method"] == "fork_exec"), None)
        d = dirty.get(("fork_exec", size))
        if fe and d:
            out.append(f"Timed in C, fork+exec from a {fmt_size(size)} parent takes {fmt_ns(fe['median_ns'])} when "
                       f"the region is fragmented into one mapping per page, against {fmt_ns(d['median_ns'])} when "
                       f"it is one mapping: fork copies per VMA as well as per page.")
    return out


def _gibps(size: int, s: Series) -> str:
    if not s.samples or size == 0:
        return "n/a"
    return f"{size / s.median * 1e9 / GiB:.2f}"


def render(results: dict[str, Any], tg: list[dict[str, Any]]) -> str:
    """report.md's text."""
    meta = results["meta"]
    cfg = meta["config"]
    lines = ["# pyproc: what starting a process costs on this machine", "",
             f"Measured {meta['started_utc']} to {meta.get('finished_utc', '?')} (UTC), "
             f"{meta.get('elapsed_s', 0):.0f} s, configuration `{cfg['name']}`"
             + (f" (seconds per suite: {', '.join(f'{k} {v}' for k, v in meta['suite_seconds'].items())})"
                if meta.get("suite_seconds") else "") + ".", "",
             "Reproduce, from the repository's root: `pip install -e '.[bench]'` then `"
             + " ".join(["python -m bench", *meta["command"]]).strip()
             + "` (`--quick` for a one-minute run, `--sizes 64M,1G,4G` for other parent sizes). "
             "Raw samples: results.json next to this file.", "",
             "## Machine", "", *_machine_lines(meta["machine"]), "",
             "## Method", "",
             "Every Python figure is the wall time (time.perf_counter_ns) of the call as a user writes it, e.g. "
             "`pyproc.spawn(argv).wait()` or `subprocess.run(argv)`, made in a worker process that holds the "
             "parent memory being studied. The C floors are built by the benchmark with the system C compiler and "
             "time themselves with CLOCK_MONOTONIC. After a warm-up batch, contenders run interleaved, in one run, in "
             "an order that changes every round so that each follows every other one equally often (a Williams "
             "design: whatever a contender leaves behind, a busy CPU or pages to fault again after a fork, is not "
             "charged to the same one every time); a table gives medians with min and max, and a ratio is "
             "median/median with, in brackets, the lowest and highest ratio of the rounds' medians. "
             + _pinning_sentence(meta),
             "", "## Targets", "",
             "Each claim \"A vs B\" is median(A) / median(B) from samples taken interleaved in this run; in "
             "brackets the lowest and highest ratio of single rounds. For jobs per second, \"A vs B\" is A's jobs/s "
             "over B's. Each row names the issue its bound comes from; issue 19 restated issue 2's spawn bound and "
             "issue 3's minimal-run bound (the C floor in its own process is information in the spawn tables, not a "
             "target).", ""]
    if cfg["name"] == "quick":
        lines += ["**This is a --quick run** (small sizes, few samples): it shows the machinery works; the targets "
                  "are stated for the default run.", ""]
    load = _load(meta["machine"])
    end = _load({**meta["machine"], "loadavg": meta.get("loadavg_end", "")})
    if load is not None and max(load[0], end[0] if end else 0.0) > 0.5 * load[1]:
        lines += [f"**The machine was busy** (load average {load[0]:.1f} at the start"
                  + (f", {end[0]:.1f} at the end" if end else "") + f", on {load[1]} cores): other work competes for "
                  "the CPUs, so expect noise, mostly in the short spawn times.", ""]
    rows = []
    for t in tg:
        rows.append([t["name"], f"issue {t['issue']}", fmt_ratio(t["ratio"], t.get("unit", "x")), _bound(t), _held(t),
                     t["skipped"] or t["note"] or ""])
    lines += table(["claim", "from", "measured", "target", "held", "note"], rows)
    lines += ["", "## Reading", "", *[f"- {s}" for s in _reading(results, tg)], ""]
    for key, title in (("minimal", "the minimal static executable (_start calls exit)"), ("true", "/bin/true")):
        sec = results["spawn"][key]
        lines += [f"## spawn+wait of {title}, small parent", "",
                  f"argv: `{' '.join(sec['argv'])}`; {cfg['spawn_rounds']} rounds of {cfg['spawn_batch']} calls.",
                  "", *_spawn_table(_series(sec)), ""]
    parts = results["spawn"].get("parts")
    if parts:
        lines += ["## What each step of a spawn costs, timed in C", "",
                  "`python -m bench.spawnparts` alone. One C process spawns and reaps the minimal executable each "
                  f"way, interleaved ({parts['rounds']} rounds of 10 per way, in the same balanced order), pinned to "
                  "the spawn series' CPU; a ratio is "
                  "median / median of the floor, in brackets the lowest and highest single-round ratio. The parent "
                  "ignores SIGPIPE and SIGXFSZ, as Python does.", "", *spawnparts.table(parts["rows"]), ""]
    sweep = results.get("sweep", {})
    io = results.get("io", {})
    if sweep.get("points"):
        lines += ["## spawn+wait of the minimal executable against parent size", "",
                  "Median per way of spawning, and in parentheses its ratio to the same call from the small "
                  "parent measured interleaved with it (the 'small parent' column shows the first such series). "
                  "Parent states: "
                  "dirty = 4 KiB pages written (MADV_NOHUGEPAGE), clean = mapped never touched, thp = MADV_HUGEPAGE "
                  "and written. The multiprocessing start methods run a no-op Python function, not the "
                  "executable.", ""]
        for state in dict.fromkeys(p["state"] for p in sweep["points"]):
            pts = sorted((p for p in sweep["points"] if p["state"] == state), key=lambda p: p["size"])
            last = pts[-1]
            head = ["way", "small parent", *[f"{fmt_size(p['size'])} {state}" for p in pts],
                    f"{fmt_size(last['size'])}: pyproc fork engine's time / this way's"]
            rows = []
            fork_ref = _point_series(last, "pyproc fork", "big") if "pyproc fork" in last["methods"] else None
            for m in pts[0]["methods"]:
                first = pts[0]["methods"][m]
                small = first["small"]["stats"]
                row = [m, fmt_ns(small["median"]) if small else "skipped"]
                for p in pts:
                    e = p["methods"][m]
                    st = e["big"]["stats"]
                    bvs = e["big_vs_small"]
                    row.append(f"{fmt_ns(st['median'])} ({bvs['ratio']:.2f}x)" if st and bvs else "skipped")
                mine = _point_series(last, m, "big")
                row.append(fmt_ratio(ratio(fork_ref, mine)) if fork_ref is not None else "n/a")
                rows.append(row)
            lines += [f"### {state}", "", *table(head, rows), ""]
            lines += ["Parents: " + "; ".join(
                f"{fmt_size(p['size'])}: RSS {p['parent']['rss_kib'] / 1024:.0f} MiB, AnonHugePages "
                f"{p['parent']['anon_huge_kib'] / 1024:.0f} MiB, built in {p['build_s']:.1f} s" for p in pts), ""]
    if io:
        lines += ["## I/O", ""]
        names = {"capture": "capture `head -c N /dev/zero` (pyproc.run(capture=True) / subprocess.run("
                            "capture_output=True) / C read loop into malloc'd memory)",
                 "cat": "N bytes in and out through `cat` (pyproc.run(input=..., capture=True) / "
                        "Popen.communicate / C poll loop)",
                 "minimal": "run the minimal executable with output captured",
                 "capture_medium": "capture a medium output, `head -c N /dev/zero` (pyproc.run(capture=True) / "
                                   "subprocess.run(capture_output=True) / C read loop into malloc'd memory), "
                                   "after the big captures"}
        for kind, sec in io.items():
            s = _series(sec)
            size = sec["size"]
            moved = size * (2 if kind == "cat" else 1)
            lines += [f"### {names[kind]}" + (f", N = {fmt_size(size)}" if size else ""), ""]
            rows = []
            for name, ser in s.items():
                row = [name, *stats_row(ser), _gibps(moved, ser),
                       "n/a" if ser.skipped or s["pyproc"].skipped else fmt_ratio(ratio(ser, s["pyproc"]))]
                if ser.skipped:
                    row[-1] = ser.skipped
                rows.append(row)
            lines += [*table(["way", "median", "min", "max", "n", "GiB/s moved", "vs pyproc"], rows), ""]
    thr = results.get("throughput", {})
    if thr:
        lines += ["## Spawns per second (minimal executable, small parent)", "",
                  "Each thread spawns and waits in a loop for "
                  f"{cfg['throughput_seconds']} s (rate = spawns / wall time); the C floor runs one C loop per "
                  f"'thread' (separate processes; rate = spawns / time in the loop). {cfg.get('throughput_rounds', 1)} "
                  "round(s), interleaved over the ways.",
                  ""]
        rows = []
        for m, v in thr.items():
            if "skipped" in v:
                rows.append([m, "skipped", "", v["skipped"]])
            else:
                one, two = v["1"], v["2"]
                rows.append([m, f"{one['per_second']:,.0f} [{one.get('min', 0):,.0f}, {one.get('max', 0):,.0f}]",
                             f"{two['per_second']:,.0f} [{two.get('min', 0):,.0f}, {two.get('max', 0):,.0f}]",
                             f"{two['per_second'] / one['per_second']:.2f}x"])
        lines += [*table(["way", "1 thread: median [min, max]", "2 threads: median [min, max]", "2 vs 1"],
                            rows), ""]
    lines += jobsreport.section(results)
    lines += _installed_lines(results)
    lines += _dask_lines(results)
    cow = results.get("cow", {})
    lines += ["## Copy-on-write and fork cost (pyproc.cow, timed in C)", ""]
    if "skipped" in cow:
        lines += [f"Skipped: {cow['skipped']}.", ""]
    else:
        lines += _cow_lines(cow)
    skipped = sorted({s.skipped for sec in (results["spawn"]["minimal"], *io.values())
                      for s in _series(sec).values() if s.skipped})
    skipped += [f"parent {fmt_size(p['size'])} {p['state']} not built: {p['skipped']}"
                for p in sweep.get("not_built", [])]
    skipped += [f"spawns per second, {m}: {v['skipped']}" for m, v in results.get("throughput", {}).items()
                if "skipped" in v and v["skipped"].startswith("failed")]
    skipped += jobsreport.failures(results)
    if skipped or cfg.get("notes"):
        lines += ["## Skipped and notes", "", *[f"- {x}" for x in [*skipped, *cfg.get("notes", [])]], ""]
    return "\n".join(lines) + "\n"


def _cow_lines(cow: dict[str, Any]) -> list[str]:
    from .cowdata import cow_rows, fork_rows

    lines = []
    rows = cow_rows(cow)
    if rows:
        lines += ["### Copy-on-write per 4 KiB page (measure_cow)", "",
                  "A dirty region is made in the parent (its timed dirtying is *first_touch*), then the parent forks "
                  "and the child, in C, reads one byte per 4 KiB page (*read*: pages still shared), writes one "
                  "(*write*: the copies), writes again (*rewrite*: already copied). Minor faults from getrusage.", "",
                  *table(["region", "pages", "phase", "ns per 4 KiB page: median [min, max]", "ms per GiB",
                           "minor faults", "faults per 4 KiB page", "AnonHugePages"],
                          [[fmt_size(r["size"]), r["pages"], r["phase"],
                            f"{r['ns_per_page']:.0f} [{r['ns_per_page_min']:.0f}, {r['ns_per_page_max']:.0f}]",
                            f"{r['ms_per_gib']:.1f}", f"{r['faults']:,.0f}", f"{r['faults_per_page']:.3f}",
                            "n/a" if r["anon_huge_kib"] is None else f"{r['anon_huge_kib'] / 1024:.0f} MiB"]
                           for r in rows]), ""]
    frows = fork_rows(cow)
    if frows:
        sizes = sorted({r["size"] for r in frows})
        keys = list(dict.fromkeys((r["pages"], r["state"], r["method"]) for r in frows))
        by = {(r["pages"], r["state"], r["method"], r["size"]): r for r in frows}
        fork_table = []
        for pages, state, method in keys:
            row = [f"{pages} {state}", method]
            for size in sizes:
                r = by.get((pages, state, method, size))
                row.append(fmt_ns(r["median_ns"]) if r else "")
            fork_table.append(row)
        lines += ["### Fork and spawn against parent size and state, timed in C (measure_fork)", "",
                  "fork_exit = fork + _exit(0) + wait; fork_exec = fork + execve + wait (plain C); clone, vfork, "
                  "posix_spawn, fork = pyproc's engines called from C, no Python in the loop. Child: the minimal "
                  "executable. Medians.", "",
                  *table(["parent", "what", *[fmt_size(s) for s in sizes]], fork_table), ""]
    skipped = [e for e in cow.get("measure_cow", []) + cow.get("measure_fork", []) if "skipped" in e]
    if skipped:
        lines += ["Not measured: " + "; ".join(
            f"{fmt_size(e['size'])} {e['pages']} {e.get('state', '')}".rstrip() + f": {e['skipped']}"
            for e in skipped), ""]
    return lines


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def summary(results: dict[str, Any], tg: list[dict[str, Any]]) -> str:
    """The short table printed on the terminal at the end."""
    lines = []
    sp = _series(results["spawn"]["minimal"])
    big = largest_points(results, "dirty")
    head = f"  {'way':<28} {'small parent':>13}"
    if big:
        head += f" {fmt_size(big['size']) + ' dirty parent':>22}"
    lines += ["spawn+wait of the minimal static executable (medians):", head]
    for name, s in sp.items():
        if s.samples:
            row = f"  {name:<28} {fmt_ns(s.median):>13}"
            if big and name in big["methods"] and big["methods"][name]["big"]["stats"]:
                row += f" {fmt_ns(big['methods'][name]['big']['stats']['median']):>22}"
            lines.append(row)
    io = results.get("io", {})
    for kind in ("capture", "cat"):
        if kind in io:
            io_series = _series(io[kind])
            moved = io[kind]["size"] * (2 if kind == "cat" else 1)
            parts = [f"{n} {moved / v.median * 1e9 / GiB:.2f}" for n, v in io_series.items() if v.samples]
            lines.append(f"{kind} {fmt_size(io[kind]['size'])}, GiB/s: " + ", ".join(parts))
    lines += jobsreport.summary(results)
    lines.append("targets:")
    for t in tg:
        state = {None: "skipped", True: "held", False: "NOT held"}[t["held"]]
        lines.append(f"  {t['name']:<78} {fmt_ratio(t['ratio'], t.get('unit', 'x')):>24}  {_bound(t):<10} {state}")
    return "\n".join(lines)


def write(results: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """Writes report.md and results.json into out; returns the targets."""
    tg = targets(results)
    results["targets"] = tg
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_strip(results), indent=1))
    (out / "report.md").write_text(render(results, tg))
    return tg


def load(path: Path) -> dict[str, Any]:
    """results.json back (for re-rendering the report and plots without measuring again)."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data

