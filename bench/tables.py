"""Markdown pieces shared by the report's sections."""

from __future__ import annotations

from .harness import Series, fmt_ns


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def stats_row(s: Series) -> list[str]:
    """median, min, max, n of a Series ("skipped" when it has no samples)."""
    st = s.stats()
    if st is None:
        return ["skipped", "", "", ""]
    return [fmt_ns(st["median"]), fmt_ns(st["min"]), fmt_ns(st["max"]), str(st["n"])]
