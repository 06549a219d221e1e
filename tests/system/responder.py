"""Test-only FrameNode that answers ARP and ICMP echo for the emulated host (scapy-built)."""

from __future__ import annotations

from scapy.compat import raw
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Ether


class Responder:
    def __init__(self, mac: str, ip: str) -> None:
        self.mac = mac
        self.ip = ip
        self.seen: list[bytes] = []
        self.arp_requests = 0
        self.echo_requests = 0
        self._out: list[bytes] = []

    def receive_frame(self, frame: bytes, now: float) -> None:
        self.seen.append(frame)
        pkt = Ether(frame)
        if ARP in pkt and pkt[ARP].op == 1 and pkt[ARP].pdst == self.ip:
            self.arp_requests += 1
            reply = Ether(src=self.mac, dst=pkt.src) / ARP(
                op=2, hwsrc=self.mac, psrc=self.ip, hwdst=pkt[ARP].hwsrc, pdst=pkt[ARP].psrc
            )
            self._out.append(raw(reply))
        elif IP in pkt and ICMP in pkt and pkt[IP].dst == self.ip and pkt[ICMP].type == 8:
            self.echo_requests += 1
            icmp = pkt[ICMP]
            reply = (
                Ether(src=self.mac, dst=pkt.src)
                / IP(src=self.ip, dst=pkt[IP].src)
                / ICMP(type=0, id=icmp.id, seq=icmp.seq)
                / bytes(icmp.payload)
            )
            self._out.append(raw(reply))

    def poll(self, now: float) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        return None
