"""pyproc: start and manage processes on Linux at the cost of the kernel work alone.

The public names live here; each comes from the module of its concern (see DESIGN.md).  The submodules
pyproc.cow (fork and copy-on-write measurement), pyproc.aio (asyncio) and pyproc.subprocess (a drop-in for the
standard library's subprocess) are imported by name; pyproc.cow is also imported here.
"""

from . import cow
from ._version import __version__
from .errors import CalledProcessError, OutputLimitExceeded, TimeoutExpired
from .io import Pipeline, Result, pipeline, read_full, run, write_full
from .pool import Job, run_many
from .process import Process, Rusage, Status, wait_any
from .signals import SignalEvent, SignalPipe
from .spawn import DEVNULL, ENGINES, PIPE, STDOUT, spawn

__all__ = [
    "DEVNULL",
    "ENGINES",
    "PIPE",
    "STDOUT",
    "CalledProcessError",
    "Job",
    "OutputLimitExceeded",
    "Pipeline",
    "Process",
    "Result",
    "Rusage",
    "SignalEvent",
    "SignalPipe",
    "Status",
    "TimeoutExpired",
    "__version__",
    "cow",
    "pipeline",
    "read_full",
    "run",
    "run_many",
    "spawn",
    "wait_any",
    "write_full",
]
