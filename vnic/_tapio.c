/* SPDX-License-Identifier: MIT */
/*
 * vnic._tapio -- the TAP's frame I/O in C threads: a TX ring and an RX ring, like the DMA
 * engines of a real NIC working through its descriptor rings while the host CPU runs.
 *
 * Roughly this Python (with threads that never touch Python objects):
 *
 *     class TxRing:                                  # host -> device
 *         def __init__(self, fd, capacity_bytes=4 MiB, *, priority=0): ...  # starts the writer
 *         def submit(self, frames) -> int:           # copy frames in; waits while full
 *             for f in frames: ring.put(len(f), bytes(f)); wake writer; return len(frames)
 *         def flush(self, timeout=None) -> bool:     # True once every frame was written
 *         def close(self): ...                       # stop + join the writer (idempotent)
 *         def stats(self) -> dict: ...
 *         # writer thread: for each entry: write(fd, entry) (poll(POLLOUT) on EAGAIN,
 *         #   EINTR retried, any other error: counted per errno and the frame dropped)
 *
 *     class RxRing:                                  # device -> host
 *         def __init__(self, fd, capacity_bytes=4 MiB, max_frame=65546, *, priority=0,
 *                      vnet_header=False): ...
 *         def take(self, max_frames=64) -> list[bytes]:   # oldest first, never blocks
 *             # vnet_header: frames without their virtio-net header, checksums completed
 *         def fileno(self) -> int:                   # eventfd: readable while not empty
 *         def close(self): ...; def stats(self) -> dict: ...
 *         # reader thread: while room for max_frame: read(fd) into the ring (poll(POLLIN)
 *         #   when nothing is waiting); when the ring is full it waits for take();
 *         #   vnet_header: completes the checksums the header asks for, in the ring
 *
 * A frame in either ring is one entry: a 4-byte length (native order) then the frame's
 * bytes.  Entries wrap around the end of the buffer byte by byte (no padding, no wrap
 * marker): the writer thread hands a wrapped entry to writev() as two pieces, the reader
 * thread reads into the free space with readv() over up to two pieces.  Positions (head =
 * consumer, tail = producer) are 64-bit byte counters that only grow; offset = pos % cap.
 *
 * Synchronisation: one mutex and two condition variables per ring.  Each ring has exactly
 * one producer and one consumer (the thread is one, the Python caller the other; a second
 * Python caller entering while the first is inside -- another thread, or a finalizer run
 * by the allocator -- gets RuntimeError).  The producer copies into the free space
 * [tail, head + cap) and the consumer out of [head, tail) without the lock (neither touches
 * the other's region); only publishing a new tail or head takes the mutex, which also orders
 * the memory accesses.  The threads block all signals, never call the Python API and never
 * need the GIL, so joining them can never deadlock (they are named "vnic-tapio-tx" and
 * "vnic-tapio-rx": top -H, /proc/PID/task/TID/comm); the Python side releases the GIL only
 * while it waits (submit on a full ring, flush, close).  Long waits are cut into 100 ms
 * slices so Ctrl-C (PyErr_CheckSignals) still interrupts them.  Each thread also polls an
 * eventfd ("stop") that close() signals, so one blocked in poll() returns at once.
 *
 * priority=N (N > 0) lets the thread run SCHED_FIFO at priority N when the process may
 * (root / CAP_SYS_NICE; otherwise it stays SCHED_OTHER and stats()["realtime"] is False):
 * the RX reader all the time; the TX writer only while it writes a burst of at least
 * TIO_BOOST_BYTES (32 KiB; stats()["boosts"] counts them), back to normal scheduling when
 * the ring is empty.  Why: every write(2) to a TAP runs the kernel peer's receive path in
 * the writer and wakes the peer's reader with a "sync" wakeup, which the scheduler places on
 * the writer's CPU, where it preempts the writer -- one frame per wakeup, writer and reader
 * taking turns.  A SCHED_FIFO writer is not preempted by them: it keeps writing while the
 * reader runs on the other CPU (or later, reading many frames per wakeup).  Only for bursts:
 * a writer woken at SCHED_FIFO for every few ACKs (a download) would preempt the run loop
 * that queued them, each time.  The threads never spin: they block on their condition
 * variable or in poll() whenever there is nothing to do, so they take the CPU only for work
 * that has to be done anyway (and the kernel's RT throttling bounds them in any case).
 *
 * The file descriptor is not owned: it must be non-blocking and stay open until close()
 * (vnic.tap.TapDevice closes its rings first, then the TAP).  In a forked child the threads
 * do not exist: close()/dealloc there only mark the ring closed, and every method raises.
 *
 * Module state holds the two heap types (multi-phase init, PyType_FromModuleAndSpec, no
 * static PyObject).  The objects hold no Python references, so they are not GC-tracked.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "vnic_inet_sum.h"

#define TIO_DEFAULT_CAPACITY (4u << 20)
#define TIO_MIN_CAPACITY 64u
#define TIO_MAX_CAPACITY (1u << 30)
#define TIO_DEFAULT_MAX_FRAME (65536u + 10u)   /* a 64 KiB super-segment + virtio-net header */
#define TIO_MAX_MAX_FRAME (16u << 20)
#define TIO_HDR 4u                             /* entry header: uint32 length */
#define TIO_NERRNO 256                         /* errno values counted one by one */
#define TIO_MAX_PARTS 16                       /* pieces of one frame given as a tuple */
#define TIO_WAIT_SLICE 0.1                     /* seconds between signal checks while waiting */
#define TIO_ERROR_BACKOFF_MS 10                /* reader pause after an unexpected read error */
#define TIO_BOOST_BYTES (32u << 10)            /* TX burst that runs SCHED_FIFO (priority=) */

/* ------------------------------------------------------------------ ring ---- */

typedef struct {
    unsigned char *buf;
    uint64_t cap;
    uint64_t head;          /* consumer position (bytes ever consumed); under mu */
    uint64_t tail;          /* producer position (bytes ever published); under mu */
    uint64_t nframes;       /* entries in [head, tail); under mu */
} tio_ring;

static void
ring_put(const tio_ring *r, uint64_t pos, const void *src, size_t n)
{
    size_t off = (size_t)(pos % r->cap);
    size_t first = (size_t)r->cap - off;
    if (n <= first) {
        memcpy(r->buf + off, src, n);
    }
    else {
        memcpy(r->buf + off, src, first);
        memcpy(r->buf, (const unsigned char *)src + first, n - first);
    }
}

static void
ring_get(const tio_ring *r, uint64_t pos, void *dst, size_t n)
{
    size_t off = (size_t)(pos % r->cap);
    size_t first = (size_t)r->cap - off;
    if (n <= first) {
        memcpy(dst, r->buf + off, n);
    }
    else {
        memcpy(dst, r->buf + off, first);
        memcpy((unsigned char *)dst + first, r->buf, n - first);
    }
}

/* The n bytes at pos as one or two iovecs (two when they wrap); returns the count. */
static int
ring_iov(const tio_ring *r, uint64_t pos, size_t n, struct iovec iov[2])
{
    size_t off = (size_t)(pos % r->cap);
    size_t first = (size_t)r->cap - off;
    iov[0].iov_base = r->buf + off;
    if (n <= first) {
        iov[0].iov_len = n;
        return 1;
    }
    iov[0].iov_len = first;
    iov[1].iov_base = r->buf;
    iov[1].iov_len = n - first;
    return 2;
}

static uint32_t
ring_len_at(const tio_ring *r, uint64_t pos)
{
    uint32_t len;
    ring_get(r, pos, &len, TIO_HDR);
    return len;
}

/* ---------------------------------------------------------- shared core ---- */

typedef struct {
    int fd;                 /* the device (not owned) */
    int stopfd;             /* eventfd: signalled once by close(), polled by the thread */
    pid_t owner;            /* process that created the thread */
    int sync_ready;         /* mu and the condvars are initialised */
    int thread_started;
    int closed;             /* close() ran (Python side; GIL) */
    int busy;               /* a Python call is using the ring (GIL) */
    int priority;           /* asked for: SCHED_FIFO priority of the thread, 0 = normal */
    int realtime;           /* priority= granted: the thread may run SCHED_FIFO (EPERM: no) */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond_data;   /* the ring gained entries (or stop) */
    pthread_cond_t cond_space;  /* the ring lost entries (or stop) */
    /* under mu */
    int stopping;
    int thread_idle;        /* the thread sleeps on cond_data (TX) / cond_space (RX) */
    int waiters;            /* Python callers sleeping on cond_space (TX) */
    tio_ring ring;
    uint64_t frames;        /* written (TX) / read (RX) by the thread */
    uint64_t bytes;
    uint64_t errors;
    uint64_t full_waits;
    uint64_t err_by_errno[TIO_NERRNO];
} tio_core;

typedef struct {
    PyTypeObject *TxRing_Type;
    PyTypeObject *RxRing_Type;
} tio_state;

static inline tio_state *
get_module_state(PyObject *module)
{
    return (tio_state *)PyModule_GetState(module);
}

static void
count_error(tio_core *c, int err)
{
    c->errors++;
    c->err_by_errno[(err > 0 && err < TIO_NERRNO) ? err : 0]++;
}

static void
deadline_after(struct timespec *ts, double seconds)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    long long ns = (long long)ts->tv_nsec + (long long)(seconds * 1e9);
    ts->tv_sec += (time_t)(ns / 1000000000LL);
    ts->tv_nsec = (long)(ns % 1000000000LL);
}

static double
monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* fd argument: an int or an object with fileno(); must be open and non-blocking. */
static int
parse_fd(PyObject *obj, int *fd_out)
{
    int fd = PyObject_AsFileDescriptor(obj);
    if (fd < 0) {
        return -1;
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (!(flags & O_NONBLOCK)) {
        PyErr_Format(PyExc_ValueError, "fd %d must be non-blocking (O_NONBLOCK)", fd);
        return -1;
    }
    *fd_out = fd;
    return 0;
}

static int
parse_size(PyObject *obj, const char *what, unsigned long long lo, unsigned long long hi,
           uint64_t *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow != 0 || v < (long long)lo || (unsigned long long)v > hi) {
        PyErr_Format(PyExc_ValueError, "%s must be in %llu..%llu, got %R", what, lo, hi, obj);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

/* Everything but the thread; on failure a Python exception is set and the core can be freed
 * with core_free(). */
static int
core_init(tio_core *c, int fd, uint64_t capacity)
{
    c->fd = fd;
    c->stopfd = -1;
    c->owner = getpid();
    c->ring.cap = capacity;
    c->ring.buf = PyMem_RawMalloc((size_t)capacity);
    if (c->ring.buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    c->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->stopfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_condattr_init failed");
        return -1;
    }
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int err = pthread_mutex_init(&c->mu, NULL);
    if (err == 0) {
        err = pthread_cond_init(&c->cond_data, &ca);
        if (err == 0) {
            err = pthread_cond_init(&c->cond_space, &ca);
            if (err != 0) {
                pthread_cond_destroy(&c->cond_data);
            }
        }
        if (err != 0) {
            pthread_mutex_destroy(&c->mu);
        }
    }
    pthread_condattr_destroy(&ca);
    if (err != 0) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    c->sync_ready = 1;
    return 0;
}

/* The calling thread to SCHED_FIFO at priority (> 0) or back to SCHED_OTHER (0); 0 if done. */
static int
set_fifo(int priority)
{
    struct sched_param sp;
    memset(&sp, 0, sizeof sp);
    sp.sched_priority = priority;
    return pthread_setschedparam(pthread_self(), priority > 0 ? SCHED_FIFO : SCHED_OTHER, &sp);
}

/* At the start of a ring thread: may it run SCHED_FIFO (c->priority > 0 asks)?  The RX
 * reader stays SCHED_FIFO (keep = 1); the TX writer goes back to normal scheduling and is
 * boosted per burst (tx_main).  Sets c->realtime under the mutex. */
static void
thread_sched_init(tio_core *c, int keep)
{
    int ok = 0;
    if (c->priority > 0 && set_fifo(c->priority) == 0) {
        ok = 1;
        if (!keep) {
            (void)set_fifo(0);
        }
    }
    pthread_mutex_lock(&c->mu);
    c->realtime = ok;
    pthread_mutex_unlock(&c->mu);
}

/* priority= of the constructors: 0 (normal scheduling) or a SCHED_FIFO priority. */
static int
check_priority(int priority)
{
    int hi = sched_get_priority_max(SCHED_FIFO);
    if (priority < 0 || priority > (hi > 0 ? hi : 99)) {
        PyErr_Format(PyExc_ValueError, "priority must be 0 (normal) .. %d (SCHED_FIFO), not %d",
                     hi > 0 ? hi : 99, priority);
        return -1;
    }
    return 0;
}

static int
core_start(tio_core *c, void *(*main)(void *), void *arg)
{
    /* The thread inherits a mask that blocks every signal: they go to Python's threads. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int err = pthread_create(&c->thread, NULL, main, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err != 0) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    c->thread_started = 1;
    return 0;
}

/* Stop and join the thread.  Never needs the GIL from the thread, so it cannot deadlock;
 * release_gil: let other Python threads run while joining (not from dealloc). */
static void
core_stop(tio_core *c, int release_gil)
{
    c->closed = 1;
    if (c->owner != getpid()) {
        /* a forked child: the thread (and possibly the mutex's holder) is not here */
        c->thread_started = 0;
        c->sync_ready = 0;
        return;
    }
    if (c->thread_started) {
        pthread_mutex_lock(&c->mu);
        c->stopping = 1;
        pthread_cond_broadcast(&c->cond_data);
        pthread_cond_broadcast(&c->cond_space);
        pthread_mutex_unlock(&c->mu);
        uint64_t one = 1;
        ssize_t w;
        do {
            w = write(c->stopfd, &one, sizeof one);
        } while (w < 0 && errno == EINTR);
        if (release_gil) {
            Py_BEGIN_ALLOW_THREADS
            pthread_join(c->thread, NULL);
            Py_END_ALLOW_THREADS
        }
        else {
            pthread_join(c->thread, NULL);
        }
        c->thread_started = 0;
    }
    else if (c->sync_ready) {
        pthread_mutex_lock(&c->mu);
        c->stopping = 1;
        pthread_cond_broadcast(&c->cond_space);
        pthread_mutex_unlock(&c->mu);
    }
    if (c->stopfd >= 0) {
        close(c->stopfd);
        c->stopfd = -1;
    }
}

static void
core_free(tio_core *c)
{
    if (c->sync_ready) {
        pthread_cond_destroy(&c->cond_space);
        pthread_cond_destroy(&c->cond_data);
        pthread_mutex_destroy(&c->mu);
        c->sync_ready = 0;
    }
    if (c->stopfd >= 0) {
        close(c->stopfd);
        c->stopfd = -1;
    }
    PyMem_RawFree(c->ring.buf);
    c->ring.buf = NULL;
}

/* Check before using a ring from Python: 0 ok, -1 with an exception. */
static int
core_check(tio_core *c, const char *what)
{
    if (c->closed) {
        PyErr_Format(PyExc_ValueError, "%s on a closed ring", what);
        return -1;
    }
    if (c->owner != getpid()) {
        PyErr_Format(PyExc_RuntimeError, "%s: the ring belongs to process %d", what,
                     (int)c->owner);
        return -1;
    }
    if (c->busy) {
        PyErr_Format(PyExc_RuntimeError, "%s: the ring is in use by another call", what);
        return -1;
    }
    return 0;
}

/* Per-errno counts as {errno: count} (0 = errno out of the counted range). */
static PyObject *
errno_dict(const uint64_t *counts)
{
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    for (int e = 0; e < TIO_NERRNO; e++) {
        if (counts[e] == 0) {
            continue;
        }
        PyObject *k = PyLong_FromLong(e);
        PyObject *v = PyLong_FromUnsignedLongLong(counts[e]);
        if (k == NULL || v == NULL || PyDict_SetItem(d, k, v) < 0) {
            Py_XDECREF(k);
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(k);
        Py_DECREF(v);
    }
    return d;
}

/* ------------------------------------------------------------------ TX ---- */

typedef struct {
    PyObject_HEAD
    tio_core core;
    /* under mu */
    uint64_t submitted;     /* frames copied in by submit() */
    uint64_t discarded;     /* frames still queued when the ring was closed */
    uint64_t boosts;        /* bursts written at SCHED_FIFO */
} TxRing;

/* Write one entry: 0 written, an errno when the frame is dropped, -1 when told to stop. */
static int
tx_write_entry(tio_core *c, struct iovec *iov, int niov)
{
    for (;;) {
        ssize_t w = niov == 1 ? write(c->fd, iov[0].iov_base, iov[0].iov_len)
                              : writev(c->fd, iov, niov);
        if (w >= 0) {
            return 0;   /* a TAP (or a SEQPACKET socket) takes a frame whole or not at all */
        }
        int err = errno;
        if (err == EINTR) {
            continue;
        }
        if (err != EAGAIN && err != EWOULDBLOCK) {
            return err;
        }
        struct pollfd p[2] = {{c->fd, POLLOUT, 0}, {c->stopfd, POLLIN, 0}};
        int r = poll(p, 2, -1);
        if (r < 0 && errno != EINTR) {
            return errno;
        }
        if (r > 0 && p[1].revents) {
            return -1;
        }
        /* POLLOUT, or POLLERR/POLLHUP: the next write says which */
    }
}

static void *
tx_main(void *arg)
{
    TxRing *self = arg;
    tio_core *c = &self->core;
    int boosted = 0;        /* running SCHED_FIFO for the current burst */
    thread_sched_init(c, 0);
    pthread_setname_np(pthread_self(), "vnic-tapio-tx");   /* shows in top -H, /proc */
    pthread_mutex_lock(&c->mu);
    /* (c->priority is read per burst: set_priority() may change it, e.g. to 0 while a capture
     * in the peer namespace must keep up with every frame) */
    for (;;) {
        if (boosted && c->ring.head == c->ring.tail) {
            (void)set_fifo(0);  /* the burst is written: normal scheduling while idle */
            boosted = 0;
        }
        while (c->ring.head == c->ring.tail && !c->stopping) {
            c->thread_idle = 1;
            pthread_cond_wait(&c->cond_data, &c->mu);
            c->thread_idle = 0;
        }
        if (c->stopping) {
            break;
        }
        uint64_t pos = c->ring.head, tail = c->ring.tail;
        if (c->realtime && c->priority > 0 && !boosted && tail - pos >= TIO_BOOST_BYTES
            && set_fifo(c->priority) == 0) {
            boosted = 1;
            self->boosts++;
        }
        pthread_mutex_unlock(&c->mu);
        while (pos != tail) {
            uint32_t len = ring_len_at(&c->ring, pos);
            struct iovec iov[2];
            int niov = ring_iov(&c->ring, pos + TIO_HDR, len, iov);
            int res = tx_write_entry(c, iov, niov);
            pthread_mutex_lock(&c->mu);
            if (res < 0) {
                goto out;   /* stopping: the entry stays queued (counted as discarded) */
            }
            pos += TIO_HDR + len;
            c->ring.head = pos;
            c->ring.nframes--;
            if (res == 0) {
                c->frames++;
                c->bytes += len;
            }
            else {
                count_error(c, res);
            }
            if (c->waiters > 0) {
                pthread_cond_broadcast(&c->cond_space);
            }
            if (c->stopping) {
                goto out;
            }
            pthread_mutex_unlock(&c->mu);
        }
        pthread_mutex_lock(&c->mu);
    }
out:
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static PyObject *
txring_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "capacity_bytes", "priority", NULL};
    PyObject *fd_obj, *cap_obj = NULL;
    uint64_t cap = TIO_DEFAULT_CAPACITY;
    int fd, priority = 0;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O$i:TxRing", kwlist, &fd_obj, &cap_obj,
                                     &priority)) {
        return NULL;
    }
    if (check_priority(priority) < 0) {
        return NULL;
    }
    if (parse_fd(fd_obj, &fd) < 0) {
        return NULL;
    }
    if (cap_obj != NULL
        && parse_size(cap_obj, "capacity_bytes", TIO_MIN_CAPACITY, TIO_MAX_CAPACITY, &cap) < 0) {
        return NULL;
    }
    TxRing *self = (TxRing *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    /* tp_alloc zeroed the object; an early dealloc must not close fd 0 */
    self->core.stopfd = -1;
    self->core.priority = priority;
    if (core_init(&self->core, fd, cap) < 0 || core_start(&self->core, tx_main, self) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void
txring_dealloc(TxRing *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    core_stop(&self->core, 0);
    core_free(&self->core);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* One frame given as a bytes-like object or a tuple of them (pieces written as one frame). */
typedef struct {
    Py_buffer parts[TIO_MAX_PARTS];
    int nparts;
    size_t len;
} tx_frame;

static void
tx_frame_release(tx_frame *f)
{
    for (int i = 0; i < f->nparts; i++) {
        PyBuffer_Release(&f->parts[i]);
    }
    f->nparts = 0;
}

static int
tx_frame_get(PyObject *item, Py_ssize_t index, uint64_t cap, tx_frame *f)
{
    f->nparts = 0;
    f->len = 0;
    if (PyTuple_Check(item)) {
        Py_ssize_t n = PyTuple_GET_SIZE(item);
        if (n > TIO_MAX_PARTS) {
            PyErr_Format(PyExc_ValueError, "frames[%zd]: at most %d parts, got %zd",
                         index, TIO_MAX_PARTS, n);
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, i), &f->parts[i], PyBUF_SIMPLE) < 0) {
                tx_frame_release(f);
                PyErr_Format(PyExc_TypeError, "frames[%zd][%zd] must be a bytes-like object, "
                             "not %.100s", index, i, Py_TYPE(PyTuple_GET_ITEM(item, i))->tp_name);
                return -1;
            }
            f->nparts++;
            f->len += (size_t)f->parts[i].len;
        }
    }
    else {
        if (PyObject_GetBuffer(item, &f->parts[0], PyBUF_SIMPLE) < 0) {
            PyErr_Format(PyExc_TypeError, "frames[%zd] must be a bytes-like object or a tuple "
                         "of them, not %.100s", index, Py_TYPE(item)->tp_name);
            return -1;
        }
        f->nparts = 1;
        f->len = (size_t)f->parts[0].len;
    }
    if ((uint64_t)f->len > cap - TIO_HDR || (uint64_t)f->len > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "frames[%zd]: %zu bytes do not fit a ring of %llu bytes",
                     index, f->len, (unsigned long long)cap);
        tx_frame_release(f);
        return -1;
    }
    return 0;
}

/* Wait (GIL released, in slices) until the published ring has `need` free bytes (room) or,
 * with need == 0, until it is empty.  1: done; 0: timed out; -1: exception (closed, signal). */
static int
tx_wait(TxRing *self, uint64_t need, double timeout, int count_full)
{
    tio_core *c = &self->core;
    double end = timeout >= 0 ? monotonic_now() + timeout : 0;
    int first = 1;
    for (;;) {
        int done, stop;
        double slice = TIO_WAIT_SLICE;
        if (timeout >= 0) {
            double left = end - monotonic_now();
            if (left < slice) {
                slice = left > 0 ? left : 0;
            }
        }
        Py_BEGIN_ALLOW_THREADS
        struct timespec ts;
        deadline_after(&ts, slice);
        pthread_mutex_lock(&c->mu);
        if (first && count_full) {
            c->full_waits++;
        }
        c->waiters++;
        for (;;) {
            uint64_t used = c->ring.tail - c->ring.head;
            done = need ? c->ring.cap - used >= need : used == 0;
            if (done || c->stopping) {
                break;
            }
            if (pthread_cond_timedwait(&c->cond_space, &c->mu, &ts) == ETIMEDOUT) {
                uint64_t u = c->ring.tail - c->ring.head;
                done = need ? c->ring.cap - u >= need : u == 0;
                break;
            }
        }
        c->waiters--;
        stop = c->stopping;
        pthread_mutex_unlock(&c->mu);
        Py_END_ALLOW_THREADS
        first = 0;
        if (stop) {
            PyErr_SetString(PyExc_ValueError, "the ring was closed while waiting");
            return -1;
        }
        if (done) {
            return 1;
        }
        if (PyErr_CheckSignals() < 0) {
            return -1;
        }
        if (timeout >= 0 && monotonic_now() >= end) {
            return 0;
        }
    }
}

/* Make tail .. new_tail (nframes entries) visible to the writer and wake it.  Once the ring is
 * stopping (close() ran while submit had the GIL released) they are discarded instead, so that
 * submitted == frames + errors + discarded always holds. */
static void
tx_publish(TxRing *self, uint64_t new_tail, uint64_t nframes)
{
    tio_core *c = &self->core;
    if (nframes == 0) {
        return;
    }
    pthread_mutex_lock(&c->mu);
    self->submitted += nframes;
    if (c->stopping) {
        self->discarded += nframes;
    }
    else {
        c->ring.tail = new_tail;
        c->ring.nframes += nframes;
        if (c->thread_idle) {
            pthread_cond_signal(&c->cond_data);
        }
    }
    pthread_mutex_unlock(&c->mu);
}

static PyObject *
txring_submit(TxRing *self, PyObject *frames)
{
    tio_core *c = &self->core;
    if (core_check(c, "submit") < 0) {
        return NULL;
    }
    if (!PyList_Check(frames) && !PyTuple_Check(frames)) {
        PyErr_Format(PyExc_TypeError, "frames must be a list or tuple, not %.100s",
                     Py_TYPE(frames)->tp_name);
        return NULL;
    }
    /* a private snapshot: the caller's list may change while the GIL is released */
    PyObject *seq = PySequence_Tuple(frames);
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    uint64_t cap = c->ring.cap;
    tx_frame f;
    /* pass 1: every frame is valid and fits, or nothing is queued */
    for (Py_ssize_t i = 0; i < n; i++) {
        if (tx_frame_get(PyTuple_GET_ITEM(seq, i), i, cap, &f) < 0) {
            Py_DECREF(seq);
            return NULL;
        }
        tx_frame_release(&f);
    }
    c->busy = 1;
    pthread_mutex_lock(&c->mu);
    uint64_t head = c->ring.head, tail = c->ring.tail;
    pthread_mutex_unlock(&c->mu);
    uint64_t published = tail, pending = 0;
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        /* again: a bytearray may have been resized while the GIL was released */
        if (tx_frame_get(PyTuple_GET_ITEM(seq, i), i, cap, &f) < 0) {
            goto done;
        }
        uint64_t need = TIO_HDR + f.len;
        if (cap - (tail - head) < need) {
            pthread_mutex_lock(&c->mu);   /* the writer may have made room since */
            head = c->ring.head;
            pthread_mutex_unlock(&c->mu);
        }
        if (cap - (tail - head) < need) {
            tx_publish(self, tail, pending);
            published = tail;
            pending = 0;
            if (tx_wait(self, need, -1, 1) < 0) {
                tx_frame_release(&f);
                goto done;
            }
            pthread_mutex_lock(&c->mu);
            head = c->ring.head;
            pthread_mutex_unlock(&c->mu);
        }
        uint32_t len = (uint32_t)f.len;
        ring_put(&c->ring, tail, &len, TIO_HDR);
        uint64_t pos = tail + TIO_HDR;
        for (int k = 0; k < f.nparts; k++) {
            ring_put(&c->ring, pos, f.parts[k].buf, (size_t)f.parts[k].len);
            pos += (uint64_t)f.parts[k].len;
        }
        tx_frame_release(&f);
        tail = pos;
        pending++;
    }
    result = PyLong_FromSsize_t(n);
done:
    if (tail != published) {
        tx_publish(self, tail, pending);
    }
    c->busy = 0;
    Py_DECREF(seq);
    return result;
}

static PyObject *
txring_flush(TxRing *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"timeout", NULL};
    tio_core *c = &self->core;
    double timeout = -1;
    PyObject *t = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:flush", kwlist, &t)) {
        return NULL;
    }
    if (t != Py_None) {
        timeout = PyFloat_AsDouble(t);
        if (timeout == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (!(timeout >= 0) || timeout > 1e9) {
            PyErr_Format(PyExc_ValueError, "timeout must be None or in 0..1e9 seconds, got %R",
                         t);
            return NULL;
        }
    }
    if (core_check(c, "flush") < 0) {
        return NULL;
    }
    c->busy = 1;
    int r = tx_wait(self, 0, timeout, 0);
    c->busy = 0;
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

static PyObject *
txring_close(TxRing *self, PyObject *Py_UNUSED(ignored))
{
    tio_core *c = &self->core;
    if (c->closed) {
        Py_RETURN_NONE;
    }
    core_stop(c, 1);
    if (c->sync_ready && c->owner == getpid()) {
        pthread_mutex_lock(&c->mu);
        self->discarded += c->ring.nframes;
        c->ring.nframes = 0;
        c->ring.head = c->ring.tail;
        pthread_mutex_unlock(&c->mu);
    }
    Py_RETURN_NONE;
}

static PyObject *
txring_set_priority(TxRing *self, PyObject *arg)
{
    tio_core *c = &self->core;
    if (!PyLong_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "priority must be an int, not %.100s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (v < 0 || v > INT32_MAX) {
        v = -1;                                 /* (out of range: check_priority says so) */
    }
    int priority = (int)v;
    if (check_priority(priority) < 0) {
        return NULL;
    }
    if (c->owner != getpid()) {
        PyErr_Format(PyExc_RuntimeError, "set_priority: the ring belongs to process %d",
                     (int)c->owner);
        return NULL;
    }
    if (c->sync_ready) {
        pthread_mutex_lock(&c->mu);
        c->priority = priority;
        pthread_mutex_unlock(&c->mu);
    }
    else {
        c->priority = priority;
    }
    Py_RETURN_NONE;
}

static PyObject *
txring_stats(TxRing *self, PyObject *Py_UNUSED(ignored))
{
    tio_core *c = &self->core;
    uint64_t frames = 0, bytes = 0, errors = 0, full = 0, submitted = 0, discarded = 0;
    uint64_t pending_frames = 0, pending_bytes = 0, boosts = 0;
    int realtime = 0;
    uint64_t by_errno[TIO_NERRNO];
    memset(by_errno, 0, sizeof by_errno);
    if (c->owner != getpid()) {
        PyErr_Format(PyExc_RuntimeError, "stats: the ring belongs to process %d", (int)c->owner);
        return NULL;
    }
    if (c->sync_ready) {
        pthread_mutex_lock(&c->mu);
        frames = c->frames;
        bytes = c->bytes;
        errors = c->errors;
        full = c->full_waits;
        submitted = self->submitted;
        discarded = self->discarded;
        boosts = self->boosts;
        realtime = c->realtime;
        pending_frames = c->closed ? 0 : c->ring.nframes;
        pending_bytes = c->closed ? 0 : c->ring.tail - c->ring.head;
        memcpy(by_errno, c->err_by_errno, sizeof by_errno);
        pthread_mutex_unlock(&c->mu);
    }
    PyObject *errs = errno_dict(by_errno);
    if (errs == NULL) {
        return NULL;
    }
    PyObject *d = Py_BuildValue(
        "{sKsKsKsNsKsKsKsKsKsKsOsOsK}",
        "frames", (unsigned long long)frames, "bytes", (unsigned long long)bytes,
        "errors", (unsigned long long)errors, "errno", errs,
        "full_waits", (unsigned long long)full, "submitted", (unsigned long long)submitted,
        "pending_frames", (unsigned long long)pending_frames,
        "pending_bytes", (unsigned long long)pending_bytes,
        "discarded", (unsigned long long)discarded,
        "capacity", (unsigned long long)c->ring.cap, "closed", c->closed ? Py_True : Py_False,
        "realtime", realtime ? Py_True : Py_False, "boosts", (unsigned long long)boosts);
    return d;
}

static PyObject *
txring_get_closed(TxRing *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->core.closed);
}

static PyObject *
txring_repr(TxRing *self)
{
    return PyUnicode_FromFormat("<TxRing fd=%d capacity=%llu%s>", self->core.fd,
                                (unsigned long long)self->core.ring.cap,
                                self->core.closed ? " closed" : "");
}

#define FASTCALL(f) ((PyCFunction)(void (*)(void))(f))

static PyMethodDef txring_methods[] = {
    {"submit", (PyCFunction)txring_submit, METH_O,
     "submit($self, frames, /)\n--\n\n"
     "Queue frames (a list or tuple; each a bytes-like object, or a tuple of bytes-like pieces\n"
     "written as one frame) for the writer thread; returns how many.  Copies them into the\n"
     "ring; waits (GIL released) while the ring is full.  All frames are checked first: a bad\n"
     "one (TypeError, or ValueError when larger than the ring) queues nothing."},
    {"flush", FASTCALL(txring_flush), METH_VARARGS | METH_KEYWORDS,
     "flush($self, /, timeout=None)\n--\n\n"
     "Wait until every queued frame was written (or dropped on an error); False on timeout."},
    {"close", (PyCFunction)txring_close, METH_NOARGS,
     "close($self, /)\n--\n\n"
     "Stop and join the writer thread; frames still queued are discarded.  Idempotent."},
    {"set_priority", (PyCFunction)txring_set_priority, METH_O,
     "set_priority($self, priority, /)\n--\n\n"
     "The SCHED_FIFO priority of the writer's bursts from the next burst on; 0 = normal\n"
     "scheduling.  A thread started without the privilege (stats()['realtime'] False, or\n"
     "priority 0 at construction) stays at normal scheduling."},
    {"stats", (PyCFunction)txring_stats, METH_NOARGS,
     "stats($self, /)\n--\n\n"
     "Dict: frames/bytes written, errors (dropped frames; 'errno' = {errno: count}),\n"
     "full_waits (submit calls that waited for room), submitted, pending_frames,\n"
     "pending_bytes, discarded (queued at close), capacity, closed, realtime (the thread\n"
     "may run SCHED_FIFO: priority= granted), boosts (bursts written at SCHED_FIFO)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef txring_getset[] = {
    {"closed", (getter)txring_get_closed, NULL, "True after close().", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(txring_doc,
"TxRing(fd, capacity_bytes=4194304, *, priority=0)\n--\n\n"
"Transmit ring: submit() copies frames into a byte ring, a writer thread write(2)s each as\n"
"one frame to the non-blocking fd (a TAP).  The fd is not owned: close the ring first.\n"
"priority > 0: the thread writes bursts of 32 KiB or more at SCHED_FIFO (that priority)\n"
"when the process may (stats()['realtime'] says whether it may, 'boosts' counts them).");

static PyType_Slot txring_slots[] = {
    {Py_tp_doc, (void *)txring_doc},
    {Py_tp_new, txring_new},
    {Py_tp_dealloc, txring_dealloc},
    {Py_tp_repr, txring_repr},
    {Py_tp_methods, txring_methods},
    {Py_tp_getset, txring_getset},
    {0, NULL},
};

static PyType_Spec txring_spec = {
    .name = "vnic._tapio.TxRing",
    .basicsize = sizeof(TxRing),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = txring_slots,
};

/* ------------------------------------------------------------------ RX ---- */

typedef struct {
    PyObject_HEAD
    tio_core core;
    uint64_t max_frame;
    int vnet_header;        /* frames start with a virtio-net header: completed, then dropped */
    int evfd;               /* readable while the ring holds a frame */
    /* under mu */
    int armed;              /* evfd holds a count */
    int eof;                /* read() returned 0: the reader stopped */
    uint64_t taken;
} RxRing;

static void
rx_arm(RxRing *self)
{
    if (!self->armed) {
        uint64_t one = 1;
        ssize_t w;
        do {
            w = write(self->evfd, &one, sizeof one);
        } while (w < 0 && errno == EINTR);
        self->armed = 1;
    }
}

static void
rx_disarm(RxRing *self)
{
    if (self->armed) {
        uint64_t v;
        ssize_t r;
        do {
            r = read(self->evfd, &v, sizeof v);
        } while (r < 0 && errno == EINTR);
        self->armed = 0;
    }
}

/* Wait in poll() for the fd (POLLIN) or stop; 1 = stop. */
static int
rx_poll(tio_core *c, int fd_too, int timeout_ms)
{
    struct pollfd p[2] = {{c->stopfd, POLLIN, 0}, {c->fd, POLLIN, 0}};
    int r = poll(p, fd_too ? 2 : 1, timeout_ms);
    return r > 0 && p[0].revents != 0;
}

/* ------------------------------------------------ virtio-net checksums ---- */

/* With vnet_header=1 the reader thread finishes what a TAP opened with IFF_VNET_HDR and
 * TUNSETOFFLOAD leaves undone -- exactly vnic.vnet.complete_inbound, in C and off the run
 * loop's thread: a frame flagged VIRTIO_NET_HDR_F_NEEDS_CSUM gets its TCP (or UDP) checksum,
 * which the kernel left as the pseudo-header sum (struct virtio_net_hdr: the sum of
 * [csum_start, end) goes at csum_start + csum_offset); a GSO super-segment's IPv4 header gets a
 * valid header checksum.  take() then returns the frames without the header. */
#define VNET_HDR_LEN 10u
#define VNET_F_NEEDS_CSUM 0x01u
#define VNET_GSO_NONE 0u
#define ETH_LEN 14u

/* The sum of the n ring bytes at pos, which may wrap: the second piece starts at an odd offset
 * of the range when the first is odd-sized, so its sum is byte-swapped (RFC 1071 2(B)). */
static uint16_t
ring_inet_sum(const tio_ring *r, uint64_t pos, size_t n)
{
    struct iovec iov[2];
    int k = ring_iov(r, pos, n, iov);
    uint32_t sum = inet_sum_native(iov[0].iov_base, iov[0].iov_len);
    if (k == 2) {
        uint32_t second = inet_sum_native(iov[1].iov_base, iov[1].iov_len);
        if (iov[0].iov_len & 1) {
            second = ((second & 0xFF) << 8) | (second >> 8);
        }
        sum += second;
    }
    while (sum >> 16) {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    return (uint16_t)sum;
}

/* Complete the checksums of the n-byte entry (header + frame) at ring position pos. */
static void
vnet_complete(const tio_ring *r, uint64_t pos, size_t n)
{
    unsigned char hdr[VNET_HDR_LEN];
    uint16_t csum_start, csum_offset;
    if (n < VNET_HDR_LEN) {
        return;
    }
    ring_get(r, pos, hdr, VNET_HDR_LEN);
    const unsigned flags = hdr[0], gso_type = hdr[1];
    memcpy(&csum_start, hdr + 6, 2);    /* native order, like the rest of the header */
    memcpy(&csum_offset, hdr + 8, 2);
    const uint64_t frame = pos + VNET_HDR_LEN;
    const size_t len = n - VNET_HDR_LEN;
    if (gso_type != VNET_GSO_NONE && len >= ETH_LEN + 20) {
        unsigned char ip[60];
        ring_get(r, frame + 12, ip, 2);
        if (ip[0] == 0x08 && ip[1] == 0x00) {
            ring_get(r, frame + ETH_LEN, ip, 1);
            size_t ihl = (size_t)(ip[0] & 0x0F) * 4;
            if (ihl >= 20 && ETH_LEN + ihl <= len) {
                /* a super-segment's IPv4 header describes all of it: make its checksum valid */
                ring_get(r, frame + ETH_LEN, ip, ihl);
                ip[10] = ip[11] = 0;
                uint16_t c = (uint16_t)~inet_sum_native(ip, ihl);
                ring_put(r, frame + ETH_LEN + 10, &c, 2);
            }
        }
    }
    if ((flags & VNET_F_NEEDS_CSUM) && (size_t)csum_start + csum_offset + 2 <= len) {
        /* the field holds the pseudo-header sum; the checksum covers csum_start .. end */
        uint16_t c = (uint16_t)~ring_inet_sum(r, frame + csum_start, len - csum_start);
        ring_put(r, frame + csum_start + csum_offset, &c, 2);
    }
}

static void *
rx_main(void *arg)
{
    RxRing *self = arg;
    tio_core *c = &self->core;
    uint64_t need = TIO_HDR + self->max_frame;
    thread_sched_init(c, 1);
    pthread_setname_np(pthread_self(), "vnic-tapio-rx");
    pthread_mutex_lock(&c->mu);
    for (;;) {
        if (c->ring.cap - (c->ring.tail - c->ring.head) < need && !c->stopping) {
            c->full_waits++;
            while (c->ring.cap - (c->ring.tail - c->ring.head) < need && !c->stopping) {
                c->thread_idle = 1;
                pthread_cond_wait(&c->cond_space, &c->mu);
                c->thread_idle = 0;
            }
        }
        if (c->stopping) {
            break;
        }
        uint64_t tail = c->ring.tail;
        pthread_mutex_unlock(&c->mu);
        struct iovec iov[2];
        int niov = ring_iov(&c->ring, tail + TIO_HDR, (size_t)self->max_frame, iov);
        ssize_t n;
        for (;;) {
            n = niov == 1 ? read(c->fd, iov[0].iov_base, iov[0].iov_len)
                          : readv(c->fd, iov, niov);
            if (n > 0) {
                break;
            }
            if (n == 0) {
                /* end of file (a closed socket peer; a TAP never returns 0): park */
                pthread_mutex_lock(&c->mu);
                self->eof = 1;
                while (!c->stopping) {
                    pthread_cond_wait(&c->cond_space, &c->mu);
                }
                goto out;
            }
            int err = errno;
            if (err == EINTR) {
                continue;
            }
            if (err == EAGAIN || err == EWOULDBLOCK) {
                if (rx_poll(c, 1, -1)) {
                    pthread_mutex_lock(&c->mu);
                    goto out;
                }
                continue;
            }
            pthread_mutex_lock(&c->mu);
            count_error(c, err);
            pthread_mutex_unlock(&c->mu);
            if (rx_poll(c, 0, TIO_ERROR_BACKOFF_MS)) {
                pthread_mutex_lock(&c->mu);
                goto out;
            }
        }
        uint32_t len = (uint32_t)n;
        ring_put(&c->ring, tail, &len, TIO_HDR);
        if (self->vnet_header) {
            vnet_complete(&c->ring, tail + TIO_HDR, (size_t)n);
        }
        pthread_mutex_lock(&c->mu);
        c->ring.tail = tail + TIO_HDR + (uint64_t)n;
        c->ring.nframes++;
        c->frames++;
        c->bytes += (uint64_t)n;
        rx_arm(self);
    }
out:
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static PyObject *
rxring_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "capacity_bytes", "max_frame", "priority", "vnet_header",
                             NULL};
    PyObject *fd_obj, *cap_obj = NULL, *max_obj = NULL;
    uint64_t cap = TIO_DEFAULT_CAPACITY, max_frame = TIO_DEFAULT_MAX_FRAME;
    int fd, priority = 0, vnet_header = 0;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OO$ip:RxRing", kwlist, &fd_obj, &cap_obj,
                                     &max_obj, &priority, &vnet_header)) {
        return NULL;
    }
    if (check_priority(priority) < 0) {
        return NULL;
    }
    if (parse_fd(fd_obj, &fd) < 0) {
        return NULL;
    }
    if (max_obj != NULL && parse_size(max_obj, "max_frame", 1, TIO_MAX_MAX_FRAME, &max_frame) < 0) {
        return NULL;
    }
    if (cap_obj != NULL
        && parse_size(cap_obj, "capacity_bytes", TIO_MIN_CAPACITY, TIO_MAX_CAPACITY, &cap) < 0) {
        return NULL;
    }
    if (cap < max_frame + TIO_HDR) {
        PyErr_Format(PyExc_ValueError, "capacity_bytes (%llu) must hold one frame of max_frame "
                     "(%llu) + %u bytes", (unsigned long long)cap, (unsigned long long)max_frame,
                     TIO_HDR);
        return NULL;
    }
    RxRing *self = (RxRing *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->core.stopfd = -1;
    self->core.priority = priority;
    self->evfd = -1;
    self->max_frame = max_frame;
    self->vnet_header = vnet_header;
    if (core_init(&self->core, fd, cap) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (self->evfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    if (core_start(&self->core, rx_main, self) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void
rxring_release(RxRing *self, int release_gil)
{
    core_stop(&self->core, release_gil);
    if (self->evfd >= 0) {
        close(self->evfd);
        self->evfd = -1;
    }
}

static void
rxring_dealloc(RxRing *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    rxring_release(self, 0);
    core_free(&self->core);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
rxring_take(RxRing *self, PyObject *const *args, Py_ssize_t nargs)
{
    tio_core *c = &self->core;
    Py_ssize_t max_frames = 64;
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "take() takes at most 1 argument (%zd given)", nargs);
        return NULL;
    }
    if (nargs == 1) {
        if (!PyLong_Check(args[0])) {
            PyErr_Format(PyExc_TypeError, "max_frames must be an int, not %.100s",
                         Py_TYPE(args[0])->tp_name);
            return NULL;
        }
        max_frames = PyLong_AsSsize_t(args[0]);
        if (max_frames == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (max_frames < 0) {
            PyErr_Format(PyExc_ValueError, "max_frames must be >= 0, got %zd", max_frames);
            return NULL;
        }
    }
    if (core_check(c, "take") < 0) {
        return NULL;
    }
    pthread_mutex_lock(&c->mu);
    uint64_t pos = c->ring.head, tail = c->ring.tail;
    pthread_mutex_unlock(&c->mu);
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        return NULL;
    }
    c->busy = 1;   /* PyBytes/PyList allocation may run a finalizer that calls back in */
    Py_ssize_t k = 0;
    while (pos != tail && k < max_frames) {
        uint32_t len = ring_len_at(&c->ring, pos);
        /* with vnet_header: the frame after its (completed) virtio-net header */
        uint32_t skip = self->vnet_header ? (len < VNET_HDR_LEN ? len : VNET_HDR_LEN) : 0;
        PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(len - skip));
        if (b == NULL) {
            goto error;
        }
        ring_get(&c->ring, pos + TIO_HDR + skip, PyBytes_AS_STRING(b), len - skip);
        if (PyList_Append(list, b) < 0) {
            Py_DECREF(b);
            goto error;
        }
        Py_DECREF(b);
        pos += TIO_HDR + len;
        k++;
    }
    if (k > 0) {
        pthread_mutex_lock(&c->mu);
        c->ring.head = pos;
        c->ring.nframes -= (uint64_t)k;
        self->taken += (uint64_t)k;
        if (c->ring.head == c->ring.tail) {
            rx_disarm(self);
        }
        if (c->thread_idle) {
            pthread_cond_signal(&c->cond_space);
        }
        pthread_mutex_unlock(&c->mu);
    }
    c->busy = 0;
    return list;
error:
    /* nothing consumed: the frames stay in the ring */
    c->busy = 0;
    Py_DECREF(list);
    return NULL;
}

static PyObject *
rxring_fileno(RxRing *self, PyObject *Py_UNUSED(ignored))
{
    if (self->core.closed) {
        PyErr_SetString(PyExc_ValueError, "fileno on a closed ring");
        return NULL;
    }
    return PyLong_FromLong(self->evfd);
}

static PyObject *
rxring_close(RxRing *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->core.closed) {
        rxring_release(self, 1);
    }
    Py_RETURN_NONE;
}

static PyObject *
rxring_stats(RxRing *self, PyObject *Py_UNUSED(ignored))
{
    tio_core *c = &self->core;
    uint64_t frames = 0, bytes = 0, errors = 0, full = 0, taken = 0;
    uint64_t pending_frames = 0, pending_bytes = 0;
    int eof = 0, realtime = 0;
    uint64_t by_errno[TIO_NERRNO];
    memset(by_errno, 0, sizeof by_errno);
    if (c->owner != getpid()) {
        PyErr_Format(PyExc_RuntimeError, "stats: the ring belongs to process %d", (int)c->owner);
        return NULL;
    }
    if (c->sync_ready) {
        pthread_mutex_lock(&c->mu);
        frames = c->frames;
        bytes = c->bytes;
        errors = c->errors;
        full = c->full_waits;
        taken = self->taken;
        eof = self->eof;
        realtime = c->realtime;
        pending_frames = c->ring.nframes;
        pending_bytes = c->ring.tail - c->ring.head - TIO_HDR * c->ring.nframes;
        memcpy(by_errno, c->err_by_errno, sizeof by_errno);
        pthread_mutex_unlock(&c->mu);
    }
    PyObject *errs = errno_dict(by_errno);
    if (errs == NULL) {
        return NULL;
    }
    return Py_BuildValue(
        "{sKsKsKsNsKsKsKsKsOsKsKsOsO}",
        "frames", (unsigned long long)frames, "bytes", (unsigned long long)bytes,
        "errors", (unsigned long long)errors, "errno", errs,
        "full_waits", (unsigned long long)full, "taken", (unsigned long long)taken,
        "pending_frames", (unsigned long long)pending_frames,
        "pending_bytes", (unsigned long long)pending_bytes,
        "eof", eof ? Py_True : Py_False,
        "capacity", (unsigned long long)c->ring.cap,
        "max_frame", (unsigned long long)self->max_frame,
        "closed", c->closed ? Py_True : Py_False,
        "realtime", realtime ? Py_True : Py_False);
}

static PyObject *
rxring_get_closed(RxRing *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->core.closed);
}

static PyObject *
rxring_repr(RxRing *self)
{
    return PyUnicode_FromFormat("<RxRing fd=%d capacity=%llu max_frame=%llu%s>", self->core.fd,
                                (unsigned long long)self->core.ring.cap,
                                (unsigned long long)self->max_frame,
                                self->core.closed ? " closed" : "");
}

static PyMethodDef rxring_methods[] = {
    {"take", FASTCALL(rxring_take), METH_FASTCALL,
     "take($self, max_frames=64, /)\n--\n\n"
     "Up to max_frames received frames (a list of bytes, oldest first); [] when none.\n"
     "Never blocks."},
    {"fileno", (PyCFunction)rxring_fileno, METH_NOARGS,
     "fileno($self, /)\n--\n\n"
     "An eventfd that is readable while the ring holds a frame (for select/poll)."},
    {"close", (PyCFunction)rxring_close, METH_NOARGS,
     "close($self, /)\n--\n\n"
     "Stop and join the reader thread, close the eventfd.  Idempotent."},
    {"stats", (PyCFunction)rxring_stats, METH_NOARGS,
     "stats($self, /)\n--\n\n"
     "Dict: frames/bytes read, errors ('errno' = {errno: count}), full_waits (times the\n"
     "reader waited for room), taken, pending_frames, pending_bytes, eof, capacity,\n"
     "max_frame, closed, realtime (the thread runs SCHED_FIFO)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rxring_getset[] = {
    {"closed", (getter)rxring_get_closed, NULL, "True after close().", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(rxring_doc,
"RxRing(fd, capacity_bytes=4194304, max_frame=65546, *, priority=0, vnet_header=False)\n--\n\n"
"Receive ring: a reader thread read(2)s frames from the non-blocking fd (a TAP) into a\n"
"byte ring while it has room for max_frame bytes (longer frames are truncated by read);\n"
"take() returns them.  The fd is not owned: close the ring first.\n"
"vnet_header=True: each read starts with a virtio-net header (a TAP with IFF_VNET_HDR);\n"
"the reader thread completes the checksums it asks for (as vnic.vnet.complete_inbound)\n"
"and take() returns the frames without the header.\n"
"priority > 0: the thread runs SCHED_FIFO at that priority when the process may\n"
"(stats()['realtime'] says whether it does; otherwise normal scheduling).");

static PyType_Slot rxring_slots[] = {
    {Py_tp_doc, (void *)rxring_doc},
    {Py_tp_new, rxring_new},
    {Py_tp_dealloc, rxring_dealloc},
    {Py_tp_repr, rxring_repr},
    {Py_tp_methods, rxring_methods},
    {Py_tp_getset, rxring_getset},
    {0, NULL},
};

static PyType_Spec rxring_spec = {
    .name = "vnic._tapio.RxRing",
    .basicsize = sizeof(RxRing),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = rxring_slots,
};

/* ----------------------------------------------------------------- module ---- */

static int
tio_exec(PyObject *m)
{
    tio_state *st = get_module_state(m);
    st->TxRing_Type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &txring_spec, NULL);
    if (st->TxRing_Type == NULL || PyModule_AddType(m, st->TxRing_Type) < 0) {
        return -1;
    }
    st->RxRing_Type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &rxring_spec, NULL);
    if (st->RxRing_Type == NULL || PyModule_AddType(m, st->RxRing_Type) < 0) {
        return -1;
    }
    if (PyModule_AddIntConstant(m, "DEFAULT_CAPACITY", TIO_DEFAULT_CAPACITY) < 0
        || PyModule_AddIntConstant(m, "DEFAULT_MAX_FRAME", TIO_DEFAULT_MAX_FRAME) < 0
        || PyModule_AddIntConstant(m, "MIN_CAPACITY", TIO_MIN_CAPACITY) < 0
        || PyModule_AddIntConstant(m, "MAX_CAPACITY", TIO_MAX_CAPACITY) < 0
        || PyModule_AddIntConstant(m, "MAX_PARTS", TIO_MAX_PARTS) < 0
        || PyModule_AddIntConstant(m, "ENTRY_HEADER", TIO_HDR) < 0) {
        return -1;
    }
    return 0;
}

static int
tio_traverse(PyObject *m, visitproc visit, void *arg)
{
    tio_state *st = get_module_state(m);
    Py_VISIT(st->TxRing_Type);
    Py_VISIT(st->RxRing_Type);
    return 0;
}

static int
tio_clear(PyObject *m)
{
    tio_state *st = get_module_state(m);
    Py_CLEAR(st->TxRing_Type);
    Py_CLEAR(st->RxRing_Type);
    return 0;
}

static void
tio_free(void *m)
{
    (void)tio_clear((PyObject *)m);
}

static PyModuleDef_Slot tio_module_slots[] = {
    {Py_mod_exec, tio_exec},
    {0, NULL},
};

PyDoc_STRVAR(module_doc,
"TX/RX frame rings served by C threads (the TAP's DMA engines); see vnic.tap.");

static struct PyModuleDef tio_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "vnic._tapio",
    .m_doc = module_doc,
    .m_size = sizeof(tio_state),
    .m_slots = tio_module_slots,
    .m_traverse = tio_traverse,
    .m_clear = tio_clear,
    .m_free = tio_free,
};

PyMODINIT_FUNC
PyInit__tapio(void)
{
    return PyModuleDef_Init(&tio_module);
}
