/* SPDX-License-Identifier: MIT */
/*
 * offload_target/_ctable.h -- what the connection table (_ctable.c) and the data path
 * (_datapath.c) share: the 200-byte slot, the index bucket, the table object, the hash and
 * probe functions, and the entry points each file offers the other.  Both files are compiled
 * into the one extension module offload_target._ctable (setup.py).
 */
#ifndef VNIC_CTABLE_H
#define VNIC_CTABLE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------ slot ---- */

typedef struct {
    uint32_t local_ip;      /* big-endian address as an integer: 198.18.0.1 -> 0xC6120001 */
    uint32_t remote_ip;
    uint16_t local_port;
    uint16_t remote_port;
} ct_key;                   /* 12 bytes, no padding, compared with memcmp */

/* One offloaded TCP connection.  Field names of the chimney state follow the NDIS structures
 * (TCP_OFFLOAD_STATE_DELEGATED / _CONST / _CACHED, reference b.11-b.13) and keep their C types,
 * so range checks match what a real target could store. */
typedef struct {
    ct_key key;                           /* 0x00 */
    uint32_t generation;                  /* 0x0C  bumped on remove; 0 = never used */

    uint64_t context;                     /* 0x10  the target's handle for its Python objects */
    /* timer deadlines, absolute, in ticks; CT_TIMER_STOPPED when not running */
    uint64_t retransmit_deadline;         /* 0x18 */
    uint64_t persist_deadline;            /* 0x20 */
    uint64_t keepalive_deadline;          /* 0x28 */
    uint64_t delayed_ack_deadline;        /* 0x30 */
    uint64_t fin_wait_2_deadline;         /* 0x38 */

    /* TCP_OFFLOAD_STATE_DELEGATED */
    uint32_t State;                       /* 0x40  TCP_OFFLOAD_CONNECTION_STATE (4-byte enum) */
    uint32_t RcvNxt;
    uint32_t RcvWnd;
    uint32_t SndUna;
    uint32_t SndNxt;
    uint32_t SndMax;
    uint32_t SndWnd;
    uint32_t MaxSndWnd;
    uint32_t SendWL1;
    uint32_t CWnd;
    uint32_t SsThresh;
    uint32_t TsRecent;
    uint32_t TsRecentAge;
    uint32_t TsTime;
    uint32_t TotalRT;
    uint32_t KeepAliveTimeoutDelta;       /* KeepAlive.TimeoutDelta; 0xFFFFFFFF = not running */
    uint32_t RetransmitTimeoutDelta;      /* Retransmit.TimeoutDelta; 0xFFFFFFFF = not running */
    uint32_t DWnd;                        /* NDIS >= 6.1 */
    uint16_t DelegatedFlags;              /* 0x88  delegated Flags (reserved for system use) */
    uint16_t SRtt;                        /* ticks x 8 */
    uint16_t RttVar;                      /* ticks x 4 */
    uint8_t DupAckCount;
    uint8_t SndWndProbeCount;
    uint8_t KeepAliveProbeCount;          /* KeepAlive.ProbeCount */
    uint8_t RetransmitCount;              /* Retransmit.Count */

    /* TCP_OFFLOAD_STATE_CONST (ports live in the key) */
    uint16_t ConstFlags;                  /* 0x92  TCP_FLAG_TIMESTAMP/SACK/WINDOW_SCALING_ENABLED */
    uint16_t RemoteMss;
    uint8_t SndWindScale;                 /* 4-bit field in NDIS */
    uint8_t RcvWindScale;                 /* 4-bit field in NDIS */
    uint32_t HashValue;                   /* 0x98 */

    /* TCP_OFFLOAD_STATE_CACHED (FlowLabel is IPv6-only and not kept) */
    uint32_t InitialRcvWnd;               /* 0x9C */
    uint32_t RcvIndicationSize;
    uint32_t KaTimeout;
    uint32_t KaInterval;
    uint32_t MaxRT;
    uint16_t CachedFlags;                 /* 0xB0 */
    uint8_t KaProbeCount;
    uint8_t TtlOrHopLimit;
    uint8_t TosOrTrafficClass;
    uint8_t UserPriority;                 /* 3-bit field in NDIS */

    uint8_t live;                         /* 0xB6  1 while the slot holds a connection */
    uint8_t reserved;

    /* links to the target's neighbor and path objects */
    uint32_t path_id;                     /* 0xB8 */
    uint32_t neighbor_id;

    /* Reserved for buffer offsets; always 0.  The data path (_datapath.c) keeps a connection's
     * state in a side structure (ct_dp.conns[slot]) allocated at activate(), and its send and
     * receive rings apart, allocated when data needs them; so a connection without a running
     * data path costs exactly this slot. */
    uint32_t send_buffer_offset;          /* 0xC0 */
    uint32_t receive_buffer_offset;
} ct_slot;                                /* 0xC8 = 200 bytes */

#define CT_SLOT_SIZE 200
typedef char ct_slot_size_check[(sizeof(ct_slot) == CT_SLOT_SIZE) ? 1 : -1];
typedef char ct_key_size_check[(sizeof(ct_key) == 12) ? 1 : -1];

typedef struct {
    ct_key key;             /* copy of the slot's key */
    uint32_t slot1;         /* slot index + 1; 0 = empty bucket */
    uint32_t generation;    /* copy of the slot's generation: the handle without the slot */
} ct_bucket;                /* 20 bytes */

typedef char ct_bucket_size_check[(sizeof(ct_bucket) == 20) ? 1 : -1];

#define CT_TIMER_STOPPED UINT64_MAX
#define CT_DELTA_STOPPED 0xFFFFFFFFu
#define CT_MAX_CAPACITY (1u << 24)

/* ----------------------------------------------------------------- object ---- */

typedef struct {
    PyObject_HEAD
    uint32_t capacity;
    uint32_t count;
    uint32_t index_mask;       /* index_size - 1 */
    uint32_t free_top;         /* free_stack[0 .. free_top) are free slots */
    uint64_t hash_seed;
    size_t block_size;
    void *block;               /* the single PyMem_Calloc allocation */
    ct_slot *slots;
    ct_bucket *index;
    uint32_t *free_stack;
    struct ct_dp *dp;          /* the data path's state (_datapath.c); NULL until first used */
} CTable;

/* ---------------------------------------------------------------- hashing ---- */

static inline uint64_t
fmix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

static inline uint32_t
key_hash(const ct_key *k, uint64_t seed)
{
    uint64_t a = ((uint64_t)k->local_ip << 32) | k->remote_ip;
    uint64_t b = ((uint64_t)k->local_port << 16) | k->remote_port;
    return (uint32_t)fmix64(fmix64(a ^ seed) ^ b);
}

static inline int
key_eq(const ct_key *x, const ct_key *y)
{
    return memcmp(x, y, sizeof(ct_key)) == 0;
}

/* ---------------------------------------------------------------- probing ---- */

typedef enum {
    PROBE_MISS,     /* key absent; *pos is the empty bucket where it would go */
    PROBE_HIT,      /* key present; *pos is its bucket */
} ct_probe_t;

static inline ct_probe_t
probe(const CTable *t, const ct_key *key, uint32_t h, uint32_t *pos)
{
    uint32_t i = h & t->index_mask;
    for (;;) {
        const ct_bucket *b = &t->index[i];
        if (b->slot1 == 0) {
            *pos = i;
            return PROBE_MISS;
        }
        if (key_eq(&b->key, key)) {
            *pos = i;
            return PROBE_HIT;
        }
        i = (i + 1) & t->index_mask;
    }
}


static inline uint64_t
make_handle(const CTable *t, uint32_t idx)
{
    return ((uint64_t)t->slots[idx].generation << 32) | idx;
}

static inline uint64_t
lookup_key(const CTable *t, const ct_key *key, int *found)
{
    uint32_t pos;
    if (probe(t, key, key_hash(key, t->hash_seed), &pos) == PROBE_HIT) {
        *found = 1;
        const ct_bucket *b = &t->index[pos];
        return ((uint64_t)b->generation << 32) | (b->slot1 - 1);
    }
    *found = 0;
    return 0;
}

/* ---------------------------------------------------- shared entry points ---- */

/* _ctable.c */
int require_handle(CTable *t, PyObject *o, uint32_t *idx_out);     /* 0 ok, -1 error set */
int parse_frame(const unsigned char *p, Py_ssize_t n, Py_ssize_t off, ct_key *key);

/* _datapath.c: lifetime hooks the table calls */
void ct_dp_release(CTable *t, uint32_t idx);   /* a connection leaves its slot (remove) */
void ct_dp_clear(CTable *t);                   /* every connection leaves (clear) */
void ct_dp_free(CTable *t);                    /* the table goes away (dealloc) */
size_t ct_dp_memory(const CTable *t);          /* bytes the data path allocated */
int ct_dp_validate(CTable *t);                 /* 0 ok, -1 AssertionError set */
int ct_dp_add_constants(PyObject *module);     /* FRAME_*, EVENT_*, HAS_DATAPATH ... */

/* _datapath.c: the data-path methods of ConnectionTable (listed in _ctable.c's table) */
PyObject *dp_configure(CTable *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);
PyObject *dp_activate(CTable *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);
PyObject *dp_send_append(CTable *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *dp_send_unacked(CTable *self, PyObject *handle);
PyObject *dp_acked_total(CTable *self, PyObject *handle);
PyObject *dp_receive_take(CTable *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *dp_receive_available(CTable *self, PyObject *handle);
PyObject *dp_receive_buffered(CTable *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *dp_process_frame(CTable *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *dp_process_frames(CTable *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *dp_poll(CTable *self, PyObject *now);
PyObject *dp_next_deadline(CTable *self, PyObject *ignored);
PyObject *dp_events(CTable *self, PyObject *ignored);
PyObject *dp_disconnect(CTable *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *dp_set_terminating(CTable *self, PyObject *handle);
PyObject *dp_stop_sending(CTable *self, PyObject *handle);
PyObject *dp_set_receive_held(CTable *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *dp_set_route(CTable *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);
PyObject *dp_flush_acks(CTable *self, PyObject *handle);
PyObject *dp_export(CTable *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *dp_export_many(CTable *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *dp_is_active(CTable *self, PyObject *handle);
PyObject *dp_counters(CTable *self, PyObject *ignored);

#endif /* VNIC_CTABLE_H */
