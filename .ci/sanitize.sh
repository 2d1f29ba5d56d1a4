#!/usr/bin/env bash
# Sanitizer gate: builds the C core with -fsanitize=address,undefined (PYPROC_SANITIZE=1, non-editable install into
# a fresh venv) and runs the test suite with the ASan and UBSan runtimes preloaded into Python; fails on any test
# failure and on any sanitizer report (reports are written to log files, so a report from any process counts).
#
# Usage: .ci/sanitize.sh [WORKDIR] [pytest args...]   (WORKDIR default: mktemp -d)
# Environment: PYTHON (default python3), CC (default gcc), SANITIZE_CHILDREN=1 to leave LD_PRELOAD in the
# environment of every child the tests start (default: only Python children get the runtimes; see below).
#
# The script first proves that the setup catches errors (a canary library with a heap overflow and one with
# signed-integer overflow must each be reported) and that programs started with the runtime preloaded still run,
# dynamic and static alike.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/.ci/lib.sh"
WORK=${1:-$(mktemp -d -t pyproc-sanitize.XXXXXX)}
[ $# -gt 0 ] && shift
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
PYTHON=${PYTHON:-python3}
CC=${CC:-gcc}
SRC=$WORK/src
VENV=$WORK/venv
LOGS=$WORK/sanitizer-logs
rm -rf "$LOGS"
start=$(date +%s)

step() { printf '\n=== sanitize: %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }
die() { echo "sanitize: FAILED: $*" >&2; exit 1; }
# A log file with an error report fails the run.  Warnings alone are shown, not counted: ASan warns once per
# process that it "is ignoring __asan_handle_no_return" when the clone engine's child (on its own stack, which ASan
# does not know) leaves by exec or _exit; spawn.c clears that stack's shadow before each clone, so no false report
# follows.
REPORT_PATTERN='ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer'
show_reports() {
    local errors=0
    if compgen -G "$LOGS/*" > /dev/null; then
        for f in "$LOGS"/*; do
            if grep -Eq "$REPORT_PATTERN" "$f"; then
                echo "--- sanitizer report $f"; cat "$f"; errors=1
            else
                echo "--- sanitizer warning (not counted) $f"; head -n 3 "$f"
            fi
        done
        rm -f "$LOGS"/*
    fi
    return $errors
}
trap 'rc=$?; show_reports || rc=1; [ $rc = 0 ] || echo "sanitize: FAILED (exit $rc)" >&2; exit $rc' EXIT

step "copy the source tree to $SRC"
rm -rf "$WORK/tests"
copy_tree "$ROOT" "$SRC"
# The tests run from a copy outside the source tree, against the installed package.
cp -r "$SRC/tests" "$WORK/tests"

step "fresh venv with the sanitized build (PYPROC_SANITIZE=1, non-editable)"
"$PYTHON" -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
(cd "$SRC" && PYPROC_SANITIZE=1 "$VENV/bin/python" -m pip install -q --no-cache-dir ".[test]" \
    > "$WORK/build.log" 2>&1) || { tail -n 60 "$WORK/build.log"; die "the sanitized build failed"; }

ASAN_LIB=$("$CC" -print-file-name=libasan.so)
UBSAN_LIB=$("$CC" -print-file-name=libubsan.so)
[ -f "$ASAN_LIB" ] || die "no ASan runtime ($CC -print-file-name=libasan.so gave $ASAN_LIB)"
[ -f "$UBSAN_LIB" ] || die "no UBSan runtime ($CC -print-file-name=libubsan.so gave $UBSAN_LIB)"
# (Not by importing pyproc: loading the sanitized module without the preload aborts.)
PLATLIB=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
NATIVE=$(ls "$PLATLIB"/pyproc/_native*.so 2>/dev/null | head -n 1)
[ -n "$NATIVE" ] || die "no pyproc/_native*.so in $PLATLIB"
DEPS=$(ldd "$NATIVE")  # (not `ldd | grep -q`: with pipefail, grep's early exit can fail the pipe)
grep -q libasan <<< "$DEPS" || die "$NATIVE is not linked against libasan: PYPROC_SANITIZE=1 did not apply"
grep -q libubsan <<< "$DEPS" || die "$NATIVE is not linked against libubsan: PYPROC_SANITIZE=1 did not apply"

rm -rf "$LOGS" && mkdir -p "$LOGS"
# detect_leaks=0: CPython keeps much of its memory until exit by design.  exitcode 86/87: a sanitizer's own exit.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:exitcode=86:log_path=$LOGS/asan:strict_string_checks=1:detect_invalid_pointer_pairs=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87:log_path=$LOGS/ubsan"
# How the runtimes get loaded, and by whom:
# - The venv's python (and python3, python3.X) become a small C wrapper that execs the real interpreter (argv[0]
#   kept, so sys.executable stays the wrapper) with LD_PRELOAD = the runtimes + an "unpreload" library, and the
#   sanitizer options if the environment has none.  So every Python of this venv has the runtimes first in line,
#   including the Python children the tests start with sys.executable (they import the sanitized pyproc).
# - The unpreload library's constructor, run before Python starts, removes from the environment exactly what the
#   wrapper added: a test sees the environment it gave, and the other programs the tests start (sh, cat, ps, ...)
#   run as in production (a preloaded ASan changes what they do: procps's ps even hangs).  It also points
#   UBSan's reports to files (libubsan ignores UBSAN_OPTIONS=log_path beside libasan).
# - handle_*=0 and disable_coredump=0: ASan would otherwise install SIGSEGV/SIGBUS/SIGFPE/SIGABRT/SIGILL handlers
#   and lower RLIMIT_CORE in every sanitized Python, which tests of a Python child's signal state and limits see.
#   A crash is still a failure (the process dies by its signal), without ASan's report of it.
# SANITIZE_CHILDREN=1 puts LD_PRELOAD in the tests' environment instead, so that every child inherits it.
# Everything pyproc's C code does, including the child side before exec, runs in a sanitized process.
export ASAN_OPTIONS="$ASAN_OPTIONS:handle_segv=0:handle_sigbus=0:handle_sigfpe=0:handle_abort=0:handle_sigill=0:disable_coredump=0"
export UBSAN_OPTIONS="$UBSAN_OPTIONS:handle_segv=0:handle_sigbus=0:handle_sigfpe=0:handle_abort=0:handle_sigill=0"
export PYPROC_UBSAN_LOG=$LOGS/ubsan
WRAP=$WORK/wrap
mkdir -p "$WRAP"
cat > "$WRAP/unpreload.c" <<'C'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
__attribute__((constructor)) static void pyproc_unpreload(void)
{
    const char *log = getenv("PYPROC_UBSAN_LOG");
    void *ubsan = dlopen("libubsan.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (log && ubsan) {
        void (*set_path)(const char *) = (void (*)(const char *))dlsym(ubsan, "__sanitizer_set_report_path");
        if (set_path)
            set_path(log);
    }
    const char *added = getenv("PYPROC_SAN_ADDED");
    if (!added)
        return;
    char names[512];
    strncpy(names, added, sizeof names - 1);
    names[sizeof names - 1] = 0;
    char *save = NULL;
    for (char *name = strtok_r(names, ",", &save); name; name = strtok_r(NULL, ",", &save))
        unsetenv(name);
    unsetenv("PYPROC_SAN_ADDED");
}
C
cat > "$WRAP/wrapper.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    (void)argc;
    static const char *const vars[][2] = {{"LD_PRELOAD", PRELOAD}, {"ASAN_OPTIONS", ASAN_OPTS},
                                          {"UBSAN_OPTIONS", UBSAN_OPTS}, {"PYPROC_UBSAN_LOG", UBSAN_LOG}};
    char added[512] = "";
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        if (getenv(vars[i][0]))
            continue;
        setenv(vars[i][0], vars[i][1], 1);
        strncat(added, vars[i][0], sizeof added - strlen(added) - 2);
        strcat(added, ",");
    }
    setenv("PYPROC_SAN_ADDED", added, 1);
    execv(REAL, argv);
    perror("sanitizer python wrapper: exec");
    return 127;
}
C
"$CC" -shared -fPIC -O2 "$WRAP/unpreload.c" -o "$WRAP/libunpreload.so"
PRELOAD="$ASAN_LIB:$UBSAN_LIB:$WRAP/libunpreload.so"
cstr() { "$VENV/bin/python" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }
for name in python python3 "python3.$("$VENV/bin/python" -c 'import sys; print(sys.version_info[1])')"; do
    [ -L "$VENV/bin/$name" ] || continue
    real=$(readlink -f "$VENV/bin/$name")
    "$CC" -O2 -o "$WRAP/$name" "$WRAP/wrapper.c" -DREAL="$(cstr "$real")" -DPRELOAD="$(cstr "$PRELOAD")" \
        -DASAN_OPTS="$(cstr "$ASAN_OPTIONS")" -DUBSAN_OPTS="$(cstr "$UBSAN_OPTIONS")" \
        -DUBSAN_LOG="$(cstr "$PYPROC_UBSAN_LOG")"
    rm -f "$VENV/bin/$name"
    cp "$WRAP/$name" "$VENV/bin/$name"
done
sanpy() { (cd "$WORK" && "$VENV/bin/python" "$@"); }
(cd "$WORK" && env -u ASAN_OPTIONS "$VENV/bin/python" -c 'import os, sys, pyproc
assert "LD_PRELOAD" not in os.environ and "ASAN_OPTIONS" not in os.environ, os.environ
assert "PYPROC_SAN_ADDED" not in os.environ, os.environ
assert sys.executable.endswith("/bin/python"), sys.executable') || die "the interpreter wrapper does not work"

step "canaries: the preloaded runtimes must report a deliberate bug"
CANARY=$WORK/canary
mkdir -p "$CANARY"
cat > "$CANARY/canary.c" <<'C'
#include <stdlib.h>
#include <string.h>
int canary_heap_overflow(int n) { char *p = malloc(8); memset(p, 1, 8); int v = p[n]; free(p); return v; }
int canary_signed_overflow(int n) { int big = 0x7fffffff; return big + n; }
C
cat > "$CANARY/hello.c" <<'C'
#include <unistd.h>
int main(void) { return write(1, "hello\n", 6) == 6 ? 0 : 1; }
C
"$CC" -shared -fPIC -O0 -g -fsanitize=address,undefined -fno-sanitize-recover=all "$CANARY/canary.c" -o "$CANARY/canary.so"
"$CC" -static -O2 "$CANARY/hello.c" -o "$CANARY/hello-static"
file "$CANARY/hello-static" | grep -q "statically linked" || die "could not build a static test program"
canary() { # $1: function, $2: expected exit code, $3: text the report must contain
    local rc=0
    sanpy -c "import ctypes, sys; ctypes.CDLL(sys.argv[1]).$1(ctypes.c_int(int(sys.argv[2])))" \
        "$CANARY/canary.so" 8 || rc=$?
    [ "$rc" = "$2" ] || die "canary $1 exited with $rc, expected $2 (a sanitizer report)"
    grep -qs "$3" "$LOGS"/* || die "canary $1: no report containing '$3' in $LOGS"
    grep -Eqs "$REPORT_PATTERN" "$LOGS"/* || die "canary $1: the report does not match REPORT_PATTERN"
    echo "canary $1: caught ($3, exit $rc)"
    rm -f "$LOGS"/*
}
canary canary_heap_overflow 86 "heap-buffer-overflow"
canary canary_signed_overflow 87 "signed integer overflow"

step "children started with the runtime preloaded still work (dynamic and static programs, every engine)"
cat > "$WORK/children.py" <<'PY'
import os, sys
import pyproc
assert "libasan" in os.environ.get("LD_PRELOAD", "")
for engine in pyproc.ENGINES:
    for argv in ([sys.argv[1]], ["sh", "-c", "echo hello"]):
        proc = pyproc.spawn(argv, engine=engine, stdout=pyproc.PIPE)
        out = proc.stdout.read()
        proc.stdout.close()
        code = proc.wait()
        assert (code, out) == (0, b"hello\n"), (engine, argv, code, out)
print("dynamic and static children run under the preload with every engine")
PY
LD_PRELOAD=$PRELOAD sanpy "$WORK/children.py" "$CANARY/hello-static"
show_reports || die "sanitizer reports while starting children (above)"

step "the test suite under ASan + UBSan"
# PYPROC_SANITIZED=1 tells tests that they run under the sanitizers (a test whose figures ASan distorts, such as
# page-fault or RSS counts, may skip those assertions: `if os.environ.get("PYPROC_SANITIZED") == "1"`).
export PYPROC_SANITIZED=1
rc=0
[ "${SANITIZE_CHILDREN:-0}" = 1 ] && export LD_PRELOAD=$PRELOAD
sanpy -m pytest -c "$SRC/pyproject.toml" --rootdir "$WORK" -p no:cacheprovider -q "$@" "$WORK/tests" || rc=$?
show_reports || die "sanitizer reports (above)"
[ "$rc" = 0 ] || die "the test suite failed under the sanitizers (pytest exit $rc)"
step "ok"
