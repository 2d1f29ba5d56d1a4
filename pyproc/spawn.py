"""spawn(): argument checking and conversion, engine choice.

Everything the child needs is checked and built here, in the parent, before any child exists: bad input raises
TypeError / ValueError / OSError and no process is started.  One C call (pyproc_spawn, GIL released) then does the
work; its errno becomes the right OSError subclass, naming the file and the step that failed.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, Union, cast

from ._lib import ffi, lib
from .errors import os_error
from .process import Process, abandoned, reap_abandoned

PIPE = -1
"""Connect this stream of the child to a new pipe; the Process gets the parent's end as .stdin/.stdout/.stderr."""
STDOUT = -2
"""stderr=STDOUT: the child's stderr goes where its stdout goes."""
DEVNULL = -3
"""Connect this stream of the child to os.devnull."""

ENGINES = ("auto", "clone", "vfork", "posix_spawn", "fork")
"""The ways to start a child.  "auto" (the default) picks the fastest that can express the request: "clone"."""

ENGINE_CODES = {
    # engine name -> the PYPROC_ENGINE_* code the C core takes
    "auto": lib.PYPROC_ENGINE_CLONE,
    "clone": lib.PYPROC_ENGINE_CLONE,
    "vfork": lib.PYPROC_ENGINE_VFORK,
    "posix_spawn": lib.PYPROC_ENGINE_POSIX_SPAWN,
    "fork": lib.PYPROC_ENGINE_FORK,
}

_STAGE_NAMES = {
    lib.PYPROC_STAGE_SIGNALS: "signal dispositions",
    lib.PYPROC_STAGE_SETSID: "setsid",
    lib.PYPROC_STAGE_SETPGID: "setpgid",
    lib.PYPROC_STAGE_PDEATHSIG: "prctl PR_SET_PDEATHSIG",
    lib.PYPROC_STAGE_NO_NEW_PRIVS: "prctl PR_SET_NO_NEW_PRIVS",
    lib.PYPROC_STAGE_CHDIR: "chdir",
    lib.PYPROC_STAGE_SETGROUPS: "setgroups",
    lib.PYPROC_STAGE_SETGID: "setgid",
    lib.PYPROC_STAGE_SETUID: "setuid",
    lib.PYPROC_STAGE_BEFORE_EXEC: "preexec_fn",
    lib.PYPROC_STAGE_SIGMASK: "sigprocmask",
    lib.PYPROC_STAGE_EXEC: "exec",
    lib.PYPROC_STAGE_POSIX_SPAWN: "posix_spawn",
}

_RLIM_INFINITY = (1 << 64) - 1
_MAX_SIGNAL = signal.NSIG - 1
_VALID_SIGNALS = frozenset(int(sig) for sig in signal.valid_signals())  # glibc keeps 32 and 33 for itself


class HasFileno(Protocol):
    """Anything with a fileno() method: a file object, a socket, ..."""

    def fileno(self) -> int: ...


StrOrBytesPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
FileSpec = Union[int, HasFileno, None]  # noqa: UP007 (a runtime alias on Python 3.10)


def _encode_arg(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, (str, os.PathLike)):
        data = os.fsencode(value)
    else:
        raise TypeError(f"{what} must be str, bytes or os.PathLike, not {type(value).__name__}")
    if b"\0" in data:
        raise ValueError(f"{what} contains a NUL byte: {value!r}")
    return data


_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


def _encode_argv(argv: Sequence[object]) -> list[bytes]:
    """argv as bytes; str and bytes take a fast path (this runs on every spawn), the rest _encode_arg's checks."""
    encoded: list[bytes] = []
    for arg in argv:
        kind = type(arg)
        if kind is str:
            data = arg.encode(_FS_ENCODING, _FS_ERRORS)  # type: ignore[attr-defined]
        elif kind is bytes:
            data = arg
        else:
            data = _encode_arg(arg, f"argv[{len(encoded)}]")
        if b"\0" in data:
            raise ValueError(f"argv[{len(encoded)}] contains a NUL byte: {arg!r}")
        encoded.append(data)
    return encoded


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, (bool, int)):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return bool(value)


def _check_signal(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a signal number, not {type(value).__name__}")
    if not 1 <= value <= _MAX_SIGNAL:
        raise ValueError(f"{name}: {value} is not a signal number (1..{_MAX_SIGNAL})")
    return int(value)


def _fd_of(value: object, name: str) -> int:
    """The open parent fd that value names (an int, or an object with fileno())."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an fd or an object with fileno(), not bool")
    if isinstance(value, int):
        fd = value
    elif hasattr(value, "fileno"):
        fd = value.fileno()
        if not isinstance(fd, int):
            raise TypeError(f"{name}.fileno() returned {type(fd).__name__}, not int")
    else:
        raise TypeError(f"{name} must be None, PIPE, DEVNULL, an fd or an object with fileno(), "
                        f"not {type(value).__name__}")
    if fd < 0:
        raise ValueError(f"{name}: {fd} is not a file descriptor")
    try:
        os.get_inheritable(fd)  # one fcntl(F_GETFD): is it open?
    except OSError as exc:
        raise OSError(exc.errno, f"{name}: fd {fd} is not open in the parent") from None
    return fd


def _exec_candidates(program: bytes, env: Mapping[Any, Any] | None) -> list[bytes]:
    """The files to try, in order, with execvp's PATH semantics (env's PATH when env is given)."""
    if b"/" in program:
        return [program]
    if not program:
        raise ValueError("the program name is empty")
    return [os.path.join(os.fsencode(directory), program) for directory in os.get_exec_path(env)]


def _encode_env(env: Mapping[Any, Any]) -> list[bytes]:
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping, not {type(env).__name__}")
    entries = []
    for key, value in env.items():
        bkey = _encode_arg(key, "env key")
        if not bkey or b"=" in bkey:
            raise ValueError(f"illegal environment variable name: {key!r}")
        entries.append(bkey + b"=" + _encode_arg(value, f"env[{key!r}]"))
    return entries


def _uint64_limit(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value == -1 or value == _RLIM_INFINITY:
        return _RLIM_INFINITY
    if not 0 <= value < _RLIM_INFINITY:
        raise ValueError(f"{name}: {value} is not a valid limit")
    return value


class _Stdio:
    """The parent-side work for stdin/stdout/stderr: pipes and /dev/null opened here, closed on failure."""

    def __init__(self) -> None:
        self.parent_ends: list[int | None] = [None, None, None]
        self.child_ends: list[int] = []
        self.devnull: int | None = None

    def source_for(self, child_fd: int, spec: object, name: str) -> int:
        """The parent fd that becomes the child's child_fd for a stdin/stdout/stderr argument (not None)."""
        if spec is PIPE or (isinstance(spec, int) and not isinstance(spec, bool) and spec == PIPE):
            read_end, write_end = os.pipe()
            child, parent = (read_end, write_end) if child_fd == 0 else (write_end, read_end)
            self.parent_ends[child_fd] = parent
            self.child_ends.append(child)
            return child
        if isinstance(spec, int) and not isinstance(spec, bool) and spec == DEVNULL:
            if self.devnull is None:
                self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                self.child_ends.append(self.devnull)
            return self.devnull
        if isinstance(spec, int) and not isinstance(spec, bool) and spec == STDOUT:
            raise ValueError(f"{name}=STDOUT is only valid for stderr")
        return _fd_of(spec, name)

    def close_all(self) -> None:
        for fd in self.child_ends + [fd for fd in self.parent_ends if fd is not None]:
            os.close(fd)
        self.child_ends = []
        self.parent_ends = [None, None, None]


class Request:
    """A checked spawn request: the C structure and every buffer it points to (kept alive together).

    Built by prepare(); used by spawn() and by pyproc.subprocess, which adds what only it needs (ids,
    preexec_fn) before starting it.
    """

    __slots__ = ("_keepalive", "args", "c", "engine", "program", "stdio")

    def __init__(self, c: Any, args: Any, program: bytes, engine: str, stdio: _Stdio, keepalive: list[Any]) -> None:
        self.c = c
        self.args = args
        self.program = program
        self.engine = engine
        self.stdio = stdio
        self._keepalive = keepalive

    def keep(self, cdata: Any) -> Any:
        """Keeps cdata alive as long as this request (for buffers a caller adds to the structure)."""
        self._keepalive.append(cdata)
        return cdata


_KEEP_STDIO = ffi.new("int[]", [0, 1, 2])
_NO_STDIO = _Stdio()  # shared by requests that open nothing: its lists stay empty
_CHILD_PTR = ffi.typeof("struct pyproc_child *")
_ENDS_ARRAY = ffi.typeof("int[3]")
_DEFAULT_REQUEST = ffi.new("struct pyproc_spawn_request *")
_DEFAULT_REQUEST.close_fds = 1
_DEFAULT_REQUEST.restore_signals = 1
_DEFAULT_REQUEST.process_group = -1
_DEFAULT_REQUEST.umask = -1
_DEFAULT_REQUEST.n_exec_paths = 1
_DEFAULT_REQUEST.keep_fds = _KEEP_STDIO
_DEFAULT_REQUEST.n_keep_fds = 3


def _prepare(
    argv: Sequence[StrOrBytesPath],
    engine: str,
    executable: StrOrBytesPath | None,
    stdin: FileSpec,
    stdout: FileSpec,
    stderr: FileSpec,
    fds: Mapping[int, int | HasFileno] | None,
    pass_fds: Iterable[int],
    close_fds: bool,
    cwd: StrOrBytesPath | None,
    env: Mapping[Any, Any] | None,
    new_session: bool,
    process_group: int | None,
    umask: int | None,
    rlimits: Mapping[int, int | tuple[int, int]] | None,
    pdeathsig: int | None,
    no_new_privs: bool,
    restore_signals: bool,
    sigmask: Iterable[int] | None,
) -> Request:
    # Positional on purpose: forwarding 19 keyword arguments costs more than a microsecond, on every spawn.
    if engine not in ENGINE_CODES:
        if not isinstance(engine, str):
            raise TypeError(f"engine must be a str, not {type(engine).__name__}")
        raise ValueError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if type(argv) not in (list, tuple) and (isinstance(argv, (str, bytes, os.PathLike)) or
                                            not isinstance(argv, Sequence)):
        raise TypeError(f"argv must be a sequence (list or tuple) of arguments, not {type(argv).__name__}")
    if not argv:
        raise ValueError("argv is empty: it needs at least the program")
    bargs = _encode_argv(argv)
    program = bargs[0] if executable is None else _encode_arg(executable, "executable")
    keepalive: list[Any] = []
    req = ffi.new("struct pyproc_spawn_request *", _DEFAULT_REQUEST[0])
    c_args = [ffi.new("char[]", arg) for arg in bargs]
    keepalive.append(c_args)
    req.argv = keepalive_new(keepalive, "char *[]", [*c_args, ffi.NULL])
    direct = executable is None and b"/" in program
    if direct:
        req.exec_paths = req.argv  # argv[0] is the one file to run: no second array (n_exec_paths is 1)
    # A direct path with every option at its default is the common case: one test skips all their checks.
    if not (direct and env is None and cwd is None and close_fds is True and new_session is False
            and process_group is None and umask is None and not rlimits and not pdeathsig and no_new_privs is False
            and restore_signals is True and sigmask is None and engine != "posix_spawn"):
        _set_options(req, keepalive, engine, executable, program, close_fds, cwd, env, new_session, process_group,
                     umask, rlimits, pdeathsig, no_new_privs, restore_signals, sigmask)
    if stdin is None and stdout is None and stderr is None and not fds and not pass_fds:
        stdio = _NO_STDIO  # keep_fds: the template's 0, 1, 2
    else:
        stdio = _Stdio()
        try:
            _set_fd_plan(req, stdio, stdin, stdout, stderr, fds, pass_fds, keepalive)
        except BaseException:
            stdio.close_all()
            raise
    return Request(req, argv, program, engine, stdio, keepalive)


def _set_options(
    req: Any,
    keepalive: list[Any],
    engine: str,
    executable: StrOrBytesPath | None,
    program: bytes,
    close_fds: bool,
    cwd: StrOrBytesPath | None,
    env: Mapping[Any, Any] | None,
    new_session: bool,
    process_group: int | None,
    umask: int | None,
    rlimits: Mapping[int, int | tuple[int, int]] | None,
    pdeathsig: int | None,
    no_new_privs: bool,
    restore_signals: bool,
    sigmask: Iterable[int] | None,
) -> None:
    """Checks the options that differ from the request template's defaults and sets them (and the PATH search)."""
    if env is not None and not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping, not {type(env).__name__}")
    if executable is not None or b"/" not in program:
        candidates = _exec_candidates(program, env)
        c_paths = [ffi.new("char[]", path) for path in candidates]
        keepalive.append(c_paths)
        req.exec_paths = keepalive_new(keepalive, "char *[]", c_paths)
        req.n_exec_paths = len(candidates)
    if env is not None:
        c_env = [ffi.new("char[]", entry) for entry in _encode_env(env)]
        keepalive.append(c_env)
        req.envp = keepalive_new(keepalive, "char *[]", [*c_env, ffi.NULL])
    if cwd is not None:
        req.cwd = keepalive_new(keepalive, "char[]", _encode_arg(cwd, "cwd"))
    if close_fds is not True:
        req.close_fds = _check_bool(close_fds, "close_fds")
    if new_session is not False:
        req.new_session = _check_bool(new_session, "new_session")
    if no_new_privs is not False:
        req.no_new_privs = _check_bool(no_new_privs, "no_new_privs")
    if restore_signals is not True:
        req.restore_signals = _check_bool(restore_signals, "restore_signals")
    if process_group is not None:
        if isinstance(process_group, bool) or not isinstance(process_group, int):
            raise TypeError(f"process_group must be an int, not {type(process_group).__name__}")
        if process_group < 0:
            raise ValueError(f"process_group must be >= 0 (0: a new group led by the child), not {process_group}")
        if new_session:
            raise ValueError("new_session and process_group conflict: a session leader cannot change its group")
        req.process_group = process_group
    if umask is not None:
        if isinstance(umask, bool) or not isinstance(umask, int):
            raise TypeError(f"umask must be an int, not {type(umask).__name__}")
        if not 0 <= umask <= 0o777:
            raise ValueError(f"umask must be between 0 and 0o777, not {umask:#o}")
        req.umask = umask
    if rlimits:
        _set_rlimits(req, rlimits, keepalive)
    if pdeathsig:
        req.pdeathsig = _check_signal(pdeathsig, "pdeathsig")
    if sigmask is not None:
        if isinstance(sigmask, (str, bytes)) or not isinstance(sigmask, Iterable):
            raise TypeError(f"sigmask must be an iterable of signal numbers, not {type(sigmask).__name__}")
        signals = [_check_signal(sig, "sigmask") for sig in sigmask]
        reserved = sorted(set(signals) - _VALID_SIGNALS)
        if reserved:
            raise ValueError(f"sigmask: signals {reserved} are reserved by the C library (not blockable)")
        req.set_sigmask = 1
        req.sigmask_signals = keepalive_new(keepalive, "int[]", signals)
        req.n_sigmask_signals = len(signals)
    if engine == "posix_spawn":
        refused = [name for name, given in (("umask", umask is not None), ("rlimits", bool(rlimits)),
                                            ("pdeathsig", bool(pdeathsig)), ("no_new_privs", bool(no_new_privs)))
                   if given]
        if refused:
            raise ValueError(f"engine='posix_spawn' cannot express {', '.join(refused)}: use engine='auto'")
        _check_posix_spawn_features(cwd is not None, close_fds)


# What the posix_spawn engine needs from the C library beyond the glibc the wheels are built for (2.17).
_POSIX_SPAWN_FEATURES = (
    (lib.PYPROC_POSIX_SPAWN_CHDIR, "cwd", "posix_spawn_file_actions_addchdir_np", "2.29"),
    (lib.PYPROC_POSIX_SPAWN_CLOSEFROM, "close_fds=True", "posix_spawn_file_actions_addclosefrom_np", "2.34"),
)


def _check_posix_spawn_features(cwd: bool, close_fds: bool) -> None:
    """Refuses (ValueError) a posix_spawn request (with a cwd, with close_fds) that the running C library's
    posix_spawn cannot express."""
    features = lib.pyproc_posix_spawn_features()
    for given, (bit, option, function, since) in zip((cwd, close_fds), _POSIX_SPAWN_FEATURES, strict=True):
        if given and not features & bit:
            raise ValueError(f"engine='posix_spawn' cannot express {option} here: this C library ({_libc_name()}) "
                             f"has no {function} (glibc {since} and later have it): use engine='auto'")


def _libc_name() -> str:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or "not glibc"
    except (ValueError, OSError):
        return "not glibc"


def keepalive_new(keepalive: list[Any], cdecl: str, init: Any) -> Any:
    """ffi.new(cdecl, init), kept alive in keepalive (a structure field does not own what it points to)."""
    cdata = ffi.new(cdecl, init)
    keepalive.append(cdata)
    return cdata


def _set_rlimits(req: Any, rlimits: Mapping[int, int | tuple[int, int]], keepalive: list[Any]) -> None:
    if not isinstance(rlimits, Mapping):
        raise TypeError(f"rlimits must be a mapping {{resource: (soft, hard)}}, not {type(rlimits).__name__}")
    entries = []
    for resource, limit in rlimits.items():
        if isinstance(resource, bool) or not isinstance(resource, int) or resource < 0:
            raise ValueError(f"rlimits: {resource!r} is not a resource (use the resource module's RLIMIT_*)")
        soft, hard = limit if isinstance(limit, tuple) else (limit, limit)
        soft = _uint64_limit(soft, f"rlimits[{resource}] soft")
        hard = _uint64_limit(hard, f"rlimits[{resource}] hard")
        if soft > hard:
            raise ValueError(f"rlimits[{resource}]: the soft limit {soft} is above the hard limit {hard}")
        entries.append((resource, soft, hard))
    req.rlimits = keepalive_new(keepalive, "struct pyproc_rlimit[]", entries)
    req.n_rlimits = len(entries)


def _set_fd_plan(
    req: Any,
    stdio: _Stdio,
    stdin: FileSpec,
    stdout: FileSpec,
    stderr: FileSpec,
    fds: Mapping[int, int | HasFileno] | None,
    pass_fds: Iterable[int],
    keepalive: list[Any],
) -> None:
    plan: dict[int, int] = {}
    if fds:
        if not isinstance(fds, Mapping):
            raise TypeError(f"fds must be a mapping {{child_fd: parent_fd}}, not {type(fds).__name__}")
        for target, given in fds.items():
            if isinstance(target, bool) or not isinstance(target, int):
                raise TypeError(f"fds: child fd {target!r} is not an int")
            if target < 0:
                raise ValueError(f"fds: child fd {target} is negative")
            plan[target] = _fd_of(given, f"fds[{target}]")
    for target, spec, name in ((0, stdin, "stdin"), (1, stdout, "stdout")):
        if spec is not None:
            if target in plan:
                raise ValueError(f"{name} and fds[{target}] both say what the child's fd {target} is")
            plan[target] = stdio.source_for(target, spec, name)
    if stderr is not None:
        if 2 in plan:
            raise ValueError("stderr and fds[2] both say what the child's fd 2 is")
        if isinstance(stderr, int) and not isinstance(stderr, bool) and stderr == STDOUT:
            plan[2] = plan.get(1, 1)
        else:
            plan[2] = stdio.source_for(2, stderr, "stderr")
    if pass_fds:
        for fd in pass_fds:
            fd = _fd_of(fd, "pass_fds")
            if fd in plan and plan[fd] != fd:
                raise ValueError(f"pass_fds: fd {fd} is also a target of the fd plan (fds/stdin/stdout/stderr)")
            plan[fd] = fd
    if not plan:
        req.keep_fds = _KEEP_STDIO
        req.n_keep_fds = 3
        return
    actions = [(target, source, source in plan and source != target) for target, source in plan.items()]
    req.fd_actions = keepalive_new(keepalive, "struct pyproc_fd_action[]", actions)
    req.n_fd_actions = len(actions)
    keep = sorted({0, 1, 2, *plan})
    req.keep_fds = keepalive_new(keepalive, "int[]", keep)
    req.n_keep_fds = len(keep)


def failure_message(request: Request, stage: int, index: int) -> tuple[str, object]:
    """(where, filename) for a failed spawn: the step that failed, and the file it concerned."""
    req = request.c
    if stage == lib.PYPROC_STAGE_PARENT:
        return "in the parent, starting the child", None
    if stage == lib.PYPROC_STAGE_DUP2:
        if 0 <= index < req.n_fd_actions:
            action = req.fd_actions[index]
            if action.source == action.target:
                return f"in the child, keeping fd {action.target}", None
            return f"in the child, dup2 {action.source}->{action.target}", None
        return "in the child, moving the error pipe", None
    if stage == lib.PYPROC_STAGE_RLIMIT and 0 <= index < req.n_rlimits:
        return f"in the child, setrlimit {req.rlimits[index].resource}", None
    if stage == lib.PYPROC_STAGE_CHDIR:
        return "in the child, chdir", os.fsdecode(ffi.string(req.cwd))
    if stage == lib.PYPROC_STAGE_POSIX_SPAWN and req.cwd != ffi.NULL:
        # glibc does not say which step failed; a cwd that is not a directory is the likely one, so name it.
        cwd = os.fsdecode(ffi.string(req.cwd))
        if not os.path.isdir(cwd):
            return "in the child, posix_spawn: chdir", cwd
    if stage in (lib.PYPROC_STAGE_EXEC, lib.PYPROC_STAGE_POSIX_SPAWN):
        program = request.program
        if b"/" in program and 0 <= index < req.n_exec_paths:
            program = ffi.string(req.exec_paths[index])
        return f"in the child, {_STAGE_NAMES[stage]}", os.fsdecode(program)
    return f"in the child, {_STAGE_NAMES.get(stage, f'step {stage}')}", None


def start(request: Request) -> Process:
    """Starts a prepared request (the GIL is released during the spawn) and returns its Process."""
    if abandoned:
        reap_abandoned()
    child = ffi.new("struct pyproc_child *")
    stdio = request.stdio
    try:
        err = lib.pyproc_spawn_child(request.c, ffi.NULL, 0, 0, ENGINE_CODES[request.engine], child)
        if err:
            where, filename = failure_message(request, child.spawn.fail_stage, child.spawn.fail_index)
            raise os_error(err, filename, where)
    except BaseException:
        stdio.close_all()
        raise
    res = child.spawn
    pidfd = res.pidfd
    # Positional arguments only: a keyword argument sends the class call down CPython's slow path (~0.5 us).
    if not stdio.child_ends:
        return Process(res.pid, pidfd if pidfd >= 0 else None, request.args, None, None, None, child)
    for fd in stdio.child_ends:
        os.close(fd)
    stdio.child_ends = []
    ends = stdio.parent_ends
    return Process(
        res.pid,
        pidfd if pidfd >= 0 else None,
        request.args,
        None if ends[0] is None else open(ends[0], "wb"),
        None if ends[1] is None else open(ends[1], "rb"),
        None if ends[2] is None else open(ends[2], "rb"),
        child,
    )


def _pack_argv(argv: Sequence[Any], listed: bool = False) -> bytes | None:
    """argv as the packed bytes the C side splits (NUL-separated: pyproc_spawn_child, pyproc_spawn_piped), when
    every item is a str, none holds a NUL and the program is not empty; with listed, also only when argv is a list
    or a tuple (the direct paths of spawn() and run() check nothing else about it).

    None for anything else (bytes or os.PathLike items, a NUL, an empty argv): the general conversion then checks
    and converts it, and reports what is wrong.
    """
    if listed and type(argv) is not list and type(argv) is not tuple:
        return None
    try:
        joined = "\0".join(argv)
    except TypeError:
        return None
    if not argv or not argv[0] or joined.count("\0") != len(argv) - 1:
        return None
    try:
        return joined.encode(_FS_ENCODING, _FS_ERRORS)  # os.fsencode's conversion
    except UnicodeEncodeError:
        return None


def _direct_failure(argv: Sequence[StrOrBytesPath], engine: str, err: int, res: Any) -> OSError:
    """The exception for a failed direct spawn, named by the general request for the same argv (a rare path)."""
    request = _prepare(argv, engine, None, None, None, None, None, (), True, None, None, False, None, None, None,
                       None, False, True, None)
    where, filename = failure_message(request, res.fail_stage, res.fail_index)
    return os_error(err, filename, where)


_GROUP_REQUEST = ffi.new("struct pyproc_spawn_request *", _DEFAULT_REQUEST[0])
_GROUP_REQUEST.process_group = 0
_REQUEST_PTR = ffi.typeof("struct pyproc_spawn_request *")


def request_with_path(template: Any, program: bytes, env: Mapping[Any, Any] | None) -> tuple[Any, Any, list[Any]]:
    """A copy of the request template (a struct pyproc_spawn_request *) whose exec_paths are the PATH candidates
    for program, a name without a slash (env's PATH, else this process's), with what it points to: the caller
    holds the tuple while the request is in use."""
    c_paths = [ffi.new("char[]", path) for path in _exec_candidates(program, env)]
    array = ffi.new("char *[]", c_paths)
    req = ffi.new(_REQUEST_PTR, template[0])
    req.exec_paths = array
    req.n_exec_paths = len(c_paths)
    return req, array, c_paths


_NAMED_REQUESTS_MAX = 256
_named_requests: dict[tuple[bytes, str | None, bool], tuple[Any, Any, list[Any]]] = {}


def named_request(program: bytes, new_group: bool = False) -> tuple[Any, Any, list[Any]]:
    """request_with_path of the default request (process_group 0 with new_group) for program, kept per program,
    PATH value and group: the direct paths of spawn(), run() and pyproc.subprocess take a name without a slash
    without the general conversion, and without redoing its candidates' joins and allocations on every call (the
    C side only reads them).  The caller holds the tuple until its spawn returned (another thread may clear the
    cache)."""
    key = (program, os.environ.get("PATH"), new_group)
    entry = _named_requests.get(key)
    if entry is None:
        entry = request_with_path(_GROUP_REQUEST if new_group else _DEFAULT_REQUEST, program, None)
        if len(_named_requests) >= _NAMED_REQUESTS_MAX:
            _named_requests.clear()
        _named_requests[key] = entry
    return entry
_STDIO_TARGETS = ((lib.PYPROC_PIPE_STDIN, 0), (lib.PYPROC_PIPE_STDOUT, 1), (lib.PYPROC_PIPE_STDERR, 2),
                  (lib.PYPROC_STDERR_TO_STDOUT, 2))


def piped_failure(argv: Sequence[StrOrBytesPath], request: Request | None, engine: str, pipes: int, err: int,
                  res: Any) -> OSError:
    """The exception for a failed pyproc_spawn_piped (res: its struct pyproc_spawn_result): a pipe's dup2 (the
    steps after the request's own fd actions), or any other step, named by the request (None: the default one for
    argv)."""
    own = 0 if request is None else request.c.n_fd_actions
    if res.fail_stage == lib.PYPROC_STAGE_DUP2 and res.fail_index >= own:
        targets = [target for flag, target in _STDIO_TARGETS if pipes & flag]
        index = res.fail_index - own
        target = targets[index] if index < len(targets) else "?"
        return os_error(err, None, f"in the child, dup2 of a pipe to fd {target}")
    if request is None:
        return _direct_failure(argv, engine, err, res)
    where, filename = failure_message(request, res.fail_stage, res.fail_index)
    return os_error(err, filename, where)


def _start_piped(argv: Sequence[StrOrBytesPath], packed: bytes, pipes: int,
                 new_group: bool) -> tuple[Process, list[int | None]]:
    """run()'s common case: default options (new_group: process_group=0), argv packed by _pack_argv(argv, True),
    new pipes for the standard fds in pipes (PYPROC_PIPE_* | PYPROC_STDERR_TO_STDOUT), made by the C side with the
    spawn.

    Returns the Process (no file objects) and the parent's pipe ends by child fd.
    """
    if abandoned:
        reap_abandoned()
    # A program named without a slash: the request with its PATH candidates (held until the spawn returned).
    named = None if "/" in cast(str, argv[0]) else named_request(packed.partition(b"\0")[0], new_group)
    child = ffi.new(_CHILD_PTR)
    ends = ffi.new(_ENDS_ARRAY)
    request = named[0] if named is not None else _GROUP_REQUEST if new_group else _DEFAULT_REQUEST
    err = lib.pyproc_spawn_piped(request, packed, len(packed), len(argv), lib.PYPROC_ENGINE_CLONE, pipes, child,
                                 ends)
    res = child.spawn
    if err:
        raise piped_failure(argv, None, "auto", pipes, err, res)
    pidfd = res.pidfd
    proc = Process(res.pid, pidfd if pidfd >= 0 else None, argv, None, None, None, child)  # positional: see start()
    return proc, [None if fd < 0 else fd for fd in ends]


def prepare(
    argv: Sequence[StrOrBytesPath],
    *,
    engine: str = "auto",
    executable: StrOrBytesPath | None = None,
    stdin: FileSpec = None,
    stdout: FileSpec = None,
    stderr: FileSpec = None,
    fds: Mapping[int, int | HasFileno] | None = None,
    pass_fds: Iterable[int] = (),
    close_fds: bool = True,
    cwd: StrOrBytesPath | None = None,
    env: Mapping[Any, Any] | None = None,
    new_session: bool = False,
    process_group: int | None = None,
    umask: int | None = None,
    rlimits: Mapping[int, int | tuple[int, int]] | None = None,
    pdeathsig: int | None = None,
    no_new_privs: bool = False,
    restore_signals: bool = True,
    sigmask: Iterable[int] | None = None,
) -> Request:
    """Checks and converts spawn()'s arguments (see spawn()) into a Request to start(); opens the pipes it asks for.

    For callers that add to the C request before starting it (pyproc.subprocess); others call spawn().
    """
    return _prepare(
        argv, engine, executable, stdin, stdout, stderr, fds, pass_fds, close_fds, cwd, env, new_session,
        process_group, umask, rlimits, pdeathsig, no_new_privs, restore_signals, sigmask,
    )


def spawn(
    argv: Sequence[StrOrBytesPath],
    *,
    engine: str = "auto",
    executable: StrOrBytesPath | None = None,
    stdin: FileSpec = None,
    stdout: FileSpec = None,
    stderr: FileSpec = None,
    fds: Mapping[int, int | HasFileno] | None = None,
    pass_fds: Iterable[int] = (),
    close_fds: bool = True,
    cwd: StrOrBytesPath | None = None,
    env: Mapping[Any, Any] | None = None,
    new_session: bool = False,
    process_group: int | None = None,
    umask: int | None = None,
    rlimits: Mapping[int, int | tuple[int, int]] | None = None,
    pdeathsig: int | None = None,
    no_new_privs: bool = False,
    restore_signals: bool = True,
    sigmask: Iterable[int] | None = None,
) -> Process:
    """Starts argv as a new process and returns its Process (the caller waits for it).

    argv: the program and its arguments (str, bytes or os.PathLike).  Without a slash in argv[0] (or in
    `executable`, the file to run when it differs from argv[0]) PATH is searched with execvp's rules, using env's
    PATH when env is given.

    stdin / stdout / stderr: None inherits the parent's; PIPE makes a pipe (the Process gets .stdin / .stdout /
    .stderr as binary files); DEVNULL; an fd or an object with fileno().  stderr=STDOUT joins stderr to stdout
    (the child's fd 2 becomes a copy of its fd 1: with the parent's fd 1 closed and stdin=PIPE, the stdin pipe's
    read end takes fd 1, so stderr is the child's own stdin and its fd 1 is closed, as with subprocess).
    fds={child_fd: parent_fd_or_file} sets any fd of the child (swaps and cycles are fine); pass_fds keeps parent
    fds under their own numbers.  close_fds (default True): no other fd of the parent reaches the child.

    cwd, env (a mapping: the child's whole environment; None inherits), new_session (setsid), process_group
    (0: a new group led by the child; n: join group n), umask, rlimits ({resource.RLIMIT_X: (soft, hard)}, -1 for
    infinity), pdeathsig (a signal the child gets when the parent thread that spawned it exits), no_new_privs,
    restore_signals (SIGPIPE and SIGXFSZ back to their defaults; default True), sigmask (the signals blocked in the
    child; None: the parent's mask).  Handlers the parent installed are always reset to SIG_DFL in the child.

    engine: "auto" (default, the fastest able to express the request), "clone", "vfork", "posix_spawn" (raises
    ValueError for umask, rlimits, pdeathsig, no_new_privs, and for cwd / close_fds=True on a glibc older than
    2.29 / 2.34; glibc leaves its two internal signals, 32 and 33, ignored in the new program and does not say which
    step failed) or "fork".

    Raises TypeError / ValueError for bad arguments before any child exists, and OSError subclasses
    (FileNotFoundError, PermissionError, ...) with errno, filename and the failing step when the child cannot
    start; a child that failed has already been reaped.  With SIGCHLD ignored, a child that ran its program is never
    an error, even one the kernel reaped before spawn() returned (see Process for what waiting gives then).
    """
    # Every option at its default, argv a list of str: the common case, one packed argv and the shared default
    # request (or, for a program named without a slash, the one kept with its PATH candidates).
    if (executable is None and stdin is None and stdout is None and stderr is None and fds is None
            and type(pass_fds) is tuple and not pass_fds and close_fds is True and cwd is None and env is None
            and new_session is False and process_group is None and umask is None and rlimits is None
            and pdeathsig is None and no_new_privs is False and restore_signals is True and sigmask is None
            and engine in ENGINE_CODES):
        packed = _pack_argv(argv, True)
        if packed is not None:
            if abandoned:
                reap_abandoned()
            # (argv[0] is a str: _pack_argv packed it)  The named request is held until the spawn returned.
            named = None if "/" in cast(str, argv[0]) else named_request(packed.partition(b"\0")[0])
            child = ffi.new(_CHILD_PTR)
            err = lib.pyproc_spawn_child(_DEFAULT_REQUEST if named is None else named[0], packed, len(packed),
                                         len(argv), ENGINE_CODES[engine], child)
            res = child.spawn
            if err:
                raise _direct_failure(argv, engine, err, res)
            pidfd = res.pidfd
            return Process(res.pid, pidfd if pidfd >= 0 else None, argv, None, None, None, child)  # see start()
    return start(_prepare(
        argv, engine, executable, stdin, stdout, stderr, fds, pass_fds, close_fds, cwd, env, new_session,
        process_group, umask, rlimits, pdeathsig, no_new_privs, restore_signals, sigmask,
    ))


__all__ = ["DEVNULL", "ENGINES", "PIPE", "STDOUT", "FileSpec", "HasFileno", "Request", "prepare", "spawn", "start"]
