"""A TAP device opened through /dev/net/tun: the user-space end of the emulated wire.

The kernel side of the device is an ordinary Ethernet interface (the lab moves it into the peer
namespace); this side is a non-blocking file descriptor carrying whole Ethernet frames
(``IFF_TAP | IFF_NO_PI``: no packet-information header; a virtio-net header only with
``offload=True``, see :mod:`vnic.vnet`).

This sits on the per-frame path, so the hot methods are deliberately plain: one ``os.read`` per
frame until ``EAGAIN`` (``os.read`` allocates exactly one ``bytes`` object per frame, which is
cheaper in CPython than ``readv`` into a preallocated buffer followed by a copy), and one
``os.write`` per frame.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from types import TracebackType

from vnic import vnet

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
        "write_drops",
    )

    def __init__(self, name: str, *, read_size: int = DEFAULT_READ_SIZE, offload: bool = False,
                 mtu: int = 1500) -> None:
        """``offload=True`` opens the device with a virtio-net header and turns on TCP
        segmentation and checksum offload (:mod:`vnic.vnet`): reads may return TCP
        super-segments up to 64 KiB, writes may pass them (longer than ``mtu``)."""
        if not name or len(name.encode()) >= IFNAMSIZ:
            raise ValueError(f"interface name {name!r} must be 1..{IFNAMSIZ - 1} bytes")
        self.name = name
        self.offload = offload
        self.mtu = mtu
        self.read_size = max(read_size, OFFLOAD_READ_SIZE) if offload else read_size
        self.frames_read = 0
        self.frames_written = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.write_drops = 0
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
        log.debug("opened TAP %s fd=%d", name, fd)

    # -- the hot path -------------------------------------------------------------------------

    def fileno(self) -> int:
        return self._fd

    def read_frames(self, max_frames: int = 64) -> list[bytes]:
        """Every frame waiting on the descriptor (up to ``max_frames``); ``[]`` when none."""
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
                frame = vnet.complete_inbound(raw[:vnet.VNET_HDR_LEN], raw[vnet.VNET_HDR_LEN:])
                frames.append(frame)
                nbytes += len(frame)
        except BlockingIOError:
            pass
        self.frames_read += len(frames)
        self.bytes_read += nbytes
        return frames

    def read_frame(self) -> bytes | None:
        """One frame or ``None`` when nothing is waiting."""
        if self.offload:
            frames = self._read_offloaded(1)
            return frames[0] if frames else None
        try:
            frame = os.read(self._fd, self.read_size)
        except BlockingIOError:
            return None
        self.frames_read += 1
        self.bytes_read += len(frame)
        return frame

    def write(self, frame: bytes) -> bool:
        """Inject one Ethernet frame into the kernel; ``False`` (counted) if the kernel refused."""
        try:
            if self.offload:
                if len(frame) > 14 + self.mtu:
                    frame = bytearray(frame)
                os.writev(self._fd, (vnet.outbound_header(frame, self.mtu), frame))
            else:
                os.write(self._fd, frame)
        except BlockingIOError:
            self.write_drops += 1
            return False
        except OSError as exc:
            # EINVAL/EIO for malformed frames (e.g. shorter than an Ethernet header): a wire
            # would drop them too, so count instead of raising into the run loop.
            if exc.errno in (errno.EINVAL, errno.EIO, errno.EFAULT, errno.ENOBUFS):
                self.write_drops += 1
                log.debug("TAP %s refused a %d-byte frame: %s", self.name, len(frame), exc)
                return False
            raise
        self.frames_written += 1
        self.bytes_written += len(frame)
        return True

    def write_frames(self, frames: list[bytes]) -> int:
        """Write several frames; returns how many the kernel accepted."""
        ok = 0
        for frame in frames:
            if self.write(frame):
                ok += 1
        return ok

    # -- lifetime ------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
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
            if self._fd >= 0:
                os.close(self._fd)
        except (AttributeError, OSError):
            pass

    def __repr__(self) -> str:
        return f"TapDevice({self.name!r}, fd={self._fd})"
