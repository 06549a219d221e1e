"""The TAP's TX/RX rings (vnic._tapio via ``TapDevice(rings=True)``) with the kernel peer: the
host stack moves several MiB both ways through them, byte-exact, in both TAP modes (one MTU
frame per write, and the virtio-net header with super-segments); the same with the rings
off; every frame the loop moved went through the rings; the threads end with the lab."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from vnic import tap as tap_module
from vnic.lab import Lab
from vnic.transfer import TransferOptions, run_transfer

pytestmark = pytest.mark.system

HANG_GUARD = 60.0


def ring_threads() -> int:
    """Threads of this process named by vnic._tapio ("vnic-tapio-tx" / "vnic-tapio-rx")."""
    n = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                n += f.read().startswith("vnic-tapio-")
        except FileNotFoundError:
            pass
    return n


def wait_no_ring_threads() -> None:
    # the lab is down: the ring threads are gone (the kernel may list one for a moment)
    end = time.monotonic() + HANG_GUARD
    while ring_threads():
        assert time.monotonic() < end, f"{ring_threads()} ring thread(s) left"
        time.sleep(0.01)


@pytest.fixture
def tap_spy(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What every TapDevice closed during the test looked like just before close()."""
    seen: list[dict[str, Any]] = []
    original = tap_module.TapDevice.close

    def close(self: tap_module.TapDevice) -> None:
        if not self.closed:
            seen.append({"name": self.name, "rings": self.rings, "offload": self.offload,
                         "stats": self.ring_stats(), "frames_read": self.frames_read,
                         "frames_written": self.frames_written,
                         "bytes_written": self.bytes_written,
                         "write_drops": self.write_drops})
        original(self)

    monkeypatch.setattr(tap_module.TapDevice, "close", close)
    return seen


@pytest.mark.parametrize(("rings", "capture"), [(True, False), (True, True), (False, False)],
                         ids=["rings-burst", "rings-capture", "direct"])
@pytest.mark.parametrize("tap_offload", [False, True], ids=["per-frame", "vnet-offload"])
def test_host_stack_transfer_through_the_rings(monkeypatch, tmp_path, tap_spy, leak_guard,
                                               tap_offload: bool, rings: bool,
                                               capture: bool) -> None:
    """``burst``: the loop hands each burst to ``TapDevice.write_frames``; ``capture``: with
    a pcapng capture it writes frame by frame (``TapDevice.write``)."""
    monkeypatch.setenv(tap_module.RINGS_ENV, "1" if rings else "0")
    assert ring_threads() == 0
    size = 6 << 20
    pcap = str(tmp_path / "rings.pcapng") if capture else None
    result = run_transfer(TransferOptions(size=size, direction="both", connections=2,
                                          tap_offload=tap_offload, seed=7, timeout=120,
                                          pcap=pcap))
    leak_guard.register(result["lab"]["namespace"], result["lab"]["tap"])
    assert result["intact"], result
    for conn in result["connections"]:
        assert conn["rsts_in"] == conn["rsts_out"] == 0, conn
        for d in conn["directions"].values():
            assert d["bytes_received"] == size, d
    assert len(tap_spy) == 1
    seen = tap_spy[0]
    assert seen["rings"] is rings and seen["offload"] is tap_offload
    loop = result["loop"]
    assert loop["write_drops"] == 0 and seen["write_drops"] == 0
    if rings:
        tx, rx = seen["stats"]["tx"], seen["stats"]["rx"]
        # every frame the loop wrote was queued on the TX ring, every frame it read came from
        # the RX ring: nothing bypassed the rings
        assert tx["submitted"] == loop["frames_out"] == seen["frames_written"]
        assert rx["taken"] == loop["frames_in"] == seen["frames_read"]
        assert tx["errors"] == 0 and rx["errors"] == 0
        assert tx["frames"] + tx["pending_frames"] == tx["submitted"]
        # the writer asks for SCHED_FIFO (vnic.tap.TX_PRIORITY; granted when privileged), the
        # reader keeps normal scheduling
        assert isinstance(tx["realtime"], bool) and rx["realtime"] is False
        # with the virtio-net header every entry carries 10 more bytes than the frame
        hdr = 10 if tap_offload else 0
        assert tx["bytes"] <= seen["bytes_written"] + hdr * tx["submitted"]
        assert tx["bytes"] > 2 * size and rx["bytes"] > 2 * size  # data + ACK overhead
        if tap_offload:  # super-segments crossed the rings both ways
            assert tx["bytes"] / tx["frames"] > 1514 and rx["bytes"] / rx["frames"] > 1514
    else:
        assert seen["stats"] is None
    wait_no_ring_threads()


def test_tap_with_rings_closes_cleanly_while_frames_flow(monkeypatch, leak_guard) -> None:
    """A lab torn down while the peer still floods the TAP and frames wait in the TX ring:
    close() stops both threads, the fd and eventfd are closed, nothing is left."""
    import subprocess
    import sys

    from vnic.tap_bench import _FLOOD, _udp_frame

    monkeypatch.setenv(tap_module.RINGS_ENV, "1")
    assert ring_threads() == 0
    fds = len(os.listdir("/proc/self/fd"))
    with Lab() as lab:
        leak_guard.register(lab.namespace, lab.tap_name)
        tap = lab.tap
        assert tap.rings and tap.fileno() != -1
        end = time.monotonic() + HANG_GUARD
        while ring_threads() != 2:
            assert time.monotonic() < end, "the TAP's two ring threads never ran"
            time.sleep(0.001)
        from pyroute2 import NetNS

        with NetNS(lab.namespace) as ns:
            idx = ns.link_lookup(ifname=lab.tap_name)[0]
            ns.neigh("replace", dst=lab.host_ip, lladdr=lab.host_mac, ifindex=idx,
                     state="permanent")
        flood = lab.run_in_namespace([sys.executable, "-c", _FLOOD, lab.host_ip, "30"],
                                     stdout=subprocess.DEVNULL)
        frame = _udp_frame(lab)
        end = time.monotonic() + HANG_GUARD
        while tap.ring_stats()["rx"]["frames"] < 100:  # the flood arrives through the RX ring
            assert time.monotonic() < end and flood.poll() is None
            tap.write_frames([frame] * 64)
            time.sleep(0.001)
        tap.write_frames([frame] * 2000)
    assert tap.closed and tap.ring_stats() is None
    wait_no_ring_threads()
    assert len(os.listdir("/proc/self/fd")) <= fds
