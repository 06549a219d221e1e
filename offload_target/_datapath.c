/* SPDX-License-Identifier: MIT */
/*
 * offload_target/_datapath.c -- the offloaded TCP data path ("firmware") of the emulated NIC,
 * as methods of offload_target._ctable.ConnectionTable.  Contract: docs/internals.md, "The data
 * path (firmware, C only)"; rules: the NDIS chimney reference, c.5, d.3 and Appendix T.
 *
 * Roughly equivalent Python (per connection; the C code keeps it in the 200-byte slot plus a
 * side structure ct_conn, and all of it is driven by integer ticks):
 *
 *     def process_frame(frame, now):                       # -> FRAME_* (an int, nothing else)
 *         eth/vlan/ipv4/tcp = parse(frame)                  # lengths, IP + TCP checksums
 *         if not ipv4_tcp or key not in table:  return FRAME_NOT_OURS
 *         if terminating and SACK and seg has data beyond RCV.NXT:  drop (d.3 step 3)
 *         if malformed or ip_options or not active or terminating or urgent or
 *            state in (CLOSED, TIME_WAIT):       return FRAME_PASS_UP
 *         return tcp_input(conn, seg, now)                  # RFC 9293 3.10.7.4 + RFC 5961
 *
 *     def tcp_input(c, seg, now):
 *         PAWS (RFC 7323); acceptability test; RST: seq == RCV.NXT -> EVENT_RST, CLOSED,
 *         in window -> challenge ACK; SYN: seq == RCV.NXT -> CLOSED + EVENT_RETRIEVE, PASS_UP,
 *         else challenge ACK (<= 1 per 3 s); no ACK bit -> drop; ACK > SND.MAX -> ACK, drop;
 *         URG -> EVENT_RETRIEVE(ReceivedUrgentData), stop ACKing, PASS_UP (this and later);
 *         ack_process(): free send data, RTT (timestamps or one timed segment, Karn),
 *           slow start / congestion avoidance / fast retransmit + NewReno, window update,
 *           FIN ACKed -> FIN_WAIT_2 / TIME_WAIT / CLOSED + EVENT_FIN_ACKED;
 *         receive_text(): in order -> receive ring, fill holes from the out-of-order list,
 *           EVENT_DATA, ACK every ack_frequency segments or after delayed_ack_ticks;
 *           out of order -> into the ring at its place + a range in the OOO list, ACK now;
 *           FIN in order -> EVENT_FIN, CLOSE_WAIT / CLOSING / TIME_WAIT (+ EVENT_RETRIEVE).
 *
 *     def poll(now):  fire due timers (min-heap), then conn_output() for each connection
 *                     marked pending: RST, retransmission, new data in MSS-sized frames within
 *                     min(SND.WND, CWND) (Nagle, sender SWS), FIN, window probe, keepalive
 *                     probe, pure ACK; -> list of Ethernet frames (bytes)
 *
 * Memory (per table, allocated on the first configure() or activate()):
 *
 *     CTable.dp ──► ct_dp
 *                   ├── config (ticks_per_second, ack_frequency, ...), counters, ip_id
 *                   ├── ct_conn *conns[capacity] ──► ct_conn (only for activated slots)
 *                   │        ├── MACs, VLAN, MSS, flags, RTT timing, NewReno, TS delta ...
 *                   │        ├── send ring   sbuf[ssize]:  byte 0 (at shead) = SND.UNA,
 *                   │        │                slen = unacked + unsent bytes; allocated at
 *                   │        │                the first send_append (4 KiB), doubled as needed
 *                   │        │     SND.UNA      SND.NXT            SND.UNA+slen (= FIN seq)
 *                   │        │       |--sent------|---not yet sent----|
 *                   │        └── receive ring rbuf[rsize]: rlen in-order bytes from rhead
 *                   │             (received, ACKed, not taken), then the receive window:
 *                   │         rhead      rhead+rlen (= RCV.NXT)       + RcvWnd
 *                   │           |--in order--|..ooo..##..ooo###.......|
 *                   │             out-of-order bytes sit at their final place, the OOO list
 *                   │             (<= ooo_segments ranges) says which.  Logically the ring
 *                   │             has rlim bytes (>= rlen + RcvWnd at all times); physically
 *                   │             rsize bytes, allocated when the first data arrives (4 KiB)
 *                   │             and doubled (up to rlim, unwrapping the live span: rlen +
 *                   │             the out-of-order bytes) when a segment needs bytes beyond
 *                   │             it; a failed allocation drops that segment (rcv_alloc_drops)
 *                   ├── timer heap: (earliest of the slot's five deadlines, slot), min-heap
 *                   │     with heap_pos[capacity]: next_deadline() O(1), updates O(log n)
 *                   ├── pending[]: handles whose output must run at the next poll()
 *                   └── events[]:  (handle, EVENT_*, value) until events() drains them
 *
 * process_frame() allocates no Python object: it reads the frame in place (buffer protocol),
 * updates C state, appends to the C arrays above and returns a small int.  Frames are built
 * only in poll() / flush_acks(), straight into the bytes objects that are returned.
 *
 * Out-of-order data is queued (T.9 requires out-of-order queuing), bounded by ooo_segments
 * ranges per connection; a segment that would need one more range is dropped and counted
 * (the peer retransmits it).  With SACK negotiated (ConstFlags TCP_FLAG_SACK_ENABLED) every
 * ACK-carrying frame but a RST sent while out-of-order data is held carries SACK blocks
 * (RFC 2018): the held ranges, the one holding the most recently received segment first, then
 * the others by their last arrival (section 4), 3 beside timestamps, 4 without; data frames
 * only those that fit in the MSS (see emit()).  The peer's SACK blocks are ignored on input
 * (no SACK-based recovery, T.9).
 */

#include "_ctable.h"
#include "vnic_inet_sum.h"

/* ------------------------------------------------------------- constants ---- */

enum { FRAME_CONSUMED = 0, FRAME_NOT_OURS = 1, FRAME_PASS_UP = 2 };
enum {
    EVENT_SEND_ACKED = 1, EVENT_DATA = 2, EVENT_FIN = 3, EVENT_RST = 4, EVENT_RETRIEVE = 5,
    EVENT_FIN_ACKED = 6,
    EVENT_PUSH = 7,         /* in-order data with PSH placed; value: the sequence number after
                             * its last byte (T.2: a push-mode receive buffer holding that byte
                             * completes) */
};
/* TCP_OFFLOAD_CONNECTION_STATE */
enum {
    ST_CLOSED = 0, ST_ESTABLISHED = 4, ST_FIN_WAIT_1 = 5, ST_FIN_WAIT_2 = 6, ST_CLOSE_WAIT = 7,
    ST_CLOSING = 8, ST_LAST_ACK = 9, ST_TIME_WAIT = 10,
};
/* TCP_UPLOAD_REASON */
enum { UR_RECEIVED_URGENT_DATA = 5, UR_TIMEOUT_EXPIRATION = 8, UR_UPLOAD_REQUESTED = 10 };
/* TCP_OFFLOAD_STATE_CONST / _CACHED flags */
#define TCP_FLAG_TIMESTAMP_ENABLED 0x01
#define TCP_FLAG_SACK_ENABLED 0x02
#define TCP_FLAG_WINDOW_SCALING_ENABLED 0x04
#define TCP_FLAG_KEEP_ALIVE_ENABLED 0x01
#define TCP_FLAG_NAGLING_ENABLED 0x02

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_PSH 0x08
#define TH_ACK 0x10
#define TH_URG 0x20

#define DP_OOO_LIMIT 64             /* largest ooo_segments configure() accepts */
#define DP_SACK_BLOCKS_TS 3         /* RFC 2018 section 3: SACK blocks that fit beside the */
#define DP_SACK_BLOCKS_NO_TS 4      /* timestamp option (40 - 12 - 4) / 8, and without it */
#define DP_RING_MIN 4096u           /* first allocation of a send / receive ring (bytes) */
#define DP_MAX_CWND 0x3FFFFFFFu
/* largest tso_max configure() accepts: a super-segment's IPv4 total length must fit 16 bits
 * (65535 - 20 IPv4 - 60 TCP header); the segment payload is also capped per frame */
#define DP_TSO_LIMIT (65535u - 20u - 60u)

/* ------------------------------------------------------------ structures ---- */

typedef struct {
    uint32_t seq, end;              /* out-of-order bytes [seq, end) are in the receive ring */
    uint32_t stamp;                 /* ct_conn.sack_clock when a segment last arrived in the
                                     * range (the newest range has the largest; SACK order) */
} dp_range;

typedef struct {
    uint64_t handle;
    uint32_t type;
    uint64_t value;
} dp_event;

typedef struct {
    uint64_t key;                   /* earliest running deadline of the slot */
    uint32_t slot;
} dp_hent;

typedef struct ct_conn {
    uint8_t local_mac[6], remote_mac[6];
    uint16_t vlan_id;
    uint16_t path_mtu;
    uint16_t mss;                   /* send MSS: min(RemoteMss, mtu - 40) - 12 with timestamps */
    uint8_t snd_shift, rcv_shift;   /* window scale shifts in use (0 without window scaling) */

    /* send ring: byte 0 (at shead) is SND.UNA; sbuf[ssize] is what is allocated (NULL / 0
     * until the first send_append), grown by doubling to hold slen */
    uint8_t *sbuf;
    uint32_t ssize, shead, slen;
    /* receive ring: rlen in-order bytes at rhead, then the window.  rlim is the ring's logical
     * size (rlen + RcvWnd <= rlim, rcap + window-scale unit <= rlim); rbuf[rsize] is what is
     * allocated (NULL / 0 until data arrives), grown by doubling up to rlim when a segment
     * needs bytes beyond it */
    uint8_t *rbuf;
    uint32_t rsize, rhead, rlen, rcap, rlim;
    /* bytes taken from the ring for an indication the host did not accept, kept by the
     * miniport (set_receive_held): still the target's, so they count against the window */
    uint32_t held;

    dp_range ooo[DP_OOO_LIMIT];
    uint32_t nooo;
    uint32_t sack_clock;            /* last dp_range.stamp handed out */
    uint32_t rcv_fin_seq;           /* sequence number of an out-of-order FIN */

    uint32_t snd_wl2;               /* SND.WL2 (not in the NDIS state; starts at SND.UNA) */
    uint32_t recover;               /* NewReno */
    uint32_t rtt_seq;               /* timed segment: an ACK above this ends the measurement */
    uint32_t last_ack_sent;         /* RCV.NXT of the last ACK we sent (RFC 7323 TS.Recent) */
    uint32_t ts_delta;              /* T.6: our TS clock = now + ts_delta (mod 2^32) */
    uint32_t rto;                   /* base RTO in ticks, without backoff */
    uint32_t segs_unacked;          /* in-order data segments not ACKed yet */
    uint32_t bytes_unacked;         /* in-order data bytes not ACKed yet (ACK every
                                     * ack_frequency * MSS bytes: GRO'd super-segments) */

    uint64_t rtt_start;
    uint64_t rt_start;              /* first retransmission of the current segment */
    uint64_t ts_recent_time;
    uint64_t last_challenge;        /* RFC 5961 rate limits (ticks); UINT64_MAX = never */
    uint64_t last_syn_challenge;
    uint64_t acked_total;

    unsigned active : 1;            /* activate() ran (else: only BufferedData kept so far) */
    unsigned ack_now : 1;           /* send an ACK at the next poll */
    unsigned in_pending : 1;
    unsigned fin_queued : 1;        /* our FIN follows the last queued byte (seq SND.UNA+slen) */
    unsigned fin_acked : 1;
    unsigned fin_received : 1;
    unsigned ooo_fin : 1;           /* a FIN arrived out of order at rcv_fin_seq */
    unsigned rst_pending : 1;       /* abortive disconnect: RST at the next poll */
    unsigned terminating : 1;
    unsigned quiet : 1;             /* invalidated (d.6): no transmission, no timers */
    unsigned urgent : 1;            /* URG seen: stop ACKing, pass everything up */
    unsigned retrieve_sent : 1;
    unsigned in_recovery : 1;
    unsigned timing : 1;
    unsigned have_rtt : 1;
    unsigned have_ts_recent : 1;
    unsigned ka_mitigation : 1;     /* keepalive started by a challenge ACK (T.9) */
    unsigned rexmit_one : 1;        /* fast retransmit / partial ACK: resend at SND.UNA */
    unsigned ka_probe : 1;          /* send a keepalive probe at the next poll */
    unsigned probe_due : 1;         /* send a window probe at the next poll */
    unsigned tso_ok : 1;            /* the segmenting device's MSS (path MTU - headers) is ours */
} ct_conn;

typedef struct {
    uint64_t frames_in, consumed, not_ours, pass_up, bad_checksum, malformed, paws_drops,
        unacceptable, dup_segments, ooo_segments, ooo_dropped, challenge_acks, rsts_in,
        frames_out, data_frames_out, retransmits, fast_retransmits, timeouts, window_probes,
        keepalive_probes, acks_out, ts_missing, tso_frames_out, rcv_alloc_drops,
        /* b.17 statistics (T.10): IP bytes in (consumed datagrams) and out, TCP segments
         * out (a TSO frame counts the MSS-sized segments it is cut into) and the
         * retransmitted ones among them, segments sent with RST */
        in_octets, out_octets, segments_out, retransmitted_segments, rsts_out,
        resets_established,     /* ESTABLISHED / CLOSE-WAIT -> CLOSED by a RST (in or out) */
        ip_options,             /* frames of offloaded connections with IP options: up (T.9) */
        sack_frames_out,        /* frames sent with a SACK option (RFC 2018) */
        terminate_sack_drops;   /* data dropped during a terminate with SACK in use (d.3) */
} dp_counters_t;

struct ct_dp {
    /* configure() */
    uint32_t tps, ack_frequency, delayed_ack_ticks, max_retransmissions, dup_ack_threshold,
        push_ticks, fin_wait_2_ticks, send_buffer, receive_buffer, min_rto, max_rto, ooo_max,
        tso_max;                    /* largest super-segment payload (bytes); 0 = no TSO */
    ct_conn **conns;                /* [capacity] */
    dp_hent *heap;                  /* [capacity] */
    uint32_t *heap_pos;             /* [capacity], position + 1, 0 = not in the heap */
    uint32_t heap_n;
    uint64_t *pending;
    uint32_t npending, cpending;
    dp_event *events;
    size_t nevents, cevents;
    uint32_t ip_id;
    uint64_t last_now;
    dp_counters_t cnt;
};
typedef struct ct_dp ct_dp;

/* ------------------------------------------------------------ seq helpers ---- */

static inline int seq_lt(uint32_t a, uint32_t b) { return (int32_t)(a - b) < 0; }
static inline int seq_le(uint32_t a, uint32_t b) { return (int32_t)(a - b) <= 0; }
static inline int seq_gt(uint32_t a, uint32_t b) { return (int32_t)(a - b) > 0; }
static inline int seq_ge(uint32_t a, uint32_t b) { return (int32_t)(a - b) >= 0; }
static inline uint32_t umin(uint32_t a, uint32_t b) { return a < b ? a : b; }
static inline uint32_t umax(uint32_t a, uint32_t b) { return a > b ? a : b; }
static inline uint64_t u64min(uint64_t a, uint64_t b) { return a < b ? a : b; }

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void wr16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

/* RFC 1071 one's-complement sum of p[0..n) as big-endian 16-bit words (an odd last byte is
 * the high half of a word), added to sum; folded later (csum_fold).  Every call but the last of
 * a checksum must cover an even number of bytes.  The sum itself is inet_sum_native
 * (include/vnic_inet_sum.h: eight bytes per step in native order), swapped to network order
 * here (RFC 1071 2(B)). */
static uint32_t
csum_add(uint32_t sum, const uint8_t *p, size_t n)
{
    const uint32_t acc = inet_sum_native(p, n);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    const uint32_t folded = acc;
#else
    const uint32_t folded = ((acc & 0xFF) << 8) | (acc >> 8);
#endif
    /* keep sum from overflowing across many calls: fold it too before adding */
    while (sum >> 16) {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    return sum + folded;
}

static inline uint16_t
csum_fold(uint32_t sum)
{
    while (sum >> 16) {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    return (uint16_t)sum;
}

/* ------------------------------------------------------------- dp state ---- */

static ct_dp *
get_dp(CTable *t)
{
    if (t->dp != NULL) {
        return t->dp;
    }
    ct_dp *dp = PyMem_Calloc(1, sizeof(ct_dp));
    if (dp == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    size_t cap = t->capacity ? t->capacity : 1;
    dp->conns = PyMem_Calloc(cap, sizeof(ct_conn *));
    dp->heap = PyMem_Calloc(cap, sizeof(dp_hent));
    dp->heap_pos = PyMem_Calloc(cap, sizeof(uint32_t));
    if (dp->conns == NULL || dp->heap == NULL || dp->heap_pos == NULL) {
        PyMem_Free(dp->conns);
        PyMem_Free(dp->heap);
        PyMem_Free(dp->heap_pos);
        PyMem_Free(dp);
        PyErr_NoMemory();
        return NULL;
    }
    dp->tps = 1000;
    dp->ack_frequency = 2;
    dp->delayed_ack_ticks = 40;
    dp->max_retransmissions = 5;
    dp->dup_ack_threshold = 3;
    dp->push_ticks = 500;
    dp->fin_wait_2_ticks = 120000;
    dp->send_buffer = 1u << 20;
    dp->receive_buffer = 1u << 20;
    dp->min_rto = 200;
    dp->max_rto = 60000;
    dp->ooo_max = 16;
    t->dp = dp;
    return dp;
}

static void
conn_free(ct_conn *c)
{
    if (c != NULL) {
        PyMem_Free(c->sbuf);
        PyMem_Free(c->rbuf);
        PyMem_Free(c);
    }
}

/* ------------------------------------------------------------ timer heap ---- */

static inline void
heap_set(ct_dp *dp, uint32_t pos, dp_hent e)
{
    dp->heap[pos] = e;
    dp->heap_pos[e.slot] = pos + 1;
}

static void
heap_sift_up(ct_dp *dp, uint32_t pos)
{
    dp_hent e = dp->heap[pos];
    while (pos > 0) {
        uint32_t parent = (pos - 1) / 2;
        if (dp->heap[parent].key <= e.key) {
            break;
        }
        heap_set(dp, pos, dp->heap[parent]);
        pos = parent;
    }
    heap_set(dp, pos, e);
}

static void
heap_sift_down(ct_dp *dp, uint32_t pos)
{
    dp_hent e = dp->heap[pos];
    for (;;) {
        uint32_t l = 2 * pos + 1, m = pos;
        uint64_t mk = e.key;
        if (l < dp->heap_n && dp->heap[l].key < mk) {
            m = l;
            mk = dp->heap[l].key;
        }
        if (l + 1 < dp->heap_n && dp->heap[l + 1].key < mk) {
            m = l + 1;
        }
        if (m == pos) {
            break;
        }
        heap_set(dp, pos, dp->heap[m]);
        pos = m;
    }
    heap_set(dp, pos, e);
}

static void
heap_remove(ct_dp *dp, uint32_t slot)
{
    uint32_t p1 = dp->heap_pos[slot];
    if (p1 == 0) {
        return;
    }
    uint32_t pos = p1 - 1;
    dp->heap_pos[slot] = 0;
    dp->heap_n--;
    if (pos == dp->heap_n) {
        return;
    }
    uint32_t moved = dp->heap[dp->heap_n].slot;     /* the last entry fills the hole */
    heap_set(dp, pos, dp->heap[dp->heap_n]);
    heap_sift_up(dp, pos);
    heap_sift_down(dp, dp->heap_pos[moved] - 1);
}

static inline uint64_t
slot_min_deadline(const ct_slot *s)
{
    return u64min(u64min(u64min(s->retransmit_deadline, s->persist_deadline),
                         u64min(s->keepalive_deadline, s->delayed_ack_deadline)),
                  s->fin_wait_2_deadline);
}

/* Put the slot where its earliest deadline says (or out of the heap). */
static void
heap_fix(CTable *t, uint32_t idx)
{
    ct_dp *dp = t->dp;
    ct_conn *c = dp->conns[idx];
    uint64_t k = CT_TIMER_STOPPED;
    if (c != NULL && c->active && !c->terminating && !c->urgent && !c->quiet) {
        k = slot_min_deadline(&t->slots[idx]);
    }
    uint32_t p1 = dp->heap_pos[idx];
    if (k == CT_TIMER_STOPPED) {
        heap_remove(dp, idx);
        return;
    }
    if (p1 == 0) {
        dp_hent e = {k, idx};
        heap_set(dp, dp->heap_n++, e);
        heap_sift_up(dp, dp->heap_n - 1);
        return;
    }
    dp->heap[p1 - 1].key = k;
    heap_sift_up(dp, p1 - 1);
    heap_sift_down(dp, dp->heap_pos[idx] - 1);
}

static void
stop_timers(ct_slot *s)
{
    s->retransmit_deadline = s->persist_deadline = s->keepalive_deadline =
        s->delayed_ack_deadline = s->fin_wait_2_deadline = CT_TIMER_STOPPED;
}

/* --------------------------------------------------- events and pending ---- */

static int
ev_push(ct_dp *dp, uint64_t handle, uint32_t type, uint64_t value)
{
    if (dp->nevents == dp->cevents) {
        size_t nc = dp->cevents ? dp->cevents * 2 : 64;
        dp_event *ne = PyMem_Realloc(dp->events, nc * sizeof(dp_event));
        if (ne == NULL) {
            return -1;
        }
        dp->events = ne;
        dp->cevents = nc;
    }
    dp->events[dp->nevents].handle = handle;
    dp->events[dp->nevents].type = type;
    dp->events[dp->nevents].value = value;
    dp->nevents++;
    return 0;
}

static int
mark_pending(CTable *t, uint32_t idx, ct_conn *c)
{
    ct_dp *dp = t->dp;
    if (c->in_pending) {
        return 0;
    }
    if (dp->npending == dp->cpending) {
        uint32_t nc = dp->cpending ? dp->cpending * 2 : 64;
        uint64_t *np = PyMem_Realloc(dp->pending, (size_t)nc * sizeof(uint64_t));
        if (np == NULL) {
            return -1;
        }
        dp->pending = np;
        dp->cpending = nc;
    }
    dp->pending[dp->npending++] = make_handle(t, idx);
    c->in_pending = 1;
    return 0;
}

/* The memory errors of the two helpers above are rare and not fatal for the connection
 * (the event is lost, or the output waits for the next timer): they are collected in *err
 * and turned into MemoryError by the caller after the state change is complete. */
#define EV(h, type, value) (err |= ev_push(t->dp, (h), (type), (value)))
#define PENDING() (err |= mark_pending(t, idx, c))

static int
retrieve(CTable *t, uint32_t idx, ct_conn *c, uint32_t reason)
{
    if (c->retrieve_sent) {
        return 0;
    }
    c->retrieve_sent = 1;
    return ev_push(t->dp, make_handle(t, idx), EVENT_RETRIEVE, reason);
}

/* ------------------------------------------------------------- RTT / RTO ---- */

static void
update_rto(ct_dp *dp, ct_slot *s, ct_conn *c)
{
    uint32_t rto;
    if (!c->have_rtt) {
        rto = dp->tps;                          /* RFC 6298 (2.1): 1 second */
    }
    else {
        rto = (uint32_t)(s->SRtt >> 3) + umax(1, s->RttVar);   /* SRTT + max(G, 4 RTTVAR) */
    }
    c->rto = umin(umax(rto, dp->min_rto), dp->max_rto);
}

static void
rtt_sample(ct_dp *dp, ct_slot *s, ct_conn *c, uint32_t r)
{
    if (r > 0x7FFFFFFFu) {
        return;
    }
    if (r > 8191) {
        r = 8191;                               /* SRtt x8 must fit 16 bits */
    }
    if (!c->have_rtt) {
        s->SRtt = (uint16_t)(r << 3);
        s->RttVar = (uint16_t)umin(r << 1, 0xFFFF);
        c->have_rtt = 1;
    }
    else {                                      /* Jacobson/Karels, scaled x8 / x4 */
        int32_t delta = (int32_t)r - (int32_t)(s->SRtt >> 3);
        int32_t srtt = (int32_t)s->SRtt + delta;
        if (delta < 0) {
            delta = -delta;
        }
        delta -= (int32_t)(s->RttVar >> 2);
        int32_t rttvar = (int32_t)s->RttVar + delta;
        s->SRtt = (uint16_t)(srtt < 0 ? 0 : srtt > 0xFFFF ? 0xFFFF : srtt);
        s->RttVar = (uint16_t)(rttvar < 0 ? 0 : rttvar > 0xFFFF ? 0xFFFF : rttvar);
    }
    update_rto(dp, s, c);
}

static inline uint32_t
backoff(const ct_dp *dp, uint32_t rto, uint32_t n)
{
    uint64_t v = (uint64_t)rto << (n > 20 ? 20 : n);
    return (uint32_t)u64min(v, dp->max_rto);
}

/* --------------------------------------------------------------- rings ---- */

/* Copy n bytes at logical offset off of a ring into dst. */
static void
ring_read(const uint8_t *buf, uint32_t size, uint32_t head, uint32_t off, uint8_t *dst, uint32_t n)
{
    if (n == 0) {
        return;                     /* (an unallocated ring has size 0) */
    }
    uint32_t pos = (uint32_t)(((uint64_t)head + off) % size);
    uint32_t first = umin(n, size - pos);
    memcpy(dst, buf + pos, first);
    memcpy(dst + first, buf, n - first);
}

static void
ring_write(uint8_t *buf, uint32_t size, uint32_t head, uint32_t off, const uint8_t *src, uint32_t n)
{
    if (n == 0) {
        return;
    }
    uint32_t pos = (uint32_t)(((uint64_t)head + off) % size);
    uint32_t first = umin(n, size - pos);
    memcpy(buf + pos, src, first);
    memcpy(buf, src + first, n - first);
}

/* Re-allocate a ring to newsize bytes: its first `live` bytes (from head; live <= old size
 * and <= newsize) are copied to offset 0 of the new buffer, the rest is undefined.  On failure
 * (-1, no exception set) the ring is unchanged. */
static int
ring_grow(uint8_t **buf, uint32_t *size, uint32_t *head, uint32_t newsize, uint32_t live)
{
    uint8_t *nb = PyMem_Malloc(newsize ? newsize : 1);
    if (nb == NULL) {
        return -1;
    }
    ring_read(*buf, *size, *head, 0, nb, live);
    PyMem_Free(*buf);
    *buf = nb;
    *size = newsize;
    *head = 0;
    return 0;
}

/* The size a ring grows to so that it holds need bytes: doubling from its current size
 * (DP_RING_MIN for an unallocated ring), at least need, at most limit (need <= limit). */
static uint32_t
ring_next_size(uint32_t size, uint64_t need, uint64_t limit)
{
    uint64_t ns = size ? size : DP_RING_MIN;
    while (ns < need) {
        ns *= 2;
    }
    return (uint32_t)u64min(ns, limit);
}

/* Bytes of the receive ring in use from rhead: the in-order bytes, then the window up to the
 * end of the highest out-of-order range (the ranges are sorted). */
static inline uint32_t
rcv_live(const ct_slot *s, const ct_conn *c)
{
    return c->rlen + (c->nooo ? c->ooo[c->nooo - 1].end - s->RcvNxt : 0);
}

/* Make the receive ring's allocation hold need bytes from rhead (need <= rlim): grow it by
 * doubling, capped at rlim, unwrapping the live span into the new buffer.  -1 (no exception
 * set, ring unchanged) when the allocation fails. */
static int
rcv_reserve(const ct_slot *s, ct_conn *c, uint64_t need)
{
    if (need <= c->rsize) {
        return 0;
    }
    if (need > c->rlim) {
        return -1;                  /* (cannot happen: segments are cut to the window) */
    }
    return ring_grow(&c->rbuf, &c->rsize, &c->rhead, ring_next_size(c->rsize, need, c->rlim),
                     rcv_live(s, c));
}

/* ------------------------------------------------------------ windows ---- */

static inline uint32_t
fin_seq(const ct_slot *s, const ct_conn *c)
{
    return s->SndUna + c->slen;
}

static inline int
fin_sent(const ct_slot *s, const ct_conn *c)
{
    return c->fin_queued && !c->fin_acked && seq_gt(s->SndMax, fin_seq(s, c));
}

/* The window to advertise now (bytes; RcvWnd follows it).  Receiver SWS avoidance (RFC 9293
 * 3.8.6.2.2): the right edge moves only by at least min(rcap / 2, MSS), and never left (the
 * scaled field is rounded up, or down when rounding up would overrun the ring -- then the peer
 * sees up to one scale unit less than RcvWnd, which stays). */
static uint32_t
advertise_window(ct_slot *s, ct_conn *c)
{
    uint64_t used = (uint64_t)c->rlen + c->held;
    uint32_t free_ = c->rcap > used ? (uint32_t)(c->rcap - used) : 0;
    uint32_t w = s->RcvWnd;
    if (free_ > w && free_ - w >= umin(c->rcap / 2, c->mss)) {
        w = free_;
    }
    uint32_t maxw = (uint32_t)0xFFFF << c->rcv_shift;
    if (w > maxw) {
        w = maxw;
    }
    uint32_t unit = 1u << c->rcv_shift;
    uint32_t field = (uint32_t)(((uint64_t)w + unit - 1) >> c->rcv_shift);
    if (field > 0xFFFF) {
        field = 0xFFFF;
    }
    uint32_t room = c->rlim - c->rlen;
    if (((uint64_t)field << c->rcv_shift) > room) {
        /* rounding up would overrun the ring: round down, and keep accepting up to the right
         * edge already advertised (RcvWnd never shrinks; the peer just sees a bit less) */
        field = w >> c->rcv_shift;
        s->RcvWnd = umax(field << c->rcv_shift, s->RcvWnd);
        return field;
    }
    s->RcvWnd = umax(field << c->rcv_shift, s->RcvWnd);
    return field;
}

/* ------------------------------------------------------------- output ---- */

/* The TCP segments a frame with dlen bytes of data is on the wire: a TSO frame is cut into
 * MSS-sized ones (b.17 counts segments). */
static inline uint64_t
wire_segments(const ct_conn *c, uint32_t dlen)
{
    return (dlen > c->mss && c->mss) ? (dlen + c->mss - 1u) / c->mss : 1u;
}

/* Up to n of the out-of-order ranges for a SACK option, newest stamp first (RFC 2018
 * section 4: the block holding the most recently received segment, then the blocks that were
 * first in the most recent earlier options -- the ranges in the order segments last arrived
 * in them; ranges merged by a later segment are one block, reported as new).  Returns how
 * many were copied to out. */
static uint32_t
sack_select(const ct_conn *c, uint32_t n, dp_range *out)
{
    uint32_t k = 0;
    uint32_t below = UINT32_MAX;       /* stamps are distinct and never UINT32_MAX */
    for (; k < n; k++) {
        const dp_range *best = NULL;
        for (uint32_t m = 0; m < c->nooo; m++) {
            const dp_range *r = &c->ooo[m];
            if (r->stamp < below && (best == NULL || r->stamp > best->stamp)) {
                best = r;
            }
        }
        if (best == NULL) {
            break;
        }
        out[k] = *best;
        below = best->stamp;
    }
    return k;
}

/* Build one frame (headers from TCP -> path -> neighbor state) and append it to out.
 * dlen bytes of send data from ring offset doff.  Returns 0, or -1 with MemoryError.
 *
 * With SACK negotiated (ConstFlags) and out-of-order data held, every ACK-carrying frame but
 * a RST carries a SACK option after the timestamp option (NOP NOP 5 len blocks, as
 * tcpip/tcp_segment.py lays it out): up to 3 blocks beside timestamps, 4 without (40 bytes of
 * options).  A data frame carries only the blocks that fit with its data in the MSS (options
 * count against it, RFC 6691): none on a full-sized or TSO frame. */
static int
emit(CTable *t, uint32_t idx, ct_conn *c, uint32_t seq, uint32_t doff, uint32_t dlen,
     uint8_t flags, uint64_t now, PyObject *out)
{
    ct_dp *dp = t->dp;
    ct_slot *s = &t->slots[idx];
    const int tagged = c->vlan_id != 0 || s->UserPriority != 0;
    const int ts = (s->ConstFlags & TCP_FLAG_TIMESTAMP_ENABLED) != 0;
    const uint32_t l2 = tagged ? 18 : 14;
    dp_range sack[DP_SACK_BLOCKS_NO_TS];
    uint32_t nsack = 0;
    if ((s->ConstFlags & TCP_FLAG_SACK_ENABLED) && c->nooo
        && (flags & (TH_ACK | TH_RST)) == TH_ACK) {
        uint32_t n = ts ? DP_SACK_BLOCKS_TS : DP_SACK_BLOCKS_NO_TS;
        if (dlen) {
            n = umin(n, c->mss >= dlen + 12 ? (c->mss - dlen - 4) / 8 : 0);
        }
        nsack = sack_select(c, n, sack);
    }
    const uint32_t sopt = 20 + (ts ? 12 : 0);  /* where the SACK option starts */
    const uint32_t thl = sopt + (nsack ? 4 + 8 * nsack : 0);
    const uint32_t tcplen = thl + dlen;
    const uint32_t total = l2 + 20 + tcplen;

    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (b == NULL) {
        return -1;
    }
    uint8_t *f = (uint8_t *)PyBytes_AS_STRING(b);
    memcpy(f, c->remote_mac, 6);
    memcpy(f + 6, c->local_mac, 6);
    if (tagged) {
        wr16(f + 12, 0x8100);
        wr16(f + 14, ((uint32_t)(s->UserPriority & 7) << 13) | (c->vlan_id & 0x0FFF));
    }
    wr16(f + l2 - 2, 0x0800);

    uint8_t *ip = f + l2;
    ip[0] = 0x45;
    ip[1] = s->TosOrTrafficClass;
    wr16(ip + 2, 20 + tcplen);
    wr16(ip + 4, 0x8000 | (dp->ip_id++ & 0x7FFF));      /* T.1: upper half of the ID space */
    wr16(ip + 6, 0x4000);                               /* DF */
    ip[8] = s->TtlOrHopLimit ? s->TtlOrHopLimit : 64;
    ip[9] = 6;
    wr16(ip + 10, 0);
    wr32(ip + 12, s->key.local_ip);
    wr32(ip + 16, s->key.remote_ip);
    wr16(ip + 10, (uint16_t)~csum_fold(csum_add(0, ip, 20)));

    uint8_t *th = ip + 20;
    uint16_t wfield = (flags & TH_RST) ? 0 : (uint16_t)advertise_window(s, c);
    wr16(th, s->key.local_port);
    wr16(th + 2, s->key.remote_port);
    wr32(th + 4, seq);
    wr32(th + 8, (flags & TH_ACK) ? s->RcvNxt : 0);
    th[12] = (uint8_t)((thl / 4) << 4);
    th[13] = flags;
    wr16(th + 14, wfield);
    wr16(th + 16, 0);
    wr16(th + 18, 0);
    if (ts) {
        th[20] = 1;
        th[21] = 1;
        th[22] = 8;
        th[23] = 10;
        wr32(th + 24, (uint32_t)now + c->ts_delta);
        wr32(th + 28, s->TsRecent);
    }
    if (nsack) {
        uint8_t *o = th + sopt;
        o[0] = 1;
        o[1] = 1;
        o[2] = 5;
        o[3] = (uint8_t)(2 + 8 * nsack);
        for (uint32_t k = 0; k < nsack; k++) {
            wr32(o + 4 + 8 * k, sack[k].seq);
            wr32(o + 8 + 8 * k, sack[k].end);
        }
        dp->cnt.sack_frames_out++;
    }
    if (dlen) {
        ring_read(c->sbuf, c->ssize, c->shead, doff, th + thl, dlen);
    }
    uint32_t sum = 0;
    sum += (s->key.local_ip >> 16) + (s->key.local_ip & 0xFFFF);
    sum += (s->key.remote_ip >> 16) + (s->key.remote_ip & 0xFFFF);
    sum += 6 + tcplen;
    sum = csum_add(sum, th, tcplen);
    wr16(th + 16, (uint16_t)~csum_fold(sum));

    if (PyList_Append(out, b) < 0) {
        Py_DECREF(b);
        return -1;
    }
    Py_DECREF(b);

    dp->cnt.frames_out++;
    dp->cnt.out_octets += 20u + tcplen;
    dp->cnt.segments_out += wire_segments(c, dlen);
    if (flags & TH_RST) {
        dp->cnt.rsts_out++;
    }
    if (dlen) {
        dp->cnt.data_frames_out++;
    }
    if (flags & TH_ACK) {
        c->ack_now = 0;
        c->segs_unacked = 0;
        c->bytes_unacked = 0;
        c->last_ack_sent = s->RcvNxt;
        s->delayed_ack_deadline = CT_TIMER_STOPPED;
    }
    return 0;
}

static inline int
ack_owed(const ct_slot *s, const ct_conn *c)
{
    return c->ack_now || s->delayed_ack_deadline != CT_TIMER_STOPPED;
}

static inline int
can_send_data(uint32_t state)
{
    return state == ST_ESTABLISHED || state == ST_CLOSE_WAIT || state == ST_FIN_WAIT_1
           || state == ST_CLOSING || state == ST_LAST_ACK;
}

/* The largest payload of one new-data frame: the MSS, or with TSO (configure(tso_max=)) the
 * largest whole MSS multiple within tso_max and a 16-bit IPv4 total length.  The device below
 * cuts super-segments at the MSS (vnic/vnet.py: gso_size = MTU - headers), so TSO is used only
 * when that is our MSS (tso_ok) and for untagged frames (it segments plain IPv4/TCP). */
static inline uint32_t
tso_segment(const ct_dp *dp, const ct_slot *s, const ct_conn *c)
{
    const uint32_t mss = c->mss;
    if (dp->tso_max < 2 * mss || !c->tso_ok || c->vlan_id != 0 || s->UserPriority != 0) {
        return mss;
    }
    uint32_t thl = 20 + ((s->ConstFlags & TCP_FLAG_TIMESTAMP_ENABLED) ? 12 : 0);
    uint32_t lim = umin(dp->tso_max, 65535u - 20u - thl);
    return lim - lim % mss;
}

/* Everything the connection has to send now. 0 ok, -1 MemoryError. */
static int
conn_output(CTable *t, uint32_t idx, ct_conn *c, uint64_t now, PyObject *out)
{
    ct_dp *dp = t->dp;
    ct_slot *s = &t->slots[idx];
    int sent = 0;

    if (c->terminating || c->urgent || c->quiet) {
        return 0;
    }
    if (c->rst_pending) {
        c->rst_pending = 0;
        if (emit(t, idx, c, s->SndNxt, 0, 0, TH_RST | TH_ACK, now, out) < 0) {
            return -1;
        }
        s->State = ST_CLOSED;
        stop_timers(s);
        return 0;
    }
    if (s->State == ST_CLOSED) {
        return 0;
    }
    if (s->State == ST_TIME_WAIT) {
        if (ack_owed(s, c)) {
            return emit(t, idx, c, s->SndNxt, 0, 0, TH_ACK, now, out);
        }
        return 0;
    }
    const uint32_t mss = c->mss;
    if (can_send_data(s->State)) {
        /* fast retransmit / NewReno partial ACK: one segment from SND.UNA */
        if (c->rexmit_one) {
            c->rexmit_one = 0;
            uint32_t sent_bytes = s->SndMax - s->SndUna - (fin_sent(s, c) ? 1 : 0);
            uint32_t len = umin(umin(mss, c->slen), sent_bytes);
            uint8_t fl = TH_ACK;
            if (c->fin_queued && !c->fin_acked && len == c->slen
                && seq_gt(s->SndMax, s->SndUna + len)) {
                fl |= TH_FIN;
            }
            if (len || (fl & TH_FIN)) {
                if (len == c->slen && len) {
                    fl |= TH_PSH;
                }
                if (emit(t, idx, c, s->SndUna, 0, len, fl, now, out) < 0) {
                    return -1;
                }
                dp->cnt.retransmits++;
                dp->cnt.retransmitted_segments += wire_segments(c, len);
                c->timing = 0;
                sent = 1;
                uint32_t end = s->SndUna + len + ((fl & TH_FIN) ? 1 : 0);
                if (seq_lt(s->SndNxt, end)) {
                    s->SndNxt = end;
                }
            }
        }
        if (c->probe_due) {
            c->probe_due = 0;
            if (s->SndWnd == 0 && c->slen > 0) {
                /* zero-window probe: one byte at SND.UNA (T.4) */
                if (emit(t, idx, c, s->SndUna, 0, 1, TH_ACK, now, out) < 0) {
                    return -1;
                }
                dp->cnt.window_probes++;
                sent = 1;
                if (seq_lt(s->SndNxt, s->SndUna + 1)) {
                    s->SndNxt = s->SndUna + 1;
                }
                if (seq_lt(s->SndMax, s->SndNxt)) {
                    s->SndMax = s->SndNxt;
                }
            }
        }
        const uint32_t tso_seg = tso_segment(dp, s, c);
        for (;;) {
            uint32_t sent_off = s->SndNxt - s->SndUna;
            uint32_t avail = sent_off < c->slen ? c->slen - sent_off : 0;
            int fin_here = c->fin_queued && !c->fin_acked && sent_off <= c->slen;
            uint32_t wnd = umin(s->SndWnd, s->CWnd ? s->CWnd : mss);
            uint32_t usable = wnd > sent_off ? wnd - sent_off : 0;
            uint32_t seg_max = seq_lt(s->SndNxt, s->SndMax) ? mss : tso_seg;
            uint32_t len = umin(umin(avail, seg_max), usable);
            if (len > mss) {
                uint32_t partial = len % mss;
                /* a super-segment is whole MSS multiples; a short tail only at the end of
                 * the queued data, and not while Nagle would hold it (as Linux splits) */
                if (len < avail
                    || ((s->CachedFlags & TCP_FLAG_NAGLING_ENABLED) && sent_off > 0
                        && !c->fin_queued)) {
                    len -= partial;
                }
            }
            if (len == 0 && !(fin_here && avail == 0 && s->SndNxt == fin_seq(s, c))) {
                break;
            }
            if (len > 0 && len < mss) {
                /* Nagle (RFC 896): hold a small segment while data is in flight */
                if ((s->CachedFlags & TCP_FLAG_NAGLING_ENABLED) && sent_off > 0
                    && len == avail && !c->fin_queued) {
                    break;
                }
                /* sender SWS avoidance: window-limited and under half the largest window */
                if (len < avail && len < s->MaxSndWnd / 2 && sent_off > 0) {
                    break;
                }
            }
            uint8_t fl = TH_ACK;
            if (len && sent_off + len == c->slen) {
                fl |= TH_PSH;                  /* PSH at the end of the queued data (T.1) */
            }
            if (fin_here && sent_off + len == c->slen) {
                fl |= TH_FIN;
            }
            uint32_t seq = s->SndNxt;
            if (emit(t, idx, c, seq, sent_off, len, fl, now, out) < 0) {
                return -1;
            }
            sent = 1;
            if (len > mss) {
                dp->cnt.tso_frames_out++;
            }
            if (seq_lt(seq, s->SndMax)) {
                dp->cnt.retransmits++;
                dp->cnt.retransmitted_segments += wire_segments(c, len);
            }
            else if (!c->timing && len && !(s->ConstFlags & TCP_FLAG_TIMESTAMP_ENABLED)) {
                c->timing = 1;
                c->rtt_seq = seq;
                c->rtt_start = now;
            }
            s->SndNxt = seq + len + ((fl & TH_FIN) ? 1 : 0);
            if (seq_gt(s->SndNxt, s->SndMax)) {
                s->SndMax = s->SndNxt;
            }
            if (s->retransmit_deadline == CT_TIMER_STOPPED
                && s->persist_deadline == CT_TIMER_STOPPED) {
                s->retransmit_deadline = now + backoff(dp, c->rto, s->RetransmitCount);
            }
            if (fl & TH_FIN) {
                break;
            }
        }
        /* peer window closed with data waiting and nothing in flight: persist (T.4) */
        int waiting = c->slen > (s->SndNxt - s->SndUna)
                      || (c->fin_queued && !c->fin_acked && !fin_sent(s, c));
        if (s->SndWnd == 0 && waiting && s->persist_deadline == CT_TIMER_STOPPED
            && s->SndNxt == s->SndUna) {
            s->retransmit_deadline = CT_TIMER_STOPPED;
            s->persist_deadline = now + umax(1, backoff(dp, c->rto, s->SndWndProbeCount));
        }
    }
    if (c->ka_probe) {
        c->ka_probe = 0;
        /* keepalive probe: SEG.SEQ = SND.UNA - 1, no data (RFC 1122 4.2.3.6) */
        if (emit(t, idx, c, s->SndUna - 1, 0, 0, TH_ACK, now, out) < 0) {
            return -1;
        }
        dp->cnt.keepalive_probes++;
        sent = 1;
    }
    if (!sent && ack_owed(s, c) && c->ack_now) {
        if (emit(t, idx, c, s->SndNxt, 0, 0, TH_ACK, now, out) < 0) {
            return -1;
        }
        dp->cnt.acks_out++;
    }
    return 0;
}

/* --------------------------------------------------------------- timers ---- */

static int
run_timers(CTable *t, uint32_t idx, ct_conn *c, uint64_t now)
{
    ct_dp *dp = t->dp;
    ct_slot *s = &t->slots[idx];
    int err = 0;
    const uint64_t h = make_handle(t, idx);
    (void)h;

    if (s->delayed_ack_deadline <= now) {
        s->delayed_ack_deadline = CT_TIMER_STOPPED;
        c->ack_now = 1;
        PENDING();
    }
    if (s->fin_wait_2_deadline <= now) {
        s->fin_wait_2_deadline = CT_TIMER_STOPPED;
        /* c.5: request the upload (TimeoutExpiration) and go to CLOSED */
        s->State = ST_CLOSED;
        stop_timers(s);
        err |= retrieve(t, idx, c, UR_TIMEOUT_EXPIRATION);
        dp->cnt.timeouts++;
        return err;
    }
    if (s->retransmit_deadline <= now) {
        uint32_t flight = s->SndMax - s->SndUna;
        if (flight == 0) {
            s->retransmit_deadline = CT_TIMER_STOPPED;
        }
        else {
            if (s->RetransmitCount == 0) {
                c->rt_start = now;
            }
            if (s->RetransmitCount < 255) {
                s->RetransmitCount++;
            }
            s->TotalRT = (uint32_t)u64min(now - c->rt_start, 0xFFFFFFFEu);
            int give_up = (s->MaxRT != 0 && s->MaxRT != 0xFFFFFFFFu)
                              ? s->TotalRT >= s->MaxRT
                              : s->RetransmitCount > dp->max_retransmissions;
            if (give_up) {
                /* T.4: retransmit limit -> TcpIndicateRetrieve(TimeoutExpiration) */
                stop_timers(s);
                err |= retrieve(t, idx, c, UR_TIMEOUT_EXPIRATION);
                dp->cnt.timeouts++;
                return err;
            }
            uint32_t inflight = s->SndNxt - s->SndUna;
            if (s->RetransmitCount == 1) {
                s->SsThresh = umax(inflight / 2, 2 * c->mss);     /* RFC 5681 (4) */
            }
            s->CWnd = c->mss;                                    /* loss window */
            s->SndNxt = s->SndUna;                               /* go back N */
            s->DupAckCount = 0;
            c->in_recovery = 0;
            c->recover = s->SndMax;
            c->timing = 0;                                       /* Karn */
            s->retransmit_deadline = now + umax(1, backoff(dp, c->rto, s->RetransmitCount));
            dp->cnt.timeouts++;
            PENDING();
        }
    }
    if (s->persist_deadline <= now) {
        if (s->SndWnd != 0 || (c->slen == 0 && !(c->fin_queued && !c->fin_acked))) {
            s->persist_deadline = CT_TIMER_STOPPED;
            PENDING();
        }
        else {
            if (s->SndWndProbeCount < 255) {
                s->SndWndProbeCount++;
            }
            if (s->SndWndProbeCount > dp->max_retransmissions) {
                stop_timers(s);
                err |= retrieve(t, idx, c, UR_TIMEOUT_EXPIRATION);
                dp->cnt.timeouts++;
                return err;
            }
            c->probe_due = 1;
            s->persist_deadline = now + umax(1, backoff(dp, c->rto, s->SndWndProbeCount));
            PENDING();
        }
    }
    if (s->keepalive_deadline <= now) {
        int enabled = (s->CachedFlags & TCP_FLAG_KEEP_ALIVE_ENABLED) != 0;
        if (!enabled && !c->ka_mitigation) {
            s->keepalive_deadline = CT_TIMER_STOPPED;
        }
        else {
            uint32_t limit = s->KaProbeCount ? s->KaProbeCount : 10;
            uint32_t interval = s->KaInterval ? s->KaInterval : dp->tps;
            if (s->KeepAliveProbeCount >= limit) {
                /* all probes unanswered: upload in CLOSED state */
                s->State = ST_CLOSED;
                stop_timers(s);
                err |= retrieve(t, idx, c, UR_TIMEOUT_EXPIRATION);
                dp->cnt.timeouts++;
                return err;
            }
            s->KeepAliveProbeCount++;
            c->ka_probe = 1;
            s->keepalive_deadline = now + umax(1, interval);
            PENDING();
        }
    }
    return err;
}

/* ------------------------------------------------------------- input ---- */

typedef struct {
    const uint8_t *payload;
    uint32_t plen;
    uint32_t seq, ack;
    uint16_t win;
    uint8_t flags;
    uint8_t has_ts;
    uint32_t tsval, tsecr;
} dp_seg;

static void
keepalive_restart(CTable *t, ct_slot *s, ct_conn *c, uint64_t now)
{
    s->KeepAliveProbeCount = 0;
    c->ka_mitigation = 0;
    if ((s->CachedFlags & TCP_FLAG_KEEP_ALIVE_ENABLED) && s->KaTimeout) {
        s->keepalive_deadline = now + s->KaTimeout;
    }
    else {
        s->keepalive_deadline = CT_TIMER_STOPPED;
    }
    (void)t;
}

/* RFC 5961 challenge ACK, rate limited; T.9: then make sure the keepalive fires within
 * 5 minutes.  Returns -1 on MemoryError. */
static int
challenge_ack(CTable *t, uint32_t idx, ct_conn *c, uint64_t now, uint64_t *last,
              uint64_t interval)
{
    ct_dp *dp = t->dp;
    ct_slot *s = &t->slots[idx];
    int err = 0;
    if (*last != UINT64_MAX && now - *last < interval) {
        return 0;
    }
    *last = now;
    c->ack_now = 1;
    dp->cnt.challenge_acks++;
    uint64_t limit = now + 300ull * dp->tps;
    if (s->keepalive_deadline == CT_TIMER_STOPPED || s->keepalive_deadline > limit) {
        s->keepalive_deadline = limit;
    }
    c->ka_mitigation = 1;
    PENDING();
    return err;
}

static void
enter_time_wait(CTable *t, uint32_t idx, ct_conn *c, int *err)
{
    ct_slot *s = &t->slots[idx];
    s->State = ST_TIME_WAIT;
    /* c.5 / T.4: no 2MSL timer in the target; ask for the upload (the ACK still goes out) */
    uint64_t keep = s->delayed_ack_deadline;
    stop_timers(s);
    s->delayed_ack_deadline = keep;
    *err |= retrieve(t, idx, c, UR_UPLOAD_REQUESTED);
}

static void
receive_fin(CTable *t, uint32_t idx, ct_conn *c, int *err)
{
    ct_slot *s = &t->slots[idx];
    int e = 0;
    c->fin_received = 1;
    c->ooo_fin = 0;
    c->nooo = 0;                    /* nothing after the FIN is data */
    s->RcvNxt++;
    s->RcvWnd = s->RcvWnd ? s->RcvWnd - 1 : 0;
    c->ack_now = 1;
    e |= ev_push(t->dp, make_handle(t, idx), EVENT_FIN, 0);
    switch (s->State) {
    case ST_ESTABLISHED:
        s->State = ST_CLOSE_WAIT;
        break;
    case ST_FIN_WAIT_1:
        if (c->fin_acked) {
            enter_time_wait(t, idx, c, &e);
        }
        else {
            s->State = ST_CLOSING;
        }
        break;
    case ST_FIN_WAIT_2:
        enter_time_wait(t, idx, c, &e);
        break;
    default:
        break;
    }
    *err |= e;
}

/* RFC 9293 3.10.7.4 "fifth, check the ACK field" for the synchronized states.
 * Returns 1 when processing of the segment ends here (connection CLOSED). */
static int
ack_process(CTable *t, uint32_t idx, ct_conn *c, const dp_seg *g, uint64_t now, int *errp)
{
    ct_dp *dp = t->dp;
    ct_slot *s = &t->slots[idx];
    int err = 0;
    const uint32_t ack = g->ack;
    const uint32_t wnd = (uint32_t)g->win << c->snd_shift;
    const uint64_t h = make_handle(t, idx);
    const uint32_t mss = c->mss;

    if (seq_gt(ack, s->SndUna)) {
        uint32_t acked = ack - s->SndUna;
        uint32_t data_acked = acked;
        int fin_now_acked = 0;
        if (fin_sent(s, c) && seq_gt(ack, fin_seq(s, c))) {
            data_acked--;
            fin_now_acked = 1;
        }
        data_acked = umin(data_acked, c->slen);
        /* RTT: timestamps (RFC 7323 4.1, T.6) or the one timed segment (Karn) */
        if ((s->ConstFlags & TCP_FLAG_TIMESTAMP_ENABLED) && g->has_ts && g->tsecr != 0) {
            rtt_sample(dp, s, c, (uint32_t)now + c->ts_delta - g->tsecr);
        }
        else if (c->timing && seq_gt(ack, c->rtt_seq)) {
            rtt_sample(dp, s, c, (uint32_t)(now - c->rtt_start));
        }
        if (c->timing && seq_gt(ack, c->rtt_seq)) {
            c->timing = 0;
        }
        uint32_t flight_before = s->SndMax - s->SndUna;
        /* congestion control: RFC 5681 + RFC 6582 */
        if (c->in_recovery) {
            if (seq_ge(ack, c->recover)) {
                uint32_t flight = flight_before - acked;
                s->CWnd = umin(s->SsThresh, umax(flight, mss) + mss);
                c->in_recovery = 0;
            }
            else {
                c->rexmit_one = 1;                       /* partial ACK */
                s->CWnd = s->CWnd > data_acked ? s->CWnd - data_acked : 0;
                if (data_acked >= mss) {
                    s->CWnd += mss;
                }
                s->CWnd = umax(s->CWnd, mss);
            }
        }
        else if (tso_segment(dp, s, c) > mss) {
            /* TSO: the peer ACKs super-segments (stretch ACKs), so count bytes, not ACKs:
             * slow start grows by the bytes ACKed (as Linux), congestion avoidance by
             * MSS * bytes / CWnd (RFC 3465 byte counting) */
            uint32_t bytes = data_acked ? data_acked : acked;
            uint32_t inc = s->CWnd < s->SsThresh
                               ? bytes
                               : (uint32_t)umax(1, (uint32_t)((uint64_t)mss * bytes
                                                              / umax(s->CWnd, 1)));
            s->CWnd = (uint32_t)u64min((uint64_t)s->CWnd + inc, DP_MAX_CWND);
        }
        else if (s->CWnd < s->SsThresh) {
            s->CWnd = umin(s->CWnd + umin(data_acked ? data_acked : acked, mss), DP_MAX_CWND);
        }
        else {
            uint32_t inc = (uint32_t)umax(1, (uint32_t)((uint64_t)mss * mss / umax(s->CWnd, 1)));
            s->CWnd = umin(s->CWnd + inc, DP_MAX_CWND);
        }
        s->DupAckCount = 0;
        /* free the acknowledged send data */
        c->shead = c->ssize ? (uint32_t)(((uint64_t)c->shead + data_acked) % c->ssize) : 0;
        c->slen -= data_acked;
        s->SndUna = ack;
        if (seq_lt(s->SndNxt, s->SndUna)) {
            s->SndNxt = s->SndUna;
        }
        if (data_acked) {
            c->acked_total += data_acked;
            EV(h, EVENT_SEND_ACKED, c->acked_total);
        }
        s->RetransmitCount = 0;
        s->TotalRT = 0;
        if (s->SndUna == s->SndMax) {
            s->retransmit_deadline = CT_TIMER_STOPPED;
        }
        else if (s->persist_deadline == CT_TIMER_STOPPED) {
            s->retransmit_deadline = now + c->rto;
        }
        PENDING();
        if (fin_now_acked) {
            c->fin_acked = 1;
            EV(h, EVENT_FIN_ACKED, 0);
            switch (s->State) {
            case ST_FIN_WAIT_1:
                s->State = ST_FIN_WAIT_2;
                s->fin_wait_2_deadline = now + umax(1, dp->fin_wait_2_ticks);
                break;
            case ST_CLOSING:
                enter_time_wait(t, idx, c, &err);
                break;
            case ST_LAST_ACK:
                s->State = ST_CLOSED;
                stop_timers(s);
                *errp |= err;
                return 1;
            default:
                break;
            }
        }
    }
    else if (ack == s->SndUna) {
        /* RFC 5681 duplicate ACK: no data, no SYN/FIN, same window, data outstanding */
        if (g->plen == 0 && !(g->flags & (TH_SYN | TH_FIN)) && wnd == s->SndWnd
            && s->SndUna != s->SndMax && s->SndWnd != 0
            && s->persist_deadline == CT_TIMER_STOPPED) {
            if (s->DupAckCount < 255) {
                s->DupAckCount++;
            }
            if (s->DupAckCount == dp->dup_ack_threshold && !c->in_recovery
                && seq_ge(ack, c->recover)) {          /* RFC 6582 3.2 step 1 */
                uint32_t flight = s->SndMax - s->SndUna;
                s->SsThresh = umax(flight / 2, 2 * mss);
                c->recover = s->SndMax;
                c->in_recovery = 1;
                c->rexmit_one = 1;
                c->timing = 0;
                s->CWnd = s->SsThresh + dp->dup_ack_threshold * mss;
                dp->cnt.fast_retransmits++;
                PENDING();
            }
            else if (c->in_recovery && s->DupAckCount > dp->dup_ack_threshold) {
                s->CWnd = umin(s->CWnd + mss, DP_MAX_CWND);     /* inflate */
                PENDING();
            }
        }
    }
    /* window update (RFC 9293: SND.WL1 < SEG.SEQ or (SND.WL1 = SEG.SEQ and SND.WL2 =< SEG.ACK)) */
    if (seq_le(s->SndUna, ack)
        && (seq_lt(s->SendWL1, g->seq) || (s->SendWL1 == g->seq && seq_le(c->snd_wl2, ack)))) {
        uint32_t old = s->SndWnd;
        s->SndWnd = wnd;
        s->SendWL1 = g->seq;
        c->snd_wl2 = ack;
        if (wnd > s->MaxSndWnd) {
            s->MaxSndWnd = wnd;
        }
        if (wnd != 0 && s->persist_deadline != CT_TIMER_STOPPED) {
            s->persist_deadline = CT_TIMER_STOPPED;      /* window open: probing ends */
            s->SndWndProbeCount = 0;
            s->SndNxt = s->SndUna;      /* an unacknowledged probe byte goes again, in order */
        }
        if (wnd > old) {
            PENDING();
        }
    }
    /* zero window with data waiting: stop retransmitting, probe instead (T.4) */
    if (s->SndWnd == 0 && s->persist_deadline == CT_TIMER_STOPPED
        && (c->slen > 0 || (c->fin_queued && !c->fin_acked && !fin_sent(s, c)))) {
        s->SndNxt = s->SndUna;
        s->retransmit_deadline = CT_TIMER_STOPPED;
        s->persist_deadline = now + umax(1, backoff(dp, c->rto, s->SndWndProbeCount));
    }
    *errp |= err;
    return 0;
}

/* The next SACK recency stamp: 1, 2, ... (0 and UINT32_MAX are never handed out; sack_select
 * relies on it).  Before the clock would reach UINT32_MAX (2^32 out-of-order arrivals on one
 * connection) the live ranges are renumbered 1..nooo in their current order. */
static uint32_t
sack_stamp(ct_conn *c)
{
    if (c->sack_clock >= UINT32_MAX - 1) {
        uint32_t rank[DP_OOO_LIMIT];
        for (uint32_t k = 0; k < c->nooo; k++) {
            rank[k] = 1;
            for (uint32_t m = 0; m < c->nooo; m++) {
                rank[k] += c->ooo[m].stamp < c->ooo[k].stamp;
            }
        }
        for (uint32_t k = 0; k < c->nooo; k++) {
            c->ooo[k].stamp = rank[k];  /* stamps are distinct: ranks are 1..nooo */
        }
        c->sack_clock = c->nooo;
    }
    return ++c->sack_clock;
}

static int
ooo_insert(ct_dp *dp, ct_conn *c, uint32_t seq, uint32_t end)
{
    /* ranges sorted by seq, disjoint and non-adjacent; the range the new bytes end up in gets
     * the newest stamp (RFC 2018 section 4: its block goes first in the next SACK option) */
    uint32_t i = 0;
    while (i < c->nooo && seq_lt(c->ooo[i].end, seq)) {
        i++;
    }
    uint32_t j = i;
    while (j < c->nooo && seq_le(c->ooo[j].seq, end)) {
        j++;
    }
    /* ranges i..j-1 touch [seq, end): merge them */
    if (j > i) {
        if (seq_lt(c->ooo[i].seq, seq)) {
            seq = c->ooo[i].seq;
        }
        if (seq_gt(c->ooo[j - 1].end, end)) {
            end = c->ooo[j - 1].end;
        }
        c->ooo[i].seq = seq;
        c->ooo[i].end = end;
        c->ooo[i].stamp = sack_stamp(c);
        memmove(&c->ooo[i + 1], &c->ooo[j], (c->nooo - j) * sizeof(dp_range));
        c->nooo -= j - i - 1;
        return 1;
    }
    if (c->nooo >= dp->ooo_max) {
        return 0;
    }
    uint32_t stamp = sack_stamp(c);
    memmove(&c->ooo[i + 1], &c->ooo[i], (c->nooo - i) * sizeof(dp_range));
    c->ooo[i].seq = seq;
    c->ooo[i].end = end;
    c->ooo[i].stamp = stamp;
    c->nooo++;
    return 1;
}

static void
receive_text(CTable *t, uint32_t idx, ct_conn *c, const dp_seg *g, uint64_t now, int *errp)
{
    ct_dp *dp = t->dp;
    ct_slot *s = &t->slots[idx];
    int err = 0;
    uint32_t seq = g->seq;
    const uint8_t *data = g->payload;
    uint32_t plen = g->plen;
    int fin = (g->flags & TH_FIN) != 0;
    int psh = (g->flags & TH_PSH) != 0;
    const int had_data = plen > 0;

    if (!(s->State == ST_ESTABLISHED || s->State == ST_FIN_WAIT_1
          || s->State == ST_FIN_WAIT_2)) {
        return;                                 /* receive half closed: ignore text / FIN */
    }
    if (seq_lt(seq, s->RcvNxt)) {
        uint32_t d = s->RcvNxt - seq;
        if (d >= plen) {
            if (d > plen) {
                fin = 0;                        /* the FIN, too, is old */
            }
            data += plen;
            plen = 0;
        }
        else {
            data += d;
            plen -= d;
        }
        seq = s->RcvNxt;
        if (had_data) {
            dp->cnt.dup_segments++;
            c->ack_now = 1;
        }
    }
    uint32_t right = s->RcvNxt + s->RcvWnd;
    if (seq_gt(seq + plen, right)) {
        uint32_t cut = umin(seq + plen - right, plen);
        plen -= cut;
        fin = 0;
        psh = 0;                                /* the pushed byte is beyond the window */
    }
    if (plen == 0 && !fin) {
        if (had_data) {
            c->ack_now = 1;
            PENDING();
        }
        *errp |= err;
        return;
    }
    if (plen && rcv_reserve(s, c, (uint64_t)c->rlen + (seq - s->RcvNxt) + plen) < 0) {
        /* no memory for the ring to grow: drop the segment (data and FIN) as a NIC out of
         * buffers would; the peer retransmits it */
        dp->cnt.rcv_alloc_drops++;
        if (c->ack_now) {
            PENDING();
        }
        *errp |= err;
        return;
    }
    if (seq == s->RcvNxt) {
        int filled = 0;
        if (plen) {
            ring_write(c->rbuf, c->rsize, c->rhead, c->rlen, data, plen);
            c->rlen += plen;
            s->RcvNxt += plen;
            s->RcvWnd -= plen;
        }
        const uint32_t push_end = s->RcvNxt;     /* (before any hole is filled) */
        /* fill holes from the out-of-order list */
        while (c->nooo && seq_le(c->ooo[0].seq, s->RcvNxt)) {
            if (seq_gt(c->ooo[0].end, s->RcvNxt)) {
                uint32_t adv = umin(c->ooo[0].end - s->RcvNxt, s->RcvWnd);
                c->rlen += adv;
                s->RcvNxt += adv;
                s->RcvWnd -= adv;
            }
            memmove(&c->ooo[0], &c->ooo[1], (c->nooo - 1) * sizeof(dp_range));
            c->nooo--;
            filled = 1;
        }
        if (plen || filled) {
            EV(make_handle(t, idx), EVENT_DATA, c->rlen);
        }
        if (plen && psh) {
            EV(make_handle(t, idx), EVENT_PUSH, push_end);
        }
        if ((fin && seq + plen == s->RcvNxt) || (c->ooo_fin && c->rcv_fin_seq == s->RcvNxt)) {
            receive_fin(t, idx, c, &err);
        }
        else if (filled || c->nooo) {
            c->ack_now = 1;                     /* RFC 5681 4.2: ACK hole fills at once */
        }
        else if (plen) {
            /* ACK every ack_frequency segments, and at least every ack_frequency * MSS bytes:
             * a GRO'd super-segment (many MSS in one frame) is ACKed at once, as Linux does */
            c->segs_unacked++;
            c->bytes_unacked += plen;
            if (c->segs_unacked >= dp->ack_frequency
                || c->bytes_unacked >= dp->ack_frequency * (uint32_t)c->mss) {
                c->ack_now = 1;
            }
            else if (s->delayed_ack_deadline == CT_TIMER_STOPPED) {
                s->delayed_ack_deadline = now + umax(1, dp->delayed_ack_ticks);
            }
        }
        if (c->ack_now) {
            PENDING();
        }
    }
    else {
        /* out of order: store at its place in the ring, remember the range, dup-ACK now */
        dp->cnt.ooo_segments++;
        if (fin) {
            c->ooo_fin = 1;
            c->rcv_fin_seq = seq + plen;
        }
        if (plen) {
            if (ooo_insert(dp, c, seq, seq + plen)) {
                ring_write(c->rbuf, c->rsize, c->rhead, c->rlen + (seq - s->RcvNxt), data, plen);
            }
            else {
                dp->cnt.ooo_dropped++;
            }
        }
        c->ack_now = 1;
        PENDING();
    }
    *errp |= err;
}

/* One segment of an active connection in a synchronized state.  Returns FRAME_*, or -1 with
 * MemoryError set (state stays consistent). */
static int
tcp_input(CTable *t, uint32_t idx, ct_conn *c, const dp_seg *g, uint64_t now)
{
    ct_dp *dp = t->dp;
    ct_slot *s = &t->slots[idx];
    int err = 0;
    const uint8_t fl = g->flags;
    const int rst = (fl & TH_RST) != 0, syn = (fl & TH_SYN) != 0, fin = (fl & TH_FIN) != 0;
    const uint32_t seq = g->seq;
    const uint32_t seglen = g->plen + (uint32_t)syn + (uint32_t)fin;
    const uint32_t rwnd = s->RcvWnd;
    const uint64_t h = make_handle(t, idx);
    int result = FRAME_CONSUMED;

    /* RFC 7323: timestamps negotiated -> a non-RST segment without TSopt is dropped; PAWS */
    if (s->ConstFlags & TCP_FLAG_TIMESTAMP_ENABLED) {
        if (!g->has_ts) {
            if (!rst) {
                dp->cnt.ts_missing++;
                return FRAME_CONSUMED;
            }
        }
        else if (!rst && c->have_ts_recent && seq_lt(g->tsval, s->TsRecent)
                 && now - c->ts_recent_time < 24ull * 86400 * dp->tps) {
            dp->cnt.paws_drops++;
            c->ack_now = 1;
            PENDING();
            goto out;
        }
    }
    /* acceptability test (RFC 9293 3.10.7.4 first) */
    int ok;
    uint32_t off = seq - s->RcvNxt;
    if (seglen == 0) {
        ok = rwnd == 0 ? seq == s->RcvNxt : off < rwnd;
    }
    else if (rwnd == 0) {
        ok = seq == s->RcvNxt;          /* zero window: keep processing ACK/RST/URG */
    }
    else {
        ok = off < rwnd || (uint32_t)(seq + seglen - 1 - s->RcvNxt) < rwnd;
    }
    if (!ok) {
        dp->cnt.unacceptable++;
        if (!rst) {
            c->ack_now = 1;
            PENDING();
        }
        goto out;
    }
    if (rst) {
        dp->cnt.rsts_in++;
        if (seq == s->RcvNxt) {
            /* acceptable RST (RFC 5961 3.2): abort */
            if (s->State == ST_ESTABLISHED || s->State == ST_CLOSE_WAIT) {
                dp->cnt.resets_established++;
            }
            s->State = ST_CLOSED;
            stop_timers(s);
            EV(h, EVENT_RST, 0);
        }
        else {
            err |= challenge_ack(t, idx, c, now, &c->last_challenge, dp->tps);
        }
        goto out;
    }
    if (syn) {
        if (seq == s->RcvNxt) {
            /* c.5 / T.9: in-order SYN -> upload in CLOSED state; the SYN goes up */
            s->State = ST_CLOSED;
            stop_timers(s);
            err |= retrieve(t, idx, c, UR_UPLOAD_REQUESTED);
            result = FRAME_PASS_UP;
        }
        else {
            err |= challenge_ack(t, idx, c, now, &c->last_syn_challenge, 3ull * dp->tps);
        }
        goto out;
    }
    if (!(fl & TH_ACK)) {
        goto out;
    }
    /* RFC 5961 5.2 ACK acceptability */
    if (seq_gt(g->ack, s->SndMax) || seq_lt(g->ack, s->SndUna - s->MaxSndWnd)) {
        c->ack_now = 1;
        PENDING();
        goto out;
    }
    if (fl & TH_URG) {
        /* T.9: request the upload, stop ACKing, queue (= pass up) this and later data */
        c->urgent = 1;
        err |= retrieve(t, idx, c, UR_RECEIVED_URGENT_DATA);
        result = FRAME_PASS_UP;
        goto out;
    }
    /* an acceptable segment: TS.Recent, keepalive, FIN_WAIT_2 timer */
    if (g->has_ts && (s->ConstFlags & TCP_FLAG_TIMESTAMP_ENABLED)
        && seq_le(seq, c->last_ack_sent)
        && (!c->have_ts_recent || seq_ge(g->tsval, s->TsRecent))) {
        s->TsRecent = g->tsval;
        c->ts_recent_time = now;
        c->have_ts_recent = 1;
    }
    keepalive_restart(t, s, c, now);
    if (s->State == ST_FIN_WAIT_2) {
        s->fin_wait_2_deadline = now + umax(1, dp->fin_wait_2_ticks);
    }
    if (ack_process(t, idx, c, g, now, &err)) {
        goto out;
    }
    if (g->plen || fin) {
        dp_seg g2 = *g;
        if (rwnd == 0 && g2.plen) {
            g2.plen = 0;                        /* zero window: the text is not accepted */
            g2.flags &= (uint8_t)~TH_FIN;
            c->ack_now = 1;
            PENDING();
        }
        receive_text(t, idx, c, &g2, now, &err);
    }
out:
    heap_fix(t, idx);
    if (err) {
        PyErr_NoMemory();
        return -1;
    }
    return result;
}

/* Parse the TCP options we use; 0 ok, -1 malformed. */
static int
parse_options(const uint8_t *o, uint32_t n, dp_seg *g)
{
    uint32_t i = 0;
    while (i < n) {
        uint8_t kind = o[i];
        if (kind == 0) {
            break;
        }
        if (kind == 1) {
            i++;
            continue;
        }
        if (i + 1 >= n) {
            return -1;
        }
        uint8_t len = o[i + 1];
        if (len < 2 || i + len > n) {
            return -1;
        }
        if (kind == 8) {
            if (len != 10) {
                return -1;
            }
            g->has_ts = 1;
            g->tsval = rd32(o + i + 2);
            g->tsecr = rd32(o + i + 6);
        }
        i += len;
    }
    return 0;
}

static int
process_one(CTable *t, const uint8_t *p, Py_ssize_t n, uint64_t now)
{
    ct_dp *dp = t->dp;
    Py_ssize_t off = 14;
    int tagged = 0;
    uint16_t vid = 0;
    ct_key key;

    if (n < 14) {
        return FRAME_NOT_OURS;
    }
    uint16_t type = rd16(p + 12);
    if (type == 0x8100) {
        if (n < 18) {
            return FRAME_NOT_OURS;
        }
        tagged = 1;
        vid = rd16(p + 14) & 0x0FFF;
        off = 18;
        type = rd16(p + 16);
    }
    if (type != 0x0800 || !parse_frame(p, n, off, &key)) {
        return FRAME_NOT_OURS;
    }
    int found;
    uint64_t handle = lookup_key(t, &key, &found);
    if (!found) {
        return FRAME_NOT_OURS;
    }
    uint32_t idx = (uint32_t)handle;
    ct_conn *c = dp ? dp->conns[idx] : NULL;
    if (c == NULL || !c->active) {
        return FRAME_PASS_UP;                   /* ours, but the data path is not running */
    }
    /* T.8: a connection on VLAN v takes only frames tagged v; on VLAN 0 no filtering */
    if (c->vlan_id != 0 && (!tagged || vid != c->vlan_id)) {
        return FRAME_NOT_OURS;
    }
    const uint8_t *ip = p + off;
    uint32_t ihl = (uint32_t)(ip[0] & 0x0F) * 4;
    uint32_t total = rd16(ip + 2);
    if (ihl != 20) {
        dp->cnt.ip_options++;
        return FRAME_PASS_UP;                   /* IP options: the host's business (T.9) */
    }
    const uint8_t *th = ip + ihl;
    uint32_t tcplen = total - ihl;
    uint32_t sum = 0;
    sum += rd16(ip + 12) + rd16(ip + 14) + rd16(ip + 16) + rd16(ip + 18);
    sum += 6 + tcplen;
    sum = csum_add(sum, th, tcplen);
    if (csum_fold(sum) != 0xFFFF) {
        dp->cnt.bad_checksum++;
        return FRAME_PASS_UP;
    }
    uint32_t thl = (uint32_t)(th[12] >> 4) * 4;     /* parse_frame checked 20 <= thl <= tcplen */
    dp_seg g;
    memset(&g, 0, sizeof(g));
    if (parse_options(th + 20, thl - 20, &g) < 0) {
        dp->cnt.malformed++;
        return FRAME_PASS_UP;
    }
    g.seq = rd32(th + 4);
    g.ack = rd32(th + 8);
    g.flags = th[13];
    g.win = rd16(th + 14);
    g.payload = th + thl;
    g.plen = tcplen - thl;

    ct_slot *s = &t->slots[idx];
    if (c->terminating && (s->ConstFlags & TCP_FLAG_SACK_ENABLED) && g.plen > 0
        && seq_gt(g.seq + g.plen, s->RcvNxt)) {
        /* d.3 step 3: with SACK in use, data arriving during the terminate that no cumulative
         * ACK covers is dropped -- neither indicated nor ACKed; the peer sends it again, to
         * the host (what the target SACKed and held out of order is not handed over either) */
        dp->cnt.terminate_sack_drops++;
        return FRAME_CONSUMED;
    }
    if (c->terminating || c->urgent || s->State == ST_CLOSED || s->State == ST_TIME_WAIT
        || s->State < ST_ESTABLISHED || s->State > ST_LAST_ACK) {
        return FRAME_PASS_UP;
    }
    int r = tcp_input(t, idx, c, &g, now);
    if (r == FRAME_CONSUMED) {
        dp->cnt.in_octets += total;             /* b.17 InOctets: with the IP header */
    }
    return r;
}

/* --------------------------------------------------- argument helpers ---- */

static int
get_ticks(PyObject *o, uint64_t *out)
{
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "now_ticks must be an int, not %.100s", Py_TYPE(o)->tp_name);
        return -1;
    }
    uint64_t v = PyLong_AsUnsignedLongLong(o);
    if (v == (uint64_t)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "now_ticks must be in 0..2**64-2, got %R", o);
        return -1;
    }
    if (v == UINT64_MAX) {
        PyErr_SetString(PyExc_ValueError, "now_ticks must be in 0..2**64-2");
        return -1;
    }
    *out = v;
    return 0;
}

static int
get_u32(PyObject *o, const char *what, uint32_t lo, uint32_t hi, uint32_t *out)
{
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what, Py_TYPE(o)->tp_name);
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow || v < (long long)lo || v > (long long)hi) {
        PyErr_Format(PyExc_ValueError, "%s must be in %u..%u, got %R", what, (unsigned)lo,
                     (unsigned)hi, o);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* Keyword-only arguments by name; unknown names -> TypeError. */
static int
parse_kw(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
         const char *const *names, PyObject **vals, int n)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (int i = 0; i < n; i++) {
        vals[i] = NULL;
    }
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int i;
        for (i = 0; i < n; i++) {
            if (PyUnicode_CompareWithASCIIString(name, names[i]) == 0) {
                break;
            }
        }
        if (i == n) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", fname,
                         name);
            return -1;
        }
        vals[i] = args[nargs + k];
    }
    return 0;
}

/* A handle naming an activated connection: 0 ok, -1 error (StaleHandleError / ValueError). */
static int
require_conn(CTable *t, PyObject *handle, uint32_t *idx, ct_conn **c)
{
    if (require_handle(t, handle, idx) < 0) {
        return -1;
    }
    if (t->dp == NULL || t->dp->conns[*idx] == NULL || !t->dp->conns[*idx]->active) {
        PyErr_SetString(PyExc_ValueError, "the connection's data path is not active "
                                          "(call activate() first)");
        return -1;
    }
    *c = t->dp->conns[*idx];
    return 0;
}

/* ------------------------------------------------------ Python methods ---- */

PyObject *
dp_configure(CTable *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {
        "ticks_per_second", "ack_frequency", "delayed_ack_ticks", "max_retransmissions",
        "dup_ack_threshold", "push_ticks", "fin_wait_2_ticks", "send_buffer", "receive_buffer",
        "min_rto_ticks", "max_rto_ticks", "ooo_segments", "tso_max"};
    PyObject *v[13];
    if (nargs != 0) {
        PyErr_SetString(PyExc_TypeError, "configure() takes keyword arguments only");
        return NULL;
    }
    if (parse_kw("configure", args, nargs, kwnames, names, v, 13) < 0) {
        return NULL;
    }
    ct_dp *dp = get_dp(self);
    if (dp == NULL) {
        return NULL;
    }
    ct_dp n = *dp;
    uint32_t *fields[] = {&n.tps, &n.ack_frequency, &n.delayed_ack_ticks,
                          &n.max_retransmissions, &n.dup_ack_threshold, &n.push_ticks,
                          &n.fin_wait_2_ticks, &n.send_buffer, &n.receive_buffer, &n.min_rto,
                          &n.max_rto, &n.ooo_max, &n.tso_max};
    static const uint32_t lo[] = {0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0};
    static const uint32_t hi[] = {1000000, 255, 0xFFFFFF, 255, 255, 0xFFFFFFF, 0xFFFFFFF,
                                  1u << 30, 1u << 30, 0xFFFFFFF, 0xFFFFFFF, DP_OOO_LIMIT,
                                  DP_TSO_LIMIT};
    for (int i = 0; i < 13; i++) {
        if (v[i] != NULL && v[i] != Py_None
            && get_u32(v[i], names[i], lo[i], hi[i], fields[i]) < 0) {
            return NULL;
        }
    }
    /* 0 = "use the default" for the NDIS parameters that have one */
    if (n.tps == 0) {
        n.tps = 1000;
    }
    if (n.ack_frequency == 0) {
        n.ack_frequency = 2;
    }
    if (n.dup_ack_threshold == 0) {
        n.dup_ack_threshold = 3;
    }
    if (n.max_retransmissions == 0) {
        n.max_retransmissions = 5;
    }
    if (n.fin_wait_2_ticks == 0) {
        n.fin_wait_2_ticks = 120 * n.tps;
    }
    if (v[0] != NULL) {     /* a new tick rate rescales the defaults that depend on it */
        if (v[9] == NULL || v[9] == Py_None) {
            n.min_rto = umax(1, n.tps / 5);
        }
        if (v[10] == NULL || v[10] == Py_None) {
            n.max_rto = n.tps * 60;
        }
    }
    if (n.min_rto > n.max_rto) {
        PyErr_SetString(PyExc_ValueError, "min_rto_ticks > max_rto_ticks");
        return NULL;
    }
    *dp = n;
    Py_RETURN_NONE;
}

static int
get_mac(PyObject *o, const char *what, uint8_t *out)
{
    Py_buffer view;
    if (o == NULL) {
        PyErr_Format(PyExc_TypeError, "activate() missing keyword argument '%s'", what);
        return -1;
    }
    if (PyObject_GetBuffer(o, &view, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (view.len != 6) {
        PyErr_Format(PyExc_ValueError, "%s must be 6 bytes, got %zd", what, view.len);
        PyBuffer_Release(&view);
        return -1;
    }
    memcpy(out, view.buf, 6);
    PyBuffer_Release(&view);
    return 0;
}

PyObject *
dp_activate(CTable *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"local_mac", "remote_mac", "vlan_id", "ttl", "tos",
                                        "path_mtu", "now_ticks"};
    PyObject *v[7];
    uint32_t idx, vlan = 0, ttl = 0, tos = 0, mtu = 1500;
    uint64_t now;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "activate() takes 1 positional argument (handle), %zd "
                     "given", nargs);
        return NULL;
    }
    if (parse_kw("activate", args, nargs, kwnames, names, v, 7) < 0
        || require_handle(self, args[0], &idx) < 0) {
        return NULL;
    }
    ct_conn tmp;
    memset(&tmp, 0, sizeof(tmp));
    if (get_mac(v[0], "local_mac", tmp.local_mac) < 0
        || get_mac(v[1], "remote_mac", tmp.remote_mac) < 0
        || (v[2] && get_u32(v[2], "vlan_id", 0, 4095, &vlan) < 0)
        || (v[3] && v[3] != Py_None && get_u32(v[3], "ttl", 0, 255, &ttl) < 0)
        || (v[4] && v[4] != Py_None && get_u32(v[4], "tos", 0, 255, &tos) < 0)
        || (v[5] && get_u32(v[5], "path_mtu", 68, 65535, &mtu) < 0)) {
        return NULL;
    }
    if (v[6] == NULL) {
        PyErr_SetString(PyExc_TypeError, "activate() missing keyword argument 'now_ticks'");
        return NULL;
    }
    if (get_ticks(v[6], &now) < 0) {
        return NULL;
    }
    ct_dp *dp = get_dp(self);
    if (dp == NULL) {
        return NULL;
    }
    if (require_handle(self, args[0], &idx) < 0) {
        return NULL;
    }
    ct_conn *pre = dp->conns[idx];         /* BufferedData given before activate() */
    if (pre != NULL && pre->active) {
        PyErr_SetString(PyExc_ValueError, "the connection is already active");
        return NULL;
    }
    ct_slot *s = &self->slots[idx];
    if (s->State < ST_ESTABLISHED || s->State > ST_LAST_ACK) {
        PyErr_Format(PyExc_ValueError, "cannot offload a connection in state %u (the "
                     "offloadable states are 4..9, b.14)", (unsigned)s->State);
        return NULL;
    }
    ct_conn *c = PyMem_Calloc(1, sizeof(ct_conn));
    if (c == NULL) {
        return PyErr_NoMemory();
    }
    *c = tmp;
    c->vlan_id = (uint16_t)vlan;
    c->path_mtu = (uint16_t)mtu;
    const int ws = (s->ConstFlags & TCP_FLAG_WINDOW_SCALING_ENABLED) != 0;
    const int ts = (s->ConstFlags & TCP_FLAG_TIMESTAMP_ENABLED) != 0;
    c->snd_shift = ws ? (uint8_t)umin(s->SndWindScale, 14) : 0;
    c->rcv_shift = ws ? (uint8_t)umin(s->RcvWindScale, 14) : 0;
    uint32_t mss = umin(s->RemoteMss ? s->RemoteMss : 536, mtu - 40);
    /* TSO: the segmenting device cuts a super-segment into path MTU - headers payloads
     * (vnic/vnet.py, gso_size); that is our MSS only when the path MTU, not the peer's MSS,
     * limits it -- otherwise stay with MSS-sized frames */
    c->tso_ok = mss == mtu - 40;
    if (ts) {
        mss -= 12;
    }
    c->mss = (uint16_t)umax(mss, 16);
    uint32_t prelen = pre ? pre->rlen : 0;
    c->rcap = umax(umax(dp->receive_buffer, s->RcvWnd), s->InitialRcvWnd);
    c->rcap = (uint32_t)u64min((uint64_t)c->rcap + prelen, 0x7FFF0000u);
    c->rlim = c->rcap + (1u << c->rcv_shift);
    /* the rings are allocated when data needs them (send_append, a segment); BufferedData
     * given before activate() becomes the receive ring as it is (prelen + 1 <= rlim) */
    if (prelen) {
        c->rbuf = pre->rbuf;
        c->rsize = pre->rsize;
        c->rlen = prelen;
        pre->rbuf = NULL;
    }
    if (s->RcvWnd > c->rlim) {
        s->RcvWnd = c->rcap;
    }
    if (ttl) {
        s->TtlOrHopLimit = (uint8_t)ttl;
    }
    else if (s->TtlOrHopLimit == 0) {
        s->TtlOrHopLimit = 64;
    }
    if (v[4] && v[4] != Py_None) {
        s->TosOrTrafficClass = (uint8_t)tos;
    }
    c->ts_delta = s->TsTime - (uint32_t)now;                /* T.6 */
    c->have_ts_recent = ts && (s->TsRecent != 0 || s->TsRecentAge != 0);
    c->ts_recent_time = now >= s->TsRecentAge ? now - s->TsRecentAge : 0;
    c->snd_wl2 = s->SndUna;
    c->recover = s->SndUna;
    c->last_ack_sent = s->RcvNxt;
    c->last_challenge = c->last_syn_challenge = UINT64_MAX;
    c->have_rtt = s->SRtt != 0 || s->RttVar != 0;
    update_rto(dp, s, c);
    if (s->CWnd == 0) {
        s->CWnd = umin(4 * c->mss, umax(2 * c->mss, 4380));   /* RFC 3390 */
    }
    if (s->SsThresh == 0) {
        s->SsThresh = 0xFFFFFFFFu;
    }
    if (s->MaxSndWnd < s->SndWnd) {
        s->MaxSndWnd = s->SndWnd;
    }
    switch (s->State) {
    case ST_FIN_WAIT_1:
        c->fin_queued = 1;
        break;
    case ST_FIN_WAIT_2:
        c->fin_queued = 1;
        c->fin_acked = 1;
        break;
    case ST_CLOSE_WAIT:
        c->fin_received = 1;
        break;
    case ST_CLOSING:
    case ST_LAST_ACK:
        c->fin_queued = 1;
        c->fin_received = 1;
        break;
    default:
        break;
    }
    /* timers from the delegated TimeoutDeltas (b.13, T.4) */
    stop_timers(s);
    if (s->RetransmitTimeoutDelta != CT_DELTA_STOPPED) {
        uint64_t d = now + s->RetransmitTimeoutDelta;
        if (s->State == ST_FIN_WAIT_2) {
            s->fin_wait_2_deadline = d;
        }
        else if (s->SndWnd == 0) {
            s->persist_deadline = d;
        }
        else {
            s->retransmit_deadline = d;
        }
    }
    else if (s->State == ST_FIN_WAIT_2) {
        s->fin_wait_2_deadline = now + dp->fin_wait_2_ticks;
    }
    else if (s->SndNxt != s->SndUna) {
        s->retransmit_deadline = now + backoff(dp, c->rto, s->RetransmitCount);
    }
    if (s->KeepAliveTimeoutDelta != CT_DELTA_STOPPED) {
        s->keepalive_deadline = now + s->KeepAliveTimeoutDelta;
    }
    else if ((s->CachedFlags & TCP_FLAG_KEEP_ALIVE_ENABLED) && s->KaTimeout) {
        s->keepalive_deadline = now + s->KaTimeout;
    }
    if (s->RetransmitCount) {
        c->rt_start = now >= s->TotalRT ? now - s->TotalRT : 0;
    }
    c->active = 1;
    conn_free(pre);
    dp->conns[idx] = c;
    dp->last_now = now;
    heap_fix(self, idx);
    if (mark_pending(self, idx, c) < 0) {
        return PyErr_NoMemory();
    }
    Py_RETURN_NONE;
}

/* set_route(handle, /, *, remote_mac=None, local_mac=None, vlan_id=None, path_mtu=None):
 * the miniport's NdisUpdateOffload of the neighbor (DlDestinationAddress), a path -> neighbor
 * relink, or a new PathMtu (c.3) reaching an active connection: later frames use the new
 * addresses; a new path MTU re-derives the send MSS as activate() does (RFC 1191: segments
 * shrink with the path MTU; data already sent is resent in the new size).  None = unchanged.
 * All arguments are checked before anything changes. */
PyObject *
dp_set_route(CTable *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"remote_mac", "local_mac", "vlan_id", "path_mtu"};
    PyObject *v[4];
    uint32_t idx, vlan = 0, mtu = 0;
    uint8_t remote_mac[6], local_mac[6];
    ct_conn *c;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "set_route() takes 1 positional argument (handle), %zd "
                     "given", nargs);
        return NULL;
    }
    if (parse_kw("set_route", args, nargs, kwnames, names, v, 4) < 0) {
        return NULL;
    }
    const int have_remote = v[0] != NULL && v[0] != Py_None;
    const int have_local = v[1] != NULL && v[1] != Py_None;
    const int have_vlan = v[2] != NULL && v[2] != Py_None;
    const int have_mtu = v[3] != NULL && v[3] != Py_None;
    if ((have_remote && get_mac(v[0], "remote_mac", remote_mac) < 0)
        || (have_local && get_mac(v[1], "local_mac", local_mac) < 0)
        || (have_vlan && get_u32(v[2], "vlan_id", 0, 4095, &vlan) < 0)
        || (have_mtu && get_u32(v[3], "path_mtu", 68, 65535, &mtu) < 0)) {
        return NULL;
    }
    /* the argument conversions above may have run Python code: resolve the handle last */
    if (require_conn(self, args[0], &idx, &c) < 0) {
        return NULL;
    }
    if (have_remote) {
        memcpy(c->remote_mac, remote_mac, 6);
    }
    if (have_local) {
        memcpy(c->local_mac, local_mac, 6);
    }
    if (have_vlan) {
        c->vlan_id = (uint16_t)vlan;
    }
    if (have_mtu && mtu != c->path_mtu) {
        ct_slot *s = &self->slots[idx];
        const int ts = (s->ConstFlags & TCP_FLAG_TIMESTAMP_ENABLED) != 0;
        uint32_t mss = umin(s->RemoteMss ? s->RemoteMss : 536, mtu - 40);
        c->path_mtu = (uint16_t)mtu;
        c->tso_ok = mss == mtu - 40;        /* as in activate(): the device cuts at MTU - 40 */
        if (ts) {
            mss -= 12;
        }
        c->mss = (uint16_t)umax(mss, 16);
    }
    Py_RETURN_NONE;
}

PyObject *
dp_send_append(CTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t idx;
    ct_conn *c;
    Py_buffer view;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send_append() takes exactly 2 arguments (handle, data)");
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (require_conn(self, args[0], &idx, &c) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    /* Data after a graceful disconnect would move the FIN: the host never does that.  (A
     * connection offloaded in FIN_WAIT_1 / CLOSING / LAST_ACK gets its send data after
     * activate(), up to the FIN, so only an acknowledged FIN is a hard stop.) */
    if (c->fin_acked) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "send after the FIN was acknowledged");
        return NULL;
    }
    if ((uint64_t)c->slen + (uint64_t)view.len > 0x7FFFFFFFu) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_OverflowError, "send queue would exceed 2 GiB");
        return NULL;
    }
    uint32_t n = (uint32_t)view.len;
    if ((uint64_t)c->slen + n > c->ssize) {
        uint32_t ns = ring_next_size(c->ssize, (uint64_t)c->slen + n, 0x80000000u);
        if (ring_grow(&c->sbuf, &c->ssize, &c->shead, ns, c->slen) < 0) {
            PyBuffer_Release(&view);
            return PyErr_NoMemory();
        }
    }
    if (n) {
        ring_write(c->sbuf, c->ssize, c->shead, c->slen, view.buf, n);
        c->slen += n;
    }
    PyBuffer_Release(&view);
    if (mark_pending(self, idx, c) < 0) {
        return PyErr_NoMemory();
    }
    return PyLong_FromUnsignedLong(n);
}

PyObject *
dp_send_unacked(CTable *self, PyObject *handle)
{
    uint32_t idx;
    ct_conn *c;
    if (require_conn(self, handle, &idx, &c) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(c->slen);
}

PyObject *
dp_acked_total(CTable *self, PyObject *handle)
{
    uint32_t idx;
    ct_conn *c;
    if (require_conn(self, handle, &idx, &c) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(c->acked_total);
}

PyObject *
dp_receive_available(CTable *self, PyObject *handle)
{
    uint32_t idx;
    ct_conn *c;
    if (require_conn(self, handle, &idx, &c) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(c->rlen);
}

PyObject *
dp_receive_take(CTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t idx;
    ct_conn *c;
    long long maxb = -1;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "receive_take() takes 1 or 2 arguments");
        return NULL;
    }
    if (nargs == 2) {
        maxb = PyLong_AsLongLong(args[1]);
        if (maxb == -1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    if (require_conn(self, args[0], &idx, &c) < 0) {
        return NULL;
    }
    uint32_t n = c->rlen;
    if (maxb >= 0 && (unsigned long long)maxb < n) {
        n = (uint32_t)maxb;
    }
    PyObject *b = PyBytes_FromStringAndSize(NULL, n);
    if (b == NULL) {
        return NULL;
    }
    if (n) {
        ring_read(c->rbuf, c->rsize, c->rhead, 0, (uint8_t *)PyBytes_AS_STRING(b), n);
        c->rhead = (uint32_t)(((uint64_t)c->rhead + n) % c->rsize);
        c->rlen -= n;
        /* window update when the window would grow enough (receiver SWS avoidance), and
         * only while the peer may still send: after its FIN (CLOSE_WAIT, CLOSING, LAST_ACK,
         * TIME_WAIT) no data can follow, and an update sent to a peer that already closed
         * from LAST_ACK is answered with a RST (RFC 9293 3.10.7.1) */
        ct_slot *s = &self->slots[idx];
        uint64_t used = (uint64_t)c->rlen + c->held;
        uint32_t free_ = c->rcap > used ? (uint32_t)(c->rcap - used) : 0;
        int peer_may_send = s->State == ST_ESTABLISHED || s->State == ST_FIN_WAIT_1
                            || s->State == ST_FIN_WAIT_2;
        if (free_ > s->RcvWnd && free_ - s->RcvWnd >= umin(c->rcap / 2, c->mss)
            && peer_may_send && !c->terminating) {
            c->ack_now = 1;
            if (mark_pending(self, idx, c) < 0) {
                Py_DECREF(b);
                return PyErr_NoMemory();
            }
        }
    }
    return b;
}

PyObject *
dp_receive_buffered(CTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t idx;
    ct_conn *c;
    Py_buffer view;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "receive_buffered() takes exactly 2 arguments");
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (require_handle(self, args[0], &idx) < 0 || get_dp(self) == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    c = self->dp->conns[idx];
    if (c == NULL || !c->active) {
        /* before activate(): keep the bytes; activate() puts them first in the ring */
        if (c == NULL) {
            c = PyMem_Calloc(1, sizeof(ct_conn));
            if (c == NULL) {
                PyBuffer_Release(&view);
                return PyErr_NoMemory();
            }
            self->dp->conns[idx] = c;
        }
        if ((uint64_t)c->rlen + (uint64_t)view.len > 0x7FFF0000u) {
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_OverflowError, "buffered data too large");
            return NULL;
        }
        uint32_t n = (uint32_t)view.len;
        uint8_t *nb = PyMem_Malloc(c->rlen + n + 1);
        if (nb == NULL) {
            PyBuffer_Release(&view);
            return PyErr_NoMemory();
        }
        memcpy(nb, c->rbuf ? c->rbuf : nb, c->rlen);
        memcpy(nb + c->rlen, view.buf, n);
        PyMem_Free(c->rbuf);
        c->rbuf = nb;
        c->rlen += n;
        c->rsize = c->rlen + 1;
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    ct_slot *s = &self->slots[idx];
    uint64_t need = (uint64_t)c->rlen + (uint64_t)view.len + s->RcvWnd + (1u << c->rcv_shift);
    if (need > 0x7FFFFFFFu) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_OverflowError, "buffered data too large");
        return NULL;
    }
    uint32_t n = (uint32_t)view.len;
    /* the logical size grows as the ring did before it was allocated lazily; the allocation
     * must hold the live span and the new bytes in front of it */
    uint32_t rlim = umax(c->rlim, (uint32_t)need);
    uint64_t phys = (uint64_t)rcv_live(s, c) + n;
    if (phys > c->rsize) {
        if (ring_grow(&c->rbuf, &c->rsize, &c->rhead, ring_next_size(c->rsize, phys, rlim),
                      rcv_live(s, c)) < 0) {
            PyBuffer_Release(&view);
            return PyErr_NoMemory();
        }
    }
    c->rlim = rlim;
    /* BufferedData ends at RcvNxt: it goes before anything received since */
    if (n) {
        c->rhead = (uint32_t)(((uint64_t)c->rhead + c->rsize - n) % c->rsize);
        ring_write(c->rbuf, c->rsize, c->rhead, 0, view.buf, n);
    }
    c->rlen += n;
    c->rcap = umax(c->rcap, c->rlen + s->RcvWnd);
    PyBuffer_Release(&view);
    if (n && ev_push(self->dp, make_handle(self, idx), EVENT_DATA, c->rlen) < 0) {
        return PyErr_NoMemory();
    }
    Py_RETURN_NONE;
}

/* One frame of process_frame / process_frames: the verdict (counted), or -1 with an exception. */
static int
process_counted(CTable *self, PyObject *frame, uint64_t now)
{
    int r;
    if (self->dp) {
        self->dp->cnt.frames_in++;
        self->dp->last_now = now;
    }
    if (PyBytes_CheckExact(frame)) {
        r = process_one(self, (const uint8_t *)PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame),
                        now);
    }
    else {
        Py_buffer view;
        if (PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE) < 0) {
            return -1;
        }
        r = process_one(self, (const uint8_t *)view.buf, view.len, now);
        PyBuffer_Release(&view);
    }
    if (r < 0) {
        return -1;
    }
    if (self->dp) {
        if (r == FRAME_CONSUMED) {
            self->dp->cnt.consumed++;
        }
        else if (r == FRAME_NOT_OURS) {
            self->dp->cnt.not_ours++;
        }
        else {
            self->dp->cnt.pass_up++;
        }
    }
    return r;
}

/* process_frames(frames, start, now_ticks): a receive batch in one call; stops at the first
 * frame that is not consumed (its caller passes it up before the next one is processed, as
 * frame by frame). */
PyObject *
dp_process_frames(CTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t now;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "process_frames() takes exactly 3 arguments "
                                         "(frames, start, now_ticks)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (start < 0) {
        PyErr_SetString(PyExc_ValueError, "start must be >= 0");
        return NULL;
    }
    if (get_ticks(args[2], &now) < 0) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], "frames must be a sequence of frames");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_ssize_t i = start;
    int r = FRAME_CONSUMED;
    for (; i < n; i++) {
        /* (a borrowed item of a list may go if the list changes: hold it) */
        PyObject *frame = PySequence_Fast_GET_ITEM(seq, i);
        Py_INCREF(frame);
        r = process_counted(self, frame, now);
        Py_DECREF(frame);
        if (r < 0) {
            Py_DECREF(seq);
            return NULL;
        }
        if (r != FRAME_CONSUMED) {
            break;
        }
    }
    Py_DECREF(seq);
    if (i >= n) {
        i = n > start ? n : start;
        r = FRAME_CONSUMED;
    }
    return Py_BuildValue("(ni)", i, r);
}

PyObject *
dp_process_frame(CTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t now;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "process_frame() takes exactly 2 arguments "
                                         "(frame, now_ticks)");
        return NULL;
    }
    if (get_ticks(args[1], &now) < 0) {
        return NULL;
    }
    int r = process_counted(self, args[0], now);
    if (r < 0) {
        return NULL;
    }
    return PyLong_FromLong(r);                  /* a cached small int: no allocation */
}

PyObject *
dp_poll(CTable *self, PyObject *now_obj)
{
    uint64_t now;
    if (get_ticks(now_obj, &now) < 0) {
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL || self->dp == NULL) {
        return out;
    }
    ct_dp *dp = self->dp;
    dp->last_now = now;
    int err = 0;
    while (dp->heap_n && dp->heap[0].key <= now) {
        uint32_t idx = dp->heap[0].slot;
        err |= run_timers(self, idx, dp->conns[idx], now);
        heap_fix(self, idx);
    }
    /* the list may grow while we walk it (it cannot here: output marks nothing pending) */
    for (uint32_t i = 0; i < dp->npending; i++) {
        uint64_t h = dp->pending[i];
        uint32_t idx = (uint32_t)h;
        if (idx >= self->capacity || !self->slots[idx].live
            || self->slots[idx].generation != (uint32_t)(h >> 32) || dp->conns[idx] == NULL
            || !dp->conns[idx]->active) {
            continue;
        }
        ct_conn *c = dp->conns[idx];
        c->in_pending = 0;
        if (conn_output(self, idx, c, now, out) < 0) {
            /* keep the rest pending for the next poll */
            uint32_t k = 0;
            for (uint32_t j = i + 1; j < dp->npending; j++) {
                dp->pending[k++] = dp->pending[j];
            }
            dp->npending = k;
            heap_fix(self, idx);
            Py_DECREF(out);
            return NULL;
        }
        heap_fix(self, idx);
    }
    dp->npending = 0;
    if (err) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    return out;
}

PyObject *
dp_next_deadline(CTable *self, PyObject *Py_UNUSED(ignored))
{
    ct_dp *dp = self->dp;
    if (dp == NULL) {
        Py_RETURN_NONE;
    }
    if (dp->npending) {
        return PyLong_FromUnsignedLongLong(dp->last_now);
    }
    if (dp->heap_n) {
        return PyLong_FromUnsignedLongLong(dp->heap[0].key);
    }
    Py_RETURN_NONE;
}

PyObject *
dp_events(CTable *self, PyObject *Py_UNUSED(ignored))
{
    ct_dp *dp = self->dp;
    if (dp == NULL) {
        return PyList_New(0);
    }
    PyObject *list = PyList_New((Py_ssize_t)dp->nevents);
    if (list == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < dp->nevents; i++) {
        PyObject *tup = Py_BuildValue("(KkK)", (unsigned long long)dp->events[i].handle,
                                      (unsigned long)dp->events[i].type,
                                      (unsigned long long)dp->events[i].value);
        if (tup == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, tup);
    }
    dp->nevents = 0;
    return list;
}

PyObject *
dp_disconnect(CTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t idx;
    ct_conn *c;
    uint64_t now;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "disconnect() takes exactly 3 arguments "
                                         "(handle, graceful, now_ticks)");
        return NULL;
    }
    int graceful = PyObject_IsTrue(args[1]);
    if (graceful < 0 || get_ticks(args[2], &now) < 0
        || require_conn(self, args[0], &idx, &c) < 0) {
        return NULL;
    }
    ct_slot *s = &self->slots[idx];
    self->dp->last_now = now;
    if (graceful) {
        /* ESTABLISHED -> FIN_WAIT_1, CLOSE_WAIT -> LAST_ACK; in any other state the FIN is
         * already queued (or the connection is closed): nothing to do */
        if (!c->fin_queued && (s->State == ST_ESTABLISHED || s->State == ST_CLOSE_WAIT)) {
            s->State = s->State == ST_ESTABLISHED ? ST_FIN_WAIT_1 : ST_LAST_ACK;
            c->fin_queued = 1;
        }
    }
    else {
        if (s->State != ST_CLOSED && s->State != ST_TIME_WAIT) {
            c->rst_pending = 1;
        }
        if (s->State == ST_ESTABLISHED || s->State == ST_CLOSE_WAIT) {
            self->dp->cnt.resets_established++;
        }
        stop_timers(s);
        heap_fix(self, idx);
    }
    if (mark_pending(self, idx, c) < 0) {
        return PyErr_NoMemory();
    }
    Py_RETURN_NONE;
}

PyObject *
dp_set_terminating(CTable *self, PyObject *handle)
{
    uint32_t idx;
    ct_conn *c;
    if (require_conn(self, handle, &idx, &c) < 0) {
        return NULL;
    }
    c->terminating = 1;
    heap_fix(self, idx);            /* deadlines stay (export reports them); nothing fires */
    Py_RETURN_NONE;
}

/* stop_sending(handle): d.6 -- the connection (or its neighbor / path) was invalidated: stop
 * all transmission at once (data, ACKs, retransmissions, window probes, keepalives, the
 * terminate-time ACK flush) and the timers that would transmit; frames received meanwhile
 * are still processed (data is buffered and handed back at terminate).  One way: only the
 * terminate that follows ends it.  The deadlines stay in the slot, so export() reports them. */
PyObject *
dp_stop_sending(CTable *self, PyObject *handle)
{
    uint32_t idx;
    ct_conn *c;
    if (require_conn(self, handle, &idx, &c) < 0) {
        return NULL;
    }
    c->quiet = 1;
    heap_fix(self, idx);
    Py_RETURN_NONE;
}

/* set_receive_held(handle, nbytes, /): the miniport holds nbytes of received data it took
 * from the ring for an indication the host did not (fully) accept (T.2: the target keeps
 * what was not consumed).  They are still the target's: the advertised window leaves room
 * for them, so a host that does not read cannot make the window reopen (flow control). */
PyObject *
dp_set_receive_held(CTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t idx, held;
    ct_conn *c;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "set_receive_held() takes 2 arguments (handle, nbytes), "
                     "%zd given", nargs);
        return NULL;
    }
    if (get_u32(args[1], "nbytes", 0, 0xFFFFFFFFu, &held) < 0
        || require_conn(self, args[0], &idx, &c) < 0) {
        return NULL;
    }
    c->held = held;
    Py_RETURN_NONE;
}

PyObject *
dp_flush_acks(CTable *self, PyObject *handle)
{
    uint32_t idx;
    ct_conn *c;
    if (require_conn(self, handle, &idx, &c) < 0) {
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    ct_slot *s = &self->slots[idx];
    if (ack_owed(s, c) && !c->urgent && !c->quiet && s->State != ST_CLOSED) {
        if (emit(self, idx, c, s->SndNxt, 0, 0, TH_ACK, self->dp->last_now, out) < 0) {
            Py_DECREF(out);
            return NULL;
        }
        self->dp->cnt.acks_out++;
    }
    s->delayed_ack_deadline = CT_TIMER_STOPPED;
    c->ack_now = 0;
    heap_fix(self, idx);
    return out;
}

static int
dict_set_u64(PyObject *d, const char *k, uint64_t v)
{
    PyObject *o = PyLong_FromUnsignedLongLong(v);
    if (o == NULL) {
        return -1;
    }
    int r = PyDict_SetItemString(d, k, o);
    Py_DECREF(o);
    return r;
}

static inline uint32_t
delta_of(uint64_t deadline, uint64_t now)
{
    if (deadline == CT_TIMER_STOPPED) {
        return CT_DELTA_STOPPED;
    }
    return deadline > now ? (uint32_t)u64min(deadline - now, 0xFFFFFFFEu) : 0;
}

/* d.3 step 5: write the derived delegated values (TsTime = NIC time + delta, TsRecentAge,
 * TotalRT, both TimeoutDeltas with CT_DELTA_STOPPED for stopped timers) back into the slot;
 * export() and export_many() then report the slot's fields. */
static void
export_derive(ct_slot *s, const ct_conn *c, uint64_t now)
{
    s->TsTime = (uint32_t)now + c->ts_delta;
    s->TsRecentAge = c->have_ts_recent ? (uint32_t)u64min(now - u64min(now, c->ts_recent_time),
                                                          0xFFFFFFFFu) : 0;
    s->TotalRT = s->RetransmitCount ? (uint32_t)u64min(now - u64min(now, c->rt_start),
                                                       0xFFFFFFFEu) : 0;
    uint64_t rdl = s->retransmit_deadline;
    if (rdl == CT_TIMER_STOPPED) {
        rdl = s->persist_deadline;
    }
    if (rdl == CT_TIMER_STOPPED) {
        rdl = s->fin_wait_2_deadline;
    }
    s->RetransmitTimeoutDelta = delta_of(rdl, now);
    s->KeepAliveTimeoutDelta = delta_of(s->keepalive_deadline, now);
}

/* The connection's send data from SndUna (unacked, then unsent) and its received, ACKed,
 * untaken bytes, as new bytes objects. */
static int
export_data(const ct_conn *c, PyObject **sd, PyObject **bd)
{
    *sd = PyBytes_FromStringAndSize(NULL, c->slen);
    if (*sd == NULL) {
        return -1;
    }
    if (c->slen) {
        ring_read(c->sbuf, c->ssize, c->shead, 0, (uint8_t *)PyBytes_AS_STRING(*sd), c->slen);
    }
    *bd = PyBytes_FromStringAndSize(NULL, c->rlen);
    if (*bd == NULL) {
        Py_CLEAR(*sd);
        return -1;
    }
    if (c->rlen) {
        ring_read(c->rbuf, c->rsize, c->rhead, 0, (uint8_t *)PyBytes_AS_STRING(*bd), c->rlen);
    }
    return 0;
}

PyObject *
dp_export(CTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t idx;
    ct_conn *c;
    uint64_t now;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "export() takes exactly 2 arguments (handle, now_ticks)");
        return NULL;
    }
    if (get_ticks(args[1], &now) < 0 || require_conn(self, args[0], &idx, &c) < 0) {
        return NULL;
    }
    ct_slot *s = &self->slots[idx];
    /* write the derived values back to the slot, then report them */
    export_derive(s, c, now);

    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    struct { const char *k; uint64_t v; } f[] = {
        {"State", s->State}, {"RcvNxt", s->RcvNxt}, {"RcvWnd", s->RcvWnd},
        {"SndUna", s->SndUna}, {"SndNxt", s->SndNxt}, {"SndMax", s->SndMax},
        {"SndWnd", s->SndWnd}, {"MaxSndWnd", s->MaxSndWnd}, {"SendWL1", s->SendWL1},
        {"CWnd", s->CWnd}, {"SsThresh", s->SsThresh}, {"SRtt", s->SRtt},
        {"RttVar", s->RttVar}, {"TsRecent", s->TsRecent}, {"TsRecentAge", s->TsRecentAge},
        {"TsTime", s->TsTime}, {"TotalRT", s->TotalRT}, {"DupAckCount", s->DupAckCount},
        {"SndWndProbeCount", s->SndWndProbeCount},
        {"KeepAliveProbeCount", s->KeepAliveProbeCount},
        {"KeepAliveTimeoutDelta", s->KeepAliveTimeoutDelta},
        {"RetransmitCount", s->RetransmitCount},
        {"RetransmitTimeoutDelta", s->RetransmitTimeoutDelta}, {"DWnd", s->DWnd},
    };
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        if (dict_set_u64(d, f[i].k, f[i].v) < 0) {
            Py_DECREF(d);
            return NULL;
        }
    }
    PyObject *sd, *bd;
    if (export_data(c, &sd, &bd) < 0) {
        Py_DECREF(d);
        return NULL;
    }
    int r = PyDict_SetItemString(d, "send_data", sd);
    Py_DECREF(sd);
    if (r < 0) {
        Py_DECREF(bd);
        Py_DECREF(d);
        return NULL;
    }
    r = PyDict_SetItemString(d, "buffered", bd);
    Py_DECREF(bd);
    if (r < 0) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

/* export_many() returns one flat list: per handle EXPORT_ROW items, the values of export() in
 * the order of its docstring, then send_bytes and buffered (flat: no container object per
 * connection for the garbage collector to track).  send_bytes is the length of export()'s
 * send_data, not a copy: at terminate the miniport hands back the host's own send NBLs (T.3),
 * and copying megabytes of unacknowledged data only to count them would sit in the handoff
 * gap. */
#define EXPORT_ROW_VALUES 24
#define EXPORT_ROW (EXPORT_ROW_VALUES + 2)

PyObject *
dp_export_many(CTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t now;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError,
                        "export_many() takes exactly 2 arguments (handles, now_ticks)");
        return NULL;
    }
    if (get_ticks(args[1], &now) < 0) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], "export_many() needs a sequence of handles");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    /* validate every handle first: all or nothing */
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t idx;
        ct_conn *c;
        if (require_conn(self, items[i], &idx, &c) < 0) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    if (n > PY_SSIZE_T_MAX / EXPORT_ROW) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    PyObject *out = PyList_New(n * EXPORT_ROW);
    if (out == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t idx;
        ct_conn *c;
        if (require_conn(self, items[i], &idx, &c) < 0) {
            goto error;
        }
        ct_slot *s = &self->slots[idx];
        export_derive(s, c, now);
        const uint32_t v[EXPORT_ROW_VALUES] = {
            s->State, s->RcvNxt, s->RcvWnd, s->SndUna, s->SndNxt, s->SndMax, s->SndWnd,
            s->MaxSndWnd, s->SendWL1, s->CWnd, s->SsThresh, s->SRtt, s->RttVar, s->TsRecent,
            s->TsRecentAge, s->TsTime, s->TotalRT, s->DupAckCount, s->SndWndProbeCount,
            s->KeepAliveProbeCount, s->KeepAliveTimeoutDelta, s->RetransmitCount,
            s->RetransmitTimeoutDelta, s->DWnd,
        };
        const Py_ssize_t base = i * EXPORT_ROW;
        for (int k = 0; k < EXPORT_ROW_VALUES; k++) {
            PyObject *o = PyLong_FromUnsignedLong(v[k]);
            if (o == NULL) {
                goto error;
            }
            PyList_SET_ITEM(out, base + k, o);
        }
        PyObject *sn = PyLong_FromUnsignedLong(c->slen);
        if (sn == NULL) {
            goto error;
        }
        PyList_SET_ITEM(out, base + EXPORT_ROW_VALUES, sn);
        PyObject *bd = PyBytes_FromStringAndSize(NULL, c->rlen);
        if (bd == NULL) {
            goto error;
        }
        if (c->rlen) {
            ring_read(c->rbuf, c->rsize, c->rhead, 0, (uint8_t *)PyBytes_AS_STRING(bd), c->rlen);
        }
        PyList_SET_ITEM(out, base + EXPORT_ROW_VALUES + 1, bd);
    }
    Py_DECREF(seq);
    return out;

error:
    Py_DECREF(seq);
    Py_DECREF(out);     /* items not yet set are NULL: list dealloc skips them */
    return NULL;
}

PyObject *
dp_is_active(CTable *self, PyObject *handle)
{
    uint32_t idx;
    if (require_handle(self, handle, &idx) < 0) {
        return NULL;
    }
    return PyBool_FromLong(self->dp != NULL && self->dp->conns[idx] != NULL
                           && self->dp->conns[idx]->active);
}

PyObject *
dp_counters(CTable *self, PyObject *Py_UNUSED(ignored))
{
    static const char *const names[] = {
        "frames_in", "consumed", "not_ours", "pass_up", "bad_checksum", "malformed",
        "paws_drops", "unacceptable", "dup_segments", "ooo_segments", "ooo_dropped",
        "challenge_acks", "rsts_in", "frames_out", "data_frames_out", "retransmits",
        "fast_retransmits", "timeouts", "window_probes", "keepalive_probes", "acks_out",
        "ts_missing", "tso_frames_out", "rcv_alloc_drops", "in_octets", "out_octets",
        "segments_out", "retransmitted_segments", "rsts_out", "resets_established",
        "ip_options", "sack_frames_out", "terminate_sack_drops"};
    dp_counters_t zero;
    memset(&zero, 0, sizeof(zero));
    const dp_counters_t *cn = self->dp ? &self->dp->cnt : &zero;
    const uint64_t *vals = (const uint64_t *)cn;
    typedef char names_check[(sizeof(names) / sizeof(names[0]) == sizeof(dp_counters_t) / 8)
                             ? 1 : -1];
    (void)sizeof(names_check);
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (dict_set_u64(d, names[i], vals[i]) < 0) {
            Py_DECREF(d);
            return NULL;
        }
    }
    return d;
}

/* ------------------------------------------------------- lifetime hooks ---- */

void
ct_dp_release(CTable *t, uint32_t idx)
{
    ct_dp *dp = t->dp;
    if (dp == NULL || idx >= t->capacity) {
        return;
    }
    heap_remove(dp, idx);
    conn_free(dp->conns[idx]);
    dp->conns[idx] = NULL;
}

void
ct_dp_clear(CTable *t)
{
    ct_dp *dp = t->dp;
    if (dp == NULL) {
        return;
    }
    for (uint32_t i = 0; i < t->capacity; i++) {
        conn_free(dp->conns[i]);
        dp->conns[i] = NULL;
        dp->heap_pos[i] = 0;
    }
    dp->heap_n = 0;
    dp->npending = 0;
    dp->nevents = 0;
}

void
ct_dp_free(CTable *t)
{
    ct_dp *dp = t->dp;
    if (dp == NULL) {
        return;
    }
    ct_dp_clear(t);
    PyMem_Free(dp->conns);
    PyMem_Free(dp->heap);
    PyMem_Free(dp->heap_pos);
    PyMem_Free(dp->pending);
    PyMem_Free(dp->events);
    PyMem_Free(dp);
    t->dp = NULL;
}

size_t
ct_dp_memory(const CTable *t)
{
    const ct_dp *dp = t->dp;
    if (dp == NULL) {
        return 0;
    }
    size_t cap = t->capacity ? t->capacity : 1;
    size_t m = sizeof(ct_dp) + cap * (sizeof(ct_conn *) + sizeof(dp_hent) + sizeof(uint32_t))
               + dp->cpending * sizeof(uint64_t) + dp->cevents * sizeof(dp_event);
    for (uint32_t i = 0; i < t->capacity; i++) {
        const ct_conn *c = dp->conns[i];
        if (c) {
            m += sizeof(ct_conn) + c->ssize + c->rsize;
        }
    }
    return m;
}

int
ct_dp_validate(CTable *t)
{
    ct_dp *dp = t->dp;
#define FAIL(...) do { PyErr_Format(PyExc_AssertionError, __VA_ARGS__); return -1; } while (0)
    if (dp == NULL) {
        return 0;
    }
    uint32_t inheap = 0;
    for (uint32_t i = 0; i < t->capacity; i++) {
        const ct_conn *c = dp->conns[i];
        const ct_slot *s = &t->slots[i];
        if (dp->heap_pos[i]) {
            inheap++;
            uint32_t p = dp->heap_pos[i] - 1;
            if (p >= dp->heap_n || dp->heap[p].slot != i) {
                FAIL("heap position of slot %u is wrong", (unsigned)i);
            }
            if (c == NULL || !c->active) {
                FAIL("slot %u without a data path is in the timer heap", (unsigned)i);
            }
            if (dp->heap[p].key != slot_min_deadline(s)) {
                FAIL("heap key of slot %u is not its earliest deadline", (unsigned)i);
            }
        }
        if (c == NULL) {
            continue;
        }
        if (!s->live) {
            FAIL("slot %u is not live but has a data path", (unsigned)i);
        }
        if (!c->active) {
            continue;
        }
        if (!dp->heap_pos[i] && !c->terminating && !c->urgent && !c->quiet
            && slot_min_deadline(s) != CT_TIMER_STOPPED) {
            FAIL("slot %u has a running timer but is not in the heap", (unsigned)i);
        }
        if (c->slen > c->ssize || (c->ssize && c->shead >= c->ssize)
            || (c->ssize == 0) != (c->sbuf == NULL) || (c->ssize == 0 && c->shead != 0)) {
            FAIL("slot %u: send ring out of bounds (slen %u, head %u, allocated %u)",
                 (unsigned)i, (unsigned)c->slen, (unsigned)c->shead, (unsigned)c->ssize);
        }
        if ((uint64_t)c->rlen + s->RcvWnd > c->rlim
            || (uint64_t)c->rcap + (1u << c->rcv_shift) > c->rlim) {
            FAIL("slot %u: receive ring cannot hold rlen %u + RcvWnd %u (capacity %u, "
                 "logical size %u)", (unsigned)i, (unsigned)c->rlen, (unsigned)s->RcvWnd,
                 (unsigned)c->rcap, (unsigned)c->rlim);
        }
        if (c->rsize > c->rlim || (c->rsize == 0) != (c->rbuf == NULL)
            || (c->rsize ? c->rhead >= c->rsize : c->rhead != 0)) {
            FAIL("slot %u: receive ring allocation out of bounds (head %u, allocated %u, "
                 "logical size %u)", (unsigned)i, (unsigned)c->rhead, (unsigned)c->rsize,
                 (unsigned)c->rlim);
        }
        if (seq_gt(s->SndUna, s->SndNxt) || seq_gt(s->SndNxt, s->SndMax)) {
            FAIL("slot %u: not SndUna <= SndNxt <= SndMax (%u %u %u)", (unsigned)i,
                 (unsigned)s->SndUna, (unsigned)s->SndNxt, (unsigned)s->SndMax);
        }
        if (c->nooo > dp->ooo_max && c->nooo > DP_OOO_LIMIT) {
            FAIL("slot %u: too many out-of-order ranges", (unsigned)i);
        }
        for (uint32_t k = 0; k < c->nooo; k++) {
            const dp_range *r = &c->ooo[k];
            if (!seq_lt(r->seq, r->end) || !seq_gt(r->seq, s->RcvNxt)
                || seq_gt(r->end, s->RcvNxt + s->RcvWnd)) {
                FAIL("slot %u: out-of-order range %u is outside the window", (unsigned)i,
                     (unsigned)k);
            }
            if (k && !seq_gt(r->seq, c->ooo[k - 1].end)) {
                FAIL("slot %u: out-of-order ranges overlap or are unsorted", (unsigned)i);
            }
            if (r->stamp == 0 || r->stamp > c->sack_clock) {
                FAIL("slot %u: out-of-order range %u has SACK stamp %u (clock %u)", (unsigned)i,
                     (unsigned)k, (unsigned)r->stamp, (unsigned)c->sack_clock);
            }
            for (uint32_t m = 0; m < k; m++) {
                if (c->ooo[m].stamp == r->stamp) {
                    FAIL("slot %u: out-of-order ranges %u and %u share SACK stamp %u",
                         (unsigned)i, (unsigned)m, (unsigned)k, (unsigned)r->stamp);
                }
            }
        }
        if (rcv_live(s, c) > c->rsize) {
            FAIL("slot %u: receive ring holds %u bytes from its head beyond its allocation %u",
                 (unsigned)i, (unsigned)rcv_live(s, c), (unsigned)c->rsize);
        }
    }
    if (inheap != dp->heap_n) {
        FAIL("%u slots claim a heap position, the heap has %u", (unsigned)inheap,
             (unsigned)dp->heap_n);
    }
    for (uint32_t p = 1; p < dp->heap_n; p++) {
        if (dp->heap[(p - 1) / 2].key > dp->heap[p].key) {
            FAIL("timer heap order broken at %u", (unsigned)p);
        }
    }
#undef FAIL
    return 0;
}

/* ------------------------------------------------------ module functions ---- */

/* internet_checksum(data, initial=0, /) -> int: tcpip.checksum.internet_checksum in C, for the
 * TAP layer (vnic/vnet.py completes the TCP checksums of GRO'd 64 KiB super-segments). */
static PyObject *
dp_internet_checksum(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "internet_checksum() takes 1 or 2 arguments "
                                         "(data, initial=0)");
        return NULL;
    }
    uint64_t sum = 0;
    if (nargs == 2) {
        if (!PyLong_Check(args[1])) {
            PyErr_SetString(PyExc_TypeError, "initial must be an int");
            return NULL;
        }
        unsigned long long init = PyLong_AsUnsignedLongLong(args[1]);
        if (init == (unsigned long long)-1 && PyErr_Occurred()) {
            return NULL;
        }
        if (init > 0xFFFFFFFFull) {
            PyErr_SetString(PyExc_ValueError, "initial must be in 0..2**32-1");
            return NULL;
        }
        sum = init;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    /* csum_add: the data path's sum (eight bytes per step in native order); ~3-4x the
     * byte-assembling loop this replaced on 64 KiB super-segments.  A non-zero sum stays
     * non-zero through the end-around-carry folds, so "was any input non-zero" is the folded
     * result being non-zero. */
    sum = csum_add((uint32_t)sum, (const uint8_t *)view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    const int nonzero = sum != 0;
    while (sum >> 16) {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    /* as the Python twin: all-zero input sums to 0 -> 0xFFFF; a non-zero input whose folded
     * sum is 0xFFFF ("negative zero") -> 0 */
    if (!nonzero) {
        return PyLong_FromLong(0xFFFF);
    }
    return PyLong_FromLong((long)(~sum & 0xFFFF));
}

static PyMethodDef dp_module_functions[] = {
    {"internet_checksum", (PyCFunction)(void (*)(void))dp_internet_checksum, METH_FASTCALL,
     "internet_checksum(data, initial=0, /)\n--\n\n"
     "RFC 1071 checksum of data plus the partial sum initial (tcpip.checksum.internet_checksum):\n"
     "the checksum field value, or 0 when verifying data that carries a correct checksum."},
    {NULL, NULL, 0, NULL},
};

int
ct_dp_add_constants(PyObject *m)
{
    if (PyModule_AddFunctions(m, dp_module_functions) < 0) {
        return -1;
    }
    struct { const char *name; long v; } k[] = {
        {"FRAME_CONSUMED", FRAME_CONSUMED}, {"FRAME_NOT_OURS", FRAME_NOT_OURS},
        {"FRAME_PASS_UP", FRAME_PASS_UP},
        {"EVENT_SEND_ACKED", EVENT_SEND_ACKED}, {"EVENT_DATA", EVENT_DATA},
        {"EVENT_PUSH", EVENT_PUSH},
        {"EVENT_FIN", EVENT_FIN}, {"EVENT_RST", EVENT_RST}, {"EVENT_RETRIEVE", EVENT_RETRIEVE},
        {"EVENT_FIN_ACKED", EVENT_FIN_ACKED},
    };
    if (PyModule_AddObjectRef(m, "HAS_DATAPATH", Py_True) < 0) {
        return -1;
    }
    for (size_t i = 0; i < sizeof(k) / sizeof(k[0]); i++) {
        if (PyModule_AddIntConstant(m, k[i].name, k[i].v) < 0) {
            return -1;
        }
    }
    return 0;
}
