"""Trail members, split in one compiled pass: what a trail lookup does with Redis's reply.

A trail member (``store.Sighting.pack``) is a fixed part of ``size`` bytes (its first-capture time as a
6-byte big-endian number, then a version byte, ...) followed by the read id, length-prefixed (one byte below
255, else 0xFF and two bytes little-endian). Members are self-delimiting, so a lookup joins Redis's reply
into one buffer (one C call) and walks it here, instead of slicing each member twice in Python (the slices
were a third of a 1,000-sighting lookup's decode). Pure functions over NumPy arrays, no I/O.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numpy.typing import NDArray

# between read ids in ``split_members``' text; the plate read schema allows no newline in a read id
SEPARATOR = 0x0A
OK, BAD_VERSION, BAD_LENGTH, SEPARATOR_IN_ID = 0, 1, 2, 3


@nb.njit(cache=True)
def split_members(buf: NDArray[np.uint8], n: int, size: int, ts_bytes: int,  # type: ignore[no-untyped-def]
                  version: int):
    """The ``n`` members joined in ``buf``: (status, fixed parts as ``n * size`` bytes, first-capture times,
    read ids as UTF-8 joined by ``SEPARATOR``, that text's length).

    status: ``OK``; ``BAD_VERSION`` (a member of another version); ``BAD_LENGTH`` (the buffer is not exactly
    ``n`` members); ``SEPARATOR_IN_ID`` (a read id holds the separator: the fixed parts and times are
    complete, the caller takes the read ids from the members itself).
    """
    fixed = np.empty(n * size, dtype=np.uint8)
    ts = np.empty(n, dtype=np.int64)
    ids = np.empty(buf.shape[0], dtype=np.uint8)
    end = buf.shape[0]
    pos = 0
    used = 0
    status = OK
    for i in range(n):
        if pos + size + 1 > end:
            return BAD_LENGTH, fixed, ts, ids, used
        if buf[pos + ts_bytes] != version:
            return BAD_VERSION, fixed, ts, ids, used
        t = np.int64(0)
        for j in range(ts_bytes):
            t = (t << 8) | np.int64(buf[pos + j])
        ts[i] = t
        fixed[i * size : (i + 1) * size] = buf[pos : pos + size]
        pos += size
        length = int(buf[pos])
        pos += 1
        if length == 0xFF:
            if pos + 2 > end:
                return BAD_LENGTH, fixed, ts, ids, used
            length = int(buf[pos]) | (int(buf[pos + 1]) << 8)
            pos += 2
        if pos + length > end:
            return BAD_LENGTH, fixed, ts, ids, used
        if i > 0:
            ids[used] = SEPARATOR
            used += 1
        for j in range(length):
            b = buf[pos + j]
            if b == SEPARATOR:
                status = SEPARATOR_IN_ID
            ids[used + j] = b
        used += length
        pos += length
    if pos != end:
        return BAD_LENGTH, fixed, ts, ids, used
    return status, fixed, ts, ids, used


@nb.njit(cache=True)
def distinct_values(values: NDArray[np.uint64]) -> tuple[NDArray[np.uint64], NDArray[np.int64]]:
    """The distinct values in order of first appearance, and each value's index among them: what
    ``np.unique(..., return_inverse=True)`` gives without sorting (a trail's few distinct sources, in a hash
    table of twice as many slots as values)."""
    n = values.shape[0]
    size = 16
    while size < 2 * n:
        size *= 2
    mask = np.uint64(size - 1)
    slots = np.full(size, -1, dtype=np.int64)
    distinct = np.empty(n, dtype=np.uint64)
    inverse = np.empty(n, dtype=np.int64)
    m = 0
    for i in range(n):
        v = values[i]
        h = ((v * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)) & mask
        while True:
            k = slots[h]
            if k == -1:
                slots[h] = m
                distinct[m] = v
                inverse[i] = m
                m += 1
                break
            if distinct[k] == v:
                inverse[i] = k
                break
            h = (h + np.uint64(1)) & mask
    return distinct[:m], inverse
