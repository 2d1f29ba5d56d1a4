#!/usr/bin/env bash
# Prints one interpreter per supported CPython (the "Programming Language :: Python :: 3.X" classifiers of
# pyproject.toml), found under $PYENV_ROOT/versions (default /root/.pyenv; the newest 3.X.N there) or else as
# python3.X on PATH.  A supported version that is not on this machine is reported on stderr and skipped; exits 1
# if none is found.
#
# Usage: .ci/pythons.sh            (one path per line)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
versions=$(grep -o 'Programming Language :: Python :: 3\.[0-9]*"' "$ROOT/pyproject.toml" | grep -o '3\.[0-9]*' || true)
[ -n "$versions" ] || { echo "pythons.sh: pyproject.toml names no 'Python :: 3.X' classifier" >&2; exit 1; }
found=0
for version in $versions; do
    python=
    for dir in $(ls -d "${PYENV_ROOT:-/root/.pyenv}/versions/$version".* 2>/dev/null | sort -V); do
        # 3.13.0 yes; 3.13.0t (free-threaded), 3.13-dev and the like no.
        [[ $(basename "$dir") =~ ^${version//./\\.}\.[0-9]+$ ]] && [ -x "$dir/bin/python$version" ] &&
            python=$dir/bin/python$version
    done
    [ -n "$python" ] || python=$(command -v "python$version" || true)
    if [ -n "$python" ]; then
        echo "$python"
        found=1
    else
        echo "pythons.sh: CPython $version (supported) is not on this machine: skipped" >&2
    fi
done
[ "$found" = 1 ] || { echo "pythons.sh: none of the supported CPythons ($versions) is on this machine" >&2; exit 1; }
