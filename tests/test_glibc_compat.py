"""The posix_spawn features newer than the wheels' glibc floor (csrc/glibc_compat.c): looked up at run time; when
the running glibc lacks one (forced here with PYPROC_FORCE_NO_SPAWN_*), a request that needs it is refused with a
ValueError before any child exists, and the C engine itself returns ENOSYS instead of crashing."""

from __future__ import annotations

import errno
import importlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import child_pids

import pyproc
from pyproc._lib import ffi, lib

spawn_module = importlib.import_module("pyproc.spawn")  # (pyproc.spawn is also the function)


def _glibc_version() -> tuple[int, ...] | None:
    try:
        name = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return None
    kind, _, version = name.partition(" ")
    return tuple(int(part) for part in version.split(".")) if kind == "glibc" else None


@pytest.fixture
def forced() -> Iterator[None]:
    yield
    lib.pyproc_set_forced_fallbacks(0)


@pytest.mark.skipif((_glibc_version() or (0,)) < (2, 34), reason="needs glibc 2.34 (addclosefrom_np)")
def test_features_found_on_this_glibc() -> None:
    assert lib.pyproc_posix_spawn_features() == lib.PYPROC_POSIX_SPAWN_CHDIR | lib.PYPROC_POSIX_SPAWN_CLOSEFROM


def test_forced_absence_reads_as_absent(forced: None) -> None:
    present = lib.pyproc_posix_spawn_features()
    lib.pyproc_set_forced_fallbacks(lib.PYPROC_FORCE_NO_SPAWN_CHDIR)
    assert lib.pyproc_posix_spawn_features() == present & ~lib.PYPROC_POSIX_SPAWN_CHDIR
    lib.pyproc_set_forced_fallbacks(lib.PYPROC_FORCE_NO_SPAWN_CLOSEFROM)
    assert lib.pyproc_posix_spawn_features() == present & ~lib.PYPROC_POSIX_SPAWN_CLOSEFROM


def test_no_chdir_refuses_cwd(tmp_path: Path, forced: None, no_leaks: None) -> None:
    lib.pyproc_set_forced_fallbacks(lib.PYPROC_FORCE_NO_SPAWN_CHDIR)
    with pytest.raises(ValueError, match=r"cannot express cwd .*posix_spawn_file_actions_addchdir_np.*2\.29"):
        pyproc.spawn(["pwd"], engine="posix_spawn", cwd=tmp_path)
    with pytest.raises(ValueError, match="addchdir_np"):
        pyproc.run(["pwd"], engine="posix_spawn", cwd=tmp_path, capture=True)
    # What it can still express runs; the other engines do not need it.
    assert pyproc.run(["true"], engine="posix_spawn", capture=True).returncode == 0
    for engine in ("auto", "clone", "vfork", "fork"):
        assert pyproc.run(["pwd"], engine=engine, cwd=tmp_path, capture=True).stdout == f"{tmp_path}\n".encode()


def test_no_closefrom_refuses_close_fds(forced: None, no_leaks: None) -> None:
    lib.pyproc_set_forced_fallbacks(lib.PYPROC_FORCE_NO_SPAWN_CLOSEFROM)
    for argv in (["/bin/true"], ["true"]):  # spawn()'s direct path (a path, default options) and the general one
        with pytest.raises(ValueError, match=r"close_fds=True .*posix_spawn_file_actions_addclosefrom_np.*2\.34"):
            pyproc.spawn(argv, engine="posix_spawn")
    with pytest.raises(ValueError, match="addclosefrom_np"):
        pyproc.run(["true"], engine="posix_spawn", stdout=pyproc.PIPE)
    assert pyproc.spawn(["true"], engine="posix_spawn", close_fds=False).wait() == 0
    assert pyproc.spawn(["true"], close_fds=True).wait() == 0


@pytest.mark.parametrize("force", ["PYPROC_FORCE_NO_SPAWN_CHDIR", "PYPROC_FORCE_NO_SPAWN_CLOSEFROM"])
def test_engine_returns_enosys_without_a_child(force: str, tmp_path: Path, forced: None, no_leaks: None) -> None:
    # The C engine called with a request that Python would have refused: ENOSYS, no child, nothing leaked.
    request = spawn_module.prepare(["true"], engine="posix_spawn", cwd=tmp_path)
    lib.pyproc_set_forced_fallbacks(getattr(lib, force))
    before = child_pids()
    child = ffi.new("struct pyproc_child *")
    err = lib.pyproc_spawn_child(request.c, ffi.NULL, 0, 0, lib.PYPROC_ENGINE_POSIX_SPAWN, child)
    assert err == errno.ENOSYS
    assert child.spawn.fail_stage == lib.PYPROC_STAGE_PARENT
    assert child_pids() == before
