"""asyncio's subprocess support on pyproc: what pyproc.subprocess.install() gives the default Unix event loop.

asyncio.create_subprocess_exec / _shell and loop.subprocess_exec / subprocess_shell all end in the loop's
_make_subprocess_transport().  install() replaces that method of asyncio's Unix selector loop with
make_subprocess_transport() below, which returns a SubprocessTransport -- asyncio's own BaseSubprocessTransport
(so close(), get_pid(), get_returncode(), get_pipe_transport(), _wait() and the order of the protocol's callbacks
are asyncio's code) -- that differs from asyncio's _UnixSubprocessTransport in three ways:

- the child is started by pyproc.subprocess.Popen (the pipes made by the C core with the spawn; they get the
  unbuffered FileIO objects asyncio's Popen(bufsize=0) would hold);
- its exit is watched by pyproc.aio.ExitWatch: its pidfd registered on the loop and reaped there, where asyncio
  starts a thread per child (3.11's ThreadedChildWatcher) or opens a second pidfd and wakes the loop through its
  self-pipe (3.12+'s PidfdChildWatcher); the policy's child watcher is not asked (none needs to be attached);
- the pipe transports (the loop's own _make_read_pipe_transport / _make_write_pipe_transport, so the streams see
  the transports asyncio would give them) are made at once, not in a separate task that awaits each one: the
  coroutine returns after one turn of the loop, in which every connection_made() has run, as asyncio's does.

Signals go through the Popen's pidfd (a recycled pid is never hit).  While the standard module's subprocess.Popen
is not pyproc's (a test patched it, or install() is not active), the loop's original method is used.
"""

from __future__ import annotations

import asyncio
import collections
import io
import os
import subprocess as _std
from asyncio import base_subprocess, unix_events
from asyncio.log import logger
from typing import TYPE_CHECKING, Any, cast

from ._subprocess_pipes import _LAZY
from .aio import ExitWatch

if TYPE_CHECKING:
    from .subprocess import Popen

_FILE_MODES = (("_stdin_f", "_stdin_fd", "wb"), ("_stdout_f", "_stdout_fd", "rb"), ("_stderr_f", "_stderr_fd", "rb"))


class _PipeReader(unix_events._UnixReadPipeTransport):  # type: ignore[name-defined,misc]
    """The read end of the child's stdout or stderr: asyncio's own read-pipe transport (its reads, pause_reading /
    resume_reading, close, errors and repr), started without the loop turns asyncio spends on its subprocess
    pipe protocol -- an internal object -- and ended the same way: that protocol's connection_made is called at
    once, the fd registered at once, and at end of file its connection_lost (whose only work is to queue the
    subprocess protocol's pipe_connection_lost and check whether the transport is finished) is called at once,
    where asyncio queues both as callbacks of their own.  The user's protocol sees the same callbacks, queued in
    the same order."""

    def __init__(self, loop: Any, pipe: Any, protocol: Any) -> None:
        asyncio.ReadTransport.__init__(self, {"pipe": pipe})
        self._loop = loop
        self._pipe = pipe
        self._fileno = pipe.fileno()
        self._protocol = protocol
        self._closing = False
        self._paused = False
        os.set_blocking(self._fileno, False)  # (a pipe made by the spawn: no need to check what the fd is)
        protocol.connection_made(self)
        loop._add_reader(self._fileno, self._read_ready)

    def _read_ready(self) -> None:
        try:
            data = os.read(self._fileno, self.max_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal_error(exc, "Fatal read error on pipe transport")
            return
        if data:
            self._protocol.data_received(data)
            return
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        self._closing = True
        self._loop._remove_reader(self._fileno)
        self._call_connection_lost(None)


class SubprocessTransport(base_subprocess.BaseSubprocessTransport):
    """asyncio's subprocess transport for a child started by pyproc (see the module docstring)."""

    _watch: ExitWatch | None = None
    _popen: Popen[bytes]  # the child's Popen (asyncio's own code knows it as _proc)

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: Any, args: Any, shell: bool, stdin: Any,
                 stdout: Any, stderr: Any, bufsize: int, extra: Any = None, **kwargs: Any) -> None:
        # BaseSubprocessTransport.__init__'s state and steps (the same in 3.11-3.13), without the task that
        # connects the pipes: connect() does that, synchronously.
        asyncio.SubprocessTransport.__init__(self, extra)
        self._closed = False
        self._protocol = protocol
        self._loop = loop
        self._proc = None
        self._pid = None
        self._returncode = None
        self._exit_waiters = []
        self._pending_calls: Any = collections.deque()
        self._pipes = {}
        self._finished = False
        if stdin == _std.PIPE:
            self._pipes[0] = None
        if stdout == _std.PIPE:
            self._pipes[1] = None
        if stderr == _std.PIPE:
            self._pipes[2] = None
        try:
            self._start(args=args, shell=shell, stdin=stdin, stdout=stdout, stderr=stderr, bufsize=bufsize,
                        **kwargs)
        except BaseException:
            self.close()
            raise
        self._pid = self._popen.pid
        cast(Any, self)._extra["subprocess"] = self._popen
        if self._loop.get_debug():
            program = args if isinstance(args, (bytes, str)) else args[0]
            logger.debug("process %r created: pid %s", program, self._pid)

    def _start(self, args: Any, shell: bool, stdin: Any, stdout: Any, stderr: Any, bufsize: int,
               **kwargs: Any) -> None:
        from .subprocess import Popen

        # bufsize left at its default: the pipes come without file objects (made in C with the spawn on the
        # common path); they get below the unbuffered FileIO that asyncio's Popen(bufsize=0) would hold.
        proc: Popen[bytes] = Popen(args, shell=shell, stdin=stdin, stdout=stdout, stderr=stderr,
                                   universal_newlines=False, **kwargs)
        self._proc = self._popen = proc  # type: ignore[assignment]
        for state, fd_attr, mode in _FILE_MODES:
            if getattr(proc, state) is _LAZY:  # (no other thread knows this Popen yet: no lock needed)
                setattr(proc, state, io.FileIO(getattr(proc, fd_attr), mode))

    def connect(self) -> None:
        """Makes the pipe transports and queues the protocol's connection_made() after theirs (what asyncio's
        _connect_pipes task does, without awaiting each transport); then starts watching the child's exit."""
        proc = self._popen
        loop: Any = self._loop
        try:
            if proc.stdin is not None:
                proto: Any = base_subprocess.WriteSubprocessPipeProto(self, 0)
                loop._make_write_pipe_transport(proc.stdin, proto)
                self._pipes[0] = proto
            for fd, pipe in ((1, proc.stdout), (2, proc.stderr)):
                if pipe is not None:
                    proto = base_subprocess.ReadSubprocessPipeProto(self, fd)
                    _PipeReader(loop, pipe, proto)
                    self._pipes[fd] = proto
        except BaseException:
            # A pipe left unconnected would keep the transport from finishing (and _wait() from returning):
            # it is closed and forgotten; the caller closes the transport.
            for fd, pipe in ((0, proc.stdin), (1, proc.stdout), (2, proc.stderr)):
                if self._pipes.get(fd, False) is None and pipe is not None:
                    del self._pipes[fd]
                    pipe.close()
            raise
        finally:
            loop.call_soon(self._protocol.connection_made, self)
            for callback, data in self._pending_calls:  # (none can have come yet: kept for asyncio's order)
                loop.call_soon(callback, *data)
            self._pending_calls = None
            try:
                assert proc._proc is not None
                self._watch = ExitWatch(proc._proc, self._loop, self._process_exited, self._reap_failed)
            except BaseException:  # (no fd left for the pidfd's copy): nothing would ever report the exit
                proc.kill()  # and waited for just below: killed, its end is at hand
                self._process_exited(proc.wait())
                raise

    def _reap_failed(self, exc: BaseException) -> None:
        """wait4 failed (it does not, for a child of ours): reported, and the child counted as gone, as
        asyncio's watchers report a child whose status they could not read (returncode 255)."""
        self._loop.call_exception_handler({"message": "pyproc: reaping an asyncio subprocess failed",
                                           "exception": exc, "transport": self})
        self._process_exited(255)

    def send_signal(self, signal: int) -> None:
        """Sends signal to the child through its pidfd; nothing once it has been reaped."""
        self._check_proc()
        self._popen.send_signal(signal)

    def terminate(self) -> None:
        """Sends SIGTERM."""
        self._check_proc()
        self._popen.terminate()

    def kill(self) -> None:
        """Sends SIGKILL."""
        self._check_proc()
        self._popen.kill()


async def make_subprocess_transport(loop: Any, protocol: Any, args: Any, shell: bool, stdin: Any, stdout: Any,
                                    stderr: Any, bufsize: int, extra: Any = None,
                                    **kwargs: Any) -> base_subprocess.BaseSubprocessTransport:
    """The Unix selector loop's _make_subprocess_transport, on pyproc (install() puts it there)."""
    from . import _subprocess_install

    original = _subprocess_install.original_make_subprocess_transport()
    if original is not None and not _subprocess_install.popen_is_ours():
        # subprocess.Popen is someone else's now (a test's mock, ...): asyncio's own code uses that.
        transport: base_subprocess.BaseSubprocessTransport = await original(
            loop, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=extra, **kwargs)
        return transport
    ours = SubprocessTransport(loop, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=extra, **kwargs)
    try:
        ours.connect()
        await asyncio.sleep(0)  # one turn: every connection_made() queued above runs before this returns
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        ours.close()
        await ours._wait()
        raise
    return ours
