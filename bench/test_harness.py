"""Unit tests of the harness itself (fast; collected by `pytest bench/` with the microbenchmarks)."""

from __future__ import annotations

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


def test_interleave_rotates_drops_warmup_and_ratios_pair_rounds() -> None:
    calls: list[str] = []

    def contender(name: str, value: int) -> harness.Runner:
        def run(n: int) -> list[int]:
            calls.append(name)
            return [value] * n
        return run

    series = harness.interleave([("A", contender("A", 100)), ("B", contender("B", 300)), ("C", contender("C", 50))],
                                rounds=3, batch=4, warmup=1)
    assert calls == ["A", "B", "C", "A", "B", "C", "B", "C", "A", "C", "A", "B"]
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

