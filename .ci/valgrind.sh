#!/usr/bin/env bash
# Valgrind gate: runs tests/valgrind_driver.py (every engine, fd plans, process state, forced fallbacks, failures,
# the child side alone, waits) under valgrind memcheck and fails on any error or definite leak whose stack has
# pyproc's own C code in it (csrc/*.c, pyproc_* functions).  CPython's own reports under valgrind are noise here and
# are not counted (they come from the interpreter, which this gate does not test).
#
# Usage: .ci/valgrind.sh [WORKDIR] [driver args...]   (WORKDIR default: mktemp -d)
# Self-contained: copies the source tree, builds it (-g, non-editable) into a fresh venv, first proves with a
# canary that a memory error in a pyproc_* function is caught, then runs the driver.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/.ci/lib.sh"
WORK=${1:-$(mktemp -d -t pyproc-valgrind.XXXXXX)}
[ $# -gt 0 ] && shift
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
PYTHON=${PYTHON:-python3}
CC=${CC:-gcc}
SRC=$WORK/src
VENV=$WORK/venv
LOGS=$WORK/valgrind-logs
start=$(date +%s)

step() { printf '\n=== valgrind: %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }
die() { echo "valgrind: FAILED: $*" >&2; exit 1; }
command -v valgrind > /dev/null || die "valgrind is not installed"

step "copy the source tree to $SRC"
copy_tree "$ROOT" "$SRC"

step "fresh venv, build with debug info (non-editable)"
"$PYTHON" -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
(cd "$SRC" && CFLAGS="-g -fno-omit-frame-pointer" "$VENV/bin/python" -m pip install -q --no-cache-dir . \
    > "$WORK/build.log" 2>&1) || { tail -n 60 "$WORK/build.log"; die "the build failed"; }

# The filter: a report counts when a frame is in one of pyproc's C files or a pyproc_* function (including cffi's
# _cffi_f_pyproc_* wrappers); for a leak, the frames below the allocator.
cat > "$WORK/vgfilter.py" <<'PY'
import re
import sys
from pathlib import Path

csrc = sorted(p.name for p in Path(sys.argv[1]).glob("*.c"))
ours = re.compile(r"\bpyproc_\w+|\((?:%s):\d+\)" % "|".join(map(re.escape, csrc)))
allocator = re.compile(r"\b(?:malloc|calloc|realloc|free|memalign|posix_memalign|operator new\S*)\b")
found = 0
files = [Path(f) for f in sys.argv[2:]]
for log in files:
    blocks, block = [], []
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"==\d+== ?(.*)", line)
        if not m:
            continue
        text = m.group(1)
        if not text.strip():
            if block:
                blocks.append(block)
            block = []
        else:
            block.append(text)
    if block:
        blocks.append(block)
    for block in blocks:
        frames = [l for l in block if re.match(r"\s+(at|by) 0x", l)]
        if not frames:
            continue
        m = re.match(r"Process terminating with default action of signal (\d+)", block[0])
        if m and int(m.group(1)) not in (4, 6, 7, 8, 11):  # a child killed on purpose (SIGTERM, SIGKILL, ...)
            continue
        if "are definitely lost" in block[0] or "are possibly lost" in block[0]:
            frames = [f for f in frames if not allocator.search(f)][:3]
        if any(ours.search(f) for f in frames):
            found += 1
            print(f"--- {log.name}")
            print("\n".join(block))
print(f"vgfilter: {len(files)} log file(s), {found} report(s) in pyproc's code")
sys.exit(1 if found else 0)
PY

VALGRIND=(valgrind --tool=memcheck --trace-children=no --leak-check=full --show-leak-kinds=definite
          --errors-for-leak-kinds=definite --num-callers=30 --track-fds=no)

step "canary: a heap overflow in a pyproc_* function must be reported"
CANARY=$WORK/canary
rm -rf "$CANARY" "$LOGS" && mkdir -p "$CANARY" "$LOGS"
cat > "$CANARY/canary.c" <<'C'
#include <stdlib.h>
int pyproc_canary_overflow(int n) { char *p = malloc(8); int v = p[n]; free(p); return v; }
C
"$CC" -shared -fPIC -O0 -g "$CANARY/canary.c" -o "$CANARY/canary.so"
(cd "$WORK" && PYTHONMALLOC=malloc "${VALGRIND[@]}" --log-file="$CANARY/vg.%p.log" "$VENV/bin/python" -c \
    "import ctypes, sys; ctypes.CDLL(sys.argv[1]).pyproc_canary_overflow(8)" "$CANARY/canary.so") \
    > /dev/null 2>&1 || true
if "$VENV/bin/python" "$WORK/vgfilter.py" "$SRC/csrc" "$CANARY"/vg.*.log > "$CANARY/filter.out"; then
    cat "$CANARY/filter.out"; die "the canary's invalid read was not reported"
fi
grep -q "Invalid read" "$CANARY/filter.out" || { cat "$CANARY/filter.out"; die "the canary's report is not an invalid read"; }
echo "canary: caught"

step "the driver under valgrind memcheck"
rc=0
(cd "$WORK" && PYTHONMALLOC=malloc "${VALGRIND[@]}" --log-file="$LOGS/vg.%p.log" "$VENV/bin/python" \
    "$SRC/tests/valgrind_driver.py" "$@") || rc=$?
"$VENV/bin/python" "$WORK/vgfilter.py" "$SRC/csrc" "$LOGS"/vg.*.log || die "valgrind reports in pyproc's code (above)"
[ "$rc" = 0 ] || die "the driver failed under valgrind (exit $rc)"
step "ok"
