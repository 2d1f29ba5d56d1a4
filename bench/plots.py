"""The PNG plots (matplotlib, Agg backend): spawn time against parent size, copy-on-write per-page costs, pipe
throughput, spawns per second."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from .config import GiB, MiB, fmt_size
from .cowdata import cow_rows

PLOTS = ("spawn_vs_parent_size.png", "cow_per_page.png", "pipe_throughput.png", "spawns_per_second.png")

_STYLE = {"dirty": "-", "clean": "--", "thp": ":"}
_COLORS = {
    "pyproc default": "#1f77b4", "pyproc vfork": "#17becf", "pyproc posix_spawn": "#9467bd",
    "pyproc fork": "#d62728", "subprocess.run": "#2ca02c", "os.posix_spawn": "#bcbd22",
    "os.fork+execv": "#ff7f0e", "multiprocessing fork": "#8c564b", "multiprocessing spawn": "#e377c2",
    "multiprocessing forkserver": "#7f7f7f", "pyproc.subprocess.run": "#aec7e8",
    "pyproc": "#1f77b4", "subprocess": "#2ca02c", "pyproc.subprocess": "#aec7e8", "C floor": "#444444",
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


def spawn_vs_size(results: dict[str, Any], path: Path) -> None:
    """(1) spawn+wait time against parent size, log-log, one line per way of spawning and memory state."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(13, 6.5))
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
                            capsize=2, linewidth=1.4 if state == "dirty" else 1.0, elinewidth=0.6,
                            color=_COLORS.get(method), label=f"{method} ({state})")
    floor = results["spawn"]["minimal"]["series"].get("C floor", {}).get("stats")
    if floor:
        ax.axhline(floor["median"] / 1e3, color="black", linewidth=0.8, linestyle="-.",
                   label="C vfork+execve+waitpid floor (small C parent)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parent's extra memory (MiB, log scale)")
    ax.set_ylabel("spawn + wait time, median (µs, log scale); bars: min to max")
    ax.set_title("Starting a process against the size of the parent (minimal static executable)\n"
                 "4 KiB pages: dirty (solid), clean/untouched (dashed); THP dirty (dotted)", fontsize=11)
    if points:
        sizes = sorted({p["size"] for p in points})
        ax.set_xticks([s / MiB for s in sizes])
        ax.set_xticklabels([fmt_size(s) for s in sizes])
        ax.minorticks_off()
    else:
        _message(ax, "no parent-size sweep in this run")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    _stamp(fig, results)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cow_per_page(results: dict[str, Any], path: Path) -> None:
    """(2) copy-on-write per-page costs by phase and page kind (pyproc.cow)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5.5))
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
        for i, kind in enumerate(kinds):
            vals = {r["phase"]: r["ns_per_page"] for r in rows if r["pages"] == kind}
            xs = [j + i * width - 0.4 + width / 2 for j in range(len(phases))]
            ys = [vals.get(ph, 0.0) for ph in phases]
            bars = ax.bar(xs, ys, width, label=f"{kind} pages")
            for bar, y in zip(bars, ys, strict=False):
                if y:
                    ax.annotate(f"{y:.0f}", (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom",
                                fontsize=7)
        ax.set_xticks(range(len(phases)))
        ax.set_xticklabels(phases, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("ns per 4 KiB page touched (median, log scale)")
        ax.set_title(f"Copy-on-write cost per 4 KiB page by phase and page kind ({fmt_size(size)} region, "
                     f"timed in C)")
        ax.legend(fontsize=8)
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
        bars = ax.bar([j + (i - 0.5) * 0.38 for j in range(len(methods))], ys, 0.38,
                      label=f"{threads} thread{'s' if threads != '1' else ''}",
                      color="#1f77b4" if threads == "1" else "#ff7f0e")
        for bar, y in zip(bars, ys, strict=False):
            ax.annotate(f"{y:,.0f}", (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels([m.replace("C floor", "C floor\n(1 or 2 C processes)") for m in methods], fontsize=8)
    ax.set_ylabel("spawn+wait of the minimal executable per second")
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


def write(results: dict[str, Any], out: Path) -> list[Path]:
    """Writes the four PNGs into out and returns their paths."""
    paths = []
    funcs = (spawn_vs_size, cow_per_page, pipe_throughput, spawns_per_second)
    for name, func in zip(PLOTS, funcs, strict=True):
        path = out / name
        func(results, path)
        paths.append(path)
    return paths
