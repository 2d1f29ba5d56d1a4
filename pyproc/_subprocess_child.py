"""How pyproc.subprocess.Popen's child is started and its failures named: argv / path conversion with the
standard library's checks, the PATH candidates (kept per program and PATH), the ids, the preexec_fn hook, and
the exception the standard library raises for a child that failed at a given stage.
"""

from __future__ import annotations

import errno
import os
import subprocess as _std
import sys
from collections.abc import Mapping
from subprocess import SubprocessError
from typing import Any

from ._lib import ffi, lib
from .process import Process
from .spawn import _DEFAULT_REQUEST

_ffi: Any = ffi  # the stub leaves out callback / new_handle / from_handle
_PREEXEC_FAILED = errno.ECANCELED  # what the before_exec hook returns when preexec_fn raised
# Stages of the child at or after the point where the standard library calls preexec_fn: their errors name the
# executable; earlier ones are its "noexec" reports (see _Naming).
_EXEC_STAGES = frozenset({lib.PYPROC_STAGE_BEFORE_EXEC, lib.PYPROC_STAGE_SIGMASK, lib.PYPROC_STAGE_EXEC,
                          lib.PYPROC_STAGE_POSIX_SPAWN})


def _call_preexec(arg: Any) -> int:
    """The C core's before_exec hook, run in the forked child: calls preexec_fn, 0 if it returned."""
    try:
        _ffi.from_handle(arg)()
    except BaseException:  # as subprocess: any exception, reported to the parent without its text
        return _PREEXEC_FAILED
    return 0


_BEFORE_EXEC = _ffi.callback("int(void *)", _call_preexec, error=_PREEXEC_FAILED)


class _Child(Process):
    """pyproc's Process for a Popen's child: Popen itself warns about and hands over a child still running."""

    def __del__(self, _warn: Any = None) -> None:
        pass


_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


def _fsencode_checked(value: Any) -> bytes:
    kind = type(value)
    data: bytes
    if kind is str:
        data = value.encode(_FS_ENCODING, _FS_ERRORS)  # os.fsencode's own conversion
    elif kind is bytes:
        data = value
    else:
        data = os.fsencode(value)
    if b"\0" in data:
        raise ValueError("embedded null byte")
    return data


def _check_open(fd: int, filename: Any) -> None:
    """An fd the child should dup must be open: EBADF as the standard library's child would report it."""
    try:
        os.get_inheritable(fd)
    except OSError as exc:
        err = exc.errno or errno.EBADF
        raise OSError(err, os.strerror(err), filename) from None
    except OverflowError:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF), filename) from None


class _Naming:
    """The filename the standard library puts in the OSError of a child that failed, by where it failed.

    It depends on the way the standard library would have started this child: os.posix_spawn (its conditions
    below: every error names the executable, as a path string) or _posixsubprocess (exec errors name the
    executable as given; earlier steps name cwd, and from 3.13 only chdir does, the others name nothing).
    """

    __slots__ = ("chdir", "exec", "noexec", "posix_spawn")

    def __init__(self, executable: Any, cwd: Any, posix_spawn: bool) -> None:
        self.posix_spawn = posix_spawn
        if posix_spawn:
            self.exec = self.chdir = self.noexec = os.fspath(executable)
        else:
            self.exec = executable
            self.chdir = cwd
            self.noexec = None if _NOEXEC_NAMES_NOTHING else cwd


def _naming(executable: Any, cwd: Any, preexec_fn: Any, close_fds: Any, pass_fds: Any, p2cread: int,
            c2pwrite: int, errwrite: int, start_new_session: Any, process_group: int, gid: int | None,
            gids: list[int] | None, uid: int | None, umask: int) -> _Naming:
    """Which way the standard library would start this child (that decides what its errors name)."""
    return _Naming(executable, cwd, _STD_USES_POSIX_SPAWN
                   and bool(os.path.dirname(executable))
                   and preexec_fn is None
                   and (not close_fds or _STD_POSIX_SPAWN_CLOSES_FDS)
                   and not pass_fds
                   and cwd is None
                   and (p2cread == -1 or p2cread > 2)
                   and (c2pwrite == -1 or c2pwrite > 2)
                   and (errwrite == -1 or errwrite > 2)
                   and not start_new_session
                   and process_group == -1
                   and gid is None
                   and gids is None
                   and uid is None
                   and umask < 0)


_NOEXEC_NAMES_NOTHING = sys.version_info >= (3, 13)
_FLAGS_ARE_INTS = sys.version_info < (3, 12)
_STD_USES_POSIX_SPAWN = bool(getattr(_std, "_USE_POSIX_SPAWN", False))
_STD_POSIX_SPAWN_CLOSES_FDS = bool(getattr(_std, "_HAVE_POSIX_SPAWN_CLOSEFROM", False))


_PIPE_STDIN = lib.PYPROC_PIPE_STDIN
_PIPE_STDOUT = lib.PYPROC_PIPE_STDOUT
_PIPE_STDERR = lib.PYPROC_PIPE_STDERR
_STDERR_TO_STDOUT = lib.PYPROC_STDERR_TO_STDOUT
_ENGINE_CLONE = lib.PYPROC_ENGINE_CLONE
_DIRECT = (_DEFAULT_REQUEST,)  # a program named by a path: the shared default request runs argv[0]
_exec_path_cache: dict[tuple[bytes, str | None], tuple[Any, int, list[Any]]] = {}


def _exec_paths(executable: bytes, env: Mapping[Any, Any] | None) -> tuple[Any, int, list[Any]]:
    """The files to try, as a C array, with the standard library's rules (os._execvpe's PATH search):
    (array, count, the strings it points to: the caller keeps them alive with the request).

    Without env, the PATH search for a program is kept (keyed by PATH's value), so that a spawn does not redo a
    dozen joins and allocations: the C side only reads these.
    """
    if b"\0" in executable:
        raise ValueError("embedded null byte")
    key = None
    if env is None:
        key = (executable, os.environ.get("PATH"))
        cached = _exec_path_cache.get(key)
        if cached is not None:
            return cached
    if os.path.dirname(executable):
        strings = [ffi.new("char[]", executable)]
    else:
        strings = [ffi.new("char[]", os.path.join(os.fsencode(d), executable)) for d in os.get_exec_path(env)]
    found = ffi.new("char *[]", strings), len(strings), strings
    if key is not None:
        if len(_exec_path_cache) >= 256:
            _exec_path_cache.clear()
        _exec_path_cache[key] = found
    return found


def _child_error(stage: int, err: int, naming: _Naming) -> BaseException:
    """The exception the standard library raises for a child that failed at `stage` with errno `err`."""
    if stage == lib.PYPROC_STAGE_BEFORE_EXEC:
        return SubprocessError("Exception occurred in preexec_fn.")
    if stage == lib.PYPROC_STAGE_PARENT:
        return OSError(err, os.strerror(err))
    if stage in _EXEC_STAGES:
        filename = naming.exec
    elif stage == lib.PYPROC_STAGE_CHDIR:
        filename = naming.chdir
    else:
        filename = naming.noexec
    return OSError(err, os.strerror(err), filename)


_LONG_MAX = sys.maxsize  # C long (Linux: as wide as a pointer)
_ULONG_MAX = 2 * sys.maxsize + 1
_ID_MAX = 0xFFFFFFFF  # uid_t and gid_t are 32 bits on Linux; this value itself means "leave it unchanged"
_MAX_GROUPS = 65536  # NGROUPS_MAX, the limit _posixsubprocess checks extra_groups against
_TOO_MANY_GROUPS = "too many groups" if sys.version_info < (3, 12) else "too many extra_groups"


def _id_in_range(value: int, kind: str) -> int:
    """value (>= 0) if it is a valid uid_t / gid_t, else the OverflowError CPython's _Py_Uid_Converter /
    _Py_Gid_Converter raise for it (kind: "uid" or "gid"): a value that fits a C long but is cut short by the
    32-bit type is "less than minimum", one past a C long (or (uid_t)-1 read from an unsigned long) "greater than
    maximum"."""
    if value <= _LONG_MAX:
        if value > _ID_MAX:
            raise OverflowError(f"{kind} is less than minimum")
        return value
    if value >= _ID_MAX or value > _ULONG_MAX:
        raise OverflowError(f"{kind} is greater than maximum")
    return value


def _ids_in_range(gid: int | None, gids: list[int] | None, uid: int | None) -> None:
    """What _posixsubprocess.fork_exec checks of the ids _ids() gave, in its order and with its messages."""
    if gids is not None:
        if len(gids) > _MAX_GROUPS:
            raise ValueError(_TOO_MANY_GROUPS)
        for extra_gid in gids:
            try:
                _id_in_range(extra_gid, "gid")
            except OverflowError:
                raise ValueError("invalid group id") from None
    if gid is not None:
        _id_in_range(gid, "gid")
    if uid is not None:
        _id_in_range(uid, "uid")


def _ids(user: Any, group: Any, extra_groups: Any) -> tuple[int | None, list[int] | None, int | None]:
    """(gid, extra gids, uid) from Popen's group / extra_groups / user, with subprocess's checks."""
    gid = None
    if group is not None:
        if isinstance(group, str):
            import grp

            gid = grp.getgrnam(group).gr_gid
        elif isinstance(group, int):
            gid = group
        else:
            raise TypeError(f"Group must be a string or an integer, not {type(group)}")
        if gid < 0:
            raise ValueError(f"Group ID cannot be negative, got {gid}")
    gids = None
    if extra_groups is not None:
        if isinstance(extra_groups, str):
            raise ValueError("Groups must be a list, not a string")
        gids = []
        for extra_group in extra_groups:
            if isinstance(extra_group, str):
                import grp

                gids.append(grp.getgrnam(extra_group).gr_gid)
            elif isinstance(extra_group, int):
                gids.append(extra_group)
            else:
                raise TypeError(f"Items in extra_groups must be a string or integer, not {type(extra_group)}")
        for gid_check in gids:
            if gid_check < 0:
                raise ValueError(f"Group ID cannot be negative, got {gid_check}")
    uid = None
    if user is not None:
        if isinstance(user, str):
            import pwd

            uid = pwd.getpwnam(user).pw_uid
        elif isinstance(user, int):
            uid = user
        else:
            raise TypeError("User must be a string or an integer")
        if uid < 0:
            raise ValueError(f"User ID cannot be negative, got {uid}")
    return gid, gids, uid
