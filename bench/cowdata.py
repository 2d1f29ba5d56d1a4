"""Reading pyproc.cow's results (issue 4) as rows for the report and the plots.

The results come from the worker as plain data: CowResult.to_dict() / ForkResult.to_dict()."""

from __future__ import annotations

from typing import Any


def cow_rows(cow: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (size, page kind, phase): ns per 4 KiB page (median, min, max), ms per GiB, minor faults
    (median per sample and per page), and the AnonHugePages the parent's region got."""
    rows = []
    for entry in cow.get("measure_cow", []):
        result = entry.get("result")
        if not result:
            continue
        huge = result.get("anon_huge_kib", {}).get("median")
        for phase, ph in result["phases"].items():
            per_page = ph["ns_per_page"]
            rows.append({"size": result["size"], "pages": result["pages"], "phase": phase,
                         "ns_per_page": per_page["median"], "ns_per_page_min": per_page["min"],
                         "ns_per_page_max": per_page["max"], "ms_per_gib": ph["ms_per_gib"]["median"],
                         "faults": ph["faults"]["median"], "faults_per_page": ph["faults_per_page"]["median"],
                         "anon_huge_kib": huge})
    return rows


def fork_rows(cow: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (size, page kind, state, method): median / min / max ns, and the region as measured."""
    rows = []
    for entry in cow.get("measure_fork", []):
        result = entry.get("result")
        if not result:
            continue
        region = result.get("region", {})
        for method, samples in result["times_ns"].items():
            rows.append({"size": result["size"], "pages": result["pages"], "state": result["state"],
                         "method": method, "median_ns": samples["median"], "min_ns": samples["min"],
                         "max_ns": samples["max"], "n": len(samples["values"]),
                         "vmas_added": region.get("vmas_added"), "anon_huge_kib": region.get("anon_huge_kib")})
    return rows
