#!/usr/bin/env bash
# Set up everything vnic needs on a fresh Debian bookworm machine (idempotent):
# Debian packages for the lab (iproute2, gcc, python3-dev, tcpdump, tshark), a virtual
# environment in .venv, and vnic installed into it (which also builds the C extension of the
# offload target).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
# the second view of TAP runs: tcpdump in the peer namespace, tshark's TCP analysis
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
command -v tshark >/dev/null 2>&1 || need+=(tshark)
python3 -c 'import sysconfig,os,sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' \
    || need+=(python3-dev)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "[setup] installing Debian packages: ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "[setup] missing Debian packages (run as root to install): ${need[*]}" >&2
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    python3 -m venv .venv
fi
echo "[setup] installing vnic and its test tools into .venv"
if ! out=$(.venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1); then
    printf '%s\n' "$out" >&2
    echo "[setup] pip install failed" >&2
    exit 1
fi
printf '%s\n' "$out" | grep -v -e "^WARNING: Location" -e '^$' || true
# the C extension must really be there: without it the offload target cannot offload anything
.venv/bin/python -c 'import offload_target._ctable as c; assert c.HAS_DATAPATH' \
    || { echo "[setup] the C extension offload_target._ctable did not build" >&2; exit 1; }
echo "[setup] done: .venv/bin/vnic --help"
