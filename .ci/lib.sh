# Sourced by the .ci/*.sh scripts: what several of them do the same way.

# copy_tree ROOT DEST: a clean copy of the source tree ROOT in DEST (emptied first), without version control, build
# output, virtual environments and caches, so that a script builds from exactly the sources.
copy_tree() {
    rm -rf "$2" && mkdir -p "$2"
    tar -C "$1" --exclude-vcs --exclude=./.venv --exclude=./build --exclude=./dist --exclude='*.egg-info' \
        --exclude='*.so' --exclude=__pycache__ --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache \
        --exclude=.hypothesis --exclude=.benchmarks --exclude=bench-results -cf - . | tar -C "$2" -xf -
}
