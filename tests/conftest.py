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


def child_pids() -> set[int]:
    """Pids whose parent is this process: running children and zombies alike."""
    me = os.getpid()
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # it ended while we looked
        # The comm field may hold spaces and parentheses: the fields after the last ')' are fixed.
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[1]) == me:
            found.add(int(name))
    return found


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
