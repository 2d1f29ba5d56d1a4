"""pyproc.cow: relations that hold on any Linux machine (never absolute timings), argument checks, cleanup.

Memory stays modest (the largest region is 1 GiB, in the fork-scaling test) because the machine is shared.
no_leaks (conftest.py) checks that no fd and no child is left behind.
"""

from __future__ import annotations

import errno
import json
import os
import statistics

import pytest

import pyproc
from pyproc import cow

MiB = 1 << 20
GiB = 1 << 30


# ---- copy-on-write -----------------------------------------------------------------------------------------


def test_cow_write_costs_more_than_rewrite_and_faults_match_pages(no_leaks):
    result = cow.measure_cow(32 * MiB, repeat=3)
    n = 32 * MiB // 4096
    assert result.n_pages == n
    phases = result.phases
    assert list(phases) == list(cow.COW_PHASES)
    # The first write copies every page; the rewrite finds them copied.
    assert phases["write"].ns.median > phases["rewrite"].ns.median
    assert phases["write"].ns_per_page.median > phases["rewrite"].ns_per_page.median
    tolerance = n // 20 + 16
    for i in range(3):
        assert abs(phases["write"].faults.values[i] - n) <= tolerance        # one COW fault per 4 KiB page
        assert abs(phases["first_touch"].faults.values[i] - n) <= tolerance  # one fresh page per 4 KiB page
        assert phases["rewrite"].faults.values[i] <= tolerance               # already copied: no faults
        assert phases["read"].faults.values[i] <= tolerance                  # fork copied the page tables
    assert result.major_faults.max == 0
    # per-GiB and per-page figures are the same samples, scaled.
    write = phases["write"]
    assert write.ms_per_gib.median == pytest.approx(write.ns_per_page.median * (GiB // 4096) / 1e6)


@pytest.mark.skipif(cow.unavailable_reason("thp") is not None, reason=str(cow.unavailable_reason("thp")))
def test_cow_thp_faults_are_either_4k_or_2m_copies(no_leaks):
    result = cow.measure_cow(16 * MiB, pages="thp", repeat=2)
    n = result.n_pages
    huge_pages = 16 * MiB // cow.thp_size()
    for i, region in enumerate(result.regions):
        assert region.pages == "thp"
        write_faults = result.phases["write"].faults.values[i]
        first_faults = result.phases["first_touch"].faults.values[i]
        if region.anon_huge_kib >= 16 * 1024:
            # All huge: one fault per huge page on first touch; on the COW write the kernel copies 4 KiB (one
            # fault per page, after splitting the PMD) or the huge page (one per huge page): either way, measured.
            assert first_faults <= huge_pages + 16
            assert abs(write_faults - n) <= n // 20 + 16 or write_faults <= huge_pages + 16
        else:  # the kernel gave (some) 4 KiB pages: at least the small ones faulted one by one
            assert first_faults >= (16 * 1024 - region.anon_huge_kib) // 4 - 16
        assert result.phases["write"].ns.values[i] > result.phases["rewrite"].ns.values[i]


# ---- fork cost against parent size -------------------------------------------------------------------------


@pytest.mark.skipif(os.environ.get("PYPROC_SANITIZED") == "1",
                    reason="under ASan every fork also copies the sanitizer's shadow mappings, a fixed cost that "
                           "hides the growth with the parent's size; the relation is checked in the normal runs")
def test_dirty_fork_grows_with_size_while_clone_does_not(no_leaks):
    methods = ("fork_exit", "clone")
    small = cow.measure_fork(64 * MiB, state="dirty", engines=methods, repeat=7)
    large = cow.measure_fork(1 * GiB, state="dirty", engines=methods, repeat=7)
    # The least disturbed sample of each (the machine is shared: noise only ever adds time).
    fork_ratio = large.times_ns["fork_exit"].min / small.times_ns["fork_exit"].min
    clone_ratio = large.times_ns["clone"].min / small.times_ns["clone"].min
    # 16x the page tables to copy: fork must grow a lot; clone shares the memory and must stay flat.
    assert fork_ratio > 2.5, (fork_ratio, small.to_dict(), large.to_dict())
    assert clone_ratio < 2.5, (clone_ratio, small.to_dict(), large.to_dict())
    assert fork_ratio > 2 * clone_ratio
    assert large.region.rss_kib >= 1024 * 1024 * 9 // 10  # the region really was resident


def test_every_method_runs_and_samples_are_interleaved_per_method(no_leaks):
    calls: list[tuple[int, int]] = []
    result = cow.measure_fork(
        4 * MiB, engines=cow.METHODS, repeat=3, warmup=1, progress=lambda done, total: calls.append((done, total)))
    assert list(result.times_ns) == list(cow.METHODS)
    for samples in result.times_ns.values():
        assert len(samples.values) == 3
        assert all(v > 0 for v in samples.values)
        assert samples.min <= samples.median <= samples.max
        assert samples.median == statistics.median(samples.values)
    total = 4 * len(cow.METHODS)
    assert calls == [(i, total) for i in range(1, total + 1)]
    # JSON round trip keeps every sample.
    data = json.loads(result.to_json())
    assert data["times_ns"]["clone"]["values"] == list(result.times_ns["clone"].values)
    assert data["region"]["size"] == 4 * MiB
    assert data["region"]["state"] == "dirty"


def test_region_states(no_leaks):
    n = 8 * MiB // 4096
    clean = cow.measure_fork(8 * MiB, state="clean", engines=("fork_exit",), repeat=1)
    assert clean.region.first_touch_ns is None
    assert clean.region.rss_kib < 8 * 1024 // 2  # never touched: (almost) nothing resident
    dirty = cow.measure_fork(8 * MiB, state="dirty", engines=("fork_exit",), repeat=1)
    assert abs(dirty.region.first_touch_faults - n) <= n // 20 + 16
    assert dirty.region.rss_kib >= 8 * 1024 * 9 // 10
    frag = cow.measure_fork(8 * MiB, state="fragmented", engines=("fork_exit",), repeat=1)
    system_pages = 8 * MiB // os.sysconf("SC_PAGE_SIZE")
    assert frag.region.n_protected == system_pages // 2
    assert frag.region.vmas_added >= system_pages - 16  # one VMA per page
    assert dirty.region.vmas_added <= 4


def test_region_can_be_held_directly(no_leaks):
    timer = cow.ForkTimer("true")
    with cow.Region(4 * MiB, "4k", "dirty") as region:
        assert region.info.n_pages == 1024
        assert not region.closed
        assert timer.sample("fork_exit") > 0
        assert timer.sample("clone") > 0
    with pytest.raises(ValueError, match="method"):
        timer.sample("spork")
    assert region.closed
    region.close()  # a second close does nothing
    with pytest.raises(OSError):
        cow.Region(4 * MiB + 1)  # not whole pages


def test_hugetlb_is_measured_or_skipped_with_the_reason(no_leaks):
    reason = cow.unavailable_reason("hugetlb")
    if reason is None:
        result = cow.measure_fork(2 * MiB, pages="hugetlb", engines=("fork_exit",), repeat=1)
        assert result.region.pages == "hugetlb"
    else:
        with pytest.raises(cow.PagesUnavailable, match="hugetlb"):
            cow.measure_fork(2 * MiB, pages="hugetlb")
        with pytest.raises(cow.PagesUnavailable, match="hugetlb"):
            cow.measure_cow(2 * MiB, pages="hugetlb")
    with pytest.raises(ValueError, match="fragmented"):
        cow.measure_fork(2 * MiB, pages="hugetlb", state="fragmented")


@pytest.mark.skipif(cow.unavailable_reason("hugetlb") is None, reason="hugetlb pages are reserved here")
def test_hugetlb_region_without_reserved_pages_fails_cleanly(no_leaks):
    # The C path itself (bypassing the Python check): mmap(MAP_HUGETLB) fails, nothing stays mapped.
    before = cow.rss_kib()
    with pytest.raises(OSError) as info:
        cow.Region(2 * MiB, "hugetlb", "dirty")
    assert info.value.errno == errno.ENOMEM
    assert cow.rss_kib() - before < 1024


# ---- memory is released ------------------------------------------------------------------------------------


def test_rss_returns_after_measurements(no_leaks):
    before = cow.rss_kib()
    fork = cow.measure_fork(256 * MiB, engines=("fork_exit", "clone"), repeat=2)
    assert fork.region.rss_kib >= 256 * 1024 * 9 // 10  # it was allocated...
    after_fork = cow.rss_kib()
    assert after_fork - before < 8 * 1024  # ...and released
    assert fork.rss_after_kib - fork.rss_before_kib < 8 * 1024
    result = cow.measure_cow(128 * MiB, repeat=2)
    assert result.regions[0].rss_kib >= 128 * 1024 * 9 // 10
    assert cow.rss_kib() - before < 8 * 1024
    assert result.rss_after_kib - result.rss_before_kib < 8 * 1024


# ---- refusals, before anything is allocated ----------------------------------------------------------------


@pytest.mark.parametrize("size", [0, -1, -GiB])
def test_bad_size_values(size, no_leaks):
    with pytest.raises(ValueError, match="size"):
        cow.measure_fork(size)
    with pytest.raises(ValueError, match="size"):
        cow.measure_cow(size)


@pytest.mark.parametrize("size", [1.5, "1024", None, True, b"x"])
def test_bad_size_types(size, no_leaks):
    with pytest.raises(TypeError, match="size"):
        cow.measure_fork(size)
    with pytest.raises(TypeError, match="size"):
        cow.measure_cow(size)


def test_size_beyond_available_memory_is_refused_before_allocating(no_leaks):
    before = cow.rss_kib()
    with pytest.raises(MemoryError, match="available"):
        cow.measure_fork(cow.memory_limit() + 4096)
    with pytest.raises(MemoryError, match="available"):
        cow.measure_fork(1 << 50)
    # measure_cow needs twice the size (the parent's pages and the child's copies).
    with pytest.raises(MemoryError, match="available"):
        cow.measure_cow(cow.memory_limit() // 2 + 4096)
    assert cow.rss_kib() - before < 1024


def test_fragmented_beyond_max_map_count_is_refused():
    with open("/proc/sys/vm/max_map_count") as f:
        max_maps = int(f.read())
    size = (max_maps + 1) * os.sysconf("SC_PAGE_SIZE")
    if size * 1 > cow.memory_limit():
        pytest.skip("not enough memory to ask")
    with pytest.raises(ValueError, match="max_map_count"):
        cow.measure_fork(size, state="fragmented")


def test_sizes_are_rounded_up_to_pages(no_leaks):
    result = cow.measure_fork(4096 * 3 + 1, engines=("fork_exit",), repeat=1)
    assert result.size == 4096 * 4
    assert result.region.n_pages == 4


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"pages": "2m"}, ValueError),
        ({"pages": 4}, TypeError),
        ({"state": "warm"}, ValueError),
        ({"engines": ("spork",)}, ValueError),
        ({"engines": "clone"}, TypeError),
        ({"engines": ()}, ValueError),
        ({"engines": ("clone", "clone")}, ValueError),
        ({"repeat": 0}, ValueError),
        ({"repeat": 2.0}, TypeError),
        ({"warmup": -1}, ValueError),
        ({"progress": 3}, TypeError),
        ({"program": 3}, TypeError),
        ({"program": "/nonexistent/program"}, FileNotFoundError),
        ({"program": "/"}, PermissionError),
    ],
)
def test_bad_arguments(kwargs, exc, no_leaks):
    with pytest.raises(exc):
        cow.measure_fork(MiB, **kwargs)


def test_program_not_executable(tmp_path, no_leaks):
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(PermissionError):
        cow.measure_fork(MiB, program=script)


def test_program_that_fails_is_reported(no_leaks):
    with pytest.raises(pyproc.CalledProcessError):
        cow.measure_fork(MiB, engines=("fork_exec",), program="false", repeat=1)
    with pytest.raises(pyproc.CalledProcessError):
        cow.measure_fork(MiB, engines=("clone",), program="false", repeat=1)


def test_cow_bad_arguments(no_leaks):
    with pytest.raises(ValueError):
        cow.measure_cow(MiB, pages="big")
    with pytest.raises(ValueError):
        cow.measure_cow(MiB, repeat=0)
    with pytest.raises(TypeError):
        cow.measure_cow(MiB, progress="no")


def test_reachable_as_pyproc_cow():
    assert pyproc.cow.measure_fork is cow.measure_fork
    assert pyproc.cow.measure_cow is cow.measure_cow
