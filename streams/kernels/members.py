"""Trail members, packed and split in one compiled pass each: what the worker writes and a lookup reads.

A trail member (``store.Sighting.pack``, layout 6) is a prefix of ``PREFIX`` bytes - its first-capture time as
a 6-byte big-endian number (members sort by it), a byte holding the version (high nibble) and the flags (low
nibble), the sighting id, the geohash in 7 bytes, the confidence in ten-thousandths (2 bytes: lookups show 4
decimals) and the 8-byte source code - then the duration, the best read's offset from the start and the number
of reads as unsigned LEB128 varints (a pass lasts seconds and has a few reads: 2 + 2 + 1 bytes where fixed
widths took 12, and a parked car's days need no saturation), then the read id, length-prefixed (one byte below
255, else 0xFF and two bytes little-endian). Members are self-delimiting, so a lookup joins Redis's reply into
one buffer (one C call) and walks it here, instead of slicing each member in Python. Pure functions over NumPy
arrays, no I/O.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numpy.typing import NDArray

# between read ids in ``split_members``' text; the plate read schema allows no newline in a read id
SEPARATOR = 0x0A
OK, BAD_VERSION, BAD_LENGTH, SEPARATOR_IN_ID = 0, 1, 2, 3
TS_BYTES = 6
# offsets in the prefix: time, version and flags, sighting id (LE), geo52 (7 bytes LE), confidence (uint16 LE,
# ten-thousandths), source code (8 bytes as stored); the varints start at PREFIX
AT_VERSION, AT_SID, AT_GEO, AT_CONF, AT_SOURCE, PREFIX = 6, 7, 15, 22, 24, 32
GEO_BYTES = 7
FLAG_BITS = 4  # the low nibble of the version byte; the version is the high one (0-15)
FLAG_MASK = (1 << FLAG_BITS) - 1
MAX_VARINT = 10  # bytes of a 64-bit LEB128 varint


@nb.njit(inline="always", cache=True)
def _put_le(out: NDArray[np.uint8], pos: int, value: np.uint64, width: int) -> None:
    for j in range(width):
        out[pos + j] = np.uint8((value >> np.uint64(8 * j)) & np.uint64(0xFF))


@nb.njit(inline="always", cache=True)
def _put_varint(out: NDArray[np.uint8], pos: int, value: np.uint64) -> int:
    while value >= np.uint64(0x80):
        out[pos] = np.uint8((value & np.uint64(0x7F)) | np.uint64(0x80))
        value >>= np.uint64(7)
        pos += 1
    out[pos] = np.uint8(value)
    return pos + 1


@nb.njit(cache=True)
def pack_members(ts: NDArray[np.int64], version: int, flags: NDArray[np.uint8],  # type: ignore[no-untyped-def]
                 sid: NDArray[np.uint64], geo52: NDArray[np.uint64], conf: NDArray[np.uint16],
                 source: NDArray[np.uint64], duration: NDArray[np.int64], best_dt: NDArray[np.int64],
                 reads: NDArray[np.int64]):
    """Every member's part before the read id, joined: (bytes, each member's end in them). ``source`` is each
    8-byte source code read as a little-endian uint64 (written back as the same bytes); ``conf`` the
    confidences in ten-thousandths; ``flags`` below 16; ``duration``, ``best_dt`` and ``reads`` must not be
    negative."""
    n = ts.shape[0]
    out = np.empty(n * (PREFIX + 3 * MAX_VARINT), dtype=np.uint8)
    ends = np.empty(n, dtype=np.int64)
    pos = 0
    for i in range(n):
        t = np.uint64(ts[i])
        for j in range(TS_BYTES):
            out[pos + j] = np.uint8((t >> np.uint64(8 * (TS_BYTES - 1 - j))) & np.uint64(0xFF))
        out[pos + AT_VERSION] = np.uint8((version << FLAG_BITS) | flags[i])
        _put_le(out, pos + AT_SID, sid[i], 8)
        _put_le(out, pos + AT_GEO, geo52[i], GEO_BYTES)
        _put_le(out, pos + AT_CONF, np.uint64(conf[i]), 2)
        _put_le(out, pos + AT_SOURCE, source[i], 8)
        pos = _put_varint(out, pos + PREFIX, np.uint64(duration[i]))
        pos = _put_varint(out, pos, np.uint64(best_dt[i]))
        pos = _put_varint(out, pos, np.uint64(reads[i]))
        ends[i] = pos
    return out[:pos], ends


@nb.njit(inline="always", cache=True)
def _get_le(buf: NDArray[np.uint8], pos: int, width: int) -> np.uint64:
    v = np.uint64(0)
    for j in range(width):
        v |= np.uint64(buf[pos + j]) << np.uint64(8 * j)
    return v


@nb.njit(inline="always", cache=True)
def _get_varint(buf: NDArray[np.uint8], pos: int, end: int) -> tuple[np.uint64, int]:
    """(value, position after it); position -1: truncated or longer than a 64-bit varint."""
    v = np.uint64(0)
    for j in range(MAX_VARINT):
        if pos + j >= end:
            return v, -1
        b = buf[pos + j]
        v |= np.uint64(b & 0x7F) << np.uint64(7 * j)
        if b < 0x80:
            return v, pos + j + 1
    return v, -1


@nb.njit(cache=True)
def split_members(buf: NDArray[np.uint8], n: int, version: int):  # type: ignore[no-untyped-def]
    """The ``n`` members joined in ``buf``, as columns: (status, time, flags, sighting id, geo52, confidence in
    ten-thousandths, source, duration, best offset, reads, read ids as UTF-8 joined by ``SEPARATOR``, that
    text's length).

    status: ``OK``; ``BAD_VERSION`` (a member of another version); ``BAD_LENGTH`` (the buffer is not exactly
    ``n`` members); ``SEPARATOR_IN_ID`` (a read id holds the separator: the other columns are complete, the
    caller takes the read ids from the members itself).
    """
    ts = np.empty(n, dtype=np.int64)
    flags = np.empty(n, dtype=np.uint8)
    sid = np.empty(n, dtype=np.uint64)
    geo = np.empty(n, dtype=np.uint64)
    conf = np.empty(n, dtype=np.uint16)
    source = np.empty(n, dtype=np.uint64)
    duration = np.empty(n, dtype=np.int64)
    best_dt = np.empty(n, dtype=np.int64)
    reads = np.empty(n, dtype=np.uint32)
    ids = np.empty(buf.shape[0], dtype=np.uint8)
    end = buf.shape[0]
    pos = 0
    used = 0
    status = OK
    bad = OK  # BAD_VERSION or BAD_LENGTH: where the walk stopped
    for i in range(n):
        if pos + PREFIX + 4 > end:  # three varints and a length byte at least
            bad = BAD_LENGTH
            break
        if buf[pos + AT_VERSION] >> FLAG_BITS != version:
            bad = BAD_VERSION
            break
        t = np.int64(0)
        for j in range(TS_BYTES):
            t = (t << 8) | np.int64(buf[pos + j])
        ts[i] = t
        flags[i] = buf[pos + AT_VERSION] & FLAG_MASK
        sid[i] = _get_le(buf, pos + AT_SID, 8)
        geo[i] = _get_le(buf, pos + AT_GEO, GEO_BYTES)
        conf[i] = np.uint16(_get_le(buf, pos + AT_CONF, 2))
        source[i] = _get_le(buf, pos + AT_SOURCE, 8)
        d, pos = _get_varint(buf, pos + PREFIX, end)
        if pos < 0:
            bad = BAD_LENGTH
            break
        b, pos = _get_varint(buf, pos, end)
        if pos < 0:
            bad = BAD_LENGTH
            break
        r, pos = _get_varint(buf, pos, end)
        if pos < 0 or pos >= end or d >= np.uint64(1 << 62) or b >= np.uint64(1 << 62) or r > np.uint64(0xFFFFFFFF):
            bad = BAD_LENGTH
            break
        duration[i] = np.int64(d)
        best_dt[i] = np.int64(b)
        reads[i] = np.uint32(r)
        length = int(buf[pos])
        pos += 1
        if length == 0xFF:
            if pos + 2 > end:
                bad = BAD_LENGTH
                break
            length = int(buf[pos]) | (int(buf[pos + 1]) << 8)
            pos += 2
        if pos + length > end:
            bad = BAD_LENGTH
            break
        if i > 0:
            ids[used] = SEPARATOR
            used += 1
        for j in range(length):
            c = buf[pos + j]
            if c == SEPARATOR:
                status = SEPARATOR_IN_ID
            ids[used + j] = c
        used += length
        pos += length
    if bad == OK and pos != end:
        bad = BAD_LENGTH
    return bad if bad != OK else status, ts, flags, sid, geo, conf, source, duration, best_dt, reads, ids, used


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
