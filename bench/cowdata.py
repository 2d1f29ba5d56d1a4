"""Reading pyproc.cow's results (issue 4) as rows for the report and the plot.

The results come from the worker as plain data (the dataclasses' dict form)."""

from __future__ import annotations

from typing import Any


def cow_rows(cow: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (size, page kind, phase): median ns per 4 KiB page and minor faults."""
    return []


def fork_rows(cow: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (size, page kind, state, what was timed): median ns."""
    return []
