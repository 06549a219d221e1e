"""Can this process build a lab? Human answers, never tracebacks."""

from __future__ import annotations

import os

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
TUN_PATH = "/dev/net/tun"


def _effective_caps() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        return None
    return None


def check_tap_privileges() -> str | None:
    """``None`` when a TAP device can be opened, else the reason in one sentence."""
    caps = _effective_caps()
    if os.geteuid() != 0 and (caps is None or not caps >> CAP_NET_ADMIN & 1):
        return "needs root (CAP_NET_ADMIN) to create a TAP device"
    if caps is not None and not caps >> CAP_NET_ADMIN & 1:
        return "needs CAP_NET_ADMIN to create a TAP device (run the container with --cap-add NET_ADMIN)"
    if not os.path.exists(TUN_PATH):
        return f"{TUN_PATH} is missing (load the tun module or pass --device /dev/net/tun to the container)"
    if not os.access(TUN_PATH, os.R_OK | os.W_OK):
        return f"{TUN_PATH} is not readable and writable by this user"
    return None


def check_lab_privileges() -> str | None:
    """``None`` when a lab (TAP + network namespace) can be built, else the reason."""
    reason = check_tap_privileges()
    if reason:
        return reason
    caps = _effective_caps()
    if caps is not None and not caps >> CAP_SYS_ADMIN & 1:
        return (
            "needs CAP_SYS_ADMIN to create network namespaces "
            "(run the container with --cap-add SYS_ADMIN)"
        )
    if not os.path.exists("/proc/self/ns/net"):
        return "this kernel has no network namespace support (/proc/self/ns/net missing)"
    for run_dir in ("/run", "/var/run"):
        if os.path.isdir(run_dir):
            if not os.access(run_dir, os.W_OK):
                return f"{run_dir} is not writable (needed for /run/netns and /run/vnic)"
            break
    return None
