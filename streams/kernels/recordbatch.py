"""``parse_records``: where each record of an uncompressed Kafka record batch (format v2) is in the fetched bytes.

Why: the consumer's own parse makes a record object, a key and a value ``bytes`` per record (about 0.5-0.7 us
a record here, then a join to put the values back together for the columnar decode). The worker needs only
offsets, timestamps and where each key and value lies in the fetch response's bytes, which it scans in place.
Batch-level rules (CRC, transactions, control batches, compression) stay with the caller (``streams.fetch``).

Record layout (KIP-98; aiokafka's ``DefaultRecordBatch`` reads the same): length (varint), attributes (int8),
timestamp delta (varlong), offset delta (varint), key length (varint, negative: null) and key, value length and
value, header count and headers (key length, key, value length, value). Varints are zigzag-encoded.
``build_records`` writes the other way: the records of a batch the worker produces (sightings), from its keys
and values back to back, instead of one builder call per message. Pure functions, no I/O.
"""

from __future__ import annotations

import struct

import numba as nb
import numpy as np
from numpy.typing import NDArray

from streams.kernels.bytecopy import copy_bytes

# what went wrong, for the caller's error (a negative return of ``parse_records``)
TRUNCATED = -1  # a varint or a field runs past the batch's end
BAD_HEADERS = -2  # a negative header count or header key length
BAD_LENGTH = -3  # a record's fields do not add up to its length
TRAILING = -4  # bytes left in the batch after its last record
PROBLEMS = {TRUNCATED: "a record runs past the end of its batch", BAD_HEADERS: "a negative header count or key size",
            BAD_LENGTH: "a record's fields do not add up to its length",
            TRAILING: "bytes left after the batch's last record"}

# The v2 batch layout both directions use (KIP-98; aiokafka's DefaultRecordBatch reads the same): the header,
# any batch's base offset and length (v0-v2 alike), the CRC-32C and where the bytes it covers start (the
# attributes), and the attribute bit the fetch reads.
BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")
BATCH_LENGTH = struct.Struct(">qi")
CRC = struct.Struct(">I")
CRC_AT, CRC_FROM = 17, 21
LOG_APPEND_TIME = 0x08

_LOW7 = np.uint64(0x7F)
_ONE = np.uint64(1)


@nb.njit(cache=True, inline="always")
def _varint(buf: NDArray[np.uint8], pos: int, end: int) -> tuple[int, int]:
    """(value, position after it) of the zigzag varint at ``pos``; position -1 if it runs past ``end``."""
    result = np.uint64(0)
    shift = np.uint64(0)
    while True:
        if pos >= end or shift > 63:
            return 0, -1
        b = np.uint64(buf[pos])
        pos += 1
        result |= (b & _LOW7) << shift
        if b < 0x80:
            break
        shift += np.uint64(7)
    return int(np.int64(result >> _ONE) ^ -np.int64(result & _ONE)), pos


@nb.njit(cache=True)
def parse_records(buf: NDArray[np.uint8], start: int, end: int, count: int, base_offset: int, base_ts: int,
                  append_ts: int, offsets: NDArray[np.int64], timestamps: NDArray[np.int64],
                  keys: NDArray[np.int64], values: NDArray[np.int64]) -> int:
    """Parse ``count`` records from ``buf[start:end]`` (a batch's records, after its 61-byte header) into row
    ``i`` of ``offsets``, ``timestamps`` and the (start, stop) rows of ``keys``/``values`` (positions in ``buf``;
    -1, -1 for a null). ``append_ts`` >= 0: the broker's log-append time, every record's timestamp; else the
    batch's ``base_ts`` + each record's delta. Returns ``count``, or one of the negative codes above."""
    pos = start
    for i in range(count):
        length, pos = _varint(buf, pos, end)
        if pos < 0 or length < 0 or pos + length > end:
            return TRUNCATED
        stop = pos + length
        pos += 1  # attributes: unused in v2
        ts_delta, pos = _varint(buf, pos, stop)
        if pos < 0:
            return TRUNCATED
        offset_delta, pos = _varint(buf, pos, stop)
        if pos < 0:
            return TRUNCATED
        offsets[i] = base_offset + offset_delta
        timestamps[i] = append_ts if append_ts >= 0 else base_ts + ts_delta
        for field in range(2):
            n, pos = _varint(buf, pos, stop)
            if pos < 0:
                return TRUNCATED
            out = keys if field == 0 else values
            if n < 0:
                out[i, 0] = -1
                out[i, 1] = -1
            else:
                if pos + n > stop:
                    return TRUNCATED
                out[i, 0] = pos
                out[i, 1] = pos + n
                pos += n
        headers, pos = _varint(buf, pos, stop)
        if pos < 0:
            return TRUNCATED
        if headers < 0:
            return BAD_HEADERS
        for _ in range(headers):
            n, pos = _varint(buf, pos, stop)
            if pos < 0:
                return TRUNCATED
            if n < 0:
                return BAD_HEADERS
            pos += n
            n, pos = _varint(buf, pos, stop)
            if pos < 0:
                return TRUNCATED
            if n > 0:
                pos += n
            if pos > stop:
                return TRUNCATED
        if pos != stop:
            return BAD_LENGTH
    if pos != end:
        return TRAILING
    return count


@nb.njit(cache=True, inline="always")
def _varint_size(v: int) -> int:
    z = np.uint64((v << 1) ^ (v >> 63))
    n = 1
    while z >= 0x80:
        z >>= np.uint64(7)
        n += 1
    return n


@nb.njit(cache=True, inline="always")
def _put_varint(out: NDArray[np.uint8], pos: int, v: int) -> int:
    z = np.uint64((v << 1) ^ (v >> 63))
    while z >= 0x80:
        out[pos] = np.uint8((z & _LOW7) | np.uint64(0x80))
        z >>= np.uint64(7)
        pos += 1
    out[pos] = np.uint8(z)
    return pos + 1


@nb.njit(cache=True)
def build_records(keys: NDArray[np.uint8], key_ends: NDArray[np.int64], values: NDArray[np.uint8],
                  value_ends: NDArray[np.int64], header: int) -> NDArray[np.uint8]:
    """``header`` bytes left for the batch's header, then the records of a v2 batch: record ``i`` has offset
    delta ``i``, timestamp delta 0, no headers, key ``keys[key_ends[i-1]:key_ends[i]]`` and that value
    (``*_ends``: running ends; no key or value is null)."""
    n = key_ends.shape[0]
    if value_ends.shape[0] != n or (n and (key_ends[n - 1] > keys.shape[0] or value_ends[n - 1] > values.shape[0])):
        raise ValueError("a key and a value per record, within the bytes given")
    bodies = np.empty(n, dtype=np.int64)  # each record's length after its length varint (sized once, written once)
    total = 0
    for i in range(n):
        klen = key_ends[i] - (key_ends[i - 1] if i else 0)
        vlen = value_ends[i] - (value_ends[i - 1] if i else 0)
        if klen < 0 or vlen < 0:
            raise ValueError("running ends go down")
        bodies[i] = 1 + 1 + _varint_size(i) + _varint_size(klen) + klen + _varint_size(vlen) + vlen + 1
        total += _varint_size(bodies[i]) + bodies[i]
    out = np.empty(header + total, dtype=np.uint8)
    pos = header
    for i in range(n):
        k0 = key_ends[i - 1] if i else 0
        v0 = value_ends[i - 1] if i else 0
        klen, vlen = key_ends[i] - k0, value_ends[i] - v0
        pos = _put_varint(out, pos, bodies[i])
        out[pos] = 0  # attributes
        out[pos + 1] = 0  # timestamp delta 0 (zigzag)
        pos = _put_varint(out, pos + 2, i)
        pos = _put_varint(out, pos, klen)
        copy_bytes(out, pos, keys, k0, klen)
        pos = _put_varint(out, pos + klen, vlen)
        copy_bytes(out, pos, values, v0, vlen)
        pos += vlen
        out[pos] = 0  # no headers
        pos += 1
    return out
