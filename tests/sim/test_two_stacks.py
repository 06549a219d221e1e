"""Two HostStacks on the simulated wire (virtual clock) under seeded loss, reordering and
duplication in both directions.

Every case is a pure function of its parameters: the test id carries the loss rate, the close
order and the seed, so ``pytest "tests/sim/test_two_stacks.py::test_lossy_transfer_and_clean_close
[loss=3%-host-first-seed=7]"`` replays a failure exactly (same ISNs, same faults, same frames;
``test_same_seed_same_wire`` checks that).  ``run_case(seed, loss, close, size)`` does the same
from a Python prompt.

``test_lossy_transfer_and_clean_close``: a few hundred KiB each way through the asyncio-shaped
streams under 1/3/5% loss with as much reordering and half as much duplication, byte-exact in
both directions; then, with the wire settled, the close in the requested order (RFC 9293 3.6):
the side that sent the first FIN goes through TIME-WAIT and reaches CLOSED only after 2*MSL,
the other goes CLOSE-WAIT -> LAST-ACK -> CLOSED; in a simultaneous close both pass FIN-WAIT-1
and one of them CLOSING; not a single RST crosses the wire.

``test_faults_through_the_close``: the faults never stop; the data is still exact and the close
completes, and RSTs appear only as RFC 9293 answers to stale copies after a side is CLOSED.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest

from tcpip.addr import ip_bytes, mac_bytes
from tcpip.stack import HostStack
from tcpip.streams import StreamReader, StreamWriter, open_connection, start_server
from tcpip.tcp import TcpConfig, TcpConnection, TcpState
from tests.helpers import FrameRecorder, tcp_connection
from vnic.faults import FaultSpec, WireFaults
from vnic.simwire import SimWire

HOST_IP, PEER_IP = "198.18.0.2", "198.18.0.1"
HOST_MAC, PEER_MAC = "02:76:6e:00:00:02", "02:76:6e:00:00:01"
PORT = 5001
# Small but not tiny: TIME-WAIT must outlast the other side's FIN retransmissions at 5% loss
# (RTO backoff), or a lost last ACK would legitimately end in a RST.  Virtual time is free.
MSL = 3.0
SEEDS = range(1, 17)
LOSSES = (0.01, 0.03, 0.05)
CLOSE_ORDERS = ("host-first", "peer-first", "simultaneous")
TIMEOUT = 600.0  # virtual seconds


@dataclasses.dataclass
class Side:
    """What one application saw on its connection."""

    name: str
    conn: TcpConnection | None = None
    writer: StreamWriter | None = None
    received: bytes = b""
    got_all: bool = False  # read everything the other side sends (before its FIN)
    done: bool = False
    error: BaseException | None = None
    states: list[tuple[float, TcpState]] = dataclasses.field(default_factory=list)

    def track(self, conn: TcpConnection, clock: Any) -> None:
        self.conn = conn
        self.states.append((clock.now(), conn.state))

        def on_change(_c: TcpConnection, _old: TcpState, new: TcpState) -> None:
            self.states.append((clock.now(), new))

        conn.on_state_change = on_change

    def path(self) -> list[str]:
        return [s.name for _, s in self.states]

    def entered(self, state: TcpState) -> float | None:
        return next((t for t, s in self.states if s is state), None)


class Case:
    """A host stack and a peer stack on a lossy SimWire, plus the RST accounting."""

    def __init__(self, seed: int, loss: float, reorder: float, duplicate: float) -> None:
        self.seed = seed
        rng = random.Random(seed)
        self.host = HostStack(mac_bytes(HOST_MAC), ip_bytes(HOST_IP), 24,
                              tcp_config=TcpConfig(msl=MSL),
                              rng=random.Random(rng.getrandbits(64)), name="host")
        self.peer = HostStack(mac_bytes(PEER_MAC), ip_bytes(PEER_IP), 24,
                              tcp_config=TcpConfig(msl=MSL),
                              rng=random.Random(rng.getrandbits(64)), name="peer")
        spec = FaultSpec(loss=loss, reorder=reorder, duplicate=duplicate)
        self.faults = WireFaults.from_specs(spec, dataclasses.replace(spec), seed=seed)
        self.host_tx = FrameRecorder(self.host)
        self.peer_tx = FrameRecorder(self.peer)
        self.wire = SimWire(self.host_tx, self.peer_tx, faults=self.faults, latency=100e-6,
                            bandwidth=1.25e9, max_steps=2_000_000)

    def describe(self) -> str:
        return (f"seed={self.seed} t={self.wire.now:.3f} faults={self.faults.counters()} "
                f"host={self.host.counters.as_dict()} peer={self.peer.counters.as_dict()}")

    def rst_frames(self) -> int:
        return len(self.host_tx.rst_frames) + len(self.peer_tx.rst_frames)


def run_case(seed: int, loss: float, close: str, size: int, *, settle: bool = True,
             reorder: float | None = None, duplicate: float | None = None,
             ) -> tuple[Case, Side, Side, bytes, bytes]:
    """One connection host -> peer, ``size``-ish random bytes each way, then the close.

    ``settle=True``: the data moves under loss + reorder + duplicate (both directions); when
    both sides have everything, everything is acknowledged and the wire is empty, reordering
    and duplication stop (loss goes on) and the first side closes (``simultaneous``: both in
    the same instant, so the FINs cross).  No stale copy of an old segment can then outlive
    the connection, so the close must be RST-free.

    ``settle=False``: the faults stay on through the close and the closer closes right after
    writing (its FIN follows the data, the other side closes when it reads EOF).
    """
    data_rng = random.Random(f"payload:{seed}")
    up = data_rng.randbytes(size + data_rng.randrange(4096))  # host -> peer
    down = data_rng.randbytes(size + data_rng.randrange(4096))  # peer -> host
    case = Case(seed, loss, reorder=loss if reorder is None else reorder,
                duplicate=loss / 2 if duplicate is None else duplicate)
    host_side, peer_side = Side("host"), Side("peer")
    clock = case.wire.clock
    wire = case.wire

    async def exchange(side: Side, reader: StreamReader, writer: StreamWriter,
                       out: bytes, expect: int, first: bool) -> None:
        side.writer = writer
        try:
            writer.write(out)
            if settle:
                side.received = await reader.readexactly(expect)
                side.got_all = True
                if not first:  # the second closer closes when it sees the other's FIN
                    side.received += await reader.read()
                    writer.close()
                else:  # the test closes this writer once the wire has settled
                    side.received += await reader.read()
            elif first:
                writer.close()
                side.received = await reader.read()
            else:
                side.received = await reader.read()  # returns at the other side's FIN
                writer.close()
            await writer.drain()
            await writer.wait_closed()
        except BaseException as exc:  # reported by the test with the seed
            side.error = exc
        finally:
            side.done = True

    firsts = {"host-first": (True, False), "peer-first": (False, True)}.get(close, (True, True))

    async def peer_handler(reader: StreamReader, writer: StreamWriter) -> None:
        peer_side.track(tcp_connection(writer.get_extra_info("connection")), clock)
        await exchange(peer_side, reader, writer, down, len(up), firsts[1])

    async def host_client() -> None:
        reader, writer = await open_connection(case.host, PEER_IP, PORT)
        host_side.track(tcp_connection(writer.get_extra_info("connection")), clock)
        await exchange(host_side, reader, writer, up, len(down), firsts[0])

    start_server(case.peer, peer_handler, PORT)
    task = case.host.scheduler.spawn(host_client(), name="client")
    if settle:
        def settled() -> bool:
            if task.done() or host_side.done or peer_side.done:
                return True  # failed early: reported below
            if not (host_side.got_all and peer_side.got_all):
                return False
            conns = (host_side.conn, peer_side.conn)
            return (all(c is not None and c.snd_una == c.snd_max and not c.ack_owed
                        for c in conns)
                    and not wire._events  # noqa: SLF001  (nothing in flight on the wire)
                    and case.faults.a_to_b.held == 0 and case.faults.b_to_a.held == 0)

        assert wire.run_until(settled, TIMEOUT), case.describe()
        assert not (host_side.done or peer_side.done), (
            repr(host_side.error), repr(peer_side.error), case.describe())
        for inj in (case.faults.a_to_b, case.faults.b_to_a):
            inj.spec = dataclasses.replace(inj.spec, reorder=0.0, duplicate=0.0)
        for side, first in zip((host_side, peer_side), firsts, strict=True):
            if first:
                assert side.writer is not None
                side.writer.close()  # both in one instant when simultaneous: the FINs cross
    both_gone = lambda: (  # noqa: E731
        case.host.connection_count() == 0 and case.peer.connection_count() == 0
        and host_side.done and peer_side.done)
    assert wire.run_until(both_gone, TIMEOUT), (
        f"not closed: host {host_side.path()} peer {peer_side.path()} {case.describe()}")
    if task.done() and task.exception() is not None:
        raise AssertionError(f"client task failed: {case.describe()}") from task.exception()
    return case, host_side, peer_side, up, down


def loss_id(loss: float) -> str:
    return f"loss={loss:.0%}"


def first_and_second(close: str, host: Side, peer: Side) -> tuple[tuple[Side, ...], Side | None]:
    if close == "host-first":
        return (host,), peer
    if close == "peer-first":
        return (peer,), host
    return (host, peer), None


def check_common(case: Case, host: Side, peer: Side, up: bytes, down: bytes, ctx: str) -> None:
    assert host.error is None and peer.error is None, (repr(host.error), repr(peer.error), ctx)
    # byte-exact in both directions
    assert len(peer.received) == len(up) and peer.received == up, ctx
    assert len(host.received) == len(down) and host.received == down, ctx
    # the faults really happened (a seed may be lucky at 1%: count every kind)
    fc = case.faults.counters()
    assert sum(fc[d][k] for d in fc for k in ("dropped", "reordered", "duplicated")) > 0, ctx
    for stack in (case.host, case.peer):
        assert stack.counters.drops["internal-error"] == 0, ctx


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed={s}")
@pytest.mark.parametrize("close", CLOSE_ORDERS)
@pytest.mark.parametrize("loss", LOSSES, ids=loss_id)
def test_lossy_transfer_and_clean_close(loss: float, close: str, seed: int) -> None:
    size = 96 * 1024 + random.Random(seed).randrange(160 * 1024)  # 96..256 KiB each way
    case, host, peer, up, down = run_case(seed, loss, close, size)
    ctx = f"{loss_id(loss)} close={close} seed={seed}: {case.describe()}"
    check_common(case, host, peer, up, down, ctx)

    # RFC 9293 3.6: the first closer goes through TIME-WAIT for 2*MSL, the other through
    # CLOSE-WAIT and LAST-ACK; in a simultaneous close both pass CLOSING/TIME-WAIT.
    firsts, second = first_and_second(close, host, peer)
    for side in firsts:
        tw, closed = side.entered(TcpState.TIME_WAIT), side.entered(TcpState.CLOSED)
        assert tw is not None, (side.name, side.path(), ctx)
        assert closed is not None and closed >= tw + 2 * MSL, (side.name, tw, closed, ctx)
        assert side.path()[-2:] == ["TIME_WAIT", "CLOSED"], (side.name, side.path(), ctx)
        assert side.path()[-3] in ("FIN_WAIT_1", "FIN_WAIT_2", "CLOSING"), (side.path(), ctx)
    if second is None:
        # Both FINs left before either arrived, so the first FIN to arrive anywhere finds
        # its receiver's own FIN unacknowledged: at least one side passes CLOSING (the other
        # may see its FIN acked first, FIN-WAIT-2, when a FIN was lost).
        for side in (host, peer):
            assert side.path()[:2] == ["ESTABLISHED", "FIN_WAIT_1"], (side.path(), ctx)
        assert "CLOSING" in host.path() + peer.path(), ctx
    else:
        assert second.path() == ["ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"], (
            second.path(), ctx)

    # a clean close: not a single RST on the wire, none taken or sent by anybody
    assert case.rst_frames() == 0, ctx
    for side in (host, peer):
        assert side.conn is not None and side.conn.counters.rsts_in == 0, ctx
        assert side.conn.counters.rsts_out == 0, ctx
        assert not side.conn.reset_received and side.conn.error is None, ctx
    assert case.host.counters.rst_out == 0 and case.peer.counters.rst_out == 0, ctx


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed={s}")
@pytest.mark.parametrize("close", ("host-first", "peer-first"))
def test_faults_through_the_close(close: str, seed: int) -> None:
    """5% loss + reorder + duplicate until the very end: the data is still exact and the close
    completes.  Here a stale copy (an old ACK held back, a duplicate) may reach a stack that
    already forgot the connection; RFC 9293 3.10.7.1 answers it with a RST (so does Linux),
    and a TIME-WAIT that receives that in-window RST ends early (3.10.7.4, "second, check the
    RST bit"; RFC 1337 protection is not implemented).  A copy arriving in the very instant
    the connection closed meets the CLOSED TCB itself, which answers the same way.  What must
    never happen: a RST while the sending side's connection was still open."""
    size = 64 * 1024 + random.Random(seed).randrange(128 * 1024)
    case, host, peer, up, down = run_case(seed, 0.05, close, size, settle=False)
    ctx = f"close={close} seed={seed}: {case.describe()}"
    check_common(case, host, peer, up, down, ctx)
    firsts, second = first_and_second(close, host, peer)
    assert second is not None
    first = firsts[0]
    assert "TIME_WAIT" in first.path() and first.path()[-1] == "CLOSED", (first.path(), ctx)
    assert second.path()[-3:] == ["CLOSE_WAIT", "LAST_ACK", "CLOSED"], (second.path(), ctx)
    tw, closed = first.entered(TcpState.TIME_WAIT), first.entered(TcpState.CLOSED)
    assert tw is not None and closed is not None
    assert closed >= tw + 2 * MSL or first.conn.counters.rsts_in == 1, (tw, closed, ctx)
    for rec, side in ((case.host_tx, host), (case.peer_tx, peer)):
        gone = side.entered(TcpState.CLOSED)
        assert all(gone is not None and t >= gone for t in rec.rst_times), (
            side.name, rec.rst_times, gone, ctx)
    assert case.rst_frames() == (case.host.counters.rst_out + case.peer.counters.rst_out
                                 + host.conn.counters.rsts_out + peer.conn.counters.rsts_out), ctx


def test_same_seed_same_wire() -> None:
    """A failing seed is reproducible: two runs of one case put the same frames on the wire."""
    runs = []
    for _ in range(2):
        case, host, peer, _, _ = run_case(5, 0.05, "host-first", 64 * 1024, settle=False)
        runs.append((case.wire.stats.as_dict(), case.faults.counters(), round(case.wire.now, 9),
                     host.path(), peer.path(), host.conn.counters.retransmissions))
    assert runs[0] == runs[1]


# ---- the CLI: `vnic transfer --sim` --------------------------------------------------------


def test_cli_transfer_sim_json(capsys: pytest.CaptureFixture[str]) -> None:
    from vnic.cli import main

    rc = main(["transfer", "--sim", "--bytes", "200KiB", "--direction", "both",
               "--connections", "2", "--loss", "0.02", "--reorder", "1%", "--duplicate", "0.01",
               "--seed", "9", "--json"])
    out = capsys.readouterr().out
    result = json.loads(out)
    assert rc == 0, out
    assert result["intact"] and result["completed"] and result["mode"] == "sim"
    assert len(result["connections"]) == 2
    for conn in result["connections"]:
        assert conn["intact"] and conn["error"] is None
        assert conn["rsts_in"] == 0 and conn["rsts_out"] == 0
        for d in conn["directions"].values():
            assert d["bytes_sent"] == d["bytes_received"] == 200 * 1024
            assert d["sha256_sent"] == d["sha256_received"]


def test_cli_transfer_sim_pcap_records_digests_that_verify_checks(
        tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`vnic transfer --pcap` writes stream-digest events (sent and received, each direction):
    `vnic verify` then checks the wire streams against what the applications sent; a capture
    whose digest differs from its frames fails the digest-match rule."""
    from vnic.cli import main
    from vnic.verify import verify_capture

    pcap = tmp_path / "t.pcapng"
    rc = main(["transfer", "--sim", "--bytes", "100KiB", "--connections", "2", "--loss", "0.01",
               "--seed", "3", "--pcap", str(pcap), "--json"])
    assert rc == 0, capsys.readouterr().out
    report = verify_capture(pcap)
    assert report.ok, report
    assert len(report.connections) == 2
    for conn in report.connections.values():
        for d in conn.directions.values():
            assert d.digests_checked == 2  # the sender's and the receiver's digest

    # one recorded digest wrong (as if the application's bytes differed from the wire's):
    # verify must fail and name the rule
    import vnic.capture as capture_mod

    real = capture_mod.write_digest
    calls = []

    def corrupt_first(capture, t, conn, direction, nbytes, sha256, *, side="sent"):  # type: ignore[no-untyped-def]
        calls.append(conn)
        return real(capture, t, conn, direction, nbytes, "0" * 64 if len(calls) == 1 else sha256,
                    side=side)

    monkeypatch.setattr(capture_mod, "write_digest", corrupt_first)
    bad = tmp_path / "bad.pcapng"
    rc = main(["transfer", "--sim", "--bytes", "100KiB", "--seed", "3", "--pcap", str(bad), "--json"])
    capsys.readouterr()
    assert rc == 0 and calls  # the transfer itself is intact; only the record is wrong
    bad_report = verify_capture(bad)
    assert not bad_report.ok
    assert bad_report.rules_failed() == {"digest-match"}


BAD_INPUTS = [
    (["--bytes", "12XB"], "--bytes"),
    (["--loss", "2"], "--loss"),
    (["--connections", "0"], "--connections"),
    (["--fragment-size", "100"], "--fragment-size"),
    (["--fragment", "1.5"], "--fragment"),
]


def _run_cli(argv: list[str]) -> int:
    from vnic.cli import main

    try:
        return main(argv)
    except SystemExit as exc:  # argparse reports usage errors by exiting
        return int(exc.code or 0)


@pytest.mark.parametrize(("args", "option"), BAD_INPUTS, ids=lambda v: str(v))
def test_cli_usage_error_exit_2(args: list[str], option: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    rc = _run_cli(["transfer", "--sim", *args])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.out == ""
    assert "Traceback" not in captured.err
    lines = [ln for ln in captured.err.splitlines() if "error" in ln]
    assert len(lines) == 1 and option in lines[0] and args[1] in lines[0], captured.err


@pytest.mark.parametrize(("args", "option"), BAD_INPUTS, ids=lambda v: str(v))
def test_cli_usage_error_is_one_line(args: list[str], option: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc = _run_cli(["transfer", "--sim", *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err


def test_transfer_verdict_ignores_a_reset_after_the_application_finished() -> None:
    """A RST that arrives after both FINs and all the data (Linux answering our duplicate ACKs
    once its LAST-ACK ended, which ends our TIME-WAIT) does not make a stream "not intact";
    one that arrived before the application finished does."""
    from types import SimpleNamespace

    from vnic.transfer import HostSide, TransferOptions, _connection_report

    opts = TransferOptions(size=10, direction="up")
    peer = {"bytes_received": 10, "sha256_received": None, "error": None}

    def report(at_done: tuple[int, int], now_in: int) -> dict[str, Any]:
        side = HostSide(0, local_port=40000, rsts_at_done=at_done)
        side.sent.update(b"0123456789")
        side.connection = SimpleNamespace(counters=SimpleNamespace(
            rsts_in=now_in, rsts_out=0, retransmissions=0))
        return _connection_report(side, {**peer, "sha256_received": side.sent.hexdigest()},
                                  opts)

    late = report((0, 0), 1)
    assert late["intact"] and late["rsts_in"] == 0 and late["late_rsts_in"] == 1
    early = report((1, 0), 1)
    assert not early["intact"] and early["rsts_in"] == 1 and early["late_rsts_in"] == 0


def test_transfer_with_fragments_reassembles_byte_exact(capsys: pytest.CaptureFixture[str]) -> None:
    """``vnic transfer --fragment``: both directions' frames split into IPv4 fragments on the
    wire; both stacks reassemble them and every stream arrives intact."""
    import json

    rc = _run_cli(["transfer", "--sim", "--bytes", "512KiB", "--fragment", "0.5",
                   "--fragment-size", "256", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["intact"]
    assert result["faults"]["fragment"] == 0.5 and result["faults"]["fragment_size"] == 256
    wire = result["wire"]  # more frames arrived than were sent: the fragments
    assert wire["delivered_to_b"] > 2 * wire["frames_a_to_b"]
    assert wire["delivered_to_a"] > 2 * wire["frames_b_to_a"]
