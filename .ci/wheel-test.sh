#!/usr/bin/env bash
# The wheel where users get it: on every supported CPython (.ci/pythons.sh), installs DIST's wheel into a fresh
# venv in which no C compiler can be found (PATH starts with a directory whose cc, gcc, c++, g++, clang and
# x86_64-linux-gnu-gcc fail; CC=false, CXX=false; pip takes binaries only), runs pyproc.run(["echo", "ok"]) from
# outside any source tree, then the test suite from a copy of tests/ (and bench/, so that the report's "no C
# compiler" path is tested too) against that install.  Tests that must compile a helper program skip with the
# reason (pytest -rs shows them).
#
# Usage: .ci/wheel-test.sh DIST [WORKDIR] [pytest args...]   (DIST: what .ci/dist.sh wrote; WORKDIR default:
# mktemp -d).  Fails if a supported CPython found here cannot install, import or pass the suite with the wheel.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIST=$(cd "${1:?usage: .ci/wheel-test.sh DIST [WORKDIR] [pytest args...]}" && pwd)
WORK=${2:-$(mktemp -d -t pyproc-wheel-test.XXXXXX)}
[ $# -gt 0 ] && shift
[ $# -gt 0 ] && shift
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
start=$(date +%s)

step() { printf '\n=== wheel-test: %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }
die() { echo "wheel-test: FAILED: $*" >&2; exit 1; }

wheels=("$DIST"/pyproc-*.whl)
[ ${#wheels[@]} = 1 ] && [ -f "${wheels[0]}" ] || die "expected one wheel in $DIST, got: ${wheels[*]}"
wheel=${wheels[0]}
# The interpreters .ci/pythons.sh would test (its plan: "test MINOR PATCH PATH" lines).
pythons=$(PYTHONS_PLAN_ONLY=1 bash "$ROOT/.ci/pythons.sh" "$WORK/plan" | awk '$1 == "test" {print $4}')
[ -n "$pythons" ] || die "no supported CPython found (.ci/pythons.sh)"

step "an environment without a C compiler"
NOCC=$WORK/no-compiler
rm -rf "$NOCC" && mkdir -p "$NOCC"
for name in cc gcc c++ g++ clang clang++ x86_64-linux-gnu-gcc x86_64-linux-gnu-g++; do
    printf '#!/bin/sh\necho "%s: no C compiler here (pyproc wheel test)" >&2\nexit 1\n' "$name" > "$NOCC/$name"
    chmod +x "$NOCC/$name"
done
nocc() { env PATH="$NOCC:$PATH" CC=false CXX=false "$@"; }
for name in cc gcc c++ g++ clang x86_64-linux-gnu-gcc; do
    if nocc "$name" --version > /dev/null 2>&1; then die "$name still works in the no-compiler environment"; fi
done
echo "cc, gcc, c++, g++, clang, x86_64-linux-gnu-gcc all fail; CC=false CXX=false"

for python in $pythons; do
    version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    venv=$WORK/venv-$version
    step "CPython $version: fresh venv, pip install $(basename "$wheel")[test], binaries only"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    (cd "$WORK" && nocc "$venv/bin/python" -m pip install -q --only-binary=:all: "$wheel[test]")

    step "CPython $version: pyproc.run([\"echo\", \"ok\"], capture=True) outside any source tree"
    (cd "$WORK" && nocc "$venv/bin/python" -c '
import sys, pyproc
assert pyproc.__file__.startswith(sys.prefix), pyproc.__file__  # the installed wheel, not a source tree
result = pyproc.run(["echo", "ok"], capture=True)
assert (result.returncode, result.stdout) == (0, b"ok\n"), result
print(f"pyproc {pyproc.__version__} from {pyproc.__file__}: {result.stdout!r}")')

    step "CPython $version: the test suite against the wheel, no compiler"
    run=$WORK/run-$version
    rm -rf "$run" && mkdir -p "$run"
    cp -r "$ROOT/tests" "$ROOT/bench" "$run/"
    (cd "$run" && nocc "$venv/bin/python" -m pytest -c "$ROOT/pyproject.toml" --rootdir "$run" -p no:cacheprovider \
        -q -rs "$@" tests) || die "the test suite failed on CPython $version with the wheel"
done
step "ok"
