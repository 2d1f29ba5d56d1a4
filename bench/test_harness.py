"""Unit tests of the harness itself (fast; collected by `pytest bench/` with the microbenchmarks)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections import Counter

import pytest

from bench import config, harness


def test_parse_and_format_sizes() -> None:
    assert config.parse_size("64M") == 64 << 20
    assert config.parse_size("4GiB") == 4 << 30
    assert config.parse_size("1.5g") == 3 << 29
    assert config.parse_size("4096") == 4096
    for bad in ("", "-1G", "0", "12Q", "G"):
        with pytest.raises(ValueError):
            config.parse_size(bad)
    assert config.fmt_size(4 << 30) == "4 GiB" and config.fmt_size(1536 << 10) == "1536 KiB"
    with pytest.raises(config.SizeError):
        config.check_sizes([1 << 30], available=1 << 30)
    config.check_sizes([1 << 30], available=4 << 30)


def test_balanced_order_puts_each_contender_after_every_other_equally_often() -> None:
    for n in range(1, 9):
        rows = n if n % 2 == 0 else 2 * n
        orders = [harness.balanced_order(n, r) for r in range(rows)]
        assert all(sorted(order) == list(range(n)) for order in orders)
        follows = Counter((a, b) for order in orders for a, b in itertools.pairwise(order))
        assert set(follows) == {(a, b) for a in range(n) for b in range(n) if a != b}
        assert len(set(follows.values())) <= 1, (n, follows)  # every ordered pair equally often (once, or twice)
        places = Counter((k, order[k]) for order in orders for k in range(n))
        assert len(set(places.values())) == 1  # every contender in every place equally often
        assert harness.balanced_order(n, rows) == orders[0]  # then the rows repeat
    # A rotation would not do: B always right after A.
    rotation = [["A", "B", "C"], ["B", "C", "A"], ["C", "A", "B"]]
    assert {(a, b) for order in rotation for a, b in itertools.pairwise(order)} == {("A", "B"), ("B", "C"),
                                                                                    ("C", "A")}


def test_pinned_sets_and_restores_the_affinity() -> None:
    before = os.sched_getaffinity(0)
    cpu = harness.spawn_cpu()
    assert cpu == max(before)
    with harness.pinned(cpu):
        assert os.sched_getaffinity(0) == {cpu}
        child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                               capture_output=True, text=True, check=True)
        assert child.stdout.strip() == f"[{cpu}]"  # what it starts keeps it
    assert os.sched_getaffinity(0) == before
    with harness.pinned(None):
        assert os.sched_getaffinity(0) == before


def test_interleave_balances_drops_warmup_and_ratios_pair_rounds() -> None:
    calls: list[str] = []

    def contender(name: str, value: int) -> harness.Runner:
        def run(n: int) -> list[int]:
            calls.append(name)
            return [value] * n
        return run

    series = harness.interleave([("A", contender("A", 100)), ("B", contender("B", 300)), ("C", contender("C", 50))],
                                rounds=3, batch=4, warmup=1)
    assert calls == ["A", "B", "C", "A", "B", "C", "B", "C", "A", "C", "A", "B"]  # warm-up, then balanced_order
    assert [len(r) for r in series["A"].rounds] == [4, 4, 4]
    r = harness.ratio(series["B"], series["A"])
    assert r == {"ratio": 3.0, "min": 3.0, "max": 3.0}
    skewed = harness.Series("X", [[100, 100], [200, 200]])
    flat = harness.Series("Y", [[100, 100], [100, 100]])
    r = harness.ratio(skewed, flat)
    assert r is not None and r["min"] == 1.0 and r["max"] == 2.0 and r["ratio"] == 1.5
    assert harness.ratio(harness.Series("Z", skipped="why"), flat) is None


def test_a_failing_contender_is_dropped_with_its_reason() -> None:
    calls: list[str] = []

    def good(n: int) -> list[int]:
        calls.append("good")
        return [10] * n

    def bad(n: int) -> list[int]:
        calls.append("bad")
        if calls.count("bad") == 2:
            raise harness.WorkerError("spawn x: boom\ntraceback", "RuntimeError: boom")
        return [20] * n

    series = harness.interleave([("good", good), ("bad", bad)], rounds=3, batch=2, warmup=1)
    assert series["bad"].skipped == "failed: RuntimeError: boom"
    assert series["bad"].rounds == [] and series["bad"].stats() is None
    assert len(series["good"].rounds) == 3 and calls.count("bad") == 2
    assert harness.ratio(series["good"], series["bad"]) is None

