"""pyproc.subprocess.install(): the standard library's `subprocess` module, and asyncio's subprocess support, on
pyproc -- for code that imports `subprocess` itself (libraries, build backends, VCS wrappers, test plugins).

install() replaces, in the standard module's namespace, Popen, run, call, check_call, check_output, getoutput and
getstatusoutput (the exception classes, PIPE, list2cmdline... stay the standard library's own), and the default Unix
event loop's _make_subprocess_transport, through which asyncio.create_subprocess_exec / _shell and
loop.subprocess_exec / subprocess_shell start children (see pyproc/_aio_subprocess.py).  uninstall() puts back
exactly the objects that were there.  Both are idempotent and thread-safe; nothing is patched at import.

The functions put in the module are pyproc.subprocess's, behind a check that keeps the standard library's
semantics when a test patches the module: the standard run() calls whatever `subprocess.Popen` is at the time, so
while a name one of them depends on (run -> Popen, check_output -> run -> Popen, ...) is not the one install()
put there, the standard library's own function runs instead, and finds the patched name as it would have.
"""

from __future__ import annotations

import contextlib
import functools
import os
import runpy
import subprocess as _std
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

# Each function install() replaces, and the module names it calls (directly or through the others).
_DEPENDS: dict[str, tuple[str, ...]] = {
    "run": ("Popen",),
    "call": ("Popen",),
    "check_call": ("call", "Popen"),
    "check_output": ("run", "Popen"),
    "getstatusoutput": ("check_output", "run", "Popen"),
    "getoutput": ("getstatusoutput", "check_output", "run", "Popen"),
}
NAMES = ("Popen", *_DEPENDS)
"""The names install() replaces in the standard subprocess module."""

_MISSING = object()
_TRANSPORT_METHOD = "_make_subprocess_transport"
_std_vars = vars(_std)
# The standard library's own functions, for the dispatchers' fallback (they look names up in the module).
_standard: dict[str, Any] = {name: _std_vars[name] for name in NAMES}

_lock = threading.RLock()
_ours: dict[str, Any] = {}  # what install() puts in the module (built once)
_saved: dict[str, Any] | None = None  # while installed: what install() replaced (_MISSING: nothing was there)
_saved_transport: Any = _MISSING  # ... and in asyncio's Unix selector loop class
_explicit = False  # install() was called (and not undone by uninstall())
_holds = 0  # installed() blocks open


def _dispatcher(name: str, ours: Callable[..., Any], deps: tuple[str, ...]) -> Callable[..., Any]:
    standard = _standard[name]
    mine = _ours
    module = _std_vars

    @functools.wraps(ours)
    def installed(*args: Any, **kwargs: Any) -> Any:
        for dep in deps:
            if module.get(dep) is not mine[dep]:  # patched after install(): the standard code finds the patch
                return standard(*args, **kwargs)
        return ours(*args, **kwargs)

    return installed


def _build() -> dict[str, Any]:
    if not _ours:
        from . import subprocess as pyproc_subprocess

        _ours["Popen"] = pyproc_subprocess.Popen
        for name, deps in _DEPENDS.items():
            _ours[name] = _dispatcher(name, getattr(pyproc_subprocess, name), deps)
    return _ours


def _loop_class() -> type:
    from asyncio import unix_events

    return unix_events._UnixSelectorEventLoop


def _patch() -> None:
    global _saved, _saved_transport
    if _saved is not None:
        return
    ours = _build()
    from ._aio_subprocess import make_subprocess_transport

    loop_class = _loop_class()
    saved = {name: _std_vars.get(name, _MISSING) for name in NAMES}
    _saved_transport = loop_class.__dict__.get(_TRANSPORT_METHOD, _MISSING)
    _std_vars.update(ours)
    setattr(loop_class, _TRANSPORT_METHOD, make_subprocess_transport)
    _saved = saved


def _unpatch() -> None:
    global _saved, _saved_transport
    if _saved is None:
        return
    from ._aio_subprocess import make_subprocess_transport

    kept = []
    for name, previous in _saved.items():
        if _std_vars.get(name, _MISSING) is not _ours[name]:
            kept.append(f"subprocess.{name}")  # replaced by someone else since install(): theirs stays
        elif previous is _MISSING:
            del _std_vars[name]
        else:
            _std_vars[name] = previous
    loop_class = _loop_class()
    if loop_class.__dict__.get(_TRANSPORT_METHOD, _MISSING) is not make_subprocess_transport:
        kept.append(f"{loop_class.__name__}.{_TRANSPORT_METHOD}")
    elif _saved_transport is _MISSING:
        delattr(loop_class, _TRANSPORT_METHOD)
    else:
        setattr(loop_class, _TRANSPORT_METHOD, _saved_transport)
    _saved = None
    _saved_transport = _MISSING
    if kept:
        warnings.warn(f"pyproc.subprocess.uninstall: {', '.join(kept)} had been replaced since install(); the "
                      "replacement was left in place", RuntimeWarning, stacklevel=3)


def install() -> None:
    """Makes the standard library's subprocess module use pyproc, until uninstall().

    Replaces subprocess.Popen, run, call, check_call, check_output, getoutput and getstatusoutput with
    pyproc.subprocess's (the exception classes stay the standard library's), so code that looks them up in the
    module -- `import subprocess; subprocess.run(...)`, imported before or after -- starts its children through
    pyproc; and gives asyncio's default Unix event loop pyproc's child start, exit watching (the pidfd on the
    loop, no watcher thread) and pipe setup, behind asyncio's own Process, streams and transport API.  Imports
    asyncio.  Idempotent and thread-safe.  Code that did `from subprocess import Popen` before keeps the
    standard object, and a Popen made before stays a standard one.
    """
    global _explicit
    with _lock:
        _explicit = True
        _patch()


def uninstall() -> None:
    """Puts back exactly the objects install() replaced; idempotent and thread-safe.

    Takes effect at once, even inside an installed() block.  A name someone else replaced after install()
    (unittest.mock.patch, another tool) keeps their object, with a RuntimeWarning.
    """
    global _explicit
    with _lock:
        _explicit = False
        _unpatch()


def is_installed() -> bool:
    """True while the standard subprocess module is on pyproc (install(), or an installed() block)."""
    return _saved is not None


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """install() for the duration of a with block: on exit the previous state comes back, unless install() was
    called meanwhile or another installed() block (in any thread) is still open."""
    global _holds
    with _lock:
        _holds += 1
        try:
            _patch()
        except BaseException:
            _holds -= 1
            raise
    try:
        yield
    finally:
        with _lock:
            _holds -= 1
            if _holds == 0 and not _explicit:
                _unpatch()


def popen_is_ours() -> bool:
    """Whether subprocess.Popen is the one install() put there (the asyncio transport's check)."""
    return _std_vars.get("Popen") is _ours.get("Popen", _MISSING)


def original_make_subprocess_transport() -> Any:
    """The loop's _make_subprocess_transport from before install() (None when none was saved)."""
    saved = _saved_transport
    if saved is _MISSING:
        return None
    return saved


_USAGE = """usage: python -m pyproc.subprocess SCRIPT [ARGS...]
       python -m pyproc.subprocess -m MODULE [ARGS...]

Runs a Python script, or a module as `python -m` would, with pyproc.subprocess.install() active: its
subprocess and asyncio subprocess calls start children through pyproc."""


def main(argv: list[str] | None = None) -> int:
    """`python -m pyproc.subprocess SCRIPT [ARGS]` / `-m MODULE [ARGS]`: runs the program as __main__ (sys.argv
    and sys.path[0] set as `python SCRIPT` / `python -m MODULE` set them) with install() active.  Returns the
    exit status for a usage error; the program's own SystemExit and exceptions pass through."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE, file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] == "-m":
        if len(args) < 2:
            print(_USAGE, file=sys.stderr)
            return 2
        install()
        sys.argv[:] = args[1:]  # run_module puts the module's file in argv[0], as -m does
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        return 0
    script = args[0]
    if not os.path.exists(script):
        print(f"python -m pyproc.subprocess: can't open file {script!r}: [Errno 2] No such file or directory",
              file=sys.stderr)
        return 2
    install()
    sys.argv[:] = args
    sys.path[0] = os.path.dirname(os.path.realpath(script))  # what `python SCRIPT` puts first
    runpy.run_path(script, run_name="__main__")
    return 0


__all__ = ["NAMES", "install", "installed", "is_installed", "main", "uninstall"]
