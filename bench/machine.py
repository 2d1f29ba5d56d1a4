"""What machine the figures come from: CPU, cores, kernel, glibc, Python, THP, overcommit, huge pages, memory."""

from __future__ import annotations

import os
import platform
import re
from typing import Any


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (HugePages_* counts as they are)."""
    out: dict[str, int] = {}
    text = _read("/proc/meminfo") or ""
    for line in text.splitlines():
        m = re.match(r"(\S+):\s+(\d+)(\s+kB)?", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * (1024 if m.group(3) else 1)
    return out


def mem_available() -> int:
    """MemAvailable in bytes (0 when unknown)."""
    return meminfo().get("MemAvailable", 0)


def _selected(text: str | None) -> str | None:
    """The [bracketed] choice of a sysfs mode file, e.g. 'always [madvise] never' -> 'madvise'."""
    if text is None:
        return None
    m = re.search(r"\[(\w+)\]", text)
    return m.group(1) if m else text


def cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if m:
            return m.group(1).strip()
    return platform.processor() or platform.machine()


def describe() -> dict[str, Any]:
    """The machine, as report.md and results.json print it."""
    info = meminfo()
    overcommit = _read("/proc/sys/vm/overcommit_memory")
    libc = platform.libc_ver()
    try:
        import pyproc

        pyproc_version = pyproc.__version__
    except ImportError:
        pyproc_version = None
    return {
        "cpu_model": cpu_model(),
        "cores_online": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "arch": platform.machine(),
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "glibc": f"{libc[0]} {libc[1]}".strip() or None,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "pyproc": pyproc_version,
        "thp_enabled": _selected(_read("/sys/kernel/mm/transparent_hugepage/enabled")),
        "thp_defrag": _selected(_read("/sys/kernel/mm/transparent_hugepage/defrag")),
        "overcommit_memory": {"0": "0 (heuristic)", "1": "1 (always)", "2": "2 (never)"}.get(
            overcommit or "", overcommit),
        "hugepages_total": info.get("HugePages_Total"),
        "hugepages_free": info.get("HugePages_Free"),
        "hugepage_size": info.get("Hugepagesize"),
        "mem_total": info.get("MemTotal"),
        "mem_available": info.get("MemAvailable"),
        "loadavg": _read("/proc/loadavg"),
    }
