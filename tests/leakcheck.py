"""Helpers for the hardening tests: this process's fd table and its children, before and after.

Used by test_fuzz.py and test_soak.py (import it as `leakcheck`; pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator


def fd_table() -> dict[int, str]:
    """{fd: what it refers to} for every open fd of this process (readlink of /proc/self/fd/N)."""
    table = {}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            table[fd] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # the fd listdir itself used, closed since
            continue
    return table


def children() -> set[int]:
    """The pids of every child of this process (any thread's), running or zombie."""
    pids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(pid) for pid in f.read().split())
        except FileNotFoundError:  # a thread that has exited since
            continue
    return pids


def describe(pids: set[int]) -> list[str]:
    """A line per pid: its state and command line, for assertion messages."""
    lines = []
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as fb:
                cmdline = fb.read().replace(b"\0", b" ").decode(errors="replace")
            lines.append(f"{pid} state={stat.rsplit(')', 1)[1].split()[0]} {cmdline}")
        except OSError:
            lines.append(f"{pid} (gone)")
    return lines


class Snapshot:
    """This process's fd table and children at one moment; check() compares a later moment with it."""

    def __init__(self) -> None:
        self.fds = fd_table()
        self.children = children()

    def check(self, what: str = "", settle: float = 2.0) -> None:
        """Asserts that the fd table is identical and no new child exists (running or zombie).

        settle: how long a child that is still being reaped by another thread may take to disappear.
        """
        deadline = time.monotonic() + settle
        while True:
            fds = fd_table()
            new_children = children() - self.children
            if fds == self.fds and not new_children:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        leaked = {fd: target for fd, target in fds.items() if self.fds.get(fd) != target}
        lost = {fd: target for fd, target in self.fds.items() if fd not in fds}
        assert not leaked and not lost, f"{what}: fd table changed: new/changed {leaked}, closed {lost}"
        assert not new_children, f"{what}: children left behind: {describe(new_children)}"


@contextlib.contextmanager
def no_leaks(what: str = "", settle: float = 2.0) -> Iterator[Snapshot]:
    """Context manager: the fd table and the set of children must be the same on exit as on entry."""
    snapshot = Snapshot()
    yield snapshot
    snapshot.check(what, settle)
