#!/usr/bin/env bash
# pyproc.dask gate: installs the package with its `dask` extra (dask.distributed) and the `test` extra into a fresh
# venv (non-editable) and runs tests/test_dask.py, from a copy of tests/ outside the source tree, against real
# LocalClusters of worker processes.  Elsewhere (the README's test command, the sanitizer and valgrind runs)
# distributed is not installed and those tests are skipped, saying why; here they must run.
#
# Usage: .ci/dask.sh [WORKDIR] [pytest args...]   (WORKDIR: an empty or new scratch directory; default: mktemp -d)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/.ci/lib.sh"
WORK=${1:-$(mktemp -d -t pyproc-dask.XXXXXX)}
[ $# -gt 0 ] && shift
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
PYTHON=${PYTHON:-python3}
SRC=$WORK/src
VENV=$WORK/venv
start=$(date +%s)

step() { printf '\n=== dask: %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

step "copy the source tree to $SRC"
copy_tree "$ROOT" "$SRC"

step "fresh venv $VENV with pyproc[test,dask]"
"$PYTHON" -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$SRC[test,dask]"
(cd "$WORK" && "$VENV/bin/python" -c "import distributed, pyproc.dask; print('distributed', distributed.__version__)")

step "tests/test_dask.py (and the pickling of Result and Job) from a copy of tests/"
rm -rf "$WORK/tests-copy" && cp -r "$SRC/tests" "$WORK/tests-copy"
(cd "$WORK" && "$VENV/bin/pytest" -q -p no:cacheprovider -c "$SRC/pyproject.toml" --rootdir "$WORK" -rs \
    tests-copy/test_dask.py "tests-copy/test_io.py::test_result_pickles_with_status_rusage_and_error" \
    "tests-copy/test_pool.py::test_job_pickles_with_its_options" "$@")
step "ok"
