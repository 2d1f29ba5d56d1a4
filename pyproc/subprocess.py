"""A drop-in for the standard library's subprocess module (POSIX), built on pyproc's engines.

    import pyproc.subprocess as subprocess

gives the public API of CPython 3.11-3.13's subprocess on POSIX -- Popen (every parameter), run, call,
check_call, check_output, getoutput, getstatusoutput, list2cmdline, PIPE, STDOUT, DEVNULL, CompletedProcess
and the exception classes -- with the same defaults, behaviour and error messages, but children are started by
pyproc's spawn core (clone3 + CLONE_VFORK with a pidfd, everything prepared in the parent, the GIL released)
instead of _posixsubprocess, waited for through their pidfd (no sleep loops for wait(timeout)), and signalled
through it (a recycled pid is never hit).  communicate() -- and so run(), check_output(), getoutput() -- moves
the data with pyproc.io's C pump (one poll loop over the three pipes, the GIL released; see
pyproc/_subprocess_pump.py).  The pipes' file objects are in pyproc/_subprocess_pipes.py; how the child is
started and its failures named, in pyproc/_subprocess_child.py.

For code that imports the standard module itself: install() / uninstall() / `with installed():` make the
standard `subprocess` module (and asyncio's subprocess support) use this module (pyproc/_subprocess_install.py,
pyproc/_aio_subprocess.py), and `python -m pyproc.subprocess SCRIPT [ARGS]` / `-m MODULE [ARGS]` runs a program
with it installed.

Decisions where the standard library leaves room:

- The exception classes exported and raised here are the standard library's own (`pyproc.subprocess.
  CalledProcessError is subprocess.CalledProcessError`), so `except subprocess.X` works whichever module
  raised. Not pyproc.errors' TimeoutExpired: it is also a TimeoutError, hence an OSError, and an `except
  OSError` meant for spawn failures would start catching timeouts.
- preexec_fn needs Python in the child: the child is made with os.fork() (the fork engine) and preexec_fn
  runs at the standard library's point (after the ids are set, before the fds are closed) through the C core's
  before_exec hook.  user / group / extra_groups are applied with raw syscalls, so they keep the fast engine.
- A Popen collected while its child runs emits the standard library's ResourceWarning; the child is reaped
  at a later spawn, as subprocess does.
- Bad fds (stdin/stdout/stderr, pass_fds) are found in the parent, before any child exists, and reported with
  the exception the standard library's child would have sent back.
- With the default bufsize in binary mode, the pipes' file objects (.stdin, .stdout, .stderr) are made when
  first asked for: run(), check_output() and communicate() give the pipes to the C pump as plain fds and close
  them, and a caller who never looks at the attributes never pays for file objects.  Asked for afterwards, an
  attribute is the file object the standard library would hold there (open, or closed with the pipe's fd
  number as its name); a Popen collected with such a pipe still open closes it with the standard library's
  "unclosed file <_io.BufferedReader name=N>" ResourceWarning.  Popen with every option at its default starts
  the child through spawn's C-made pipes (pyproc_spawn_piped), the PATH search kept per program and PATH.
- Those shortcuts do the work of the documented-private hooks subclasses override: the default-options start
  that of _get_handles and _execute_child, run()'s capture that of communicate, _communicate, wait and _wait.
  They are taken only while the Popen's class has the hooks defined here (two to four identity checks of class
  attributes per call, so that an override, or a unittest.mock patch of Popen, is called as subprocess calls it).

Known differences (edge cases):

- stdin / stdout / stderr are properties, not entries of the instance's __dict__ (vars(p) and dir(p) differ).
  They can be set, deleted (then reading one raises the missing attribute's AttributeError) and patched with
  unittest.mock as plain attributes.
  When a Popen is collected with some pipes' file objects made and others not, its "unclosed file" warnings
  come for the unmade ones first (the standard library: in stdin, stdout, stderr order); and a Popen collected
  while its child runs closes its pipes at once (the standard library keeps it, pipes open, until a later Popen
  reaps the child).

- After communicate() timed out with input still unsent, .stdin is already closed: the C pump owns the pipe
  until communicate() finishes or the with block exits (which ends the input, as closing .stdin does).
- preexec_fn: os.fork() warns (DeprecationWarning, Python 3.12+) when the process has other threads, where
  _posixsubprocess's own fork does not; and the child's signal handlers are back to SIG_DFL while preexec_fn
  runs (the standard library still has Python's there).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import locale
import operator
import os
import signal
import subprocess as _std
import sys
import time
import types
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping

# The standard library's own classes: identical objects, so existing `except` clauses keep working.
from subprocess import (
    DEVNULL,
    PIPE,
    STDOUT,
    CalledProcessError,
    CompletedProcess,
    SubprocessError,
    TimeoutExpired,
    list2cmdline,
)
from typing import IO, Any, AnyStr, Generic, cast

from . import _subprocess_pipes, _subprocess_pump
from ._lib import ffi, lib
from ._pump import capture_to_end
from ._subprocess_child import (
    _BEFORE_EXEC,
    _DIRECT,
    _ENGINE_CLONE,
    _FLAGS_ARE_INTS,
    _PIPE_STDERR,
    _PIPE_STDIN,
    _PIPE_STDOUT,
    _PREEXEC_FAILED,
    _STDERR_TO_STDOUT,
    _check_open,
    _Child,
    _child_error,
    _exec_paths,
    _ffi,
    _fsencode_checked,
    _ids,
    _ids_in_range,
    _naming,
)
from ._subprocess_install import install as install
from ._subprocess_install import installed as installed
from ._subprocess_install import is_installed as is_installed
from ._subprocess_install import uninstall as uninstall
from ._subprocess_pipes import _LAZY, _LAZY_CLOSED, _PipeAttribute, _PipeState, _text_codec
from .process import abandoned, abandoned_lock, reap_abandoned
from .spawn import _pack_argv, _prepare, named_request

# Private helpers some code imports from subprocess (multiprocessing, test suites).
_args_from_interpreter_flags = _std._args_from_interpreter_flags  # type: ignore[attr-defined]
_optim_args_from_interpreter_flags = _std._optim_args_from_interpreter_flags  # type: ignore[attr-defined]
_mswindows = False
_USE_POSIX_SPAWN = False
_USE_VFORK = True

__all__ = [
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "CalledProcessError",
    "CompletedProcess",
    "Popen",
    "SubprocessError",
    "TimeoutExpired",
    "call",
    "check_call",
    "check_output",
    "getoutput",
    "getstatusoutput",
    "list2cmdline",
    "run",
]

_time = time.monotonic
_STDOUT_CHECKED = sys.version_info >= (3, 13)  # stdout=STDOUT: ValueError from 3.13 on



# (Here, not with the pipes: its stacklevel walk counts this file's frames, so the warning names the caller.)
def _text_encoding() -> str:
    # As subprocess: the locale's encoding, with an EncodingWarning under -X warn_default_encoding.
    if getattr(sys.flags, "warn_default_encoding", 0):
        f = sys._getframe()
        filename = f.f_code.co_filename
        stacklevel = 2
        while (back := f.f_back) is not None:
            f = back
            if f.f_code.co_filename != filename:
                break
            stacklevel += 1
        warnings.warn("'encoding' argument not specified.", EncodingWarning, stacklevel)
    if sys.flags.utf8_mode:
        return "utf-8"
    return locale.getencoding()




class Popen(Generic[AnyStr]):
    """Execute a child program in a new process: the standard library's subprocess.Popen, on pyproc's engines.

    Every parameter, attribute and method behaves as in CPython 3.11-3.13 on POSIX:

      args: a string, or a sequence of program arguments (str, bytes, os.PathLike); shell=True runs a string
          through /bin/sh -c.
      bufsize: the buffering of the stdin / stdout / stderr pipe file objects (open()'s buffering; 1 = line
          buffered in text mode).
      executable: the program to run in place of args[0] (with shell=True: the shell).
      stdin, stdout, stderr: None, PIPE, DEVNULL, an fd or a file object; stderr may be STDOUT.
      preexec_fn: called in the child just before exec (forks the child with os.fork; not thread-safe, as in
          the standard library).
      close_fds (default True), pass_fds: which of the parent's fds the child gets.
      cwd, env, umask, restore_signals, start_new_session, process_group, user, group, extra_groups.
      text / universal_newlines, encoding, errors: text-mode file objects and communicate() data.
      pipesize: the size of the pipes made for PIPE (F_SETPIPE_SZ).
      startupinfo, creationflags: Windows only (ValueError if set).

    Attributes: args, stdin, stdout, stderr, pid, returncode, text_mode / universal_newlines, encoding,
    errors, pipesize.  Methods: poll, wait, communicate, send_signal, terminate, kill; it is a context manager
    that closes the pipes and waits.
    """

    # Class-level defaults: a Popen sets only what differs from them (every attribute set costs, on every call).
    _child_created = False  # set here since __del__ checks it
    _proc: _Child | None = None
    _input: bytes | None = None
    _exchange: _subprocess_pump.Exchange | _subprocess_pump.NativeExchange | None = None
    _communication_started = False
    _closed_child_pipe_fds = False
    _devnull: int | None = None
    _sigint_wait_secs = 0.25  # how long to keep waiting for a child after the first ^C (as subprocess)
    _pipe_deleted = False  # a pipe attribute was deleted (see _subprocess_pipes._Deleted)
    # Popen[bytes] is a types.GenericAlias, as the standard library's (Generic's own would give typing's alias).
    __class_getitem__: Any = classmethod(types.GenericAlias)
    pid: int | None = None
    returncode: int | None = None
    encoding: str | None = None
    errors: str | None = None
    pipesize = -1
    text_mode: Any = None
    # The parent's pipe ends.  With the default buffering in binary mode the file objects (stdin, stdout, stderr)
    # are made when first asked for: run() and communicate() hand the fds to the C pump and close them, and most
    # callers never see the file objects.  _*_f is None (no pipe), _LAZY (the fd is open, no file object yet),
    # _LAZY_CLOSED (closed by this Popen before any file object was asked for) or the file object itself.
    _stdin_f: Any = None
    _stdout_f: Any = None
    _stderr_f: Any = None
    _stdin_fd = -1
    _stdout_fd = -1
    _stderr_fd = -1
    _text_codec: tuple[str, str] | None = None  # text mode: the pipes' TextIOWrapper (encoding, errors)

    def __init__(
        self,
        args: Any,
        bufsize: int = -1,
        executable: Any = None,
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
        preexec_fn: Callable[[], Any] | None = None,
        close_fds: bool = True,
        shell: bool = False,
        cwd: Any = None,
        env: Mapping[Any, Any] | None = None,
        universal_newlines: bool | None = None,
        startupinfo: Any = None,
        creationflags: int = 0,
        restore_signals: bool = True,
        start_new_session: bool = False,
        pass_fds: Collection[int] = (),
        *,
        user: str | int | None = None,
        group: str | int | None = None,
        extra_groups: Iterable[str | int] | None = None,
        encoding: str | None = None,
        errors: str | None = None,
        text: bool | None = None,
        umask: int = -1,
        pipesize: int = -1,
        process_group: int | None = None,
    ) -> None:
        if abandoned:
            reap_abandoned()
        self.args = args
        # Every option at its default, stdin / stdout / stderr each None, PIPE or DEVNULL (stderr: or STDOUT with
        # stdout PIPE or DEVNULL): the common case, one test
        # (text mode included: text / universal_newlines / encoding / errors only change the file objects).
        # The shortcut does the work of _get_handles and _execute_child: only for a class that has them as they are
        # here (a subclass that overrides one, or a test that patches one, gets them called as subprocess does).
        cls = type(self)
        if (cls._execute_child is _EXECUTE_CHILD and cls._get_handles is _GET_HANDLES
                and bufsize == -1 and executable is None and preexec_fn is None and close_fds is True and shell is False
                and cwd is None and env is None and startupinfo is None and creationflags == 0
                and restore_signals is True and start_new_session is False and not pass_fds and user is None
                and group is None and extra_groups is None and umask == -1 and pipesize == -1
                and process_group is None and (stdin is None or stdin is PIPE or stdin is DEVNULL)
                and (stdout is None or stdout is PIPE or stdout is DEVNULL)
                and (stderr is None or stderr is PIPE or stderr is DEVNULL
                     or (stderr is STDOUT and stdout is not None))):
            if encoding is not None or errors is not None or text is not None or universal_newlines is not None:
                self._text_options(encoding, errors, text, universal_newlines,
                                   stdin is PIPE or stdout is PIPE or stderr is PIPE)
            self._start_plain(args, stdin, stdout, stderr)
            return
        if bufsize is None:
            bufsize = -1
        if not isinstance(bufsize, int):
            raise TypeError("bufsize must be an integer")
        if _STDOUT_CHECKED and stdout is STDOUT:
            raise ValueError("STDOUT can only be used for stderr")
        if pipesize is None:
            pipesize = -1
        if not isinstance(pipesize, int):
            raise TypeError("pipesize must be an integer")
        if pass_fds and not close_fds:
            warnings.warn("pass_fds overriding close_fds.", RuntimeWarning, stacklevel=2)
            close_fds = True
        if startupinfo is not None:
            raise ValueError("startupinfo is only supported on Windows platforms")
        if creationflags != 0:
            raise ValueError("creationflags is only supported on Windows platforms")

        self.pipesize = pipesize
        self._text_options(encoding, errors, text, universal_newlines, False)  # (the codec is checked below)
        encoding = self.encoding

        line_buffering = False
        if self.text_mode and bufsize == 1:
            line_buffering = True
            bufsize = -1  # the binary layers below cannot line-buffer

        if process_group is None:
            process_group = -1
        gid, gids, uid = _ids(user, group, extra_groups)

        p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite = self._get_handles(stdin, stdout, stderr)
        try:
            lazy = bufsize == -1 and not line_buffering  # the file objects are made when asked for
            if lazy and self.text_mode and (p2cwrite != -1 or c2pread != -1 or errread != -1):
                self._text_codec = _text_codec(encoding, errors)
            if lazy:
                self._set_lazy_pipes(p2cwrite, c2pread, errread)
            elif p2cwrite != -1:
                self.stdin = open(p2cwrite, "wb", bufsize)  # noqa: SIM115
                if self.text_mode:
                    self.stdin = io.TextIOWrapper(cast(IO[bytes], self.stdin), write_through=True,
                                                  line_buffering=line_buffering, encoding=encoding,
                                                  errors=errors)
            if c2pread != -1 and not lazy:
                self.stdout = open(c2pread, "rb", bufsize)  # noqa: SIM115
                if self.text_mode:
                    self.stdout = io.TextIOWrapper(cast(IO[bytes], self.stdout), encoding=encoding,
                                                   errors=errors)
            if errread != -1 and not lazy:
                self.stderr = open(errread, "rb", bufsize)  # noqa: SIM115
                if self.text_mode:
                    self.stderr = io.TextIOWrapper(cast(IO[bytes], self.stderr), encoding=encoding,
                                                   errors=errors)
            self._execute_child(args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo,
                                creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite,
                                restore_signals, gid, gids, uid, umask, start_new_session, process_group)
        except BaseException:
            self._discard_pipes()
            if not self._closed_child_pipe_fds:
                to_close = []
                if stdin == PIPE:
                    to_close.append(p2cread)
                if stdout == PIPE:
                    to_close.append(c2pwrite)
                if stderr == PIPE:
                    to_close.append(errwrite)
                if self._devnull is not None:
                    to_close.append(self._devnull)
                for fd in to_close:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            raise

    def _text_options(self, encoding: Any, errors: Any, text: Any, universal_newlines: Any, pipes: bool) -> None:
        """__init__'s text-mode settings (its checks and messages, in its order); pipes: some stream is PIPE."""
        self.encoding = encoding
        self.errors = errors
        if text is not None and universal_newlines is not None and bool(universal_newlines) != bool(text):
            raise SubprocessError("Cannot disambiguate when both text and universal_newlines are supplied "
                                  "but different. Pass one or the other.")
        self.text_mode = encoding or errors or text or universal_newlines
        if self.text_mode:
            if encoding is None:
                self.encoding = encoding = _text_encoding()
            if pipes:  # what making the pipes' TextIOWrappers raises (an unknown encoding, ...)
                self._text_codec = _text_codec(encoding, errors)

    def _start_plain(self, args: Any, stdin: Any, stdout: Any, stderr: Any) -> None:
        """__init__ with every option at its default but the text mode's; stdin / stdout / stderr each None, PIPE
        or DEVNULL, or stderr STDOUT with stdout PIPE or DEVNULL."""
        # _execute_child's steps for these options, in the standard library's order (its messages, its audit).
        kind = type(args)
        if kind is list or kind is tuple:  # (neither str, bytes nor path-like: no isinstance of an ABC)
            argv = list(args)
        else:
            argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        executable = argv[0]
        sys.audit("subprocess.Popen", executable, argv, None, None)
        packed = _pack_argv(argv)
        if packed is None or stdin is DEVNULL or stdout is DEVNULL or stderr is DEVNULL:
            # bytes or path-like arguments, a NUL, ... (the general conversion and its errors), /dev/null
            self._start_prepared(args, argv, executable, stdin, stdout, stderr)
            return
        # The common case: argv packed in one bytes object, the pipes made by the C side with the spawn.
        program = packed.partition(b"\0")[0]
        entry = _DIRECT if b"/" in program else named_request(program)  # held until the spawn returns
        pipes = ((_PIPE_STDIN if stdin is PIPE else 0) | (_PIPE_STDOUT if stdout is PIPE else 0)
                 | (_PIPE_STDERR if stderr is PIPE else _STDERR_TO_STDOUT if stderr is STDOUT else 0))
        child = ffi.new("struct pyproc_child *")
        ends = ffi.new("int[3]")
        err = lib.pyproc_spawn_piped(entry[0], packed, len(packed), len(argv), _ENGINE_CLONE, pipes, child, ends)
        res = child.spawn
        if err:
            # (the child's ends of new pipes are above 2 while the parent's standard fds are open)
            raise _child_error(res.fail_stage, err, _naming(
                executable, None, None, True, (), 3 if stdin is PIPE else -1, 3 if stdout is PIPE else -1,
                3 if stderr is not None else -1, False, -1, None, None, None, -1))
        self.pid = pid = res.pid
        pidfd = res.pidfd
        # Positional arguments only: a keyword argument sends the class call down CPython's slow path.
        self._proc = _Child(pid, pidfd if pidfd >= 0 else None, args, None, None, None, child)
        self._child_created = True
        self._set_lazy_pipes(ends[0], ends[1], ends[2])  # -1 for the streams that got no pipe

    def _start_prepared(self, args: Any, argv: list[Any], executable: Any, stdin: Any, stdout: Any,
                        stderr: Any) -> None:
        """_start_plain for arguments that do not pack (converted one by one: bytes, os.PathLike, errors) and for
        DEVNULL: spawn's checked request, the pipes and /dev/null opened here (in _get_handles' order)."""
        bargs = [_fsencode_checked(arg) for arg in argv]
        program = bargs[0]
        p2cread = p2cwrite = c2pread = c2pwrite = errread = errwrite = devnull = -1
        try:
            if stdin is PIPE:
                p2cread, p2cwrite = os.pipe()
            elif stdin is DEVNULL:
                p2cread = devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            if stdout is PIPE:
                c2pread, c2pwrite = os.pipe()
            elif stdout is DEVNULL:
                if devnull == -1:
                    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                c2pwrite = devnull
            if stderr is PIPE:
                errread, errwrite = os.pipe()
            elif stderr is STDOUT:
                errwrite = c2pwrite
            elif stderr is DEVNULL:
                if devnull == -1:
                    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                errwrite = devnull
            # spawn's fast path for a program named by a path; a PATH search is kept per program (_exec_paths)
            direct = b"/" in program
            request = _prepare(
                bargs, "auto", None if direct else b"/", None if p2cread == -1 else p2cread,
                None if c2pwrite == -1 else c2pwrite, None if errwrite == -1 else errwrite, None, (), True, None,
                None, False, None, None, None, None, False, True, None,
            )
            if not direct:
                c_paths, n_paths, c_strings = _exec_paths(program, None)
                req = request.c
                req.exec_paths = request.keep(c_paths)
                request.keep(c_strings)
                req.n_exec_paths = n_paths
            res = ffi.new("struct pyproc_spawn_result *")
            err = lib.pyproc_spawn(request.c, lib.PYPROC_ENGINE_CLONE, res)
            child_fds = p2cread, c2pwrite, errwrite
            child_ends = [fd for fd, parent_end in ((p2cread, p2cwrite), (c2pwrite, c2pread), (errwrite, errread))
                          if parent_end != -1]
            if devnull != -1:
                child_ends.append(devnull)
            p2cread = c2pwrite = errwrite = devnull = -1
            for fd in child_ends:
                os.close(fd)
            if err:
                naming = _naming(executable, None, None, True, (), *child_fds, False, -1, None, None, None, -1)
                raise _child_error(res.fail_stage, err, naming)
        except BaseException:
            for fd in {p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite, devnull} - {-1}:
                os.close(fd)
            raise
        self.pid = pid = res.pid
        self._proc = _Child(pid, res.pidfd if res.pidfd >= 0 else None, args)
        self._child_created = True
        self._set_lazy_pipes(p2cwrite, c2pread, errread)

    # ---- the pipes' file objects: made when first asked for --------------------------------------------

    def _set_lazy_pipes(self, stdin_fd: int, stdout_fd: int, stderr_fd: int) -> None:
        """Records the parent's pipe ends (-1: no pipe) as pipes whose file objects are made when asked for."""
        if stdin_fd != -1:
            self._stdin_fd, self._stdin_f = stdin_fd, _LAZY
        if stdout_fd != -1:
            self._stdout_fd, self._stdout_f = stdout_fd, _LAZY
        if stderr_fd != -1:
            self._stderr_fd, self._stderr_f = stderr_fd, _LAZY

    stdin = _PipeAttribute(
        "stdin", "wb",
        "The parent's end of the child's stdin pipe, a writable file object (None when stdin is not PIPE).")
    stdout = _PipeAttribute(
        "stdout", "rb",
        "The parent's end of the child's stdout pipe, a readable file object (None when stdout is not PIPE).")
    stderr = _PipeAttribute(
        "stderr", "rb",
        "The parent's end of the child's stderr pipe, a readable file object (None when stderr is not PIPE).")

    def _output_fd(self, stream: str, native: bool) -> int | None:
        """The fd communicate() reads for stream ("stdout" / "stderr"): the pipe's own fd while it has no file
        object (native), else its file object's; None when it is closed or not a pipe."""
        f = getattr(self, f"_{stream}_f")
        if f is _LAZY and native:
            return cast(int, getattr(self, f"_{stream}_fd"))
        if f is None or f is _LAZY_CLOSED:
            return None
        f = getattr(self, stream)
        return f.fileno() if f and not f.closed else None

    def _capture_all(self) -> tuple[bytes, bytes] | None:
        """communicate() for a fresh Popen whose stdout and stderr are binary pipes without file objects and which
        has no stdin pipe: both fds go to the C pump, which closes them, and the child is reaped by the same C
        call that frees the pump.  None (nothing done) when that does not apply: communicate() then does it."""
        proc = self._proc
        if (self._stdout_f is not _LAZY or self._stderr_f is not _LAZY or self._stdin_f is not None
                or self.text_mode or self._exchange is not None or _subprocess_pump._Pump is None
                or proc is None or proc._c is None):
            return None
        with _subprocess_pipes._pipes_lock:
            if self._stdout_f is not _LAZY or self._stderr_f is not _LAZY:
                return None  # another thread made a file object meanwhile
            self._stdout_f = self._stderr_f = _LAZY_CLOSED
        try:
            captured = capture_to_end(proc, self._stdout_fd, self._stderr_fd)
        except KeyboardInterrupt:  # as communicate(): a short wait for the child, which likely got it too
            self._communication_started = True
            self._wait_after_interrupt(None)
            raise
        self._sync()
        return captured

    def _close_pipe(self, stream: str) -> None:
        """Closes the parent's end of pipe `stream` ("stdin", ...): its fd while it has no file object, else the
        file object (which may raise, as the standard library's close does)."""
        state = f"_{stream}_f"
        if getattr(self, state) is _LAZY and self._take_lazy(state):
            os.close(getattr(self, f"_{stream}_fd"))
        elif (f := getattr(self, state)) and f is not _LAZY_CLOSED:  # (read again: another thread may have made it)
            f.close()

    def _take_lazy(self, state: str) -> bool:
        """Marks the pipe whose state attribute is `state` closed if it has no file object (True: the caller
        then closes its fd or hands it to the pump); False if it is not such a pipe (none, or a file object)."""
        with _subprocess_pipes._pipes_lock:
            if getattr(self, state) is _LAZY:
                setattr(self, state, _LAZY_CLOSED)
                return True
        return False

    def _discard_pipes(self) -> None:
        """Closes the parent's pipe ends, made into file objects or not (a failed __init__)."""
        for stream in (self._stdin_f, self._stdout_f, self._stderr_f):
            if stream is not None and not isinstance(stream, _PipeState):
                with contextlib.suppress(OSError):
                    stream.close()
        for f, fd in ((self._stdin_f, self._stdin_fd), (self._stdout_f, self._stdout_fd),
                      (self._stderr_f, self._stderr_fd)):
            if f is _LAZY:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._stdin_f = self._stdin_f if self._stdin_f is not _LAZY else _LAZY_CLOSED
        self._stdout_f = self._stdout_f if self._stdout_f is not _LAZY else _LAZY_CLOSED
        self._stderr_f = self._stderr_f if self._stderr_f is not _LAZY else _LAZY_CLOSED

    def __repr__(self) -> str:
        obj_repr = f"<{self.__class__.__name__}: returncode: {self.returncode} args: {self.args!r}>"
        if len(obj_repr) > 80:
            obj_repr = obj_repr[:76] + "...>"
        return obj_repr

    @property
    def universal_newlines(self) -> Any:
        """Alias of text_mode, kept for compatibility."""
        return self.text_mode

    @universal_newlines.setter
    def universal_newlines(self, universal_newlines: Any) -> None:
        self.text_mode = bool(universal_newlines)

    def _translate_newlines(self, data: bytes, encoding: str, errors: str) -> str:
        return data.decode(encoding, errors).replace("\r\n", "\n").replace("\r", "\n")

    def __enter__(self) -> Popen[AnyStr]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, value: BaseException | None, traceback: Any
    ) -> None:
        self._close_pipe("stdout")
        self._close_pipe("stderr")
        try:  # flushing a BufferedWriter may raise
            self._close_pipe("stdin")
            if self._exchange is not None:
                self._exchange.close_input()
        finally:
            if exc_type is KeyboardInterrupt:
                # The child very likely got the same SIGINT: wait a little for it, but do not block ^C.
                if self._sigint_wait_secs > 0:
                    with contextlib.suppress(TimeoutExpired):
                        self._wait(timeout=self._sigint_wait_secs)
                self._sigint_wait_secs = 0
                return  # noqa: B012 - let the KeyboardInterrupt go on (as subprocess)
            self.wait()

    def __del__(self, _maxsize: int = sys.maxsize, _warn: Any = warnings.warn,
                _abandoned: list[tuple[int, int | None]] = abandoned, _lock: Any = abandoned_lock,
                _lazy: Any = _LAZY) -> None:
        # Only what the default arguments hold: at interpreter exit the module's globals may be gone already.
        if not self._child_created:
            return
        if (self.returncode is not None and self._stdin_f is not _lazy and self._stdout_f is not _lazy
                and self._stderr_f is not _lazy):
            return  # reaped, no pipe left to this method: nothing to do (every finished run() ends here)
        try:
            if self.returncode is None:
                # Not reading the exit status makes a zombie, destroyed only when the parent exits.
                _warn(f"subprocess {self.pid} is still running", ResourceWarning, source=self)
        finally:  # also when the warning is an error: the child and the pipes are still taken care of
            self._collected(_maxsize, _warn, _abandoned, _lock)

    def _collected(self, _maxsize: int, _warn: Any, _abandoned: list[tuple[int, int | None]], _lock: Any,
                   _close: Any = os.close, _suppress: Any = contextlib.suppress, _lazy: Any = _LAZY,
                   _closed: Any = _LAZY_CLOSED) -> None:
        try:
            try:
                self._internal_poll(_deadstate=_maxsize)
            except Exception:  # at interpreter exit: nothing more can be done for the child
                return
            proc = self._proc
            if self.returncode is None and proc is not None:
                # Still running: reaped without blocking at a later spawn (pyproc's list of abandoned children).
                with _lock:
                    _abandoned.append((proc.pid, proc.pidfd))
                proc.pidfd = None
        finally:
            # Pipes whose file objects were never made: closed as those file objects would be when collected
            # (all closed first: a warning may be an error).
            unclosed = []
            if self._stdin_f is _lazy:
                self._stdin_f = _closed
                unclosed.append(("BufferedWriter", self._stdin_fd))
            if self._stdout_f is _lazy:
                self._stdout_f = _closed
                unclosed.append(("BufferedReader", self._stdout_fd))
            if self._stderr_f is _lazy:
                self._stderr_f = _closed
                unclosed.append(("BufferedReader", self._stderr_fd))
            for _kind, fd in unclosed:
                with _suppress(OSError):
                    _close(fd)
            codec = self._text_codec
            for kind, fd in unclosed:
                what = f"<_io.{kind} name={fd}>" if codec is None else \
                    f"<_io.TextIOWrapper name={fd} encoding={codec[0]!r}>"
                _warn(f"unclosed file {what}", ResourceWarning, source=self)

    # ---- the child's stdio ---------------------------------------------------------------------------------

    def _get_devnull(self) -> int:
        if self._devnull is None:
            self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        return self._devnull

    def _make_pipe(self, to_close: list[int]) -> tuple[int, int]:
        """A pipe (read end, write end), pipesize applied (F_SETPIPE_SZ), both ends listed in to_close."""
        read_end, write_end = os.pipe()
        to_close += (read_end, write_end)
        if self.pipesize > 0:
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, self.pipesize)
        return read_end, write_end

    def _get_handles(self, stdin: Any, stdout: Any, stderr: Any) -> tuple[int, int, int, int, int, int]:
        """(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite), -1 where there is none."""
        p2cread, p2cwrite = -1, -1
        c2pread, c2pwrite = -1, -1
        errread, errwrite = -1, -1
        to_close: list[int] = []
        try:
            if stdin is None:
                pass
            elif stdin == PIPE:
                p2cread, p2cwrite = self._make_pipe(to_close)
            elif stdin == DEVNULL:
                p2cread = self._get_devnull()
            elif isinstance(stdin, int):
                p2cread = stdin
            else:
                p2cread = stdin.fileno()

            if stdout is None:
                pass
            elif stdout == PIPE:
                c2pread, c2pwrite = self._make_pipe(to_close)
            elif stdout == DEVNULL:
                c2pwrite = self._get_devnull()
            elif isinstance(stdout, int):
                c2pwrite = stdout
            else:
                c2pwrite = stdout.fileno()

            if stderr is None:
                pass
            elif stderr == PIPE:
                errread, errwrite = self._make_pipe(to_close)
            elif stderr == STDOUT:
                errwrite = c2pwrite if c2pwrite != -1 else sys.__stdout__.fileno()  # type: ignore[union-attr]
            elif stderr == DEVNULL:
                errwrite = self._get_devnull()
            elif isinstance(stderr, int):
                errwrite = stderr
            else:
                errwrite = stderr.fileno()
        except BaseException:
            if self._devnull is not None:
                to_close.append(self._devnull)
                self._devnull = None
            for fd in to_close:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        return p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite

    def _close_pipe_fds(self, p2cread: int, p2cwrite: int, c2pread: int, c2pwrite: int, errread: int,
                        errwrite: int) -> None:
        devnull_fd = self._devnull
        try:
            for child_end, parent_end in ((p2cread, p2cwrite), (c2pwrite, c2pread), (errwrite, errread)):
                if child_end != -1 and parent_end != -1 and child_end != devnull_fd:
                    os.close(child_end)
        finally:
            if devnull_fd is not None:
                os.close(devnull_fd)
            self._closed_child_pipe_fds = True

    # ---- starting the child --------------------------------------------------------------------------------

    def _execute_child(
        self, args: Any, executable: Any, preexec_fn: Callable[[], Any] | None, close_fds: bool,
        pass_fds: Collection[int], cwd: Any, env: Mapping[Any, Any] | None, startupinfo: Any,
        creationflags: int, shell: bool, p2cread: int, p2cwrite: int, c2pread: int, c2pwrite: int, errread: int,
        errwrite: int, restore_signals: bool, gid: int | None, gids: list[int] | None, uid: int | None, umask: int,
        start_new_session: bool, process_group: int,
    ) -> None:
        if type(args) is list or type(args) is tuple:  # (no isinstance of the os.PathLike ABC)
            args = list(args)
        elif isinstance(args, (str, bytes)):
            args = [args]
        elif isinstance(args, os.PathLike):
            if shell:
                raise TypeError("path-like args is not allowed when shell is true")
            args = [args]
        else:
            args = list(args)
        if shell:
            args = ["/bin/sh", "-c", *args]
            if executable:
                args[0] = executable
        if executable is None:
            executable = args[0]
        sys.audit("subprocess.Popen", executable, args, cwd, env)
        naming = _naming(executable, cwd, preexec_fn, close_fds, pass_fds, p2cread, c2pwrite, errwrite,
                         start_new_session, process_group, gid, gids, uid, umask)

        # Everything the child needs, converted here with the standard library's checks and messages.
        env_list = None
        if env is not None:
            env_list = []
            for k, v in env.items():
                bk = os.fsencode(k)
                if b"=" in bk:
                    raise ValueError("illegal environment variable name")
                env_list.append(bk + b"=" + os.fsencode(v))
        c_paths, n_paths, c_strings = _exec_paths(os.fsencode(executable), env)
        keep = sorted(map(int, set(pass_fds)))
        if keep and keep[0] < 0:
            raise ValueError("bad value(s) in fds_to_keep")
        bargs = [_fsencode_checked(arg) for arg in args]
        bcwd = None if cwd is None else _fsencode_checked(cwd)
        if env_list is not None:
            for entry in env_list:
                if b"\0" in entry:
                    raise ValueError("embedded null byte")
        process_group = operator.index(process_group)
        umask = operator.index(umask)
        if _FLAGS_ARE_INTS and not naming.posix_spawn:
            # 3.11's _posixsubprocess takes these two as C ints: TypeError for anything else
            restore_signals = bool(operator.index(restore_signals))
            start_new_session = bool(operator.index(start_new_session))
        _ids_in_range(gid, gids, uid)
        for fd in (p2cread, c2pwrite, errwrite):
            if fd != -1:
                _check_open(fd, naming.noexec)
        for fd in keep:
            _check_open(fd, naming.noexec)
        # fds the child gets as 0, 1, 2 anyway need no pass_fds entry (and must not conflict with the plan).
        targets = {t for t, s in ((0, p2cread), (1, c2pwrite), (2, errwrite)) if s != -1}
        keep = [fd for fd in keep if fd not in targets]

        # spawn's checks and fd plan; executable b"/" is a placeholder: the exec candidates, env, cwd, session
        # and group are set below with subprocess's rules (positional: forwarding keywords costs on every spawn).
        request = _prepare(
            bargs, "fork" if preexec_fn is not None else "auto", b"/",
            None if p2cread == -1 else p2cread, None if c2pwrite == -1 else c2pwrite,
            None if errwrite == -1 else errwrite, None, keep, bool(close_fds), None, None, False, None, None,
            None, None, False, bool(restore_signals), None,
        )
        req = request.c
        req.exec_paths = request.keep(c_paths)
        request.keep(c_strings)
        req.n_exec_paths = n_paths
        if env_list is not None:
            c_env: list[Any] = [request.keep(ffi.new("char[]", entry)) for entry in env_list]
            req.envp = request.keep(ffi.new("char *[]", [*c_env, ffi.NULL]))
        if bcwd is not None:
            req.cwd = request.keep(ffi.new("char[]", bcwd))
        req.new_session = int(bool(start_new_session))
        req.process_group = process_group if process_group >= 0 else -1
        req.umask = umask if umask >= 0 else -1
        if gids is not None:  # as subprocess: an empty extra_groups drops every supplementary group
            req.set_groups = 1
            req.groups = request.keep(ffi.new("uint32_t[]", gids)) if gids else ffi.NULL
            req.n_groups = len(gids)
        if gid is not None:
            req.set_gid = 1
            req.gid = gid
        if uid is not None:
            req.set_uid = 1
            req.uid = uid

        res = ffi.new("struct pyproc_spawn_result *")
        if preexec_fn is None:
            err = lib.pyproc_spawn(req, lib.PYPROC_ENGINE_CLONE, res)
        else:
            err = self._fork_exec(request, preexec_fn, res)
        self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)
        if err:
            raise _child_error(res.fail_stage, err, naming)
        self.pid = res.pid
        self._proc = _Child(res.pid, res.pidfd if res.pidfd >= 0 else None, self.args)
        self._child_created = True

    def _fork_exec(self, request: Any, preexec_fn: Callable[[], Any], res: Any) -> int:
        """The fork engine done from Python, so that preexec_fn can run in the child; 0 or an errno."""
        handle = request.keep(_ffi.new_handle(preexec_fn))
        request.c.before_exec = _BEFORE_EXEC
        request.c.before_exec_arg = handle
        errpipe_read, errpipe_write = os.pipe()
        try:
            parent_pid = os.getpid()  # taken before the fork: the child's pdeathsig check compares with it
            pid = os.fork()
            if pid == 0:  # the child: never returns to the caller
                try:
                    os.close(errpipe_read)
                    lib.pyproc_exec_child(request.c, errpipe_write, parent_pid)
                finally:
                    os._exit(127)
            os.close(errpipe_write)
            errpipe_write = -1
            res.pid = pid
            got = ffi.new("int *")
            err = int(lib.pyproc_read_child_error(errpipe_read, got, res))
            if err:  # the child's state is unknown: stop it (checked first: with SIGCHLD ignored it may be gone)
                res.fail_stage = lib.PYPROC_STAGE_PARENT
                lib.pyproc_send_signal(pid, -1, signal.SIGKILL)
            elif got[0]:
                err = res.fail_errno if res.fail_stage != lib.PYPROC_STAGE_BEFORE_EXEC else _PREEXEC_FAILED
            if err:
                with contextlib.suppress(ChildProcessError):  # SIGCHLD ignored: the kernel reaped it (as subprocess)
                    os.waitpid(pid, 0)
                return err
            pidfd = ffi.new("int *")
            err = int(lib.pyproc_pidfd_open(pid, pidfd))
            res.pidfd = pidfd[0] if not err else -1
            return 0
        finally:
            os.close(errpipe_read)
            if errpipe_write >= 0:
                os.close(errpipe_write)

    # ---- waiting -------------------------------------------------------------------------------------------

    def _sync(self) -> int | None:
        proc = self._proc
        if proc is not None and proc.returncode is not None:
            self.returncode = proc.returncode
        return self.returncode

    def _adopted(self) -> _Child | None:
        """The child's Process: self._proc, or -- for a child started by an _execute_child override that set
        self.pid (as the standard library's own does) without making one -- a Process made for that pid now, so
        that poll, wait and signals reach the child as they would with the standard library."""
        proc = self._proc
        if proc is None and type(self.pid) is int and self.pid > 0:
            try:
                pidfd: int | None = os.pidfd_open(self.pid)
            except OSError:  # gone already, or a kernel without pidfds: the reap says which
                pidfd = None
            proc = self._proc = _Child(self.pid, pidfd, self.args)
        return proc

    def _internal_poll(self, _deadstate: int | None = None) -> int | None:
        if self.returncode is None and (proc := self._adopted()) is not None:
            try:
                proc.poll()
            except OSError:
                if _deadstate is not None:
                    self.returncode = _deadstate
                    return self.returncode
                raise
            self._sync()
        return self.returncode

    def poll(self) -> int | None:
        """Checks whether the child has terminated; sets and returns returncode (None while it runs)."""
        return self._internal_poll()

    def _wait(self, timeout: float | None) -> int:
        if self.returncode is not None:
            return self.returncode
        proc = self._adopted()
        if proc is None:
            raise TypeError(f"{type(self).__name__} has no child to wait for (pid is {self.pid!r})")
        try:
            proc.wait(timeout)
        except TimeoutExpired:
            raise TimeoutExpired(self.args, cast(float, timeout)) from None
        rc = self._sync()
        assert rc is not None
        return rc

    def wait(self, timeout: float | None = None) -> int:
        """Waits for the child to terminate and returns returncode; TimeoutExpired after timeout seconds.

        The wait polls the child's pidfd with the GIL released (no sleep loop).  After a first ^C it waits a
        little longer for the child (which likely got the SIGINT too), then lets the KeyboardInterrupt
        through.
        """
        endtime = None if timeout is None else _time() + timeout
        try:
            return self._wait(timeout=timeout)  # (always: a subclass's _wait sees every wait, as subprocess's)
        except KeyboardInterrupt:
            self._wait_after_interrupt(endtime)
            raise

    def _wait_after_interrupt(self, endtime: float | None) -> None:
        """After a ^C in wait() or communicate(): the child very likely got the SIGINT too, so wait for it a
        little (0.25 s, or what is left before endtime), once per Popen; the caller then lets the
        KeyboardInterrupt go on (the standard library's bpo-25942 behaviour)."""
        sigint_timeout = self._sigint_wait_secs
        if endtime is not None:
            sigint_timeout = min(sigint_timeout, endtime - _time())
        self._sigint_wait_secs = 0  # nothing else waits after this
        with contextlib.suppress(TimeoutExpired):
            self._wait(timeout=sigint_timeout)

    def send_signal(self, sig: int) -> None:
        """Sends signal sig to the child (through its pidfd); nothing once it has been reaped."""
        self.poll()
        proc = self._adopted()
        if self.returncode is not None or proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)

    def terminate(self) -> None:
        """Terminates the child with SIGTERM."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kills the child with SIGKILL."""
        self.send_signal(signal.SIGKILL)

    # ---- communicate ---------------------------------------------------------------------------------------

    def _stdin_write(self, input: Any) -> None:
        assert self.stdin is not None
        if input:
            try:
                self.stdin.write(input)
            except BrokenPipeError:
                pass  # communicate() ignores a child that stopped reading
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        try:
            self.stdin.close()
        except BrokenPipeError:
            pass
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        """Sends input to the child's stdin and closes it, reads stdout and stderr to end of file, waits.

        Returns (stdout, stderr), None for a stream that is not a pipe; str in text mode, else bytes.  With a
        timeout raises TimeoutExpired (with the output read so far) and leaves the child running: calling
        communicate() again goes on where it stopped.
        """
        if self._communication_started and input:
            raise ValueError("Cannot send input after starting communication")
        if self._pipe_deleted:  # a deleted pipe attribute raises its AttributeError first, as subprocess's does
            self.stdin, self.stdout, self.stderr  # noqa: B018
        # With no timeout, nothing started and at most one pipe, plain blocking I/O is enough (as subprocess).
        if timeout is None and not self._communication_started and \
                (self._stdin_f is None) + (self._stdout_f is None) + (self._stderr_f is None) >= 2:
            stdout = None
            stderr = None
            binary = self._text_codec is None and _subprocess_pump._Pump is not None
            if binary and self._stdout_f is _LAZY and self._take_lazy("_stdout_f"):
                stdout = self._read_lazy_pipe(self._stdout_fd, "_stdout_f")
            elif binary and self._stderr_f is _LAZY and self._take_lazy("_stderr_f"):
                stderr = self._read_lazy_pipe(self._stderr_fd, "_stderr_f")
            elif self.stdin:
                self._stdin_write(input)
            elif self.stdout:
                stdout = self.stdout.read()
                self.stdout.close()
            elif self.stderr:
                stderr = self.stderr.read()
                self.stderr.close()
            self.wait()
            return stdout, stderr
        endtime = None if timeout is None else _time() + timeout
        try:
            stdout, stderr = self._communicate(input, endtime, timeout)
        except KeyboardInterrupt:
            self._wait_after_interrupt(endtime)
            raise
        finally:
            self._communication_started = True
        self.wait(timeout=None if endtime is None else endtime - _time())
        return stdout, stderr

    def _read_lazy_pipe(self, fd: int, state: str) -> bytes:
        """Reads a pipe taken by _take_lazy (no file object) to end of file with the C pump, then closes it.  If
        that is interrupted (^C) the pipe is left open, as the file object's read() would leave it."""
        pump = _subprocess_pump._Pump(None, None, (fd, None), None)
        try:
            pump.run(None)
            data: bytes = pump.take(0)
        except BaseException:
            with _subprocess_pipes._pipes_lock:
                if getattr(self, state) is _LAZY_CLOSED:
                    setattr(self, state, _LAZY)
                    fd = -1
            if fd != -1:  # a closed file object was asked for meanwhile: it is closed
                os.close(fd)
            raise
        finally:
            pump.release()
        os.close(fd)
        return data

    def _close_stdin(self) -> None:
        if self.stdin is not None:
            with contextlib.suppress(BrokenPipeError):  # communicate() ignores a child that stopped reading
                self.stdin.close()

    def _communicate(self, input: Any, endtime: float | None, orig_timeout: float | None) -> tuple[Any, Any]:
        ex = self._exchange
        if ex is None:
            # A pipe that has no file object goes to the C pump as it is (nothing can be buffered in it).
            native = _subprocess_pump._Pump is not None
            out_fd = self._output_fd("stdout", native)
            err_fd = self._output_fd("stderr", native)
            owned_stdin = None
            stdin_f = self._stdin_f
            taken = False
            if stdin_f is _LAZY and native:
                data = input
                if data is not None and self.text_mode:
                    data = data.encode(*self._codec_of(stdin_f, "stdin"))
                # memoryview() raises the TypeError a write would (str input in binary mode, ...)
                view = memoryview(data) if data is not None else None
                taken = self._take_lazy("_stdin_f")  # the pump owns the fd now: it closes it once the input is in
                if taken:
                    if input:
                        owned_stdin = self._stdin_fd
                    else:
                        os.close(self._stdin_fd)
                    stdin: Any = None
            if not taken:  # a file object (made by the caller, perhaps by another thread just now) or no pipe
                stdin = stdin_f = None if self._stdin_f is None else self.stdin
                unflushed = False  # the caller's writes to .stdin met a broken pipe: they are still buffered
                if stdin and not self._communication_started:
                    try:
                        stdin.flush()  # what the caller wrote to .stdin goes first
                    except BrokenPipeError:
                        unflushed = True
                    except ValueError:  # flush of closed file: later standard libraries ignore it
                        if not stdin.closed or not _std_ignores_closed_stdin():
                            raise
                    if not input:
                        with contextlib.suppress(BrokenPipeError):
                            stdin.close()
                data = input
                if data is not None and self.text_mode and stdin:
                    data = data.encode(stdin.encoding, stdin.errors)  # (a binary stdin: AttributeError)
                # memoryview() raises the TypeError a write would (str input in binary mode, ...)
                view = memoryview(data) if data is not None and stdin else None
                if unflushed and input:
                    # The standard library's first write of the input meets the same broken pipe, and then it
                    # closes .stdin, whose flush of the data still buffered raises BrokenPipeError to the caller.
                    stdin.close()
            try:
                ex = self._exchange = _subprocess_pump.new_exchange(stdin, view, out_fd, err_fd, self._close_stdin,
                                                                    owned_stdin)
            except BaseException:
                if owned_stdin is not None:  # taken from the Popen for the pump, which never got it
                    os.close(owned_stdin)
                raise
        try:
            finished = ex.run(endtime)
        finally:
            if ex.stdin_done:
                f = self._stdin_f
                if f is not None and f is not _LAZY_CLOSED and not f.closed:
                    with contextlib.suppress(BrokenPipeError):
                        f.close()
            out_done = ex.stdout_done
            err_done = ex.stderr_done
            if (out_done and self._stdout_f is _LAZY) or (err_done and self._stderr_f is _LAZY):
                done_fds = []
                with _subprocess_pipes._pipes_lock:  # (see _take_lazy: both pipes at once)
                    if out_done and self._stdout_f is _LAZY:
                        self._stdout_f = _LAZY_CLOSED
                        done_fds.append(self._stdout_fd)
                    if err_done and self._stderr_f is _LAZY:
                        self._stderr_f = _LAZY_CLOSED
                        done_fds.append(self._stderr_fd)
                for fd in done_fds:
                    os.close(fd)
            if out_done and (f := self._stdout_f) is not None and f is not _LAZY_CLOSED and not f.closed:
                f.close()
            if err_done and (f := self._stderr_f) is not None and f is not _LAZY_CLOSED and not f.closed:
                f.close()
        if not finished:
            partial_out, partial_err = ex.partial()
            raise TimeoutExpired(self.args, cast(float, orig_timeout), output=partial_out, stderr=partial_err)
        self.wait(timeout=None if endtime is None else endtime - _time())
        out, err = ex.output()
        stdout: Any = None if self._stdout_f is None else out
        stderr: Any = None if self._stderr_f is None else err
        if self.text_mode:
            if stdout is not None:
                stdout = self._translate_newlines(stdout, *self._codec_of(self._stdout_f, "stdout"))
            if stderr is not None:
                stderr = self._translate_newlines(stderr, *self._codec_of(self._stderr_f, "stderr"))
        return stdout, stderr

    def _codec_of(self, state: Any, name: str) -> tuple[str, str]:
        """(encoding, errors) of a pipe's file object, as communicate() asks it for them: the TextIOWrapper's own
        (a binary file object has none: AttributeError, as with the standard library)."""
        if (state is _LAZY or state is _LAZY_CLOSED) and self._text_codec is not None:
            return self._text_codec
        f = getattr(self, name)
        return f.encoding, f.errors



# The documented-private hooks that subclasses override and tests patch.  A shortcut that does a hook's work (the
# default-options start does _get_handles' and _execute_child's, run()'s capture does communicate's and wait's)
# is taken only while the class still has the hooks defined here: an override or a patch is called, as the
# standard library calls it.
_GET_HANDLES = Popen._get_handles
_EXECUTE_CHILD = Popen._execute_child
_COMMUNICATE = Popen.communicate
_PRIVATE_COMMUNICATE = Popen._communicate
_WAIT = Popen.wait
_PRIVATE_WAIT = Popen._wait


def _plain_capture(cls: Any) -> bool:
    """Whether run() may capture through Popen._capture_all on a cls instance: cls has communicate, _communicate,
    wait and _wait as defined here (run() may be handed any class through a patched Popen)."""
    try:
        return (cls.communicate is _COMMUNICATE and cls._communicate is _PRIVATE_COMMUNICATE
                and cls.wait is _WAIT and cls._wait is _PRIVATE_WAIT)
    except AttributeError:
        return False


_closed_stdin_ignored: list[bool] = []
_STD_POPEN: Any = _std.Popen  # the standard library's own (install() may have put this module's there since)


def _std_ignores_closed_stdin() -> bool:
    """Whether this standard library's communicate() ignores a .stdin the caller closed (CPython gh-74389, in
    3.13 and later patch releases) instead of raising "flush of closed file": asked of its own code, once."""
    if not _closed_stdin_ignored:
        import inspect

        try:
            source = inspect.getsource(_STD_POPEN._communicate)
        except (OSError, TypeError):  # no source: by version (the fix reached 3.13 in a patch release)
            ignored = sys.version_info >= (3, 14)
        else:
            ignored = "except ValueError" in source
        _closed_stdin_ignored.append(ignored)
    return _closed_stdin_ignored[0]


# ---- the convenience functions (the standard library's, on this Popen) -------------------------------------


def call(*popenargs: Any, timeout: float | None = None, **kwargs: Any) -> int:
    """Runs the command, waits for it (at most timeout seconds) and returns its returncode."""
    with Popen(*popenargs, **kwargs) as p:
        try:
            return p.wait(timeout=timeout)
        except BaseException:  # including KeyboardInterrupt: wait handled that
            p.kill()
            raise


def check_call(*popenargs: Any, **kwargs: Any) -> int:
    """Runs the command and waits for it; returns 0, or raises CalledProcessError for a nonzero returncode."""
    retcode = call(*popenargs, **kwargs)
    if retcode:
        cmd = kwargs.get("args")
        if cmd is None:
            cmd = popenargs[0]
        raise CalledProcessError(retcode, cmd)
    return 0


def check_output(*popenargs: Any, timeout: float | None = None, **kwargs: Any) -> Any:
    """Runs the command and returns its stdout (str in text mode); CalledProcessError for a nonzero exit.

    stdout and check are not allowed (used internally); stderr=STDOUT captures stderr too; input= feeds stdin.
    """
    for kw in ("stdout", "check"):
        if kw in kwargs:
            raise ValueError(f"{kw} argument not allowed, it will be overridden.")
    if "input" in kwargs and kwargs["input"] is None:
        # input=None used to mean an empty input: kept for compatibility, as subprocess does.
        if kwargs.get("universal_newlines") or kwargs.get("text") or kwargs.get("encoding") \
                or kwargs.get("errors"):
            kwargs["input"] = ""
        else:
            kwargs["input"] = b""
    return run(*popenargs, stdout=PIPE, timeout=timeout, check=True, **kwargs).stdout


def run(*popenargs: Any, input: Any = None, capture_output: bool = False, timeout: float | None = None,
        check: bool = False, **kwargs: Any) -> CompletedProcess[Any]:
    """Runs the command, waits for it and returns a CompletedProcess(args, returncode, stdout, stderr).

    capture_output=True captures stdout and stderr; input= feeds stdin; timeout kills the child and raises
    TimeoutExpired (with the output read so far); check=True raises CalledProcessError for a nonzero
    returncode. The other arguments are Popen's.
    """
    if input is not None:
        if kwargs.get("stdin") is not None:
            raise ValueError("stdin and input arguments may not both be used.")
        kwargs["stdin"] = PIPE
    if capture_output:
        if kwargs.get("stdout") is not None or kwargs.get("stderr") is not None:
            raise ValueError("stdout and stderr arguments may not be used with capture_output.")
        kwargs["stdout"] = PIPE
        kwargs["stderr"] = PIPE
    with Popen(*popenargs, **kwargs) as process:
        try:
            # The common run(args, capture_output=True) has a shorter way than communicate(), when it applies.
            captured = process._capture_all() if capture_output and input is None and timeout is None \
                and _plain_capture(type(process)) else None
            stdout, stderr = captured if captured is not None else process.communicate(input, timeout=timeout)
        except TimeoutExpired:
            process.kill()
            process.wait()  # communicate already put the output read so far into the exception
            raise
        except BaseException:  # including KeyboardInterrupt: communicate handled that
            process.kill()
            raise
        retcode = process.poll()
        assert retcode is not None
        if check and retcode:
            raise CalledProcessError(retcode, process.args, output=stdout, stderr=stderr)
    return CompletedProcess(process.args, retcode, stdout, stderr)


def getstatusoutput(cmd: Any, *, encoding: str | None = None, errors: str | None = None) -> tuple[int, str]:
    """(exitcode, output) of running cmd in a shell, stderr joined to stdout; without a trailing newline."""
    try:
        data = check_output(cmd, shell=True, text=True, stderr=STDOUT, encoding=encoding, errors=errors)
        exitcode = 0
    except CalledProcessError as ex:
        data = ex.output
        exitcode = ex.returncode
    if data[-1:] == "\n":
        data = data[:-1]
    return exitcode, data


def getoutput(cmd: Any, *, encoding: str | None = None, errors: str | None = None) -> str:
    """The output (stdout and stderr) of running cmd in a shell, without a trailing newline."""
    return getstatusoutput(cmd, encoding=encoding, errors=errors)[1]


if __name__ == "__main__":  # python -m pyproc.subprocess SCRIPT [ARGS] / -m MODULE [ARGS]
    from pyproc._subprocess_install import main

    sys.exit(main())
