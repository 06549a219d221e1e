"""Two engines over an in-memory lossy / reordering / duplicating pipe with a virtual clock.

Every run checks: both byte streams arrive exactly, the connection closes in the requested order
through TIME-WAIT to CLOSED on both sides, and nobody reports an error.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpip.tcp import TcpConfig, TcpConnection, TcpState

from .netsim import LinkFaults, Pipe

CLEAN = LinkFaults()
LOSSY = LinkFaults(loss=0.05, jitter=0.002)
MESSY = LinkFaults(loss=0.03, duplicate=0.05, reorder=0.15, jitter=0.003)
PROFILES = {"clean": CLEAN, "lossy": LOSSY, "messy": MESSY}

ORDERS = ("client_first", "server_first", "simultaneous")


def pair_config(rng: random.Random) -> TcpConfig:
    return TcpConfig(
        timestamps=rng.random() < 0.7,
        sack_permitted=rng.random() < 0.5,
        nodelay=rng.random() < 0.3,
        delayed_ack=rng.choice([0.0, 0.04, 0.2]),
        send_buffer=rng.choice([4096, 65536, 1 << 20]),
        receive_buffer=rng.choice([3000, 65535, 1 << 20]),
        mss=rng.choice([536, 1000, 1460]),
        msl=1.0,
        fin_wait_2_timeout=3600.0,
        max_retransmissions=30,
    )


class _Offloaded:
    """Stands in for the connection while it is handed off: drops input, sends nothing."""

    closed = False
    eof_received = False

    def __init__(self, state: TcpState) -> None:
        self.state = state

    def on_segment(self, seg, now: float) -> None:
        pass

    def poll(self, now: float) -> list:
        return []

    def next_deadline(self) -> None:
        return None

    def receive(self, n: int = -1) -> bytes:
        return b""


class Endpoint:
    def __init__(self, name: str, rng: random.Random, payload: bytes) -> None:
        self.name = name
        self.rng = rng
        self.payload = payload
        self.sent = 0
        self.got = bytearray()
        self.stall_until = 0.0
        self.closed_called = False
        self.states: list[TcpState] = []
        self.handoffs = 0

    def attach(self, conn: TcpConnection) -> None:
        conn.on_state_change = lambda c, old, new: self.states.append(new)

    def drive(self, conn: TcpConnection, now: float, close_now: bool) -> None:
        rng = self.rng
        if self.sent < len(self.payload) and conn.state in (
            TcpState.ESTABLISHED,
            TcpState.CLOSE_WAIT,
            TcpState.SYN_SENT,
            TcpState.SYN_RECEIVED,
        ):
            n = rng.randint(1, 20000)
            self.sent += conn.send(self.payload[self.sent : self.sent + n])
        if now >= self.stall_until:
            if rng.random() < 0.02:
                self.stall_until = now + rng.random() * 2.0  # the application stops reading
            else:
                self.got += conn.receive(rng.choice([-1, 1, 100, 5000]))
        if (
            close_now
            and not self.closed_called
            and self.sent == len(self.payload)
            and conn.state is not TcpState.SYN_SENT  # close() there deletes the TCB
        ):
            self.closed_called = True
            conn.close()


def run_pair(
    seed: int,
    faults: LinkFaults,
    order: str,
    handoff: bool = False,
    handoff_gap: float = 0.0,
    handoffs: int = 1,
    max_time: float = 3000.0,
) -> tuple[Pipe, Endpoint, Endpoint]:
    rng = random.Random(seed)
    cfg_a, cfg_b = pair_config(rng), pair_config(rng)
    if handoff:  # enough data that the handoff happens mid-transfer
        a_data = rng.randbytes(rng.choice([50_000, 200_000]))
        b_data = rng.randbytes(rng.choice([3000, 50_000]))
    else:
        a_data = rng.randbytes(rng.choice([0, 1, 3000, 50_000, 200_000]))
        b_data = rng.randbytes(rng.choice([0, 1, 3000, 50_000]))
    p = Pipe(
        seed=seed,
        faults=faults,
        config_a=cfg_a,
        config_b=cfg_b,
        iss_a=rng.getrandbits(32),
        iss_b=rng.getrandbits(32),
        now=rng.random() * 1000,
    )
    p.start = p.now
    ea = Endpoint("a", random.Random(seed + 1), a_data)
    eb = Endpoint("b", random.Random(seed + 2), b_data)
    ea.attach(p.a)
    handoff_at = p.now + rng.random() * 0.3 if handoff else None
    resume: tuple[float, object] | None = None
    while p.now < max_time:
        a, b = p.a, p.b
        if b is not None and b.on_state_change is None:
            eb.attach(b)
        if resume is not None:
            if p.now >= resume[0]:
                p.a = TcpConnection.from_snapshot(resume[1], cfg_a, p.now)
                ea.attach(p.a)
                ea.handoffs += 1
                resume = None
                if ea.handoffs < handoffs:  # the next one counts from the resume
                    handoff_at = p.now + rng.random() * 0.3
        elif (
            handoff_at is not None
            and p.now >= handoff_at
            and a.state
            in (
                TcpState.ESTABLISHED,
                TcpState.FIN_WAIT_1,
                TcpState.FIN_WAIT_2,
                TcpState.CLOSE_WAIT,
                TcpState.CLOSING,
                TcpState.LAST_ACK,
            )
        ):
            handoff_at = None
            if not handoff_gap and ea.handoffs + 1 < handoffs:
                handoff_at = p.now + rng.random() * 0.3
            # The handoff order of the contract: poll (pending output), flush_ack, export.
            p._transmit("b", a.poll(p.now))
            p._transmit("b", a.flush_ack(p.now))
            snap = a.export_state(p.now)
            if handoff_gap:
                resume = (p.now + handoff_gap, snap)
                p.a = _Offloaded(snap.state)  # nobody answers during the gap
            else:
                p.a = TcpConnection.from_snapshot(snap, cfg_a, p.now)
                ea.attach(p.a)
                ea.handoffs += 1
        # Stop the clock at the next handoff / resume instead of jumping over it.
        if resume is not None:
            p.wake_at = resume[0]
        else:
            p.wake_at = handoff_at if handoff_at is not None and handoff_at > p.now else None
        a, b = p.a, p.b
        if resume is None:
            if order == "client_first":
                ea.drive(a, p.now, close_now=True)
            elif order == "server_first":
                ea.drive(a, p.now, close_now=a.eof_received)
            else:
                ea.drive(a, p.now, close_now=True)
        if b is not None:
            if order == "client_first":
                eb.drive(b, p.now, close_now=b.eof_received)
            else:
                eb.drive(b, p.now, close_now=True)
        if a.closed and b is not None and b.closed:
            break
        if not p.step():
            # Idle (e.g. an application is stalled): let time pass.
            p.now += 0.1
        if ea.stall_until > p.now or eb.stall_until > p.now:
            nt = p.next_time()
            if nt is None or nt > p.now + 0.05:
                p.now += 0.05
    # drain what the applications did not read yet
    ea.got += p.a.receive()
    if p.b is not None:
        eb.got += p.b.receive()
    return p, ea, eb


def check(p: Pipe, ea: Endpoint, eb: Endpoint, order: str) -> None:
    assert p.b is not None
    assert bytes(eb.got) == ea.payload, "client -> server stream differs"
    assert bytes(ea.got) == eb.payload, "server -> client stream differs"
    assert p.a.closed and p.b.closed, (p.a.state, p.b.state)
    assert p.a.error is None and p.b.error is None, (p.a.error, p.b.error)
    assert p.a.eof_received and p.b.eof_received
    # Liveness: over 4500 random seeds (up to 10% loss, 3000-byte windows) no run took more
    # than 150 s of virtual time; a stall such as a retransmission that is never sent, or
    # two ends discarding each other's ACKs, shows up here.
    assert p.now - p.start < 600, f"took {p.now - p.start:.0f} s of virtual time"
    if order == "client_first":
        assert TcpState.TIME_WAIT in ea.states and TcpState.LAST_ACK in eb.states
    elif order == "server_first":
        assert TcpState.TIME_WAIT in eb.states and TcpState.LAST_ACK in ea.states
    else:
        # Simultaneous or overlapping closes: the active closer(s) pass through TIME-WAIT.
        assert TcpState.TIME_WAIT in ea.states or TcpState.TIME_WAIT in eb.states


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("seed", range(6))
def test_pair_transfer_and_close(seed, profile, order):
    p, ea, eb = run_pair(seed * 7919 + 1, PROFILES[profile], order)
    check(p, ea, eb, order)


@pytest.mark.parametrize("gap", [0.0, 0.05, 0.5])
@pytest.mark.parametrize("seed", range(8))
def test_pair_with_mid_transfer_export_import(seed, gap):
    p, ea, eb = run_pair(seed * 104729 + 3, MESSY, "client_first", handoff=True, handoff_gap=gap)
    check(p, ea, eb, "client_first")
    assert ea.handoffs == 1


@pytest.mark.parametrize("seed", range(6))
def test_pair_with_repeated_handoffs(seed):
    """Export / import the client many times during one transfer (an offload, upload,
    offload ... cycle), with random gaps during which nobody answers for it."""
    p, ea, eb = run_pair(
        seed * 7 + 11, LOSSY, "server_first", handoff=True, handoff_gap=0.02, handoffs=20
    )
    check(p, ea, eb, "server_first")
    assert ea.handoffs >= 5


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.sampled_from([0.0, 0.01, 0.1]),
    dup=st.sampled_from([0.0, 0.1]),
    reorder=st.sampled_from([0.0, 0.3]),
    order=st.sampled_from(ORDERS),
)
def test_pair_hypothesis(seed, loss, dup, reorder, order):
    faults = LinkFaults(loss=loss, duplicate=dup, reorder=reorder, jitter=0.002)
    p, ea, eb = run_pair(seed, faults, order)
    check(p, ea, eb, order)


def test_simultaneous_open_pair():
    """Both sides call connect() at the same time (RFC 9293 figure 8)."""
    from tcpip.addr import ip_bytes

    cfg = TcpConfig(msl=1.0)
    ip1, ip2 = ip_bytes("198.18.0.1"), ip_bytes("198.18.0.2")
    x = TcpConnection.connect(cfg, ip1, 5000, ip2, 6000, 100, 0.0)
    y = TcpConnection.connect(cfg, ip2, 6000, ip1, 5000, 300, 0.0)
    now = 0.0
    x.send(b"from x")
    y.send(b"from y")
    for _ in range(20):
        sx, sy = x.poll(now), y.poll(now)
        now += 0.01
        for s in sx:
            y.on_segment(s, now)
        for s in sy:
            x.on_segment(s, now)
    assert x.state is TcpState.ESTABLISHED and y.state is TcpState.ESTABLISHED
    assert x.receive() == b"from y" and y.receive() == b"from x"
