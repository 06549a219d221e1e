"""Annotate a capture with who built each frame and the handoff events (docs/capture-format.md).

:class:`HandoffRecorder` joins a :class:`~vnic.pcapng.PcapngWriter`, the host's
:class:`~tcpip.offload.ChimneyHost` and its :class:`~tcpip.stack.HostStack`:

* ``recorder.annotate`` is the run loop's / simulated wire's ``annotate=`` hook: for every TCP
  frame it returns ``component=target`` (outbound, IPv4 identification >= 0x8000, T.1) and
  ``conn=<local>-<remote> epoch=<n> phase=<InHost|Offloading|Offloaded|Uploading>``;
* it observes the chimney (``ChimneyHost.observers``) and writes ``vnic-event {json}`` notes
  for offload-start / -complete / -failed, upload-requested, terminate-start / -complete, with
  the returned delegated sequence numbers, the BufferedData and the bytes the target delivered
  to the host during the epoch (length and SHA-256), and the IPv4-identification marks;
* :meth:`HandoffRecorder.record_digest` / :func:`write_digest` record what the applications
  sent and received (``stream-digest``), :meth:`HandoffRecorder.record_info` run facts.

Usage::

    cap = PcapngWriter(path, time_base=0.0)
    rec = HandoffRecorder(cap, oh.chimney, oh.stack)
    wire = SimWire(oh.node, peer, capture=cap, annotate=rec.annotate)
    ...
    rec.record_digest(rec.conn_name(sock), "host->peer", *stream_digest(sent), side="sent")
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from typing import Any

from tcpip.addr import ip_str
from vnic.pcapng import PcapngWriter

__all__ = [
    "EVENT_PREFIX",
    "HandoffRecorder",
    "conn_name",
    "event_text",
    "parse_event",
    "stream_digest",
    "write_digest",
    "write_event",
]

EVENT_PREFIX = "vnic-event "
TARGET_IP_ID_MIN = 0x8000  # T.1: the offload target's half of the identification space

_PHASE_AFTER = {
    "offload-start": "Offloading",
    "offload-complete": "Offloaded",
    "offload-failed": "InHost",
    "terminate-start": "Uploading",
    "terminate-complete": "InHost",
}


def stream_digest(data: bytes | bytearray | memoryview) -> tuple[int, str]:
    """``(len(data), sha256 hex)`` of an application's byte stream."""
    return len(data), hashlib.sha256(data).hexdigest()


def conn_name(local_ip: bytes | str, local_port: int, remote_ip: bytes | str, remote_port: int) -> str:
    """``"198.18.0.2:40000-198.18.0.1:5001"`` (the emulated host's side first)."""
    li = local_ip if isinstance(local_ip, str) else ip_str(local_ip)
    ri = remote_ip if isinstance(remote_ip, str) else ip_str(remote_ip)
    return f"{li}:{local_port}-{ri}:{remote_port}"


def event_text(event: dict[str, Any]) -> str:
    return EVENT_PREFIX + json.dumps(event, separators=(",", ":"), default=str)


def parse_event(text: str) -> dict[str, Any] | None:
    """The event dict of a ``vnic-event {json}`` note (None for any other note)."""
    if not text.startswith(EVENT_PREFIX):
        return None
    try:
        ev = json.loads(text[len(EVENT_PREFIX):])
    except ValueError:
        return None
    return ev if isinstance(ev, dict) and "event" in ev else None


def write_event(capture: PcapngWriter, t: float, event: str, **fields: Any) -> dict[str, Any]:
    """Write one ``vnic-event`` note at loop time ``t`` (for code without a recorder)."""
    ev: dict[str, Any] = {"event": event, "t": round(t, 6), **fields}
    capture.annotate(event_text(ev), t)
    return ev


def write_digest(capture: PcapngWriter, t: float, conn: str, direction: str, nbytes: int,
                 sha256: str, *, side: str = "sent") -> dict[str, Any]:
    """A ``stream-digest`` event: ``side`` is ``sent`` (the sending application's bytes) or
    ``received`` (what the receiving application read); ``direction`` ``host->peer`` or
    ``peer->host``."""
    if side not in ("sent", "received"):
        raise ValueError(f"side must be 'sent' or 'received', not {side!r}")
    return write_event(capture, t, "stream-digest", conn=conn, direction=direction,
                       side=side, bytes=int(nbytes), sha256=str(sha256))


@dataclasses.dataclass
class _Conn:
    name: str
    epoch: int = 0
    phase: str = "InHost"
    rcv_pos: int | None = None
    delivered: int = 0
    delivered_hash: Any = dataclasses.field(default_factory=hashlib.sha256)


def _find_target(chimney: Any) -> Any:
    """The offload target below ``chimney`` (through its NDIS binding), if reachable."""
    binding = getattr(chimney, "binding", None)
    handle = getattr(binding, "miniport", None)
    return getattr(handle, "miniport", None)


class HandoffRecorder:
    """Frame annotations + handoff events for one host (see the module docstring).

    ``target``: the :class:`~offload_target.miniport.OffloadTarget` whose ``last_ip_id``
    gives the target mark of each event (found through the chimney's binding when omitted).
    """

    def __init__(self, capture: PcapngWriter, chimney: Any, stack: Any = None, *,
                 target: Any = None) -> None:
        self.capture = capture
        self.chimney = chimney
        self.stack = stack if stack is not None else getattr(chimney, "stack", None)
        if self.stack is None:
            raise ValueError("HandoffRecorder needs the host stack")
        self.target = target if target is not None else _find_target(chimney)
        self.local_ip: bytes = bytes(self.stack.ip)
        self.conns: dict[tuple[bytes, int, int], _Conn] = {}  # (remote ip, remote port, local port)
        self.events: list[dict[str, Any]] = []
        if chimney is not None and hasattr(chimney, "observers"):
            chimney.observers.append(self._on_chimney)
        self.record_info({"recorder": "vnic.capture", "format": 1,
                          "host_ip": ip_str(self.local_ip)})

    # -- names -----------------------------------------------------------------------------------
    def _conn(self, remote_ip: bytes, remote_port: int, local_port: int) -> _Conn:
        key = (remote_ip, remote_port, local_port)
        c = self.conns.get(key)
        if c is None:
            c = self.conns[key] = _Conn(conn_name(self.local_ip, local_port, remote_ip, remote_port))
        return c

    def conn_name(self, sock_or_key: Any) -> str:
        """The capture name of a connection: a TcpSocket, a stack ConnKey, or a stream writer."""
        key = sock_or_key
        if hasattr(key, "get_extra_info"):
            key = key.get_extra_info("connection")
        if hasattr(key, "key"):
            key = key.key
        if not isinstance(key, tuple) or len(key) != 3:
            raise TypeError(f"not a connection: {sock_or_key!r}")
        return self._conn(bytes(key[0]), int(key[1]), int(key[2])).name

    def now(self) -> float:
        return float(self.stack.now)

    # -- the loop's annotate hook ----------------------------------------------------------------
    def annotate(self, direction: str, frame: bytes) -> str | None:
        """Extra comment words for one frame (``None`` for non-TCP/IPv4 frames)."""
        if len(frame) < 34:
            return None
        off = 14
        et = frame[12:14]
        if et == b"\x81\x00":
            off = 18
            et = frame[16:18]
        if et != b"\x08\x00" or len(frame) < off + 20 or frame[off + 9] != 6:
            return None
        if ((frame[off + 6] << 8) | frame[off + 7]) & 0x1FFF:
            return None  # a later IPv4 fragment (the fragment wire fault): no TCP header
        ihl = (frame[off] & 0x0F) * 4
        t = off + ihl
        if len(frame) < t + 4:
            return None
        ident = (frame[off + 4] << 8) | frame[off + 5]
        src = bytes(frame[off + 12:off + 16])
        dst = bytes(frame[off + 16:off + 20])
        sport, dport = struct.unpack_from("!HH", frame, t)
        if src == self.local_ip:
            c = self._conn(dst, dport, sport)
            lead = "component=target " if ident >= TARGET_IP_ID_MIN else ""
        elif dst == self.local_ip:
            c = self._conn(src, sport, dport)
            lead = ""
        else:
            return None
        return f"{lead}conn={c.name} epoch={c.epoch} phase={c.phase}"

    # -- events ----------------------------------------------------------------------------------
    def _marks(self) -> dict[str, int | None]:
        host_id = getattr(self.stack, "_ip_id", None)
        target_id = getattr(self.target, "last_ip_id", None) if self.target is not None else None
        return {"host_ip_id": host_id, "target_ip_id": target_id}

    def _emit(self, event: str, **fields: Any) -> dict[str, Any]:
        t = self.now()
        ev: dict[str, Any] = {"event": event, "t": round(t, 6), **fields}
        self.events.append(ev)
        self.capture.annotate(event_text(ev), t)
        return ev

    def _on_chimney(self, event: str, info: dict[str, Any]) -> None:
        key = info["key"]
        c = self._conn(bytes(key[0]), int(key[1]), int(key[2]))
        if event == "receive-delivered":
            data = info["data"]
            c.delivered += len(data)
            c.delivered_hash.update(data)
            return
        fields: dict[str, Any] = {}
        if event == "offload-start":
            c.epoch += 1
            snap = info["snapshot"]
            buffered = bytes(snap.buffered_receive)
            c.rcv_pos = (snap.rcv_nxt - len(buffered)) % (1 << 32)
            c.delivered = 0
            c.delivered_hash = hashlib.sha256()
            fields = {
                "snd_una": snap.snd_una, "snd_nxt": snap.snd_nxt, "snd_max": snap.snd_max,
                "rcv_nxt": snap.rcv_nxt, "send_bytes": len(snap.send_data),
                "buffered_bytes": len(buffered),
                "buffered_sha256": hashlib.sha256(buffered).hexdigest(),
                "rcv_pos": c.rcv_pos, "fin_received": bool(snap.fin_received), **self._marks(),
            }
        elif event in ("offload-complete", "terminate-start"):
            fields = self._marks()
        elif event == "offload-failed":
            fields = {"status": str(info.get("status"))}
        elif event == "upload-requested":
            fields = {"reason": str(info.get("reason"))}
        elif event == "terminate-complete":
            deleg = info.get("delegated")
            buffered = bytes(info.get("buffered") or b"")
            fields = {"status": str(info.get("status")), "outcome": info.get("outcome")}
            if deleg is not None:
                fields.update(snd_una=int(deleg.SndUna), snd_nxt=int(deleg.SndNxt),
                              snd_max=int(deleg.SndMax), rcv_nxt=int(deleg.RcvNxt))
            fields.update(
                send_bytes=int(info.get("send_bytes", 0)),
                refused_bytes=int(info.get("refused_bytes", 0)),
                buffered_bytes=len(buffered),
                buffered_sha256=hashlib.sha256(buffered).hexdigest(),
                delivered_bytes=c.delivered,
                delivered_sha256=c.delivered_hash.hexdigest(),
                rcv_pos=c.rcv_pos,
                **self._marks(),
            )
        else:
            fields = {k: v for k, v in info.items()
                      if k not in ("key", "name", "sock") and isinstance(v, (int, float, str, bool))}
        c.phase = _PHASE_AFTER.get(event, c.phase)
        self._emit(event, conn=c.name, epoch=c.epoch, **fields)

    # -- run facts -------------------------------------------------------------------------------
    def record_digest(self, conn: Any, direction: str, nbytes: int, sha256: str, *,
                      side: str = "sent") -> dict[str, Any]:
        """A ``stream-digest`` event (``conn``: a name, TcpSocket, key or stream writer)."""
        name = conn if isinstance(conn, str) else self.conn_name(conn)
        ev = write_digest(self.capture, self.now(), name, direction, nbytes, sha256, side=side)
        self.events.append(ev)
        return ev

    def record_info(self, info: dict[str, Any]) -> dict[str, Any]:
        """A ``run-info`` event with ``info`` (JSON-serialisable values)."""
        return self._emit("run-info", **{k: v for k, v in info.items() if k not in ("event", "t")})

    def close(self) -> None:
        """Stop observing the chimney (the capture stays open: its owner closes it)."""
        obs = getattr(self.chimney, "observers", None)
        if obs is not None and self._on_chimney in obs:
            obs.remove(self._on_chimney)
