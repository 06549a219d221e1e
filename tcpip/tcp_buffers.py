"""Receive-side reassembly: the out-of-order queue (RFC 9293 section 3.10.7.4, "segment text").

Segments that arrive ahead of RCV.NXT are kept here, trimmed so that no byte is stored twice
(first arrival wins), until RCV.NXT reaches them.  Offsets are kept relative to a base sequence
number fixed while the queue is non-empty, so comparisons are plain integer comparisons; the
span is bounded by the receive window (< 2**30), so wrap-around cannot reorder them.
"""

from __future__ import annotations

from bisect import bisect_right

from .seq import MASK, seq_diff


class OutOfOrderQueue:
    __slots__ = ("_base", "_starts", "_ends", "_data", "nbytes", "last_start", "last_end")

    def __init__(self) -> None:
        self._base = 0
        # sorted, non-overlapping [start, end) offsets from _base, their ends, their bytes.
        # Empty tuples until the first out-of-order segment: most connections never get one,
        # and three lists per connection are objects the collector has to visit (a terminate
        # tree of 10,000 connections builds 10,000 queues at once).
        self._starts: list[int] | tuple[()] = ()
        self._ends: list[int] | tuple[()] = ()
        self._data: list[bytes] | tuple[()] = ()
        self.nbytes = 0
        # The most recently added range (offsets), for RFC 2018 "first SACK block" ordering.
        self.last_start = 0
        self.last_end = 0

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __len__(self) -> int:
        return len(self._starts)

    def add(self, rcv_nxt: int, seq: int, data: bytes) -> int:
        """Store ``data`` that starts at ``seq`` (ahead of ``rcv_nxt``).

        Returns the number of new bytes stored (0 for a complete duplicate).
        """
        if not data:
            return 0
        if not self._starts:
            self._base = rcv_nxt
            if type(self._starts) is tuple:
                self._starts, self._ends, self._data = [], [], []
        s = seq_diff(seq, self._base)
        e = s + len(data)
        self.last_start, self.last_end = s, e
        starts, ends, datas = self._starts, self._ends, self._data
        assert type(starts) is list and type(ends) is list and type(datas) is list
        # First stored range that ends after s.
        i = bisect_right(ends, s)
        cur = s
        added = 0
        while cur < e:
            if i < len(starts) and starts[i] < e:
                ns = starts[i]
                if ns > cur:
                    piece = data[cur - s : ns - s]
                    starts.insert(i, cur)
                    ends.insert(i, ns)
                    datas.insert(i, piece)
                    added += ns - cur
                    i += 1
                cur = max(cur, ends[i])
                i += 1
            else:
                piece = data[cur - s :] if cur > s else data
                starts.insert(i, cur)
                ends.insert(i, e)
                datas.insert(i, piece)
                added += e - cur
                break
        self.nbytes += added
        return added

    def pop_ready(self, rcv_nxt: int) -> list[bytes]:
        """Remove and return, in order, the data that is contiguous with ``rcv_nxt``."""
        starts = self._starts
        if not starts:
            return []
        off = seq_diff(rcv_nxt, self._base)
        out: list[bytes] = []
        ends, datas = self._ends, self._data
        assert type(starts) is list and type(ends) is list and type(datas) is list
        n = 0
        while n < len(starts) and starts[n] <= off:
            st, en, d = starts[n], ends[n], datas[n]
            if en > off:
                out.append(d[off - st :] if off > st else d)
                off = en
            self.nbytes -= en - st
            n += 1
        if n:
            del starts[:n], ends[:n], datas[:n]
        return out

    def clear(self) -> None:
        """Drop everything (used when the connection resets)."""
        self._starts = self._ends = self._data = ()
        self.nbytes = 0

    def sack_blocks(self, limit: int) -> tuple[tuple[int, int], ...]:
        """Up to ``limit`` SACK blocks (RFC 2018 section 4): the block holding the most recently
        received segment first, then the others in sequence order."""
        if not self._starts:
            return ()
        merged: list[list[int]] = []
        for st, en in zip(self._starts, self._ends, strict=True):
            if merged and merged[-1][1] == st:
                merged[-1][1] = en
            else:
                merged.append([st, en])
        first = None
        for blk in merged:
            if blk[0] <= self.last_start < blk[1]:
                first = blk
                break
        ordered = ([first] if first else []) + [b for b in merged if b is not first]
        base = self._base
        return tuple(((base + st) & MASK, (base + en) & MASK) for st, en in ordered[:limit])

    def ranges(self) -> list[tuple[int, int]]:
        """Stored ranges as absolute (start, end) sequence numbers (for tests and export)."""
        base = self._base
        return [
            ((base + s) & MASK, (base + e) & MASK)
            for s, e in zip(self._starts, self._ends, strict=True)
        ]



class _NoOutOfOrderData(OutOfOrderQueue):
    """The queue of a connection that has not received out-of-order data: one shared, empty,
    read-only instance (:data:`NO_OUT_OF_ORDER`) instead of a queue object per connection
    (most never get such data, and a terminate tree of 10,000 connections builds 10,000
    connections at once).  A connection makes a queue of its own for the first segment it
    holds."""

    __slots__ = ()

    def add(self, rcv_nxt: int, seq: int, data: bytes) -> int:
        raise RuntimeError("the shared empty out-of-order queue takes no data")


NO_OUT_OF_ORDER: OutOfOrderQueue = _NoOutOfOrderData()
