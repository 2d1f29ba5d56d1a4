"""pyproc: start and manage processes on Linux at the cost of the kernel work alone.

The public names live here; each comes from the module of its concern (see DESIGN.md).
"""

from ._version import __version__
from .errors import CalledProcessError, OutputLimitExceeded, TimeoutExpired

# io (issue 3)
from .io import Pipeline, Result, pipeline, read_full, run, write_full
from .process import Process, Rusage, Status, wait_any

# signals (issue 6)
from .signals import SignalEvent, SignalPipe
from .spawn import DEVNULL, ENGINES, PIPE, STDOUT, spawn

__all__ = [
    "DEVNULL",
    "ENGINES",
    "PIPE",
    "STDOUT",
    "CalledProcessError",
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
    "spawn",
    "wait_any",
    "write_full",
]

# cow (issue 4): the submodule, used as pyproc.cow.measure_fork / pyproc.cow.measure_cow (imported here, after
# __all__, so that the sorted import block above stays as it is)
from . import cow
