#!/usr/bin/env bash
# Lint gate: the C core must build with -Werror (PYPROC_WERROR=1), `ruff check` must pass on pyproc/ tests/ bench/
# and `mypy --strict` on pyproc/, with the versions pinned in pyproject.toml's `lint` extra.
#
# Usage: .ci/lint.sh [WORKDIR]   (WORKDIR: an empty or new scratch directory; default: mktemp -d)
# Self-contained: copies the source tree into WORKDIR, makes a fresh venv there; exits nonzero on any failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/.ci/lib.sh"
WORK=${1:-$(mktemp -d -t pyproc-lint.XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
PYTHON=${PYTHON:-python3}
SRC=$WORK/src
VENV=$WORK/venv
start=$(date +%s)

step() { printf '\n=== lint: %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

step "copy the source tree to $SRC"
copy_tree "$ROOT" "$SRC"

step "fresh venv $VENV"
"$PYTHON" -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# The lint tools alone (the `lint` extra), then the package itself built with -Werror, with its `dask` extra:
# mypy checks pyproc.dask against distributed's own annotations, as a user with the extra gets them.
"$VENV/bin/python" - "$SRC/pyproject.toml" > "$WORK/lint-requirements.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
block = re.search(r'^lint\s*=\s*\[(.*?)\]', text, re.M | re.S)
if not block:
    sys.exit("pyproject.toml has no `lint` extra")
print("\n".join(re.findall(r'"([^"]+)"', block.group(1))))
PY
"$VENV/bin/python" -m pip install -q -r "$WORK/lint-requirements.txt"

step "build the C core with -Werror (PYPROC_WERROR=1, non-editable, with the dask extra)"
(cd "$SRC" && PYPROC_WERROR=1 "$VENV/bin/python" -m pip install -q --no-cache-dir -v ".[dask]" > "$WORK/build.log" 2>&1) || {
    tail -n 60 "$WORK/build.log"; echo "lint: the -Werror build failed (full log: $WORK/build.log)"; exit 1; }
# pip does not echo the compiler's command lines: ask the builder which flags this environment gives it.
(cd "$SRC" && PYPROC_WERROR=1 "$VENV/bin/python" -c '
import runpy, sys
args = runpy.run_path("pyproc/_build.py")["_compile_args"]()
print("compile args:", " ".join(args))
sys.exit(0 if "-Werror" in args else "lint: PYPROC_WERROR=1 does not give -Werror")')
(cd "$WORK" && "$VENV/bin/python" -c "import pyproc; assert pyproc.spawn(['true']).wait() == 0")

step "ruff check pyproc/ tests/ bench/"
targets=()
for d in pyproc tests bench; do [ -d "$SRC/$d" ] && targets+=("$d"); done
(cd "$SRC" && "$VENV/bin/ruff" check --no-cache "${targets[@]}")

step "mypy --strict pyproc/"
(cd "$SRC" && "$VENV/bin/mypy" --strict --cache-dir "$WORK/mypy-cache" pyproc/)

rm -rf "$WORK/mypy-cache"
step "ok"
