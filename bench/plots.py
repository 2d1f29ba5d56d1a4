"""The PNG plots (matplotlib, Agg backend): spawn time against parent size, copy-on-write per-page costs, pipe
throughput, spawns per second, jobs per second against K."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from .config import GiB, MiB, fmt_size
from .cowdata import cow_rows
from .jobs import FLOOR as JOB_FLOOR
from .jobs import METHODS as JOB_METHODS
from .jobs import key as job_key

PLOTS = ("spawn_vs_parent_size.png", "cow_per_page.png", "pipe_throughput.png", "spawns_per_second.png",
         "jobs_per_second.png")

_STYLE = {"dirty": "-", "clean": "--", "thp": ":"}
_COLORS = {
    "pyproc default": "#1f77b4", "pyproc vfork": "#17becf", "pyproc posix_spawn": "#9467bd",
    "pyproc fork": "#d62728", "subprocess.run": "#2ca02c", "os.posix_spawn": "#bcbd22",
    "os.fork+execv": "#ff7f0e", "multiprocessing fork": "#8c564b", "multiprocessing spawn": "#e377c2",
    "multiprocessing forkserver": "#7f7f7f", "pyproc.subprocess.run": "#aec7e8",
    "pyproc": "#1f77b4", "subprocess": "#2ca02c", "pyproc.subprocess": "#9467bd", "C floor": "#444444",
}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _stamp(fig: Any, results: dict[str, Any]) -> None:
    m = results["meta"]["machine"]
    fig.text(0.99, 0.005, f"{m['cpu_model']}, {m['cores_usable']} cores, Linux {m['kernel']}, {m['python']}; "
             f"{results['meta']['started_utc']}", ha="right", va="bottom", fontsize=6, color="#666666")


def _message(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _size_axis(ax: Any, sizes: list[int]) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    if sizes:
        ax.set_xticks([s / MiB for s in sizes])
        ax.set_xticklabels([fmt_size(s) for s in sizes], fontsize=8)
        ax.minorticks_off()
    ax.grid(True, which="both", alpha=0.3)


def spawn_vs_size(results: dict[str, Any], path: Path) -> None:
    """(1) spawn+wait time against parent size, log-log, one line per way of spawning and memory state: left, from
    Python as a user calls it (the sweep); right, timed in C by pyproc.cow.measure_fork (the paper's Figure 1)."""
    plt = _plt()
    from .cowdata import fork_rows

    frows = [] if "skipped" in results.get("cow", {"skipped": ""}) else fork_rows(results["cow"])
    fig, axes = plt.subplots(1, 2, figsize=(16, 9.5), sharey=True, squeeze=False)
    ax, cax = axes[0]
    points = results.get("sweep", {}).get("points", [])
    states = list(dict.fromkeys(p["state"] for p in points))
    for state in states:
        pts = sorted((p for p in points if p["state"] == state), key=lambda p: p["size"])
        for method in pts[0]["methods"]:
            xs, ys, lo, hi = [], [], [], []
            for p in pts:
                st = p["methods"][method]["big"]["stats"]
                if st:
                    xs.append(p["size"] / MiB)
                    ys.append(st["median"] / 1e3)
                    lo.append((st["median"] - st["min"]) / 1e3)
                    hi.append((st["max"] - st["median"]) / 1e3)
            if xs:
                ax.errorbar(xs, ys, yerr=[lo, hi], linestyle=_STYLE.get(state, "-"), marker="o", markersize=3,
                            capsize=2, linewidth=1.4 if state == "dirty" else 1.0, elinewidth=0.5,
                            color=_COLORS.get(method), label=f"{method} ({state})")
    floor = results["spawn"]["minimal"]["series"].get("C floor", {}).get("stats")
    for a in (ax, cax):
        if floor:
            a.axhline(floor["median"] / 1e3, color="black", linewidth=0.8, linestyle="-.",
                      label="C vfork+execve+waitpid floor (small parent)" if a is ax else None)
    _size_axis(ax, sorted({p["size"] for p in points}))
    ax.set_xlabel("parent's extra memory (log scale)")
    ax.set_ylabel("spawn + wait, median (µs, log scale); bars: min to max")
    ax.set_title("From Python, as a user calls it (minimal static executable)\n"
                 "4 KiB pages dirty (solid) / clean (dashed); THP dirty (dotted)", fontsize=10)
    if not points:
        _message(ax, "no parent-size sweep in this run")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=3, frameon=False)

    shown = ("fork_exit", "fork_exec", "clone", "posix_spawn")
    colors = {"fork_exit": "#8c564b", "fork_exec": "#ff7f0e", "clone": "#1f77b4", "posix_spawn": "#9467bd"}
    styles = {("4k", "dirty"): "-", ("4k", "clean"): "--", ("4k", "fragmented"): (0, (5, 1, 1, 1)),
              ("thp", "dirty"): ":", ("hugetlb", "dirty"): (0, (1, 3))}
    for key in dict.fromkeys((r["pages"], r["state"]) for r in frows):
        for method in shown:
            rs = sorted((r for r in frows if (r["pages"], r["state"]) == key and r["method"] == method),
                        key=lambda r: r["size"])
            if rs:
                cax.errorbar([r["size"] / MiB for r in rs], [r["median_ns"] / 1e3 for r in rs],
                             yerr=[[(r["median_ns"] - r["min_ns"]) / 1e3 for r in rs],
                                   [(r["max_ns"] - r["median_ns"]) / 1e3 for r in rs]],
                             linestyle=styles.get(key, "-"), marker="o", markersize=3, capsize=2, elinewidth=0.5,
                             linewidth=1.2, color=colors[method], label=f"{method} ({key[0]} {key[1]})")
    _size_axis(cax, sorted({r["size"] for r in frows}))
    cax.set_xlabel("parent's extra memory (log scale)")
    cax.set_title("Timed in C by pyproc.cow.measure_fork (no Python in the loop)\n"
                  "fork_exit = fork+_exit+wait; fork_exec = fork+execve+wait; clone / posix_spawn = pyproc engines",
                  fontsize=10)
    if frows:
        cax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=3, frameon=False)
    else:
        _message(cax, "not measured: " + str(results.get("cow", {}).get("skipped", "no data")))
    fig.suptitle("Starting a process against the size of the parent", fontsize=12)
    _stamp(fig, results)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cow_per_page(results: dict[str, Any], path: Path) -> None:
    """(2) copy-on-write per-page costs by phase and page kind (pyproc.cow.measure_cow)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 5.8))
    cow = results.get("cow", {})
    rows = [] if "skipped" in cow else cow_rows(cow)
    if not rows:
        _message(ax, "copy-on-write costs not measured in this run:\n" + str(cow.get("skipped", "no data")))
        ax.set_title("Copy-on-write cost per 4 KiB page")
    else:
        size = max(r["size"] for r in rows)
        rows = [r for r in rows if r["size"] == size]
        phases = list(dict.fromkeys(r["phase"] for r in rows))
        kinds = list(dict.fromkeys(r["pages"] for r in rows))
        width = 0.8 / len(kinds)
        names = {"first_touch": "parent: first touch\nof fresh memory", "read": "child: read\n(still shared)",
                 "write": "child: write\n(the COW copy)", "rewrite": "child: rewrite\n(already copied)"}
        for i, kind in enumerate(kinds):
            by = {r["phase"]: r for r in rows if r["pages"] == kind}
            xs = [j + i * width - 0.4 + width / 2 for j in range(len(phases)) if phases[j] in by]
            sel = [by[ph] for ph in phases if ph in by]
            ys = [r["ns_per_page"] for r in sel]
            err = [[r["ns_per_page"] - r["ns_per_page_min"] for r in sel],
                   [r["ns_per_page_max"] - r["ns_per_page"] for r in sel]]
            huge = sel[0]["anon_huge_kib"] if sel else None
            label = f"{kind} pages" + (f" (AnonHugePages {huge / 1024:.0f} MiB)" if kind == "thp" and huge is not None
                                       else "")
            bars = ax.bar(xs, ys, width, yerr=err, capsize=3, label=label,
                          error_kw={"elinewidth": 0.8, "ecolor": "#555555"})
            for bar, r in zip(bars, sel, strict=True):
                ax.annotate(f"{r['ns_per_page']:.0f} ns\n{r['faults_per_page']:.3g} flt/pg",
                            (bar.get_x() + bar.get_width() / 2, r["ns_per_page_max"]), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(phases)))
        ax.set_xticklabels([names.get(ph, ph) for ph in phases], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("ns per 4 KiB page touched (median, log scale; bars: min to max)")
        ax.set_title(f"Copy-on-write cost per 4 KiB page, by phase and page kind\n({fmt_size(size)} region, timed "
                     f"in C by pyproc.cow.measure_cow; flt/pg = minor faults per 4 KiB page)", fontsize=10)
        ax.margins(y=0.25)
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    _stamp(fig, results)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pipe_throughput(results: dict[str, Any], path: Path) -> None:
    """(3) pipe throughput: pyproc vs subprocess (and pyproc.subprocess) vs the C loops."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    io = results.get("io", {})
    groups = [(k, label) for k, label in (("capture", "capture stdout of\nhead -c N /dev/zero"),
                                          ("cat", "N in and N out\nthrough cat")) if k in io]
    methods = ("pyproc", "subprocess", "pyproc.subprocess", "C floor")
    labels = {"pyproc": "pyproc.run", "subprocess": "subprocess (run / Popen.communicate)",
              "pyproc.subprocess": "pyproc.subprocess (run / Popen.communicate)",
              "C floor": "C loop (read into malloc'd memory / poll loop)"}
    width = 0.8 / len(methods)
    skipped = []
    for i, m in enumerate(methods):
        xs, ys, lo, hi = [], [], [], []
        for j, (kind, _) in enumerate(groups):
            sec = io[kind]
            st = sec["series"][m]["stats"]
            moved = sec["size"] * (2 if kind == "cat" else 1) / GiB
            if st is None:
                skipped.append(f"{labels[m].split(' (')[0]}: {sec['series'][m]['skipped']}")
                continue
            med = moved / (st["median"] / 1e9)
            xs.append(j + i * width - 0.4 + width / 2)
            ys.append(med)
            lo.append(med - moved / (st["max"] / 1e9))
            hi.append(moved / (st["min"] / 1e9) - med)
        if xs:
            bars = ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, color=_COLORS[m], label=labels[m],
                          error_kw={"elinewidth": 0.8, "ecolor": "#999999"})
            for bar, y in zip(bars, ys, strict=False):
                ax.annotate(f"{y:.2f}", (bar.get_x() + bar.get_width() / 2, 0), ha="center", va="bottom",
                            fontsize=8, xytext=(0, 3), textcoords="offset points", color="white",
                            fontweight="bold")
    ax.set_xticks(range(len(groups)))
    size = io.get("capture", io.get("cat", {})).get("size", 0)
    ax.set_xticklabels([g[1].replace("N", fmt_size(size)) for g in groups])
    ax.set_ylabel("GiB/s of bytes moved (median; bars: min to max)")
    ax.set_title("Pipe throughput to and from a child")
    if groups:
        ax.legend(fontsize=8)
    else:
        _message(ax, "no I/O measurements in this run")
    note = ""
    if skipped:
        note = textwrap.fill("not measured: " + "; ".join(sorted(set(skipped))), 170)
        fig.text(0.01, 0.03, note, fontsize=6, color="#aa0000", va="bottom")
    ax.grid(True, axis="y", alpha=0.3)
    _stamp(fig, results)
    fig.tight_layout(rect=(0, 0.04 + 0.02 * note.count("\n"), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def spawns_per_second(results: dict[str, Any], path: Path) -> None:
    """(4) spawns per second from 1 and 2 threads."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    thr = {m: v for m, v in results.get("throughput", {}).items() if "skipped" not in v}
    methods = list(thr)
    for i, threads in enumerate(("1", "2")):
        ys = [thr[m][threads]["per_second"] for m in methods]
        err = [[y - thr[m][threads].get("min", y) for m, y in zip(methods, ys, strict=True)],
               [thr[m][threads].get("max", y) - y for m, y in zip(methods, ys, strict=True)]]
        bars = ax.bar([j + (i - 0.5) * 0.38 for j in range(len(methods))], ys, 0.38, yerr=err, capsize=3,
                      error_kw={"elinewidth": 0.8, "ecolor": "#555555"},
                      label=f"{threads} thread{'s' if threads != '1' else ''}",
                      color="#1f77b4" if threads == "1" else "#ff7f0e")
        for bar, y in zip(bars, ys, strict=False):
            ax.annotate(f"{y:,.0f}", (bar.get_x() + bar.get_width() / 2, 0), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 3), textcoords="offset points", color="white", fontweight="bold")
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels([m.replace("C floor", "C floor\n(1 or 2 C processes)") for m in methods], fontsize=8)
    ax.set_ylabel("spawn+wait of the minimal executable per second\n(median of rounds; bars: min to max)")
    ax.set_title("Spawns per second from one parent, 1 and 2 threads")
    if methods:
        ax.legend(fontsize=8)
    else:
        _message(ax, "no throughput measurements in this run")
    ax.grid(True, axis="y", alpha=0.3)
    _stamp(fig, results)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def jobs_per_second(results: dict[str, Any], path: Path) -> None:
    """(5) jobs per second against K (children at a time), every way, for each workload (issue 15)."""
    plt = _plt()
    from .jobsreport import series

    many = results.get("jobs") or {}
    workloads = [(w, t) for w, t in (("minimal", "minimal static executable"), ("true", "/bin/true (dynamic)"))
                 if w in many]
    fig, axes = plt.subplots(1, max(len(workloads), 1), figsize=(15, 6), sharey=True, squeeze=False)
    skipped: set[str] = set()
    colors = plt.get_cmap("tab10")
    for ax, (workload, title) in zip(axes[0], workloads, strict=False):
        s = series(many[workload])
        ks = many["ks"]
        for i, method in enumerate(JOB_METHODS):
            points = [(k, s[job_key(method, k)]) for k in ks if job_key(method, k) in s]
            points = [(k, ser) for k, ser in points if ser.samples]
            if not points:
                skipped.add(method)
                continue
            rates = [1e9 / ser.median for _, ser in points]
            lo = [rate - 1e9 / max(ser.samples) for rate, (_, ser) in zip(rates, points, strict=True)]
            hi = [1e9 / min(ser.samples) - rate for rate, (_, ser) in zip(rates, points, strict=True)]
            floor = method == JOB_FLOOR
            ax.errorbar([k for k, _ in points], rates, yerr=[lo, hi], marker="o", markersize=4, capsize=3,
                        elinewidth=0.6, linewidth=2.0 if floor else 1.3, linestyle="--" if floor else "-",
                        color="black" if floor else colors(i), label=method)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("K: children running at once")
        ax.set_title(f"{title}, both outputs captured", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("jobs per second (median of rounds, log scale; bars: slowest to fastest round)")
    if not workloads:
        _message(axes[0][0], "no many-children measurements in this run")
    if skipped:
        fig.text(0.01, 0.03, textwrap.fill("not measured: " + ", ".join(sorted(skipped)), 170), fontsize=7,
                 color="#aa0000", va="bottom")
    fig.suptitle("Many children, K at a time: jobs per second against K", fontsize=12)
    _stamp(fig, results)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(results: dict[str, Any], out: Path) -> list[Path]:
    """Writes the PNGs into out and returns their paths."""
    paths = []
    funcs = (spawn_vs_size, cow_per_page, pipe_throughput, spawns_per_second, jobs_per_second)
    for name, func in zip(PLOTS, funcs, strict=True):
        path = out / name
        func(results, path)
        paths.append(path)
    return paths
