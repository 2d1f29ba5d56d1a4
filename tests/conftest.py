"""Shared fixtures: the leak checks every process test needs (fds of the parent, children left behind)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import pytest

import pyproc.subprocess

# PYPROC_TEST_INSTALLED=1: pyproc.subprocess.install() is active for the whole run, so every test that uses the
# standard `subprocess` module (fixtures, helpers, and the differential tests' module under test) runs on pyproc.
INSTALLED = os.environ.get("PYPROC_TEST_INSTALLED") == "1"


def pytest_configure(config: pytest.Config) -> None:
    if INSTALLED:
        pyproc.subprocess.install()


def pytest_report_header(config: pytest.Config) -> str | None:
    return "PYPROC_TEST_INSTALLED=1: pyproc.subprocess.install() is active" if INSTALLED else None


@contextlib.contextmanager
def standard_library() -> Iterator[None]:
    """The standard library's own subprocess for the with block: install() undone (PYPROC_TEST_INSTALLED=1)
    and done again after it; nothing otherwise."""
    if not INSTALLED:
        yield
        return
    pyproc.subprocess.uninstall()
    try:
        yield
    finally:
        pyproc.subprocess.install()


def open_fds() -> set[int]:
    """The parent's open fds (the directory fd used to list them is closed again by then)."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


def process_stats() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, the /proc/PID/stat fields after the command name: state, ppid, pgrp, ...) of every process there is."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # it ended while we looked
        # The comm field may hold spaces and parentheses: the fields after the last ')' are fixed.
        yield int(name), stat[stat.rindex(b")") + 2 :].split()


def child_pids() -> set[int]:
    """Pids whose parent is this process: running children and zombies alike."""
    me = os.getpid()
    return {pid for pid, fields in process_stats() if int(fields[1]) == me}


def settle_children(before: set[int], timeout: float = 5.0) -> set[int]:
    """Children not in `before` that remain after up to `timeout` s (a killed child needs a moment to go)."""
    deadline = time.monotonic() + timeout
    while True:
        extra = child_pids() - before
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.01)


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fails the test if it leaves an fd open in the parent or a child (running or zombie) behind."""
    fds_before = open_fds()
    children_before = child_pids()
    yield
    assert open_fds() == fds_before, "the test leaked fds"
    assert settle_children(children_before) == set(), "the test left children (or zombies) behind"


def _minimal_elf() -> bytes | None:
    """The smallest program Linux runs: a static ELF whose entry point calls exit(0) by a raw syscall (no libc, no
    loader, no compiler needed); None on an architecture it is not written for."""
    import platform
    import struct

    machine = platform.machine()
    if machine == "x86_64":
        e_machine, code = 62, bytes.fromhex("b83c000000" "31ff" "0f05")  # mov $60,%eax; xor %edi,%edi; syscall
    elif machine in ("aarch64", "arm64"):
        e_machine, code = 183, struct.pack("<3I", 0xD2800BA8, 0xD2800000, 0xD4000001)  # x8=93; x0=0; svc #0
    else:
        return None
    base, headers = 0x400000, 64 + 56
    size = headers + len(code)
    elf_header = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, 2, e_machine, 1,
                             base + headers, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    program_header = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x10000)
    return elf_header + program_header + code


@pytest.fixture(scope="session")
def minimal_exe(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The path of a static executable that exits 0 at once: the cheapest child there is, for tests that start
    many."""
    image = _minimal_elf()
    if image is None:
        pytest.skip("no minimal executable for this architecture")
    path = tmp_path_factory.mktemp("minimal") / "minimal"
    path.write_bytes(image)
    path.chmod(0o755)
    return str(path)
