"""Sequence-number arithmetic modulo 2**32 (RFC 9293 section 3.4)."""

MOD = 1 << 32
MASK = MOD - 1
HALF = 1 << 31


def seq_add(a: int, n: int) -> int:
    return (a + n) & MASK


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b in sequence space, in (-2**31, 2**31]."""
    d = (a - b) & MASK
    return d - MOD if d > HALF else d


def seq_lt(a: int, b: int) -> bool:
    return a != b and ((b - a) & MASK) < HALF


def seq_le(a: int, b: int) -> bool:
    return a == b or ((b - a) & MASK) < HALF


def seq_gt(a: int, b: int) -> bool:
    return seq_lt(b, a)


def seq_ge(a: int, b: int) -> bool:
    return seq_le(b, a)


def seq_between(low: int, x: int, high: int) -> bool:
    """low <= x < high in sequence space (window membership)."""
    return ((x - low) & MASK) < ((high - low) & MASK)
