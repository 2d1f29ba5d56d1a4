"""pyproc's exception types and the one place where an errno becomes an exception.

The types derive from the standard library's, so code written against subprocess keeps catching them:
TimeoutExpired is a subprocess.TimeoutExpired and a TimeoutError, CalledProcessError a
subprocess.CalledProcessError. """

from __future__ import annotations

import os
import subprocess
from typing import Any


class TimeoutExpired(subprocess.TimeoutExpired, TimeoutError):
    """A wait, run() or communicate() outlived its timeout.

    Attributes as subprocess.TimeoutExpired: cmd, timeout, output/stdout, stderr (what was read before the
    timeout, or None).
    """

    def __init__(
        self, cmd: Any, timeout: float, output: bytes | str | None = None, stderr: bytes | str | None = None
    ) -> None:
        subprocess.TimeoutExpired.__init__(self, cmd, timeout, output, stderr)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.cmd, self.timeout, self.output, self.stderr))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cmd={self.cmd!r}, timeout={self.timeout!r})"


class CalledProcessError(subprocess.CalledProcessError):
    """run(check=True) saw a nonzero exit status; carries returncode, cmd, output/stdout and stderr."""


class OutputLimitExceeded(subprocess.SubprocessError):
    """run(max_output=N) read more than N bytes: the child was killed and reaped.

    Attributes: cmd, limit, output/stdout and stderr (what was read, at most the limit on each stream).
    """

    def __init__(
        self, cmd: object, limit: int, output: bytes | str | None = None, stderr: bytes | str | None = None
    ) -> None:
        super().__init__(cmd, limit, output, stderr)
        self.cmd = cmd
        self.limit = limit
        self.output = output
        self.stderr = stderr

    @property
    def stdout(self) -> bytes | str | None:
        return self.output

    def __str__(self) -> str:
        return f"Command {self.cmd!r} wrote more than {self.limit} bytes of output"


def os_error(err: int, filename: object = None, where: str | None = None) -> OSError:
    """The OSError subclass for err (FileNotFoundError for ENOENT, ...), with `where` appended to the
    message."""
    message = os.strerror(err)
    if where:
        message = f"{message} ({where})"
    if filename is None:
        return OSError(err, message)
    return OSError(err, message, filename)


def check(err: int, filename: object = None, where: str | None = None) -> None:
    """Raises the OSError for a positive errno returned by the C core; does nothing for 0."""
    if err:
        raise os_error(err, filename, where)
