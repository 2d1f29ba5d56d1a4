"""pyproc: start and manage processes on Linux at the cost of the kernel work alone.

The public names live here; each comes from the module of its concern (see DESIGN.md).
"""

from ._version import __version__
from .errors import CalledProcessError, OutputLimitExceeded, TimeoutExpired

# spawn core (issue 2)
# io (issue 3)
# signals (issue 6)

__all__ = [
    "CalledProcessError",
    "OutputLimitExceeded",
    "TimeoutExpired",
    "__version__",
]
