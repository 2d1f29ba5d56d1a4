#!/usr/bin/env bash
# The sdist where users get it: installs DIST's pyproc-*.tar.gz with pip into a fresh venv, from a directory outside
# the source tree (pip builds the C core from what the sdist carries, with this machine's compiler), then runs
# pyproc.run(["echo", "ok"]) from there against the installed package.  (The suite against a build from source is
# .ci/run's "plain install" step; this checks that the sdist alone is enough to build.)
#
# Usage: .ci/sdist-test.sh DIST [WORKDIR]   (DIST: what .ci/dist.sh wrote; WORKDIR default: mktemp -d)
set -euo pipefail

DIST=$(cd "${1:?usage: .ci/sdist-test.sh DIST [WORKDIR]}" && pwd)
WORK=${2:-$(mktemp -d -t pyproc-sdist-test.XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
PYTHON=${PYTHON:-python3}
start=$(date +%s)

step() { printf '\n=== sdist-test: %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }
die() { echo "sdist-test: FAILED: $*" >&2; exit 1; }

sdists=("$DIST"/pyproc-*.tar.gz)
[ ${#sdists[@]} = 1 ] && [ -f "${sdists[0]}" ] || die "expected one sdist in $DIST, got: ${sdists[*]}"

step "fresh venv, pip install $(basename "${sdists[0]}") from $WORK"
rm -rf "$WORK/venv"
"$PYTHON" -m venv "$WORK/venv"
(cd "$WORK" && "$WORK/venv/bin/python" -m pip install -q --no-cache-dir "${sdists[0]}" > "$WORK/install.log" 2>&1) ||
    { tail -n 60 "$WORK/install.log"; die "pip install of the sdist failed"; }

step "pyproc.run([\"echo\", \"ok\"], capture=True) against the sdist's build"
(cd "$WORK" && "$WORK/venv/bin/python" -c '
import sys, pyproc
assert pyproc.__file__.startswith(sys.prefix), pyproc.__file__
result = pyproc.run(["echo", "ok"], capture=True)
assert (result.returncode, result.stdout) == (0, b"ok\n"), result
print(f"pyproc {pyproc.__version__} from {pyproc.__file__}: {result.stdout!r}")')
step "ok"
