#!/usr/bin/env bash
# Run the connection-table and data-path tests against offload_target._ctable (the table,
# _ctable.c, and its data path, _datapath.c) and the TAP ring tests against vnic._tapio (the
# TX/RX rings and their threads, _tapio.c), both built with AddressSanitizer and
# UndefinedBehaviorSanitizer.  Any sanitizer report fails the run.
#
# How:
#   1. Copy the sources and tests to a scratch directory and build both extensions there
#      with VNIC_SANITIZE=1 (setup.py adds -fsanitize=address,undefined
#      -fno-sanitize-recover=all -fno-omit-frame-pointer -g).  The checkout's own in-place
#      build is never replaced: a sanitized .so imported by a normal interpreter aborts
#      ("ASan runtime does not come first"), which would break every other test run.
#   2. Prove the sanitizers are live: a canary extension with one heap overflow and one
#      signed-integer overflow must be caught (a sanitizer run that cannot fail proves nothing).
#   3. Run tests/offload_target -- the table's tests, the data path's (test_datapath*.py: unit,
#      pair with the Python engine, hypothesis fuzz of the frame parser) and the miniport's,
#      which drive the same C code -- and tests/unit/test_tapio.py (both rings over a
#      SOCK_SEQPACKET pair: long runs, backpressure, close while busy, fork, bad arguments,
#      leaks) -- with the scratch copy first on PYTHONPATH, libasan
#      preloaded
#      (CPython itself is not built with ASan, so its runtime must be the first library
#      loaded), and these options:
#        ASAN_OPTIONS   halt_on_error=1 abort_on_error=1: the first error kills the process.
#                       detect_leaks=0: LeakSanitizer would report CPython's own allocations
#                       that live until exit (interned strings, static types, caches) and
#                       cannot be told apart from ours by suppressions, because every one of
#                       our allocations also has libpython frames on its stack.  Leaks of the
#                       table are covered instead by tests (tracemalloc sees PyMem_Calloc and
#                       the type's reference count is checked).
#        UBSAN_OPTIONS  halt_on_error=1 abort_on_error=1 print_stacktrace=1.
#        PYTHONMALLOC=malloc: bypass pymalloc so ASan sees every PyMem/PyObject allocation
#                       (the table objects themselves included), not pymalloc's arenas.
#        log_path + stderr scan: ASan reports go to files, UBSan reports (which ignore log_path
#                       when ASan is loaded too) to stderr, which is kept; the run fails if
#                       any report file exists or stderr holds a sanitizer report, even one
#                       from a child process whose exit status nobody checked.
#      pytest runs with --capture=sys so a report written just before an abort reaches the
#      real stderr instead of a capture file that dies with the process.
#
# Usage: bash scripts/asan-tests.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}

LIBASAN=$(gcc -print-file-name=libasan.so)
if [ ! -e "$LIBASAN" ] || [ "$LIBASAN" = "libasan.so" ]; then
    echo "[asan] libasan.so not found (gcc -print-file-name=libasan.so); install libasan" >&2
    exit 2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vnic-asan.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SRC=$WORK/src
mkdir -p "$SRC/tests" "$WORK/reports"
cp -r offload_target include setup.py pyproject.toml "$SRC/"
cp tests/__init__.py "$SRC/tests/"
cp -r tests/offload_target "$SRC/tests/"
mkdir -p "$SRC/tests/unit"
cp tests/unit/test_tapio.py "$SRC/tests/unit/"
# The data-path and miniport tests use the pure-Python packages (tcpip codecs and TCP engine
# as the peer, ndis, vnic): they are imported from the scratch copy too.
cp -r tcpip ndis vnic "$SRC/"
rm -f "$SRC"/offload_target/*.so "$SRC"/vnic/*.so
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +

echo "[asan] building offload_target._ctable and vnic._tapio with -fsanitize=address,undefined"
(cd "$SRC" && VNIC_SANITIZE=1 "$PY" setup.py -q build_ext --inplace --build-temp "$WORK/build" \
    >"$WORK/build.log" 2>&1) || { cat "$WORK/build.log" >&2; exit 1; }

export ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:detect_leaks=0:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:log_path=$WORK/reports/asan"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1:report_error_type=1:log_path=$WORK/reports/ubsan"
export PYTHONMALLOC=malloc
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"

reports() { find "$WORK/reports" -type f | sort; }
# Sanitizer report markers on stderr (ASan "ERROR: AddressSanitizer", UBSan "runtime error:").
SAN_MARKERS='ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer'

# --- 2. canary: the sanitizers must catch a known bug in this exact setup
mkdir -p "$WORK/canary"
cat >"$WORK/canary/_vnic_canary.c" <<'EOF'
#include <Python.h>
#include <limits.h>
#include <stdlib.h>
static PyObject *heap(PyObject *m, PyObject *a) {
    (void)m; (void)a;
    volatile char *p = malloc(8); int v = p[8]; free((void *)p); return PyLong_FromLong(v);
}
static PyObject *ub(PyObject *m, PyObject *a) {
    (void)m; volatile int x = INT_MAX; x = x + (int)PyLong_AsLong(a); return PyLong_FromLong(x);
}
static PyMethodDef methods[] = {{"heap", heap, METH_NOARGS, NULL}, {"ub", ub, METH_O, NULL},
                                {NULL, NULL, 0, NULL}};
static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_vnic_canary", NULL, 0, methods};
PyMODINIT_FUNC PyInit__vnic_canary(void) { return PyModuleDef_Init(&def); }
EOF
SUFFIX=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
INCLUDE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
gcc -shared -fPIC -std=c99 -I"$INCLUDE" -fsanitize=address,undefined -fno-sanitize-recover=all \
    -o "$WORK/canary/_vnic_canary$SUFFIX" "$WORK/canary/_vnic_canary.c"
for call in "heap()" "ub(1)"; do
    # (the outer 2>/dev/null only hides the shell's own "Aborted" job message)
    if (cd "$WORK/canary" && LD_PRELOAD="$LIBASAN" "$PY" -c "import _vnic_canary; _vnic_canary.$call" \
        >/dev/null 2>"$WORK/canary.err") 2>/dev/null; then
        echo "[asan] canary _vnic_canary.$call was NOT caught: the sanitizer setup is broken" >&2
        exit 1
    fi
    if [ -z "$(reports)" ] && ! grep -Eq "$SAN_MARKERS" "$WORK/canary.err"; then
        echo "[asan] canary _vnic_canary.$call wrote no report: the sanitizer setup is broken" >&2
        exit 1
    fi
    rm -f "$WORK"/reports/*
done
echo "[asan] canary: heap overflow and signed overflow are caught"

# --- 3. the table tests under the sanitizers
LOADED=$(cd "$SRC" && LD_PRELOAD="$LIBASAN" "$PY" -c \
    'import offload_target._ctable as m, offload_target.table as t; print(m.__file__, t.IMPLEMENTATION)')
case "$LOADED" in
    "$SRC"/offload_target/_ctable*" c") echo "[asan] testing $LOADED" ;;
    *) echo "[asan] the sanitized build is not the one imported: $LOADED" >&2; exit 1 ;;
esac
LOADED=$(cd "$SRC" && LD_PRELOAD="$LIBASAN" "$PY" -c 'import vnic._tapio as m; print(m.__file__)')
case "$LOADED" in
    "$SRC"/vnic/_tapio*) echo "[asan] testing $LOADED" ;;
    *) echo "[asan] the sanitized build is not the one imported: $LOADED" >&2; exit 1 ;;
esac
# the sanitized _tapio really is instrumented (linked against the ASan runtime)
# (ldd's output is kept first: grep -q exiting early would fail the pipe under pipefail)
DEPS=$(ldd "$SRC"/vnic/_tapio*.so)
if ! grep -q libasan <<<"$DEPS"; then
    echo "[asan] vnic._tapio was built without AddressSanitizer" >&2; exit 1
fi

status=0
(cd "$SRC" && LD_PRELOAD="$LIBASAN" "$PY" -m pytest -p no:cacheprovider --capture=sys -q \
    tests/offload_target tests/unit/test_tapio.py "$@") 2>"$WORK/stderr.log" || status=$?
cat "$WORK/stderr.log" >&2
if [ -n "$(reports)" ] || grep -Eq "$SAN_MARKERS" "$WORK/stderr.log"; then
    echo "[asan] sanitizer reports:" >&2
    for f in $(reports); do echo "=== $f" >&2; cat "$f" >&2; done
    grep -E -A3 "$SAN_MARKERS" "$WORK/stderr.log" >&2 || true
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "[asan] tests failed (exit status $status)" >&2
    exit "$status"
fi
echo "[asan] table, data-path and TAP ring tests passed under ASan + UBSan, no sanitizer report"
