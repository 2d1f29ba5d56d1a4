#!/usr/bin/env bash
# Every supported CPython on this machine: a plain (non-editable) install in a fresh venv, then the test suite run
# from a copy of tests/ outside the source tree, then the subprocess tests again with pyproc.subprocess.install()
# active (PYPROC_TEST_INSTALLED=1: the differential tests run against the patched standard `subprocess` module).
#
# Usage: .ci/pythons.sh [WORKDIR] [pytest args...]   (WORKDIR: an empty or new scratch directory; default mktemp -d)
# Environment: PYTHON (default python3) reads pyproject.toml; PYTHONS_PLAN_ONLY=1 stops after saying which
# interpreter each version would be tested on (what tests/test_ci_pythons.py checks).
#
# The versions come from pyproject.toml (its "Programming Language :: Python :: 3.N" classifiers, which must agree
# with requires-python); the interpreters are found, never named here: $PYENV_ROOT/versions/*/bin (default
# ~/.pyenv) and every directory on PATH.  Per version the newest patch release found is used.  A listed version
# with no interpreter is reported and skipped; one found but not listed is reported and not tested.  Exits nonzero
# if any tested version fails (after testing all of them).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/.ci/lib.sh"
WORK=${1:-$(mktemp -d -t pyproc-pythons.XXXXXX)}
[ $# -gt 0 ] && shift
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
export PIP_DISABLE_PIP_VERSION_CHECK=1
PYTHON=${PYTHON:-python3}
# The test files that run a second time with install() active.
INSTALLED_TESTS=(test_subprocess_diff.py test_subprocess_install.py)
start=$(date +%s)

step() { printf '\n=== pythons: %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

step "find the interpreters"
candidates=()
pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
for exe in "$pyenv_root"/versions/*/bin/python3; do
    [ -x "$exe" ] && candidates+=("$exe")
done
IFS=: read -r -a path_dirs <<< "${PATH:-}"
for dir in "${path_dirs[@]}"; do
    for exe in "$dir"/python3 "$dir"/python3.[0-9]*; do
        case "$exe" in *-config|*.py) continue ;; esac
        [ -f "$exe" ] && [ -x "$exe" ] && candidates+=("$exe")
    done
done
# One line per usable interpreter: "minor patch abiflags path" (CPython only; anything that fails to answer is left
# out).  Then the plan: which listed version runs on which interpreter, and what is reported.
for exe in "${candidates[@]}"; do
    timeout 20 "$exe" -I -c '
import platform, sys
if platform.python_implementation() == "CPython":
    print("%d.%d" % sys.version_info[:2], platform.python_version(), getattr(sys, "abiflags", "") or "-",
          sys.executable)' 2>/dev/null || true
done > "$WORK/interpreters.txt"
plan=$("$PYTHON" -I - "$ROOT/pyproject.toml" "$WORK/interpreters.txt" <<'PY'
import re, sys

text = open(sys.argv[1]).read()
listed = sorted(set(re.findall(r'"Programming Language :: Python :: (3\.\d+)"', text)), key=lambda v: int(v[2:]))
floor = re.search(r'^requires-python\s*=\s*">=\s*(3\.\d+)"', text, re.M)
if not listed or not floor:
    sys.exit("pythons: pyproject.toml lists no 3.N classifier or has no requires-python = \">=3.N\"")
if listed[0] != floor.group(1):
    sys.exit(f"pythons: requires-python says >={floor.group(1)} but the lowest classifier is {listed[0]}")
best = {}
for line in open(sys.argv[2]):
    if not line.strip():
        continue
    minor, patch, abiflags, exe = line.split(maxsplit=3)
    exe = exe.strip()
    if "t" in abiflags.replace("-", ""):
        print(f"note free-threaded build {exe} ({patch}{abiflags}): not tested")
        continue
    key = tuple(int(p) for p in re.findall(r"\d+", patch)[:3])
    if minor not in best or key > best[minor][0]:
        best[minor] = (key, patch, exe)
for minor in sorted(best, key=lambda v: int(v[2:])):
    if minor not in listed and int(minor[2:]) >= int(listed[0][2:]):
        print(f"note CPython {best[minor][1]} at {best[minor][2]}: not listed in pyproject.toml, not tested")
for minor in listed:
    if minor in best:
        print(f"test {minor} {best[minor][1]} {best[minor][2]}")
    else:
        print(f"missing {minor}")
PY
)
echo "$plan"
if [ "${PYTHONS_PLAN_ONLY:-}" = 1 ]; then
    # (`|| true`: with every listed version found, grep finds nothing and fails, which pipefail would make ours)
    { grep -E '^missing ' <<< "$plan" || true; } | while read -r _ minor; do
        echo "pythons: CPython $minor is listed but not on this machine: skipped"
    done
    grep -qE '^test ' <<< "$plan" || { echo "pythons: FAILED: no listed version could be tested" >&2; exit 1; }
    exit 0
fi

step "copy the source tree to $WORK/src"
copy_tree "$ROOT" "$WORK/src"

failed=()
passed=()
missing=()
while read -r -u 3 kind minor patch exe; do
    case "$kind" in
        missing) missing+=("$minor"); echo "pythons: CPython $minor is listed but not on this machine: skipped" ;;
        test)
            began=$(date +%s)
            dir=$WORK/$minor
            step "CPython $patch ($exe): fresh venv, plain install"
            rm -rf "$dir" && mkdir -p "$dir"
            ok=1
            "$exe" -m venv "$dir/venv" && "$dir/venv/bin/pip" install -q "$WORK/src[test]" || ok=0
            if [ $ok = 1 ]; then
                cp -r "$WORK/src/tests" "$dir/tests"
                step "CPython $patch: the test suite, from outside the tree"
                (cd "$dir" && "$dir/venv/bin/python" -m pytest -q -p no:cacheprovider -c "$WORK/src/pyproject.toml" \
                    --rootdir "$dir" tests "$@") || ok=0
                step "CPython $patch: the subprocess tests with pyproc.subprocess.install() active"
                installed=()
                for name in "${INSTALLED_TESTS[@]}"; do installed+=("tests/$name"); done
                (cd "$dir" && PYPROC_TEST_INSTALLED=1 "$dir/venv/bin/python" -m pytest -q -p no:cacheprovider \
                    -c "$WORK/src/pyproject.toml" --rootdir "$dir" "${installed[@]}" "$@") || ok=0
            fi
            took=$(( $(date +%s) - began ))
            if [ $ok = 1 ]; then passed+=("$patch (${took}s)"); else failed+=("$patch (${took}s)"); fi
            ;;
    esac
done 3<<< "$(grep -E '^(test|missing) ' <<< "$plan" || true)"

step "summary"
echo "passed: ${passed[*]:-none}"
echo "failed: ${failed[*]:-none}"
echo "listed but missing (skipped): ${missing[*]:-none}"
[ ${#passed[@]} -gt 0 ] || { echo "pythons: FAILED: no listed version could be tested" >&2; exit 1; }
[ ${#failed[@]} = 0 ] || { echo "pythons: FAILED on ${failed[*]}" >&2; exit 1; }
