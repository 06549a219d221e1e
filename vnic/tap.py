"""A TAP device opened through /dev/net/tun: the user-space end of the emulated wire.

The kernel side of the device is an ordinary Ethernet interface (the lab moves it into the peer
namespace); this side is a non-blocking file descriptor carrying whole Ethernet frames
(``IFF_TAP | IFF_NO_PI``: no packet-information header; a virtio-net header only with
``offload=True``, see :mod:`vnic.vnet`).

Two ways to move the frames:

* **rings** (``rings=True``, the default; ``VNIC_TAP_RINGS=0`` in the environment changes the
  default): like a NIC's DMA engines, two C threads (:mod:`vnic._tapio`) do the TAP's
  syscalls concurrently with the run loop.  ``write`` / ``write_frames`` copy frames into a
  :class:`~vnic._tapio.TxRing`, whose writer thread writes each one (``write(2)``, with the
  kernel peer's receive processing that runs inside that syscall); a reader thread reads
  frames (``read(2)``) into an :class:`~vnic._tapio.RxRing` that ``read_frames`` takes from, and
  ``fileno()`` is the RX ring's eventfd (readable while frames wait), so the loop's
  ``select`` works unchanged.  The writer writes bursts (32 KiB or more) at SCHED_FIFO
  (:data:`TX_PRIORITY`) when the process may (``VNIC_TAP_RT=0``: normal scheduling), so that
  the kernel peer's reader, which every TAP write wakes onto the writer's CPU, does not
  preempt it frame by frame.  A frame the kernel refuses is dropped by the writer and counted
  in ``write_drops`` (later, not in the return value of the write that queued it).
* **direct** (``rings=False``): the run loop's thread does the syscalls itself; the hot
  methods are deliberately plain: one ``os.read`` per frame until ``EAGAIN`` (``os.read``
  allocates exactly one ``bytes`` object per frame, which is cheaper in CPython than ``readv``
  into a preallocated buffer followed by a copy), and one ``os.write`` per frame
  (``write_frames`` for a burst; a TAP takes one frame per write).

Both apply to every frame the device moves (host stack and offloaded data path alike) and
both work with the virtio-net header mode (``offload=True``): with rings, each TX entry is
built from :func:`vnic.vnet.outbound_parts` (header + frame pieces, copied into the ring by
the C side), and the RX ring's reader thread does what :func:`vnic.vnet.complete_inbound`
does (completes the checksums the header asks for, in C) before ``take`` returns the frames
without their headers; the direct mode calls ``complete_inbound`` itself.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from types import TracebackType

from vnic import vnet
from vnic.alloc import keep_large_buffers_in_heap

try:
    from vnic import _tapio
except ImportError:  # pragma: no cover - the extension is not built
    _tapio = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
IFNAMSIZ = 16
#: read size with segmentation offload: a 64 KiB super-segment plus headers and the vnet header
OFFLOAD_READ_SIZE = 65536 + 128

#: Largest frame read from the device. The lab sets MTU 1500 (1514-byte frames); the margin keeps
#: VLAN-tagged or slightly larger frames intact, and frames longer than this are truncated by the
#: kernel, never split.
DEFAULT_READ_SIZE = 2048

#: environment variable that sets the default of ``TapDevice(rings=...)``: "0" or "1"
RINGS_ENV = "VNIC_TAP_RINGS"
#: bytes of each ring (TX and RX)
RING_BYTES = 4 << 20
#: environment variable: "0" keeps the TX ring's writer thread at normal scheduling
RT_ENV = "VNIC_TAP_RT"
#: SCHED_FIFO priority of the TX ring's writer thread while it writes a burst (32 KiB or more;
#: the lowest real-time priority; see ``vnic/_tapio.c``: a TAP write runs the kernel peer's
#: receive path and wakes its reader onto the writer's CPU, where, at normal priority, it
#: preempts the writer for every frame)
TX_PRIORITY = 1


def default_tx_priority() -> int:
    """The TX writer's SCHED_FIFO priority: :data:`TX_PRIORITY`, or 0 (normal scheduling)
    when ``$VNIC_TAP_RT`` is "0".  Without the privilege the thread stays at normal
    scheduling anyway (``ring_stats()["tx"]["realtime"]``)."""
    return 0 if os.environ.get(RT_ENV, "").strip() == "0" else TX_PRIORITY


def default_rings() -> bool:
    """``rings`` when the caller does not say: ``$VNIC_TAP_RINGS`` ("0"/"1"), else on when
    the C extension is built."""
    env = os.environ.get(RINGS_ENV, "").strip()
    if env in ("0", "1"):
        return env == "1" and _tapio is not None
    return _tapio is not None


class TapError(OSError):
    """Opening or configuring the TAP device failed (message says why)."""


class TapDevice:
    """A non-blocking TAP file descriptor (IFF_TAP | IFF_NO_PI).

    ``TapDevice("vnic3t")`` creates the interface in the caller's network namespace (a
    non-persistent TAP: it disappears when the descriptor is closed).
    """

    __slots__ = (
        "name",
        "read_size",
        "offload",
        "mtu",
        "_fd",
        "frames_read",
        "frames_written",
        "bytes_read",
        "bytes_written",
        "_write_drops",
        "_ring_drops",
        "_tx",
        "_rx",
        "_fileno",
    )

    def __init__(self, name: str, *, read_size: int = DEFAULT_READ_SIZE, offload: bool = False,
                 mtu: int = 1500, rings: bool | None = None) -> None:
        """``offload=True`` opens the device with a virtio-net header and turns on TCP
        segmentation and checksum offload (:mod:`vnic.vnet`): reads may return TCP
        super-segments up to 64 KiB, writes may pass them (longer than ``mtu``).
        ``rings``: frame I/O in C threads through TX/RX rings (module docstring); ``None``
        = :func:`default_rings`."""
        if not name or len(name.encode()) >= IFNAMSIZ:
            raise ValueError(f"interface name {name!r} must be 1..{IFNAMSIZ - 1} bytes")
        if rings is None:
            rings = default_rings()
        elif rings and _tapio is None:
            raise TapError(errno.ENOSYS, "rings=True needs the vnic._tapio extension (build it)")
        self._tx = None
        self._rx = None
        self._fd = -1
        self._fileno = -1
        self.name = name
        self.offload = offload
        self.mtu = mtu
        self.read_size = max(read_size, OFFLOAD_READ_SIZE) if offload else read_size
        self.frames_read = 0
        self.frames_written = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self._write_drops = 0
        self._ring_drops = 0
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise TapError(exc.errno, f"{TUN_PATH} does not exist (no TUN/TAP support)") from None
        except PermissionError as exc:
            raise TapError(exc.errno, f"cannot open {TUN_PATH}: needs root (CAP_NET_ADMIN)") from None
        try:
            flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
            ifr = struct.pack("16sH22x", name.encode(), flags)
            res = fcntl.ioctl(fd, TUNSETIFF, ifr)
            if offload:
                fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
        except OSError as exc:
            os.close(fd)
            if exc.errno == errno.EPERM:
                raise TapError(exc.errno, f"TUNSETIFF {name}: needs CAP_NET_ADMIN") from None
            if exc.errno == errno.EBUSY:
                raise TapError(exc.errno, f"TUNSETIFF {name}: interface name in use") from None
            raise TapError(exc.errno, f"TUNSETIFF {name}: {exc.strerror}") from None
        actual = res[:IFNAMSIZ].rstrip(b"\0").decode()
        if actual != name:  # pragma: no cover - the kernel keeps explicit names
            os.close(fd)
            raise TapError(errno.EINVAL, f"kernel named the TAP {actual!r}, wanted {name!r}")
        self._fd = fd
        self._fileno = fd
        keep_large_buffers_in_heap()  # frame-sized buffers: heap, not fresh pages (vnic.alloc)
        if rings:
            try:
                self._tx = _tapio.TxRing(fd, RING_BYTES, priority=default_tx_priority())
                # with offload the reader thread completes the virtio-net checksums (as
                # vnet.complete_inbound) and take() drops the header: off the run loop's thread
                self._rx = _tapio.RxRing(fd, RING_BYTES, self.read_size,
                                         vnet_header=self.offload)
            except BaseException:
                self.close()
                raise
            self._fileno = self._rx.fileno()
        log.debug("opened TAP %s fd=%d%s", name, fd, " with rings" if rings else "")

    # -- the hot path -------------------------------------------------------------------------

    def fileno(self) -> int:
        """What to ``select`` on for input: the TAP fd, or with rings the RX ring's eventfd."""
        return self._fileno

    @property
    def rings(self) -> bool:
        """Frame I/O through the C rings (see the module docstring)."""
        return self._rx is not None

    @property
    def write_drops(self) -> int:
        """Frames the kernel refused: counted at the write, or by the TX ring's writer."""
        tx = self._tx
        return self._write_drops + self._ring_drops + (tx.stats()["errors"] if tx else 0)

    def set_tx_priority(self, priority: int) -> None:
        """The TX writer's SCHED_FIFO priority for its bursts from now on (0: normal
        scheduling; :data:`TX_PRIORITY` is the default).  No effect without rings."""
        if self._tx is not None:
            self._tx.set_priority(priority)

    def ring_stats(self) -> dict[str, dict[str, object]] | None:
        """``{"tx": TxRing.stats(), "rx": RxRing.stats()}``, or ``None`` without rings."""
        if self._tx is None or self._rx is None:
            return None
        return {"tx": self._tx.stats(), "rx": self._rx.stats()}

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued frame went to the kernel (``True`` at once without rings);
        ``False`` if ``timeout`` seconds passed first."""
        return True if self._tx is None else bool(self._tx.flush(timeout))

    def read_frames(self, max_frames: int = 64) -> list[bytes]:
        """Every frame waiting on the descriptor (up to ``max_frames``); ``[]`` when none."""
        rx = self._rx
        if rx is not None:
            frames = rx.take(max_frames)   # with offload: completed already (vnet_header)
            if frames:
                self.frames_read += len(frames)
                self.bytes_read += sum(map(len, frames))
            return frames
        if self.offload:
            return self._read_offloaded(max_frames)
        fd = self._fd
        size = self.read_size
        read = os.read
        frames: list[bytes] = []
        append = frames.append
        nbytes = 0
        try:
            for _ in range(max_frames):
                frame = read(fd, size)
                append(frame)
                nbytes += len(frame)
        except BlockingIOError:
            pass
        self.frames_read += len(frames)
        self.bytes_read += nbytes
        return frames

    def _read_offloaded(self, max_frames: int) -> list[bytes]:
        frames: list[bytes] = []
        nbytes = 0
        try:
            for _ in range(max_frames):
                raw = os.read(self._fd, self.read_size)
                frame = vnet.complete_inbound(raw[:vnet.VNET_HDR_LEN], memoryview(raw)[vnet.VNET_HDR_LEN:])
                frames.append(frame)
                nbytes += len(frame)
        except BlockingIOError:
            pass
        self.frames_read += len(frames)
        self.bytes_read += nbytes
        return frames

    def read_frame(self) -> bytes | None:
        """One frame or ``None`` when nothing is waiting."""
        if self.offload or self._rx is not None:
            frames = self.read_frames(1)
            return frames[0] if frames else None
        try:
            frame = os.read(self._fd, self.read_size)
        except BlockingIOError:
            return None
        self.frames_read += 1
        self.bytes_read += len(frame)
        return frame

    def write(self, frame: bytes) -> bool:
        """Inject one Ethernet frame into the kernel; ``False`` (counted) if the kernel refused.
        With rings: queue it (``True``); a refusal is counted in ``write_drops`` later."""
        tx = self._tx
        if tx is not None:
            tx.submit([vnet.outbound_parts(frame, self.mtu) if self.offload else frame])
            self.frames_written += 1
            self.bytes_written += len(frame)
            return True
        try:
            if self.offload:
                os.writev(self._fd, vnet.outbound_parts(frame, self.mtu))
            else:
                os.write(self._fd, frame)
        except OSError as exc:
            self._refused(frame, exc)
            return False
        self.frames_written += 1
        self.bytes_written += len(frame)
        return True

    def _refused(self, frame: bytes, exc: OSError) -> None:
        if isinstance(exc, BlockingIOError):
            self._write_drops += 1
            return
        # EINVAL/EIO for malformed frames (e.g. shorter than an Ethernet header): a wire
        # would drop them too, so count instead of raising into the run loop.
        if exc.errno in (errno.EINVAL, errno.EIO, errno.EFAULT, errno.ENOBUFS):
            self._write_drops += 1
            log.debug("TAP %s refused a %d-byte frame: %s", self.name, len(frame), exc)
            return
        raise exc

    def write_frames(self, frames: list[bytes]) -> int:
        """Write a burst of frames; returns how many the kernel accepted.  A TAP takes one
        frame per ``write`` (the kernel peer's receive processing runs inside it), so this is
        still one syscall per frame, with the per-frame Python work kept to the minimum; with
        offload, super-segments go out whole (TSO) without being copied.  With rings: one
        copy of the burst into the TX ring (all accepted; refusals counted later)."""
        tx = self._tx
        if tx is not None:
            if self.offload:
                parts = vnet.outbound_parts
                mtu = self.mtu
                tx.submit([parts(frame, mtu) for frame in frames])
            else:
                tx.submit(frames)
            self.frames_written += len(frames)
            self.bytes_written += sum(map(len, frames))
            return len(frames)
        fd = self._fd
        ok = 0
        nbytes = 0
        try:
            if self.offload:
                writev = os.writev
                parts = vnet.outbound_parts
                mtu = self.mtu
                for frame in frames:
                    try:
                        writev(fd, parts(frame, mtu))
                    except OSError as exc:
                        self._refused(frame, exc)
                        continue
                    ok += 1
                    nbytes += len(frame)
            else:
                write = os.write
                for frame in frames:
                    try:
                        write(fd, frame)
                    except OSError as exc:
                        self._refused(frame, exc)
                        continue
                    ok += 1
                    nbytes += len(frame)
        finally:  # counted even when an unexpected error ends the burst
            self.frames_written += ok
            self.bytes_written += nbytes
        return ok

    # -- lifetime ------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _close_rings(self) -> None:
        """Stop the ring threads (frames still queued for TX are discarded, as a NIC reset
        would); they must be gone before the TAP fd is closed."""
        tx, rx, self._tx, self._rx = self._tx, self._rx, None, None
        if tx is not None:
            tx.close()
            self._ring_drops += tx.stats()["errors"]
        if rx is not None:
            rx.close()

    def close(self) -> None:
        self._close_rings()
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            self._fileno = -1
            os.close(fd)
            log.debug("closed TAP %s", self.name)

    def __enter__(self) -> TapDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._close_rings()
            if self._fd >= 0:
                os.close(self._fd)
        except (AttributeError, OSError):
            pass

    def __repr__(self) -> str:
        rings = ", rings" if self._rx is not None else ""
        return f"TapDevice({self.name!r}, fd={self._fd}{rings})"
