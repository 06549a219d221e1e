/* SPDX-License-Identifier: MIT */
/*
 * offload_target._ctable -- the offload target's connection table, in C.
 *
 * This module roughly corresponds to the following Python (the real pure-Python twin is
 * offload_target/pytable.py; both have the same public API and the same handle values):
 *
 *     class TableError(Exception): ...
 *     class TableFullError(TableError): ...                       # maps to NDIS_STATUS_RESOURCES
 *     class DuplicateConnectionError(TableError, KeyError): ...
 *     class StaleHandleError(TableError, LookupError): ...
 *
 *     class ConnectionTable:
 *         slot_size = 200                     # sizeof(ct_slot), bytes per connection
 *         def __init__(self, capacity, *, hash_seed=0):
 *             self.capacity = capacity        # = the advertised TcpConnectionOffloadCapacity
 *             self._index = {}                # (local_ip, local_port, remote_ip, remote_port) -> slot
 *             self._slots = [Slot() for _ in range(capacity)]
 *             self._free = list(reversed(range(capacity)))   # pop() gives slot 0 first
 *         def insert(self, local_ip, local_port, remote_ip, remote_port, /):
 *             key = (local_ip, local_port, remote_ip, remote_port)
 *             if key in self._index: raise DuplicateConnectionError(key)
 *             if not self._free: raise TableFullError(self.capacity)
 *             i = self._free.pop(); s = self._slots[i]
 *             s.reset(key); s.generation = s.generation or 1; self._index[key] = i
 *             return s.generation << 32 | i                 # the handle
 *         def lookup(self, local_ip, local_port, remote_ip, remote_port, /): -> handle | None
 *         def lookup_frame(self, frame, /, offset_of_ipv4_header=14): -> handle | None
 *             # key = (ip.dst, tcp.dport, ip.src, tcp.sport) of a well-formed IPv4/TCP frame
 *         def lookup_frames(self, frames, /, offset_of_ipv4_header=14):
 *             return [self.lookup_frame(f, offset_of_ipv4_header) for f in frames]
 *         def remove(self, handle):
 *             i = self._check(handle); del self._index[self._slots[i].key]
 *             self._slots[i].generation += 1  # (skipping 0) -> every old handle is now stale
 *             self._free.append(i)
 *         def is_valid(self, handle): ...
 *         def get_state(self, handle): -> {field: int}   # FIELDS, in order
 *         def get_field(self, handle, name): -> int
 *         def set_fields(self, handle, /, **fields): ... # all-or-nothing
 *         def get_key(self, handle): -> (local_ip, local_port, remote_ip, remote_port)
 *         def handles(self): ...; def clear(self): ...; def memory_bytes(self): ...
 *
 * Memory layout.  One PyMem_Calloc block per table, allocated at construction (the capacity
 * is fixed), holding three arrays:
 *
 *     block ──► +----------------------------------------------------------------+
 *               | ct_slot slots[capacity]          200 bytes each               |
 *               |   +0x00 key {local_ip, remote_ip, local_port, remote_port}     |
 *               |   +0x0C generation                                             |
 *               |   +0x10 context (u64)  +0x18 five timer deadlines (u64 ticks)   |
 *               |   +0x40 TCP delegated state   +0x92 const   +0x9C cached       |
 *               |   +0xB6 live  +0xB8 path_id, neighbor_id  +0xC0 buffer offsets |
 *               +----------------------------------------------------------------+
 *               | ct_bucket index[index_size]     20 bytes each:                 |
 *               |   {key (12 bytes), slot + 1, generation}  (0 = empty)          |
 *               |   index_size = power of two >= 2 * capacity (load <= 1/2)      |
 *               +----------------------------------------------------------------+
 *               | uint32_t free_stack[capacity]    slots not in use, LIFO        |
 *               +----------------------------------------------------------------+
 *
 *     At 1,000,000 connections: 200 B slot + 2^21 * 20 B / 10^6 (41.9 B) index + 4 B free
 *     stack = ~246 bytes per connection, ~235 MiB in all, without data buffers.
 *
 * Index: open addressing with linear probing.  A bucket is empty when slot1 == 0; otherwise
 * it names slot (slot1 - 1) and holds a copy of that connection's key and generation, so a
 * lookup -- hit or miss -- reads only the index: one cache miss per lookup instead of two
 * (index, then slot), which is what a lookup costs once the table outgrows the caches.  That
 * copy costs 12 bytes per bucket (25 B per connection at load 1/2), well inside the budget.
 * The load factor never exceeds 1/2 (the index has at least twice as many buckets as the
 * table has slots), so probe sequences stay short and every probe loop ends at an empty
 * bucket.  Removal uses backward-shift deletion (Knuth vol. 3, 6.4, Algorithm R): no
 * tombstones, so lookups never slow down as connections come and go.
 *
 * Hash: the 12-byte key as three words, a = local_ip << 32 | remote_ip (addresses as
 * big-endian integers, 198.18.0.1 -> 0xC6120001) and b = local_port << 16 | remote_port, mixed
 * with MurmurHash3's 64-bit finalizer (fmix64): h = fmix64(fmix64(a ^ seed) ^ b).  fmix64 is a
 * bijection with full avalanche, so every input bit affects the low bits used as the bucket.
 * The per-table hash_seed (default 0) lets a target that fears crafted collisions choose an
 * unpredictable seed; pytable.hash_key() is the same function in Python (tests check both).
 *
 * Handles: generation << 32 | slot_index.  A slot's generation starts at 1 and is bumped on
 * every remove (and clear), skipping 0, so a handle kept after its connection was removed is
 * detected as stale even when the slot was reused since.  A handle is never 0.  (Generations
 * are 32 bits: a handle kept while its slot is reused 2^32 - 1 times would alias.)
 *
 * The fast path (lookup, lookup_frame, lookup_frames) allocates nothing but its results: the
 * key is parsed from the arguments or straight out of the frame's buffer (buffer protocol, no
 * copy), hashed and probed in C, and only the index is read.
 *
 * The type holds no Python references, so it is not GC-tracked.  The module keeps its state
 * (the type, the exception classes, interned field names) in module state: multi-phase init,
 * heap type from PyType_FromModuleAndSpec, no static PyObject.
 *
 * The data path.  The offloaded TCP data path (process_frame, poll, send_append, ... -- the
 * contract is in docs/internals.md) lives in _datapath.c, compiled into this same module; the
 * two files share _ctable.h (slot, bucket, table object, hash and probe).  This file calls its
 * lifetime hooks (ct_dp_release on remove, ct_dp_clear, ct_dp_free, ct_dp_validate,
 * ct_dp_memory) and lists its methods in the type's method table.  Its state hangs off
 * CTable.dp and is allocated on first use, so a table that never runs a data path is unchanged.
 */

#include "_ctable.h"

/* A freshly inserted connection: all zero except "timer not running" everywhere. */
static const ct_slot CT_SLOT_TEMPLATE = {
    .retransmit_deadline = CT_TIMER_STOPPED,
    .persist_deadline = CT_TIMER_STOPPED,
    .keepalive_deadline = CT_TIMER_STOPPED,
    .delayed_ack_deadline = CT_TIMER_STOPPED,
    .fin_wait_2_deadline = CT_TIMER_STOPPED,
    .KeepAliveTimeoutDelta = CT_DELTA_STOPPED,
    .RetransmitTimeoutDelta = CT_DELTA_STOPPED,
};

/* ------------------------------------------------------------ field table ---- */

typedef struct {
    const char *name;
    uint16_t offset;
    uint8_t size;           /* 1, 2, 4 or 8 */
    uint64_t max;           /* largest storable value (bitfields are narrower than their type) */
} ct_field;

#define F(member, maxv) {#member, (uint16_t)offsetof(ct_slot, member), \
                         (uint8_t)sizeof(((ct_slot *)0)->member), (uint64_t)(maxv)}
#define U8 0xFFu
#define U16 0xFFFFu
#define U32 0xFFFFFFFFu
#define U64 UINT64_MAX

/* Order = order of get_state() and of FIELDS; pytable.FIELDS lists the same, tests compare. */
static const ct_field CT_FIELDS[] = {
    /* TCP_OFFLOAD_STATE_DELEGATED */
    F(State, U32), F(DelegatedFlags, U16), F(RcvNxt, U32), F(RcvWnd, U32), F(SndUna, U32),
    F(SndNxt, U32), F(SndMax, U32), F(SndWnd, U32), F(MaxSndWnd, U32), F(SendWL1, U32),
    F(CWnd, U32), F(SsThresh, U32), F(SRtt, U16), F(RttVar, U16), F(TsRecent, U32),
    F(TsRecentAge, U32), F(TsTime, U32), F(TotalRT, U32), F(DupAckCount, U8),
    F(SndWndProbeCount, U8), F(KeepAliveProbeCount, U8), F(KeepAliveTimeoutDelta, U32),
    F(RetransmitCount, U8), F(RetransmitTimeoutDelta, U32), F(DWnd, U32),
    /* TCP_OFFLOAD_STATE_CONST */
    F(ConstFlags, U16), F(RemoteMss, U16), F(SndWindScale, 15), F(RcvWindScale, 15),
    F(HashValue, U32),
    /* TCP_OFFLOAD_STATE_CACHED */
    F(CachedFlags, U16), F(InitialRcvWnd, U32), F(RcvIndicationSize, U32), F(KaProbeCount, U8),
    F(KaTimeout, U32), F(KaInterval, U32), F(MaxRT, U32), F(TtlOrHopLimit, U8),
    F(TosOrTrafficClass, U8), F(UserPriority, 7),
    /* links and the target's context */
    F(path_id, U32), F(neighbor_id, U32), F(context, U64),
    /* timers */
    F(retransmit_deadline, U64), F(persist_deadline, U64), F(keepalive_deadline, U64),
    F(delayed_ack_deadline, U64), F(fin_wait_2_deadline, U64),
    /* reserved (always 0: the data path keeps its buffers outside the slot) */
    F(send_buffer_offset, U32), F(receive_buffer_offset, U32),
};
#undef F
#define CT_NFIELDS ((Py_ssize_t)(sizeof(CT_FIELDS) / sizeof(CT_FIELDS[0])))

static inline uint64_t
field_read(const ct_slot *s, const ct_field *f)
{
    const char *p = (const char *)s + f->offset;
    switch (f->size) {
    case 1: { uint8_t v; memcpy(&v, p, 1); return v; }
    case 2: { uint16_t v; memcpy(&v, p, 2); return v; }
    case 4: { uint32_t v; memcpy(&v, p, 4); return v; }
    default: { uint64_t v; memcpy(&v, p, 8); return v; }
    }
}

static inline void
field_write(ct_slot *s, const ct_field *f, uint64_t value)
{
    char *p = (char *)s + f->offset;
    switch (f->size) {
    case 1: { uint8_t v = (uint8_t)value; memcpy(p, &v, 1); break; }
    case 2: { uint16_t v = (uint16_t)value; memcpy(p, &v, 2); break; }
    case 4: { uint32_t v = (uint32_t)value; memcpy(p, &v, 4); break; }
    default: memcpy(p, &value, 8); break;
    }
}

/* ----------------------------------------------------------- module state ---- */

typedef struct {
    PyTypeObject *ConnectionTable_Type;
    PyObject *TableError;
    PyObject *TableFullError;
    PyObject *DuplicateConnectionError;
    PyObject *StaleHandleError;
    PyObject *field_index;                 /* dict: interned name -> int index into CT_FIELDS */
    PyObject *field_names[CT_NFIELDS];     /* interned field names, for get_state() */
} ct_state;

static inline ct_state *
get_module_state(PyObject *module)
{
    return (ct_state *)PyModule_GetState(module);
}

/* ----------------------------------------------------------------- object ---- */


/* The type is not subclassable, so Py_TYPE(self) is always our heap type. */
static inline ct_state *
table_state(CTable *self)
{
    return (ct_state *)PyType_GetModuleState(Py_TYPE(self));
}

/* Backward-shift deletion of bucket i (Knuth Algorithm R): move later members of the probe
 * run back into the hole unless that would put them before their home bucket. */
static void
index_delete(CTable *t, uint32_t i)
{
    const uint32_t mask = t->index_mask;
    uint32_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (t->index[j].slot1 == 0) {
            break;
        }
        uint32_t home = key_hash(&t->index[j].key, t->hash_seed) & mask;
        /* The entry at j may move to i iff its home is not cyclically in (i, j]. */
        int home_in_i_j = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (!home_in_i_j) {
            t->index[i] = t->index[j];
            i = j;
        }
    }
    memset(&t->index[i], 0, sizeof(ct_bucket));
}


/* -------------------------------------------------------- argument parsing ---- */

/* An IPv4 address: a bytes-like object of exactly 4 bytes. 0 ok, -1 error set. */
static int
parse_ip(PyObject *o, const char *what, uint32_t *out)
{
    const unsigned char *p;
    if (PyBytes_CheckExact(o)) {
        if (PyBytes_GET_SIZE(o) != 4) {
            PyErr_Format(PyExc_ValueError, "%s must be 4 bytes (an IPv4 address), got %zd",
                         what, PyBytes_GET_SIZE(o));
            return -1;
        }
        p = (const unsigned char *)PyBytes_AS_STRING(o);
        *out = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
        return 0;
    }
    if (!PyObject_CheckBuffer(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a bytes-like object of length 4, not %.100s",
                     what, Py_TYPE(o)->tp_name);
        return -1;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(o, &view, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (view.len != 4) {
        PyErr_Format(PyExc_ValueError, "%s must be 4 bytes (an IPv4 address), got %zd",
                     what, view.len);
        PyBuffer_Release(&view);
        return -1;
    }
    p = (const unsigned char *)view.buf;
    *out = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    PyBuffer_Release(&view);
    return 0;
}

/* A TCP port: an int in 0..65535.  0 ok, -1 error set. */
static int
parse_port(PyObject *o, const char *what, uint16_t *out)
{
    int overflow;
    long v;
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what, Py_TYPE(o)->tp_name);
        return -1;
    }
    v = PyLong_AsLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow != 0 || v < 0 || v > 65535) {
        PyErr_Format(PyExc_ValueError, "%s must be in 0..65535, got %R", what, o);
        return -1;
    }
    *out = (uint16_t)v;
    return 0;
}

static int
parse_key(PyObject *const *args, Py_ssize_t nargs, const char *fname, ct_key *key)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError,
                     "%s() takes exactly 4 arguments (local_ip, local_port, remote_ip, "
                     "remote_port), %zd given", fname, nargs);
        return -1;
    }
    if (parse_ip(args[0], "local_ip", &key->local_ip) < 0
        || parse_port(args[1], "local_port", &key->local_port) < 0
        || parse_ip(args[2], "remote_ip", &key->remote_ip) < 0
        || parse_port(args[3], "remote_port", &key->remote_port) < 0) {
        return -1;
    }
    return 0;
}

typedef enum {
    HANDLE_ERROR = -1,      /* not an int: TypeError set */
    HANDLE_STALE = 0,       /* an int that names no live connection (stale, removed, garbage) */
    HANDLE_VALID = 1,
} ct_handle_t;

static ct_handle_t
resolve_handle(CTable *t, PyObject *o, uint32_t *idx_out)
{
    int overflow;
    long long v;
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "a connection handle is an int, not %.100s",
                     Py_TYPE(o)->tp_name);
        return HANDLE_ERROR;
    }
    /* Any int is accepted; ints outside 0..2**64-1 simply name no connection. */
    v = PyLong_AsLongLongAndOverflow(o, &overflow);
    uint64_t h;
    if (v == -1 && PyErr_Occurred()) {
        return HANDLE_ERROR;
    }
    if (overflow < 0 || (overflow == 0 && v < 0)) {
        return HANDLE_STALE;
    }
    if (overflow > 0) {
        h = PyLong_AsUnsignedLongLong(o);
        if (h == (uint64_t)-1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
                return HANDLE_ERROR;
            }
            PyErr_Clear();
            return HANDLE_STALE;        /* >= 2**64 */
        }
    }
    else {
        h = (uint64_t)v;
    }
    uint32_t idx = (uint32_t)(h & 0xFFFFFFFFu);
    uint32_t gen = (uint32_t)(h >> 32);
    if (idx >= t->capacity) {
        return HANDLE_STALE;
    }
    const ct_slot *s = &t->slots[idx];
    if (!s->live || s->generation != gen) {
        return HANDLE_STALE;
    }
    *idx_out = idx;
    return HANDLE_VALID;
}

/* resolve_handle() that raises StaleHandleError.  0 ok, -1 error set. */
int
require_handle(CTable *t, PyObject *o, uint32_t *idx_out)
{
    switch (resolve_handle(t, o, idx_out)) {
    case HANDLE_VALID:
        return 0;
    case HANDLE_STALE:
        PyErr_Format(table_state(t)->StaleHandleError,
                     "stale or invalid connection handle %R", o);
        return -1;
    case HANDLE_ERROR:
        return -1;
    }
    abort();
}

/* --------------------------------------------------------- frame parsing ---- */

/* Classify an Ethernet/IPv4/TCP frame: fill *key (local = destination, remote = source) and
 * return 1 for a well-formed, unfragmented IPv4 packet carrying a TCP header; else 0.
 *
 *   frame: | ... link header ... | EtherType 0x0800 | IPv4 header (IHL*4) | TCP header | ...
 *                                                   ^ off
 * Checks, all against the buffer bounds n: when off >= 2 the two bytes before the IPv4 header
 * are EtherType 0x0800 (also true for a VLAN tag's inner type and a TUN PI header); version 4,
 * IHL >= 5, header checksum correct; Total Length covers IP + a minimal TCP header and fits in
 * the buffer (Ethernet padding after it is allowed); not a fragment (MF = 0, offset = 0);
 * protocol 6; TCP data offset >= 5 and within Total Length.  IP options are skipped via IHL,
 * not interpreted.  The TCP checksum is the data path's business, not the classifier's. */
int
parse_frame(const unsigned char *p, Py_ssize_t n, Py_ssize_t off, ct_key *key)
{
    if (off > n || n - off < 20) {
        return 0;
    }
    if (off >= 2 && (p[off - 2] != 0x08 || p[off - 1] != 0x00)) {
        return 0;
    }
    const unsigned char *ip = p + off;
    Py_ssize_t avail = n - off;
    if ((ip[0] >> 4) != 4) {
        return 0;
    }
    Py_ssize_t ihl = (Py_ssize_t)(ip[0] & 0x0f) * 4;
    if (ihl < 20 || ihl > avail) {
        return 0;
    }
    Py_ssize_t total = ((Py_ssize_t)ip[2] << 8) | ip[3];
    if (total < ihl + 20 || total > avail) {
        return 0;
    }
    if ((((unsigned)ip[6] & 0x3f) << 8 | ip[7]) != 0) {
        return 0;                   /* fragment: the slow path reassembles */
    }
    if (ip[9] != 6) {
        return 0;
    }
    uint32_t sum = 0;
    for (Py_ssize_t i = 0; i < ihl; i += 2) {
        sum += ((uint32_t)ip[i] << 8) | ip[i + 1];
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    if (sum != 0xffff) {
        return 0;
    }
    const unsigned char *tcp = ip + ihl;
    Py_ssize_t doff = (Py_ssize_t)(tcp[12] >> 4) * 4;
    if (doff < 20 || doff > total - ihl) {
        return 0;
    }
    key->remote_ip = ((uint32_t)ip[12] << 24) | ((uint32_t)ip[13] << 16)
                     | ((uint32_t)ip[14] << 8) | ip[15];
    key->local_ip = ((uint32_t)ip[16] << 24) | ((uint32_t)ip[17] << 16)
                    | ((uint32_t)ip[18] << 8) | ip[19];
    key->remote_port = (uint16_t)(((unsigned)tcp[0] << 8) | tcp[1]);
    key->local_port = (uint16_t)(((unsigned)tcp[2] << 8) | tcp[3]);
    return 1;
}

/* ---------------------------------------------------------- Python type ---- */

static PyObject *
table_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"capacity", "hash_seed", NULL};
    PyObject *cap_obj, *seed_obj = NULL;
    CTable *self = NULL;
    long long cap;
    int overflow;
    uint64_t seed = 0;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$O:ConnectionTable", kwlist,
                                     &cap_obj, &seed_obj)) {
        return NULL;
    }
    if (!PyLong_Check(cap_obj)) {
        PyErr_Format(PyExc_TypeError, "capacity must be an int, not %.100s",
                     Py_TYPE(cap_obj)->tp_name);
        return NULL;
    }
    cap = PyLong_AsLongLongAndOverflow(cap_obj, &overflow);
    if (cap == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (overflow != 0 || cap < 0 || cap > (long long)CT_MAX_CAPACITY) {
        PyErr_Format(PyExc_ValueError, "capacity must be in 0..%u, got %R",
                     (unsigned)CT_MAX_CAPACITY, cap_obj);
        return NULL;
    }
    if (seed_obj != NULL) {
        if (!PyLong_Check(seed_obj)) {
            PyErr_Format(PyExc_TypeError, "hash_seed must be an int, not %.100s",
                         Py_TYPE(seed_obj)->tp_name);
            return NULL;
        }
        seed = PyLong_AsUnsignedLongLong(seed_obj);
        if (seed == (uint64_t)-1 && PyErr_Occurred()) {
            if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_ValueError, "hash_seed must be in 0..2**64-1, got %R",
                             seed_obj);
            }
            return NULL;
        }
    }

    uint64_t index_size = 2;
    while (index_size < 2 * (uint64_t)cap) {
        index_size <<= 1;
    }
    uint64_t slots_bytes = (uint64_t)cap * sizeof(ct_slot);
    uint64_t index_bytes = index_size * sizeof(ct_bucket);
    uint64_t free_bytes = (uint64_t)cap * sizeof(uint32_t);
    uint64_t total = slots_bytes + index_bytes + free_bytes;
    if (total > (uint64_t)PY_SSIZE_T_MAX) {
        return PyErr_NoMemory();
    }

    self = (CTable *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->block = PyMem_Calloc(1, (size_t)total);
    if (self->block == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->block_size = (size_t)total;
    self->capacity = (uint32_t)cap;
    self->count = 0;
    self->index_mask = (uint32_t)(index_size - 1);
    self->hash_seed = seed;
    self->slots = (ct_slot *)self->block;
    self->index = (ct_bucket *)((char *)self->block + slots_bytes);
    self->free_stack = (uint32_t *)((char *)self->block + slots_bytes + index_bytes);
    for (uint32_t i = 0; i < self->capacity; i++) {
        self->free_stack[i] = self->capacity - 1 - i;      /* slot 0 is handed out first */
    }
    self->free_top = self->capacity;
    return (PyObject *)self;
}

/* Heap type without GC: free our block, the object, then drop the type reference the
 * instance holds.  This function must preserve a currently raised exception, if any (it does:
 * nothing here can raise). */
static void
table_dealloc(CTable *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    ct_dp_free(self);
    PyMem_Free(self->block);
    self->block = NULL;
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static Py_ssize_t
table_length(CTable *self)
{
    return (Py_ssize_t)self->count;
}

static PyObject *
table_repr(CTable *self)
{
    return PyUnicode_FromFormat("<ConnectionTable capacity=%u len=%u>",
                                (unsigned)self->capacity, (unsigned)self->count);
}

static PyObject *
table_insert(CTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    ct_key key;
    uint32_t pos;
    if (parse_key(args, nargs, "insert", &key) < 0) {
        return NULL;
    }
    uint32_t h = key_hash(&key, self->hash_seed);
    if (probe(self, &key, h, &pos) == PROBE_HIT) {
        /* Like KeyError: the exception's argument is the key (the 4-tuple as given). */
        PyObject *t = PyTuple_New(4);
        if (t == NULL) {
            return NULL;
        }
        for (int i = 0; i < 4; i++) {
            Py_INCREF(args[i]);
            PyTuple_SET_ITEM(t, i, args[i]);
        }
        /* PyErr_SetObject(type, tuple) would unpack the tuple: make the instance here. */
        PyObject *exc_type = table_state(self)->DuplicateConnectionError;
        PyObject *exc = PyObject_CallOneArg(exc_type, t);
        Py_DECREF(t);
        if (exc != NULL) {
            PyErr_SetObject(exc_type, exc);
            Py_DECREF(exc);
        }
        return NULL;
    }
    if (self->count == self->capacity) {
        PyErr_Format(table_state(self)->TableFullError,
                     "connection table full (capacity %u)", (unsigned)self->capacity);
        return NULL;
    }
    uint32_t idx = self->free_stack[self->free_top - 1];
    ct_slot *s = &self->slots[idx];
    uint32_t gen = s->generation ? s->generation : 1;
    /* Make the result first, so that a MemoryError leaves the table unchanged. */
    PyObject *result = PyLong_FromUnsignedLongLong(((uint64_t)gen << 32) | idx);
    if (result == NULL) {
        return NULL;
    }
    self->free_top--;
    *s = CT_SLOT_TEMPLATE;
    s->key = key;
    s->generation = gen;
    s->live = 1;
    self->index[pos].key = key;
    self->index[pos].slot1 = idx + 1;
    self->index[pos].generation = gen;
    self->count++;
    return result;
}

static PyObject *
table_lookup(CTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    ct_key key;
    int found;
    if (parse_key(args, nargs, "lookup", &key) < 0) {
        return NULL;
    }
    uint64_t handle = lookup_key(self, &key, &found);
    if (!found) {
        Py_RETURN_NONE;
    }
    return PyLong_FromUnsignedLongLong(handle);
}

/* offset_of_ipv4_header: an int >= 0.  Sets *off, or *beyond = 1 when it is past any buffer
 * (then every frame is "not IPv4/TCP").  0 ok, -1 error set. */
static int
parse_offset(PyObject *o, Py_ssize_t *off, int *beyond)
{
    int overflow;
    long long v;
    *off = 14;
    *beyond = 0;
    if (o == NULL) {
        return 0;
    }
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "offset_of_ipv4_header must be an int, not %.100s",
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow < 0 || (overflow == 0 && v < 0)) {
        PyErr_Format(PyExc_ValueError, "offset_of_ipv4_header must be >= 0, got %R", o);
        return -1;
    }
    if (overflow > 0 || v > (long long)PY_SSIZE_T_MAX) {
        *beyond = 1;
    }
    else {
        *off = (Py_ssize_t)v;
    }
    return 0;
}

/* (frame, /, offset_of_ipv4_header=14) of lookup_frame() and lookup_frames(). */
static int
parse_frame_args(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames, PyObject **first, PyObject **off_obj)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError,
                     "%s() takes 1 or 2 positional arguments (%zd given)", fname, nargs);
        return -1;
    }
    *first = args[0];
    *off_obj = nargs == 2 ? args[1] : NULL;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(name, "offset_of_ipv4_header") != 0) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R",
                         fname, name);
            return -1;
        }
        if (*off_obj != NULL) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got multiple values for 'offset_of_ipv4_header'", fname);
            return -1;
        }
        *off_obj = args[nargs + i];
    }
    return 0;
}

/* The key of one frame object.  1 = an IPv4/TCP frame (*key set), 0 = not one,
 * -1 = error set (not a bytes-like object). */
static int
frame_key(PyObject *frame, Py_ssize_t off, int beyond, ct_key *key)
{
    Py_buffer view;
    int ok;
    if (PyBytes_CheckExact(frame)) {
        return !beyond && parse_frame((const unsigned char *)PyBytes_AS_STRING(frame),
                                      PyBytes_GET_SIZE(frame), off, key);
    }
    if (PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    ok = !beyond && parse_frame((const unsigned char *)view.buf, view.len, off, key);
    PyBuffer_Release(&view);
    return ok;
}

/* Classify one frame object.  1 = a connection's frame (*handle set), 0 = not ours,
 * -1 = error set (not a bytes-like object). */
static int
classify(CTable *self, PyObject *frame, Py_ssize_t off, int beyond, uint64_t *handle)
{
    ct_key key;
    int found = 0;
    int r = frame_key(frame, off, beyond, &key);
    if (r <= 0) {
        return r;
    }
    *handle = lookup_key(self, &key, &found);
    return found;
}

static PyObject *
table_lookup_frame(CTable *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *frame, *off_obj;
    Py_ssize_t off;
    int beyond;
    uint64_t handle = 0;
    if (parse_frame_args("lookup_frame", args, nargs, kwnames, &frame, &off_obj) < 0) {
        return NULL;
    }
    /* The frame's type is checked before the offset (as the twin does). */
    if (!PyBytes_CheckExact(frame) && !PyObject_CheckBuffer(frame)) {
        PyErr_Format(PyExc_TypeError, "a bytes-like object is required, not '%.100s'",
                     Py_TYPE(frame)->tp_name);
        return NULL;
    }
    if (parse_offset(off_obj, &off, &beyond) < 0) {
        return NULL;
    }
    switch (classify(self, frame, off, beyond, &handle)) {
    case 1:
        return PyLong_FromUnsignedLongLong(handle);
    case 0:
        Py_RETURN_NONE;
    default:
        return NULL;
    }
}

#if defined(__GNUC__) || defined(__clang__)
#define CT_PREFETCH(p) __builtin_prefetch((p), 0, 1)
#else
#define CT_PREFETCH(p) ((void)(p))
#endif
#define CT_BATCH 16

/* lookup_frames(frames, /, offset_of_ipv4_header=14): lookup_frame() over a burst.
 * Frames are taken CT_BATCH at a time: first every key is parsed and hashed and its home
 * bucket prefetched, then the buckets are probed, so the index cache misses of a batch
 * overlap instead of following one another (the bulk lookup of NIC software, e.g. DPDK). */
static PyObject *
table_lookup_frames(CTable *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *frames, *off_obj, *seq, *result;
    Py_ssize_t off;
    int beyond;
    if (parse_frame_args("lookup_frames", args, nargs, kwnames, &frames, &off_obj) < 0
        || parse_offset(off_obj, &off, &beyond) < 0) {
        return NULL;
    }
    seq = PySequence_Fast(frames, "lookup_frames() needs an iterable of frames");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    result = PyList_New(n);
    if (result == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t base = 0; base < n; base += CT_BATCH) {
        ct_key keys[CT_BATCH];
        uint32_t hashes[CT_BATCH];
        int is_tcp[CT_BATCH];
        int m = (int)(n - base < CT_BATCH ? n - base : CT_BATCH);
        for (int j = 0; j < m; j++) {
            /* borrowed; seq holds it, and no Python code runs while we use it */
            PyObject *frame = PySequence_Fast_GET_ITEM(seq, base + j);
            is_tcp[j] = frame_key(frame, off, beyond, &keys[j]);
            if (is_tcp[j] < 0) {
                goto error;
            }
            if (is_tcp[j]) {
                hashes[j] = key_hash(&keys[j], self->hash_seed);
                CT_PREFETCH(&self->index[hashes[j] & self->index_mask]);
            }
        }
        for (int j = 0; j < m; j++) {
            uint32_t pos;
            PyObject *item;
            if (is_tcp[j] && probe(self, &keys[j], hashes[j], &pos) == PROBE_HIT) {
                const ct_bucket *b = &self->index[pos];
                item = PyLong_FromUnsignedLongLong(((uint64_t)b->generation << 32)
                                                   | (b->slot1 - 1));
                if (item == NULL) {
                    goto error;
                }
            }
            else {
                item = Py_NewRef(Py_None);
            }
            PyList_SET_ITEM(result, base + j, item);
        }
    }
    Py_DECREF(seq);
    return result;

error:
    Py_DECREF(seq);
    Py_DECREF(result);
    return NULL;
}

static PyObject *
table_remove(CTable *self, PyObject *handle)
{
    uint32_t idx, pos;
    if (require_handle(self, handle, &idx) < 0) {
        return NULL;
    }
    ct_slot *s = &self->slots[idx];
    uint32_t h = key_hash(&s->key, self->hash_seed);
    /* The key is in the index at a bucket naming this slot: find that bucket. */
    pos = h & self->index_mask;
    while (self->index[pos].slot1 != idx + 1) {
        if (self->index[pos].slot1 == 0) {
            PyErr_SetString(PyExc_SystemError, "connection table index is corrupt");
            return NULL;
        }
        pos = (pos + 1) & self->index_mask;
    }
    index_delete(self, pos);
    ct_dp_release(self, idx);
    s->live = 0;
    s->generation = s->generation + 1 ? s->generation + 1 : 1;
    self->free_stack[self->free_top++] = idx;
    self->count--;
    Py_RETURN_NONE;
}

static PyObject *
table_is_valid(CTable *self, PyObject *handle)
{
    uint32_t idx;
    switch (resolve_handle(self, handle, &idx)) {
    case HANDLE_VALID:
        Py_RETURN_TRUE;
    case HANDLE_STALE:
        Py_RETURN_FALSE;
    case HANDLE_ERROR:
        return NULL;
    }
    abort();
}

static PyObject *
ip_to_bytes(uint32_t ip)
{
    char b[4] = {(char)(ip >> 24), (char)(ip >> 16), (char)(ip >> 8), (char)ip};
    return PyBytes_FromStringAndSize(b, 4);
}

static PyObject *
table_get_key(CTable *self, PyObject *handle)
{
    uint32_t idx;
    if (require_handle(self, handle, &idx) < 0) {
        return NULL;
    }
    const ct_key *k = &self->slots[idx].key;
    PyObject *lip = ip_to_bytes(k->local_ip);
    PyObject *rip = ip_to_bytes(k->remote_ip);
    PyObject *res = NULL;
    if (lip != NULL && rip != NULL) {
        res = Py_BuildValue("(OHOH)", lip, k->local_port, rip, k->remote_port);
    }
    Py_XDECREF(lip);
    Py_XDECREF(rip);
    return res;
}

static PyObject *
table_get_state(CTable *self, PyObject *handle)
{
    uint32_t idx;
    if (require_handle(self, handle, &idx) < 0) {
        return NULL;
    }
    ct_state *st = table_state(self);
    const ct_slot *s = &self->slots[idx];
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < CT_NFIELDS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(field_read(s, &CT_FIELDS[i]));
        if (v == NULL || PyDict_SetItem(d, st->field_names[i], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

/* Field index for a name, or -1 with KeyError/TypeError set. */
static Py_ssize_t
find_field(ct_state *st, PyObject *name)
{
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "a field name is a str, not %.100s",
                     Py_TYPE(name)->tp_name);
        return -1;
    }
    PyObject *ix = PyDict_GetItemWithError(st->field_index, name);    /* borrowed */
    if (ix == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_KeyError,
                         "unknown connection field %R (the fields are listed in FIELDS)",
                         name);
        }
        return -1;
    }
    return PyLong_AsSsize_t(ix);
}

static PyObject *
table_get_field(CTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t idx;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "get_field() takes exactly 2 arguments (handle, name), "
                     "%zd given", nargs);
        return NULL;
    }
    if (require_handle(self, args[0], &idx) < 0) {
        return NULL;
    }
    Py_ssize_t f = find_field(table_state(self), args[1]);
    if (f < 0) {
        return NULL;
    }
    /* find_field() may run a str subclass's __eq__: look the slot up again. */
    if (require_handle(self, args[0], &idx) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(field_read(&self->slots[idx], &CT_FIELDS[f]));
}

/* set_fields(handle, /, **fields): all values are checked before any is stored. */
static PyObject *
table_set_fields(CTable *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    uint32_t idx;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    Py_ssize_t which[CT_NFIELDS];
    uint64_t values[CT_NFIELDS];

    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "set_fields() takes exactly 1 positional argument "
                     "(handle), %zd given", nargs);
        return NULL;
    }
    if (require_handle(self, args[0], &idx) < 0) {
        return NULL;
    }
    ct_state *st = table_state(self);
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        PyObject *value = args[nargs + i];
        Py_ssize_t f = find_field(st, name);
        if (f < 0) {
            return NULL;
        }
        if (i >= CT_NFIELDS) {          /* cannot happen: keyword names are unique */
            PyErr_SetString(PyExc_TypeError, "set_fields(): too many fields");
            return NULL;
        }
        if (!PyLong_Check(value)) {
            PyErr_Format(PyExc_TypeError, "field %s must be an int, not %.100s",
                         CT_FIELDS[f].name, Py_TYPE(value)->tp_name);
            return NULL;
        }
        uint64_t v = PyLong_AsUnsignedLongLong(value);
        if (v == (uint64_t)-1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
                return NULL;
            }
            PyErr_Clear();
            v = 0;
            goto out_of_range;
        }
        if (v > CT_FIELDS[f].max) {
            goto out_of_range;
        }
        which[i] = f;
        values[i] = v;
        continue;
out_of_range:
        PyErr_Format(PyExc_OverflowError, "field %s must be in 0..%llu, got %R",
                     CT_FIELDS[f].name, (unsigned long long)CT_FIELDS[f].max, value);
        return NULL;
    }
    /* Name lookups may have run Python code (str subclasses): check the handle again. */
    if (require_handle(self, args[0], &idx) < 0) {
        return NULL;
    }
    ct_slot *s = &self->slots[idx];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        field_write(s, &CT_FIELDS[which[i]], values[i]);
    }
    Py_RETURN_NONE;
}

static PyObject *
table_handles(CTable *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *list = PyList_New((Py_ssize_t)self->count);
    if (list == NULL) {
        return NULL;
    }
    Py_ssize_t j = 0;
    for (uint32_t i = 0; i < self->capacity && j < (Py_ssize_t)self->count; i++) {
        if (!self->slots[i].live) {
            continue;
        }
        PyObject *h = PyLong_FromUnsignedLongLong(make_handle(self, i));
        if (h == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, j++, h);
    }
    PyObject *it = PyObject_GetIter(list);
    Py_DECREF(list);
    return it;
}

static PyObject *
table_clear(CTable *self, PyObject *Py_UNUSED(ignored))
{
    ct_dp_clear(self);
    for (uint32_t i = 0; i < self->capacity; i++) {
        ct_slot *s = &self->slots[i];
        if (s->live) {
            s->live = 0;
            s->generation = s->generation + 1 ? s->generation + 1 : 1;
        }
        self->free_stack[i] = self->capacity - 1 - i;
    }
    memset(self->index, 0, ((size_t)self->index_mask + 1) * sizeof(ct_bucket));
    self->free_top = self->capacity;
    self->count = 0;
    Py_RETURN_NONE;
}

static PyObject *
table_memory_bytes(CTable *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSize_t(self->block_size + (size_t)Py_TYPE(self)->tp_basicsize
                             + ct_dp_memory(self));
}

static PyObject *
table_home_bucket(CTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    ct_key key;
    if (parse_key(args, nargs, "_home_bucket", &key) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(key_hash(&key, self->hash_seed) & self->index_mask);
}

/* Check every invariant of the table; raise AssertionError naming the first broken one. */
static PyObject *
table_validate(CTable *self, PyObject *Py_UNUSED(ignored))
{
    const uint32_t isize = self->index_mask + 1;
    uint32_t live = 0, used = 0;
#define FAIL(...) do { PyErr_Format(PyExc_AssertionError, __VA_ARGS__); return NULL; } while (0)
    if (self->count + self->free_top != self->capacity) {
        FAIL("count %u + free %u != capacity %u", (unsigned)self->count,
             (unsigned)self->free_top, (unsigned)self->capacity);
    }
    for (uint32_t i = 0; i < self->capacity; i++) {
        if (self->slots[i].live) {
            live++;
            int found;
            uint64_t h = lookup_key(self, &self->slots[i].key, &found);
            if (!found || (uint32_t)h != i) {
                FAIL("live slot %u is not reachable through the index", (unsigned)i);
            }
            if (self->slots[i].generation == 0) {
                FAIL("live slot %u has generation 0", (unsigned)i);
            }
        }
    }
    if (live != self->count) {
        FAIL("%u live slots but count is %u", (unsigned)live, (unsigned)self->count);
    }
    for (uint32_t i = 0; i < self->free_top; i++) {
        uint32_t f = self->free_stack[i];
        if (f >= self->capacity || self->slots[f].live) {
            FAIL("free stack entry %u names slot %u, which is not free", (unsigned)i,
                 (unsigned)f);
        }
    }
    for (uint32_t i = 0; i < isize; i++) {
        const ct_bucket *b = &self->index[i];
        if (b->slot1 == 0) {
            continue;
        }
        used++;
        if (b->slot1 > self->capacity || !self->slots[b->slot1 - 1].live) {
            FAIL("bucket %u names slot %u, which is not live", (unsigned)i,
                 (unsigned)(b->slot1 - 1));
        }
        const ct_slot *s = &self->slots[b->slot1 - 1];
        if (!key_eq(&b->key, &s->key) || b->generation != s->generation) {
            FAIL("bucket %u disagrees with slot %u", (unsigned)i, (unsigned)(b->slot1 - 1));
        }
        /* Linear probing: no empty bucket between the home bucket and this one. */
        uint32_t home = key_hash(&b->key, self->hash_seed) & self->index_mask;
        for (uint32_t j = home; j != i; j = (j + 1) & self->index_mask) {
            if (self->index[j].slot1 == 0) {
                FAIL("bucket %u is cut off from its home bucket by empty bucket %u",
                     (unsigned)i, (unsigned)j);
            }
        }
    }
    if (used != self->count) {
        FAIL("%u index entries for %u connections", (unsigned)used, (unsigned)self->count);
    }
#undef FAIL
    if (ct_dp_validate(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
table_get_capacity(CTable *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLong(self->capacity);
}

static PyObject *
table_get_hash_seed(CTable *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->hash_seed);
}

static PyObject *
table_get_index_size(CTable *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong((uint64_t)self->index_mask + 1);
}

#define FASTCALL(f) (PyCFunction)(void (*)(void))(f)

static PyMethodDef table_methods[] = {
    {"insert", FASTCALL(table_insert), METH_FASTCALL,
     "insert($self, local_ip, local_port, remote_ip, remote_port, /)\n--\n\n"
     "Add a connection; return its handle.  Raises DuplicateConnectionError when the 4-tuple\n"
     "is present, TableFullError when all slots are in use, TypeError/ValueError for bad\n"
     "arguments (an IP is 4 bytes, a port is an int in 0..65535)."},
    {"lookup", FASTCALL(table_lookup), METH_FASTCALL,
     "lookup($self, local_ip, local_port, remote_ip, remote_port, /)\n--\n\n"
     "Handle of the connection with this 4-tuple, or None."},
    {"lookup_frame", FASTCALL(table_lookup_frame), METH_FASTCALL | METH_KEYWORDS,
     "lookup_frame($self, frame, /, offset_of_ipv4_header=14)\n--\n\n"
     "Classify a received frame: the handle of the connection it belongs to (local = IP/TCP\n"
     "destination, remote = source), or None for anything that is not a well-formed,\n"
     "unfragmented IPv4/TCP packet of an offloaded connection.  Reads the frame in place\n"
     "(buffer protocol, no copy).  When offset_of_ipv4_header >= 2, the two bytes before the\n"
     "IPv4 header must be EtherType 0x0800."},
    {"lookup_frames", FASTCALL(table_lookup_frames), METH_FASTCALL | METH_KEYWORDS,
     "lookup_frames($self, frames, /, offset_of_ipv4_header=14)\n--\n\n"
     "lookup_frame() over a burst of received frames: a list with a handle or None per\n"
     "frame, in order (one call per burst instead of one per frame)."},
    {"remove", (PyCFunction)table_remove, METH_O,
     "remove($self, handle, /)\n--\n\n"
     "Remove a connection; its handle and every copy of it become stale.\n"
     "Raises StaleHandleError for a stale or invalid handle."},
    {"is_valid", (PyCFunction)table_is_valid, METH_O,
     "is_valid($self, handle, /)\n--\n\nTrue if the handle names a connection in the table."},
    {"get_key", (PyCFunction)table_get_key, METH_O,
     "get_key($self, handle, /)\n--\n\n(local_ip, local_port, remote_ip, remote_port)."},
    {"get_state", (PyCFunction)table_get_state, METH_O,
     "get_state($self, handle, /)\n--\n\n"
     "Dict of every per-connection field (see FIELDS), in FIELDS order."},
    {"get_field", FASTCALL(table_get_field), METH_FASTCALL,
     "get_field($self, handle, name, /)\n--\n\nOne field of a connection."},
    {"set_fields", FASTCALL(table_set_fields), METH_FASTCALL | METH_KEYWORDS,
     "set_fields($self, handle, /, **fields)\n--\n\n"
     "Store fields of a connection, all or nothing.  Unknown name -> KeyError; a value that\n"
     "is not an int -> TypeError; out of range for the field -> OverflowError."},
    {"handles", (PyCFunction)table_handles, METH_NOARGS,
     "handles($self, /)\n--\n\nIterator over the handles in the table, in slot order\n"
     "(a snapshot: changing the table while iterating is safe)."},
    {"clear", (PyCFunction)table_clear, METH_NOARGS,
     "clear($self, /)\n--\n\nRemove every connection (every handle becomes stale)."},
    {"memory_bytes", (PyCFunction)table_memory_bytes, METH_NOARGS,
     "memory_bytes($self, /)\n--\n\nBytes this table allocated (its block plus the object)."},
    {"_home_bucket", FASTCALL(table_home_bucket), METH_FASTCALL,
     "_home_bucket($self, local_ip, local_port, remote_ip, remote_port, /)\n--\n\n"
     "Test hook: the index bucket where the key's probe sequence starts."},
    {"_validate", (PyCFunction)table_validate, METH_NOARGS,
     "_validate($self, /)\n--\n\nTest hook: check every invariant, AssertionError if broken."},
    /* the data path (_datapath.c; contract in docs/internals.md) */
    {"configure", FASTCALL(dp_configure), METH_FASTCALL | METH_KEYWORDS,
     "configure($self, /, *, ticks_per_second=1000, ack_frequency=2, delayed_ack_ticks=40,\n"
     "          max_retransmissions=5, dup_ack_threshold=3, push_ticks=500,\n"
     "          fin_wait_2_ticks=120000, send_buffer=1048576, receive_buffer=1048576,\n"
     "          min_rto_ticks=None, max_rto_ticks=None, ooo_segments=16, tso_max=0)\n--\n\n"
     "Set the data path's parameters (NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS); tso_max > 0:\n"
     "new data leaves in super-segments of up to tso_max payload bytes (whole MSS multiples)\n"
     "for a device that segments them (TAP with virtio-net offload)."},
    {"activate", FASTCALL(dp_activate), METH_FASTCALL | METH_KEYWORDS,
     "activate($self, handle, /, *, local_mac, remote_mac, vlan_id=0, ttl=None, tos=None,\n"
     "         path_mtu=1500, now_ticks)\n--\n\n"
     "Start the data path of a connection whose CONST/CACHED/DELEGATED fields are set."},
    {"set_route", FASTCALL(dp_set_route), METH_FASTCALL | METH_KEYWORDS,
     "set_route($self, handle, /, *, remote_mac=None, local_mac=None, vlan_id=None,\n"
     "          path_mtu=None)\n--\n\n"
     "An NdisUpdateOffload of the neighbor or path (new MAC, relink, PathMtu) reaching an\n"
     "active connection: later frames use it; a new path MTU re-derives the send MSS.\n"
     "None leaves a value unchanged."},
    {"send_append", FASTCALL(dp_send_append), METH_FASTCALL,
     "send_append($self, handle, data, /)\n--\n\nQueue send data; returns bytes queued."},
    {"send_unacked", (PyCFunction)dp_send_unacked, METH_O,
     "send_unacked($self, handle, /)\n--\n\nBytes queued and not yet ACKed."},
    {"acked_total", (PyCFunction)dp_acked_total, METH_O,
     "acked_total($self, handle, /)\n--\n\nBytes ACKed since activate."},
    {"receive_take", FASTCALL(dp_receive_take), METH_FASTCALL,
     "receive_take($self, handle, max_bytes=-1, /)\n--\n\nIn-order received data, oldest first."},
    {"receive_available", (PyCFunction)dp_receive_available, METH_O,
     "receive_available($self, handle, /)\n--\n\nBytes receive_take() can return."},
    {"receive_buffered", FASTCALL(dp_receive_buffered), METH_FASTCALL,
     "receive_buffered($self, handle, data, /)\n--\n\n"
     "Initiate BufferedData (already ACKed, ends at RcvNxt): put before any received data."},
    {"process_frame", FASTCALL(dp_process_frame), METH_FASTCALL,
     "process_frame($self, frame, now_ticks, /)\n--\n\n"
     "One received frame: FRAME_CONSUMED, FRAME_NOT_OURS or FRAME_PASS_UP."},
    {"process_frames", FASTCALL(dp_process_frames), METH_FASTCALL,
     "process_frames($self, frames, start, now_ticks, /)\n--\n\n"
     "process_frame() for frames[start], frames[start + 1], ... while they are consumed.\n"
     "Returns (index, verdict): the first frame not consumed and its verdict, or\n"
     "(len(frames), FRAME_CONSUMED) when every one was.  The caller handles that frame (it\n"
     "goes up the ordinary path before the next one is processed) and goes on from index + 1."},
    {"poll", (PyCFunction)dp_poll, METH_O,
     "poll($self, now_ticks, /)\n--\n\nFire due timers; the frames to transmit now."},
    {"next_deadline", (PyCFunction)dp_next_deadline, METH_NOARGS,
     "next_deadline($self, /)\n--\n\nEarliest tick poll() has work, or None."},
    {"events", (PyCFunction)dp_events, METH_NOARGS,
     "events($self, /)\n--\n\nDrain the events: a list of (handle, EVENT_*, value)."},
    {"disconnect", FASTCALL(dp_disconnect), METH_FASTCALL,
     "disconnect($self, handle, graceful, now_ticks, /)\n--\n\n"
     "Graceful: FIN after the queued data; abortive: RST now (at the next poll)."},
    {"set_receive_held", FASTCALL(dp_set_receive_held), METH_FASTCALL,
     "set_receive_held($self, handle, nbytes, /)\n--\n\n"
     "Received bytes taken for an indication the host did not accept, held by the miniport:\n"
     "still the target's, so the advertised window leaves room for them (T.2)."},
    {"stop_sending", (PyCFunction)dp_stop_sending, METH_O,
     "stop_sending($self, handle, /)\n--\n\n"
     "d.6 invalidate: no more transmission (data, ACKs, retransmissions, probes, keepalives)\n"
     "and no timers; received frames are still processed.  Only terminate ends it."},
    {"set_terminating", (PyCFunction)dp_set_terminating, METH_O,
     "set_terminating($self, handle, /)\n--\n\n"
     "d.3 step 3: stop the connection's timers and output; later frames -> FRAME_PASS_UP."},
    {"flush_acks", (PyCFunction)dp_flush_acks, METH_O,
     "flush_acks($self, handle, /)\n--\n\nd.3 step 2: the owed ACK now (list of 0 or 1 frame)."},
    {"export", FASTCALL(dp_export), METH_FASTCALL,
     "export($self, handle, now_ticks, /)\n--\n\n"
     "TCP_OFFLOAD_STATE_DELEGATED values + send_data + buffered (d.3 step 5)."},
    {"export_many", FASTCALL(dp_export_many), METH_FASTCALL,
     "export_many($self, handles, now_ticks, /)\n--\n\n"
     "export() of many connections at once (d.3 step 5 over a terminate tree): one flat list,\n"
     "26 items per handle, in order: State, RcvNxt, RcvWnd, SndUna, SndNxt, SndMax, SndWnd,\n"
     "MaxSndWnd, SendWL1, CWnd, SsThresh, SRtt, RttVar, TsRecent, TsRecentAge, TsTime,\n"
     "TotalRT, DupAckCount, SndWndProbeCount, KeepAliveProbeCount, KeepAliveTimeoutDelta,\n"
     "RetransmitCount, RetransmitTimeoutDelta, DWnd, send_bytes, buffered: the values export()\n"
     "reports (and writes back into the slots), with send_bytes = len(send_data) instead of a\n"
     "copy of the send data.  Every handle is checked first\n"
     "(StaleHandleError / ValueError as export()); on an error nothing is exported."},
    {"is_active", (PyCFunction)dp_is_active, METH_O,
     "is_active($self, handle, /)\n--\n\nTrue once activate() ran for this connection."},
    {"datapath_counters", (PyCFunction)dp_counters, METH_NOARGS,
     "datapath_counters($self, /)\n--\n\nDict of the data path's counters."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef table_getset[] = {
    {"capacity", (getter)table_get_capacity, NULL,
     "Fixed number of slots (the advertised TcpConnectionOffloadCapacity).", NULL},
    {"hash_seed", (getter)table_get_hash_seed, NULL, "Seed of the key hash.", NULL},
    {"_index_size", (getter)table_get_index_size, NULL,
     "Number of index buckets (a power of two >= 2 * capacity).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(table_doc,
"ConnectionTable(capacity, *, hash_seed=0)\n--\n\n"
"Fixed-capacity table of offloaded TCP connections: 4-tuple -> slot holding the TCP\n"
"delegated state, copies of the const and cached state, neighbor/path links, the target's\n"
"context, timer deadlines and buffer offsets.  Open addressing, O(1) insert/lookup/remove,\n"
"handles = generation << 32 | slot.  One slot is 200 bytes (class attribute slot_size).");

static PyType_Slot table_slots[] = {
    {Py_tp_doc, (void *)table_doc},
    {Py_tp_new, table_new},
    {Py_tp_dealloc, table_dealloc},
    {Py_tp_repr, table_repr},
    {Py_tp_methods, table_methods},
    {Py_tp_getset, table_getset},
    {Py_sq_length, table_length},
    {Py_mp_length, table_length},
    {0, NULL},
};

static PyType_Spec table_spec = {
    .name = "offload_target._ctable.ConnectionTable",
    .basicsize = sizeof(CTable),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = table_slots,
};

/* ----------------------------------------------------------------- module ---- */

static PyObject *
new_exception(PyObject *module, const char *name, const char *doc, PyObject *bases)
{
    PyObject *exc = PyErr_NewExceptionWithDoc(name, doc, bases, NULL);
    if (exc == NULL) {
        return NULL;
    }
    const char *short_name = strrchr(name, '.') + 1;
    if (PyModule_AddObjectRef(module, short_name, exc) < 0) {
        Py_DECREF(exc);
        return NULL;
    }
    return exc;
}

static int
ct_exec(PyObject *m)
{
    ct_state *st = get_module_state(m);
    PyObject *bases = NULL, *names = NULL, *maxes = NULL, *proxy = NULL;

    st->TableError = new_exception(m, "offload_target._ctable.TableError",
                                   "Base class of the connection table's errors.", NULL);
    if (st->TableError == NULL) {
        goto error;
    }
    st->TableFullError = new_exception(
        m, "offload_target._ctable.TableFullError",
        "Every slot is in use (the offload request fails with NDIS_STATUS_RESOURCES).",
        st->TableError);
    if (st->TableFullError == NULL) {
        goto error;
    }
    bases = PyTuple_Pack(2, st->TableError, PyExc_KeyError);
    if (bases == NULL) {
        goto error;
    }
    st->DuplicateConnectionError = new_exception(
        m, "offload_target._ctable.DuplicateConnectionError",
        "The 4-tuple is already in the table.", bases);
    Py_CLEAR(bases);
    if (st->DuplicateConnectionError == NULL) {
        goto error;
    }
    bases = PyTuple_Pack(2, st->TableError, PyExc_LookupError);
    if (bases == NULL) {
        goto error;
    }
    st->StaleHandleError = new_exception(
        m, "offload_target._ctable.StaleHandleError",
        "The handle names no connection: removed since (stale) or never issued.", bases);
    Py_CLEAR(bases);
    if (st->StaleHandleError == NULL) {
        goto error;
    }

    st->ConnectionTable_Type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &table_spec, NULL);
    if (st->ConnectionTable_Type == NULL) {
        goto error;
    }
    if (PyModule_AddType(m, st->ConnectionTable_Type) < 0) {
        goto error;
    }
    /* Class attributes of an immutable type go straight into its dict. */
    PyObject *tdict = st->ConnectionTable_Type->tp_dict;
    PyObject *v = PyLong_FromLong(CT_SLOT_SIZE);
    if (v == NULL || PyDict_SetItemString(tdict, "slot_size", v) < 0) {
        Py_XDECREF(v);
        goto error;
    }
    Py_DECREF(v);
    PyType_Modified(st->ConnectionTable_Type);

    st->field_index = PyDict_New();
    names = PyTuple_New(CT_NFIELDS);
    maxes = PyDict_New();
    if (st->field_index == NULL || names == NULL || maxes == NULL) {
        goto error;
    }
    for (Py_ssize_t i = 0; i < CT_NFIELDS; i++) {
        PyObject *name = PyUnicode_InternFromString(CT_FIELDS[i].name);
        if (name == NULL) {
            goto error;
        }
        st->field_names[i] = name;
        Py_INCREF(name);
        PyTuple_SET_ITEM(names, i, name);
        PyObject *ix = PyLong_FromSsize_t(i);
        if (ix == NULL || PyDict_SetItem(st->field_index, name, ix) < 0) {
            Py_XDECREF(ix);
            goto error;
        }
        Py_DECREF(ix);
        PyObject *mx = PyLong_FromUnsignedLongLong(CT_FIELDS[i].max);
        if (mx == NULL || PyDict_SetItem(maxes, name, mx) < 0) {
            Py_XDECREF(mx);
            goto error;
        }
        Py_DECREF(mx);
    }
    proxy = PyDictProxy_New(maxes);
    if (proxy == NULL
        || PyModule_AddObjectRef(m, "FIELDS", names) < 0
        || PyModule_AddObjectRef(m, "FIELD_MAX", proxy) < 0
        || PyModule_AddIntConstant(m, "SLOT_SIZE", CT_SLOT_SIZE) < 0
        || PyModule_AddIntConstant(m, "MAX_CAPACITY", CT_MAX_CAPACITY) < 0
        || ct_dp_add_constants(m) < 0) {
        goto error;
    }
    v = PyLong_FromUnsignedLongLong(CT_TIMER_STOPPED);
    if (v == NULL || PyModule_AddObjectRef(m, "TIMER_STOPPED", v) < 0) {
        Py_XDECREF(v);
        goto error;
    }
    Py_DECREF(v);
    Py_DECREF(names);
    Py_DECREF(maxes);
    Py_DECREF(proxy);
    return 0;

error:
    Py_XDECREF(bases);
    Py_XDECREF(names);
    Py_XDECREF(maxes);
    Py_XDECREF(proxy);
    return -1;
}

static int
ct_traverse(PyObject *m, visitproc visit, void *arg)
{
    ct_state *st = get_module_state(m);
    Py_VISIT(st->ConnectionTable_Type);
    Py_VISIT(st->TableError);
    Py_VISIT(st->TableFullError);
    Py_VISIT(st->DuplicateConnectionError);
    Py_VISIT(st->StaleHandleError);
    Py_VISIT(st->field_index);
    return 0;
}

static int
ct_clear(PyObject *m)
{
    ct_state *st = get_module_state(m);
    Py_CLEAR(st->ConnectionTable_Type);
    Py_CLEAR(st->TableError);
    Py_CLEAR(st->TableFullError);
    Py_CLEAR(st->DuplicateConnectionError);
    Py_CLEAR(st->StaleHandleError);
    Py_CLEAR(st->field_index);
    for (Py_ssize_t i = 0; i < CT_NFIELDS; i++) {
        Py_CLEAR(st->field_names[i]);
    }
    return 0;
}

static void
ct_free(void *m)
{
    (void)ct_clear((PyObject *)m);
}

static PyModuleDef_Slot ct_module_slots[] = {
    {Py_mod_exec, ct_exec},
    {0, NULL},
};

PyDoc_STRVAR(module_doc,
"The offload target's connection table (C).  offload_target.table picks this or the\n"
"pure-Python twin offload_target.pytable, which has the same API.");

static struct PyModuleDef ct_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "offload_target._ctable",
    .m_doc = module_doc,
    .m_size = sizeof(ct_state),
    .m_slots = ct_module_slots,
    .m_traverse = ct_traverse,
    .m_clear = ct_clear,
    .m_free = ct_free,
};

PyMODINIT_FUNC
PyInit__ctable(void)
{
    return PyModuleDef_Init(&ct_module);
}
