"""The report's child processes die with the process that started them.

`python -m bench` runs its measurements in child processes (bench.worker, which may hold gigabytes, and the
``python -m bench.*`` modules it runs).  Killed by anything but a Ctrl-C at a terminal (which reaches the whole
process group), it left them running to the end of their work.  The parent starts each with ``child_env()``; the
child calls ``tie_to_parent()`` first: the kernel then sends it SIGKILL when its parent exits (PR_SET_PDEATHSIG),
and one started by a parent that is already gone exits at once.
"""

from __future__ import annotations

import ctypes
import os
import signal

PARENT_ENV = "PYPROC_BENCH_PARENT"
"""The pid of the process that started this one (set by child_env); unset: started by hand, not tied."""

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child of this process that must not outlive it (os.environ's, or base)."""
    env = dict(os.environ if base is None else base)
    env[PARENT_ENV] = str(os.getpid())
    return env


def tie_to_parent() -> None:
    """Dies with the parent named by PYPROC_BENCH_PARENT (no-op when unset): SIGKILL when it exits."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != int(parent):  # it exited before the prctl: no signal will come
        os._exit(1)
