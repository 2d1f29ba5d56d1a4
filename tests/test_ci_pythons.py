""".ci/pythons.sh: which interpreters CI tests, found (pyenv, PATH) rather than named, and the versions it reports.

Runs the script's planning step only (PYTHONS_PLAN_ONLY=1) against fake interpreters: small shell scripts that
answer the script's probe as a given Python would.  Skipped when tests/ is not in the source tree.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "pythons.sh"

BASH = shutil.which("bash")
if not SCRIPT.is_file() or BASH is None:
    pytest.skip(f"no .ci/pythons.sh next to tests/ ({ROOT}): not the source tree", allow_module_level=True)


def fake_python(path: Path, minor: str, patch: str, abiflags: str = "-", implementation: str = "CPython") -> None:
    """An executable that answers the probe (`python -I -c ...`) as that interpreter would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    answer = f"{minor} {patch} {abiflags} {path}" if implementation == "CPython" else ""
    path.write_text(f"#!/bin/sh\necho '{answer}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def plan(tmp_path: Path, pyenv: Path, path_dirs: list[Path]) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("PYENV")}
    # The tools the script uses stay reachable (no python among them: only the fakes are found); this Python
    # reads pyproject.toml.
    tools = tmp_path / "tools"
    tools.mkdir(exist_ok=True)
    for name in ("timeout", "date", "grep", "mkdir", "dirname"):
        found = shutil.which(name)
        if found and not (tools / name).exists():
            (tools / name).symlink_to(found)
    environ.update(PYENV_ROOT=str(pyenv), PYTHONS_PLAN_ONLY="1", PYTHON=sys.executable,
                   PATH=os.pathsep.join([*map(str, path_dirs), str(tools)]))
    return subprocess.run([str(BASH), str(SCRIPT), str(tmp_path / "work")], capture_output=True, text=True,
                          env=environ, timeout=120)


def test_plan_from_the_interpreters_found(tmp_path: Path) -> None:
    pyenv = tmp_path / "pyenv"
    fake_python(pyenv / "versions" / "3.11.2" / "bin" / "python3", "3.11", "3.11.2")
    fake_python(pyenv / "versions" / "3.12.1" / "bin" / "python3", "3.12", "3.12.1")
    fake_python(pyenv / "versions" / "3.10.13" / "bin" / "python3", "3.10", "3.10.13")
    fake_python(pyenv / "versions" / "3.14.0" / "bin" / "python3", "3.14", "3.14.0")
    fake_python(pyenv / "versions" / "pypy3.11" / "bin" / "python3", "3.11", "7.3.17", implementation="PyPy")
    on_path = tmp_path / "bin"
    fake_python(on_path / "python3.12", "3.12", "3.12.8")  # a newer 3.12 on PATH wins over pyenv's
    fake_python(on_path / "python3.13t", "3.13", "3.13.1", abiflags="t")
    done = plan(tmp_path, pyenv, [on_path])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"test 3.11 3.11.2 {pyenv}/versions/3.11.2/bin/python3" in lines
    assert f"test 3.12 3.12.8 {on_path}/python3.12" in lines
    assert "missing 3.13" in lines  # listed in pyproject.toml, not on this (fake) machine: reported, skipped
    assert f"note CPython 3.14.0 at {pyenv}/versions/3.14.0/bin/python3: not listed in pyproject.toml, not tested" \
        in lines
    assert f"note free-threaded build {on_path}/python3.13t (3.13.1t): not tested" in lines
    assert not [line for line in lines if "3.10" in line or "7.3.17" in line]  # below requires-python; PyPy
    assert "CPython 3.13 is listed but not on this machine: skipped" in done.stdout


def test_no_listed_interpreter_fails(tmp_path: Path) -> None:
    pyenv = tmp_path / "pyenv"
    fake_python(pyenv / "versions" / "3.10.13" / "bin" / "python3", "3.10", "3.10.13")
    done = plan(tmp_path, pyenv, [])
    assert done.returncode != 0
    assert "no listed version could be tested" in done.stderr


def test_every_listed_interpreter_found(tmp_path: Path) -> None:
    """Nothing missing, nothing to report: the plan succeeds (.ci/wheel-test.sh reads it; a grep finding no
    'missing' line once failed the script under pipefail, and with it CI)."""
    pyenv = tmp_path / "pyenv"
    for minor, patch in (("3.11", "3.11.7"), ("3.12", "3.12.1"), ("3.13", "3.13.0")):
        fake_python(pyenv / "versions" / patch / "bin" / "python3", minor, patch)
    done = plan(tmp_path, pyenv, [])
    assert done.returncode == 0, done.stderr
    tested = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("test ")]
    assert tested == ["3.11", "3.12", "3.13"]
    assert "missing" not in done.stdout
