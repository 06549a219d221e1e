"""Out-of-order receive: reassembly, overlap trimming, duplicates, OOO FIN, SACK blocks."""

from hypothesis import given, settings
from hypothesis import strategies as st

from tcpip.seq import seq_add
from tcpip.tcp import TcpState
from tcpip.tcp_buffers import OutOfOrderQueue

from .conftest import (
    ACK,
    FIN,
    LOCAL_SEQ,
    REMOTE_SEQ,
    SEND,
    config,
    established,
    fields,
    recv,
    recv_one,
)

R = REMOTE_SEQ + 1


def test_queue_add_and_pop():
    q = OutOfOrderQueue()
    assert q.add(100, 110, b"bbbbb") == 5
    assert q.add(100, 105, b"aaaaa") == 5
    assert q.add(100, 107, b"xxxxxx") == 0  # fully covered: first arrival wins
    assert q.nbytes == 10
    assert q.pop_ready(100) == []
    assert b"".join(q.pop_ready(105)) == b"aaaaabbbbb"
    assert not q and q.nbytes == 0


def test_queue_overlap_fills_only_gaps():
    q = OutOfOrderQueue()
    q.add(0, 10, b"A" * 5)  # [10, 15)
    q.add(0, 20, b"B" * 5)  # [20, 25)
    assert q.add(0, 8, b"c" * 20) == 10  # [8, 28) adds [8,10) [15,20) [25,28)
    assert q.ranges() == [(8, 10), (10, 15), (15, 20), (20, 25), (25, 28)]
    assert b"".join(q.pop_ready(8)) == b"cc" + b"A" * 5 + b"c" * 5 + b"B" * 5 + b"ccc"


def test_queue_pop_trims_data_already_received():
    q = OutOfOrderQueue()
    q.add(0, 10, b"0123456789")
    assert q.pop_ready(14) == [b"456789"]


def test_queue_across_sequence_wrap():
    q = OutOfOrderQueue()
    rcv = 0xFFFFFFF0
    q.add(rcv, seq_add(rcv, 20), b"after-wrap")
    q.add(rcv, seq_add(rcv, 10), b"0123456789")
    assert b"".join(q.pop_ready(seq_add(rcv, 10))) == b"0123456789after-wrap"


def test_ooo_segment_is_queued_and_dup_acked_then_hole_fill_delivers_all():
    conn = established()
    conn.on_segment(SEND(seq=R + 5, payload=b"world"), 0.0)
    assert conn.receive_available() == 0
    assert fields(recv_one(conn)) == dict(seq=LOCAL_SEQ + 1, ack=R, flags=ACK, payload=b"")
    assert conn.counters.ooo_segments == 1
    conn.on_segment(SEND(seq=R, payload=b"hello"), 0.01)
    assert conn.receive() == b"helloworld"
    assert recv_one(conn, 0.01).ack == R + 10


def test_each_connection_gets_its_own_queue_and_the_shared_empty_one_stays_empty():
    from tcpip.tcp_buffers import NO_OUT_OF_ORDER

    a, b = established(), established()
    assert a._ooo is NO_OUT_OF_ORDER and b._ooo is NO_OUT_OF_ORDER  # none made up front
    a.on_segment(SEND(seq=R + 5, payload=b"world"), 0.0)
    assert a._ooo is not NO_OUT_OF_ORDER and a._ooo.nbytes == 5
    assert b._ooo is NO_OUT_OF_ORDER and not NO_OUT_OF_ORDER and NO_OUT_OF_ORDER.nbytes == 0
    b.on_segment(SEND(seq=R, payload=b"hello"), 0.0)
    assert b.receive() == b"hello" and a.receive_available() == 0
    try:
        NO_OUT_OF_ORDER.add(0, 5, b"x")
    except RuntimeError:
        pass
    else:
        raise AssertionError("the shared empty queue took data")


def test_hole_fill_acks_immediately_even_with_delayed_ack():
    conn = established(cfg=config(delayed_ack=0.2))
    conn.on_segment(SEND(seq=R + 5, payload=b"world"), 0.0)
    assert recv_one(conn, 0.0).ack == R  # out of order: immediate duplicate ACK
    conn.on_segment(SEND(seq=R, payload=b"hello"), 0.01)
    assert recv_one(conn, 0.01).ack == R + 10


def test_overlapping_segments_deliver_each_byte_once():
    conn = established()
    data = bytes(range(100))
    conn.on_segment(SEND(seq=R + 50, payload=data[50:80]), 0.0)
    conn.on_segment(SEND(seq=R + 60, payload=data[60:100]), 0.0)
    conn.on_segment(SEND(seq=R + 10, payload=data[10:70]), 0.0)
    conn.on_segment(SEND(seq=R, payload=data[0:20]), 0.0)
    assert conn.receive() == data
    assert conn.rcv_nxt == R + 100


def test_fin_out_of_order_is_consumed_when_the_hole_fills():
    conn = established()
    conn.on_segment(SEND(seq=R + 3, flags=FIN | ACK, payload=b"end"), 0.0)
    assert not conn.eof_received and conn.state is TcpState.ESTABLISHED
    conn.on_segment(SEND(seq=R, payload=b"the"), 0.0)
    assert conn.eof_received and conn.state is TcpState.CLOSE_WAIT
    assert conn.receive() == b"theend"
    assert recv(conn)[-1].ack == R + 7


def test_sack_blocks_advertised_when_negotiated():
    conn = established(sack_enabled=True)
    conn.on_segment(SEND(seq=R + 10, payload=b"x" * 10), 0.0)
    conn.on_segment(SEND(seq=R + 30, payload=b"y" * 10), 0.0)
    acks = recv(conn)
    assert acks[-1].options.sack_blocks == ((R + 30, R + 40), (R + 10, R + 20))
    conn.on_segment(SEND(seq=R + 20, payload=b"z" * 10), 0.0)
    assert recv(conn)[-1].options.sack_blocks == ((R + 10, R + 40),)


def test_no_sack_blocks_without_negotiation():
    conn = established()
    conn.on_segment(SEND(seq=R + 10, payload=b"x" * 10), 0.0)
    assert recv_one(conn).options.sack_blocks == ()


def test_peer_sack_blocks_are_harmless():
    from tcpip.tcp_segment import TcpOptions

    conn = established(sack_enabled=True)
    conn.send(b"q" * 3000)
    recv(conn)
    opts = TcpOptions(sack_blocks=((LOCAL_SEQ + 1461, LOCAL_SEQ + 2921), (5, 6)))
    conn.on_segment(SEND(options=opts), 0.1)
    assert conn.state is TcpState.ESTABLISHED and conn.snd_una == LOCAL_SEQ + 1


@st.composite
def segmented_stream(draw):
    data = draw(st.binary(min_size=1, max_size=3000))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    bounds = [0, *cuts, len(data)]
    pieces = [(a, data[a:b]) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    # Duplicates and overlapping re-segmentations.
    extra = draw(
        st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(1, 600)), max_size=10)
    )
    for start, n in extra:
        pieces.append((start, data[start : start + n]))
    order = draw(st.permutations(pieces))
    return data, order


@settings(max_examples=200, deadline=None)
@given(segmented_stream(), st.integers(0, 0xFFFFFFFF))
def test_random_segmentation_reordering_duplication_delivers_exactly(case, irs):
    data, order = case
    rcv0 = seq_add(irs, 1)
    conn = established(rcv_nxt=rcv0, irs=irs, snd_wl1=rcv0)
    delivered = bytearray()
    for off, piece in order:
        conn.on_segment(SEND(seq=seq_add(rcv0, off), payload=piece), 0.0)
        delivered += conn.receive()
        recv(conn)
    assert bytes(delivered) == data
    assert conn.rcv_nxt == seq_add(rcv0, len(data))
    assert conn.receive_available() == 0


def test_bare_fin_out_of_order_is_consumed_when_the_data_arrives():
    conn = established()
    conn.on_segment(SEND(seq=R + 3, flags=FIN | ACK), 0.0)  # data [R, R+3) lost
    assert not conn.eof_received
    recv(conn)
    conn.on_segment(SEND(seq=R, payload=b"abc"), 0.1)
    assert conn.eof_received and conn.state is TcpState.CLOSE_WAIT
    assert recv(conn, 0.1)[-1].ack == R + 4


def test_each_out_of_order_segment_in_a_batch_gets_its_own_dupack():
    # The run loop delivers a batch of frames, then polls once: the sender still needs one
    # duplicate ACK per out-of-order segment to reach its fast-retransmit threshold.
    conn = established()
    for i in range(1, 5):
        conn.on_segment(SEND(seq=R + i * 100, payload=b"x" * 100), 0.0)
    acks = recv(conn)
    assert [a.ack for a in acks] == [R] * 4
    assert len({a.window for a in acks}) == 1


def test_window_does_not_change_while_a_hole_is_open():
    # A window change would make the sender discard the ACK as a duplicate (RFC 5681 (e)).
    conn = established(cfg=config(receive_buffer=8000), initial_rcv_wnd=8000, rcv_wnd=8000)
    conn.on_segment(SEND(seq=R, payload=b"a" * 4000), 0.0)
    first = recv_one(conn)
    conn.on_segment(SEND(seq=R + 5000, payload=b"c" * 1000), 0.1)
    assert recv_one(conn, 0.1).window == first.window
    conn.receive()  # the application frees 4000 bytes ...
    conn.on_segment(SEND(seq=R + 6000, payload=b"d" * 1000), 0.2)
    assert recv_one(conn, 0.2).window == first.window  # ... still the same offer
    conn.on_segment(SEND(seq=R + 4000, payload=b"b" * 1000), 0.3)  # hole filled
    ack = recv_one(conn, 0.3)
    assert ack.ack == R + 7000 and ack.window > first.window - 3000
