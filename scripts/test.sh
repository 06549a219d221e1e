#!/usr/bin/env bash
# The test command (README, .ci/run): set up, lint, run the suite, then the sanitizer run of the
# C extension.  Extra arguments go to pytest.  System tests (TAP + namespaces) run when root.
set -euo pipefail
cd "$(dirname "$0")/.."
# VNIC_SETUP_DONE=1: everything is installed already (the docker image sets it; its tests may
# run without network access)
[ "${VNIC_SETUP_DONE:-}" = 1 ] || bash scripts/setup.sh
echo "[test] ruff"
.venv/bin/ruff check .
echo "[test] pytest"
.venv/bin/python -m pytest -q "$@"
if [ -f scripts/asan-tests.sh ]; then
    echo "[test] C extension under AddressSanitizer + UndefinedBehaviorSanitizer"
    bash scripts/asan-tests.sh
fi
