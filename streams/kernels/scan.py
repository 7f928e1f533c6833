"""Columnar decode of plate reads: one compiled pass over a batch's raw JSON bytes.

``orjson.loads`` builds a dict per message and the columns are then pulled out in Python; at ~5,000
messages per partition and batch that is most of the decode cost. ``scan_reads`` reads the nine core
fields of each message straight into arrays, but only where that is unambiguous: every message it does
not fully understand is marked ``SLOW`` and goes to the reference path (orjson + the validator), which
also gives the dead-letter reason. So the scanner only has to be right about what it accepts:

- an object whose keys are plain ASCII (no escapes), each core key exactly once;
- string values of core fields: printable ASCII without escapes (what ``orjson`` returns is then the bytes);
- ``ts``: an integer literal; ``lat``/``lon``/``confidence``: JSON numbers converted exactly as a correctly
  rounded parser would (integers up to 2**53; decimals with at most 2**53 as mantissa and a power of ten of
  at most 22 either way - Clinger's fast path, where one IEEE multiplication or division is exact);
- the optional fields (heading, lane, vehicle, image_uri) are checked here when they are as plain (the
  message is ``OPTIONAL``: its fields are parsed only if it becomes a sighting's best read);
- any other key makes the message ``EXTRA``: its core columns come from the scan, and the caller parses the
  whole message with orjson for the optional fields (nested values are only skipped here, not validated).

Anything else - whitespace aside - is ``SLOW``: non-ASCII bytes, escapes, ``1e400``, ``ts`` as ``5.0``,
duplicate core keys, trailing garbage. Pure functions over NumPy arrays, no I/O.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numpy.typing import NDArray

from streams.kernels.index import U
from streams.kernels.plates import MAX_PLATE

FAST, OPTIONAL, EXTRA, SLOW = 0, 1, 2, 3
# core keys in records.REQUIRED's order (0-4 are strings, 5 is ts, 6-8 are floats), then the optional ones
CORE_KEYS = (b"read_id", b"camera_id", b"agency", b"plate", b"region", b"ts", b"lat", b"lon", b"confidence")
OPTIONAL_KEYS = (b"heading", b"lane", b"vehicle", b"image_uri")
VEHICLE_KEYS = (b"make", b"model", b"color", b"type")
N_STRINGS = 5
_PLATE, _REGION = 3, 4
_CORE_MASK = (1 << len(CORE_KEYS)) - 1
_HEADING, _LANE, _VEHICLE, _IMAGE_URI = range(len(CORE_KEYS), len(CORE_KEYS) + len(OPTIONAL_KEYS))
_MAX_EXACT = 1 << 53
_MAX_MANTISSA = 10**17  # m < 10**17 -> m * 10 + 9 < 10**18 fits in int64
_POW10 = np.array([10.0**k for k in range(23)], dtype=np.float64)  # all exact in float64


def _table(keys: tuple[bytes, ...]) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    return (np.frombuffer(b"".join(keys), dtype=np.uint8).copy(),
            np.cumsum([0] + [len(k) for k in keys]).astype(np.int64))


_KEY_BYTES, _KEY_START = _table(CORE_KEYS + OPTIONAL_KEYS)
_VEH_BYTES, _VEH_START = _table(VEHICLE_KEYS)


@nb.njit(inline="always", cache=True)
def _ws(buf: NDArray[np.uint8], i: int, end: int) -> int:
    while i < end and (buf[U(i)] == 32 or buf[U(i)] == 10 or buf[U(i)] == 13 or buf[U(i)] == 9):
        i += 1
    return i


@nb.njit(inline="always", cache=True)
def _digit(buf: NDArray[np.uint8], i: int, end: int) -> bool:
    return i < end and 48 <= buf[U(i)] <= 57


@nb.njit(cache=True)
def _key_id(buf: NDArray[np.uint8], a: int, b: int, names: NDArray[np.uint8], starts: NDArray[np.int64]) -> int:
    for k in range(starts.shape[0] - 1):
        lo, hi = starts[k], starts[k + 1]
        if hi - lo != b - a:
            continue
        same = True
        for j in range(b - a):
            if buf[U(a + j)] != names[lo + j]:
                same = False
                break
        if same:
            return k
    return -1


@nb.njit(cache=True)
def _vehicle(buf: NDArray[np.uint8], i: int, end: int) -> int:
    """Index after a ``vehicle`` object whose members are make/model/color/type as strings of at most
    64 characters (each at most once), else -1: anything more the reference path checks."""
    if i >= end or buf[U(i)] != 123:
        return -1
    i = _ws(buf, i + 1, end)
    if i < end and buf[U(i)] == 125:
        return i + 1
    seen = 0
    while True:
        ke = _plain_string(buf, i, end)
        if ke < 0:
            return -1
        k = _key_id(buf, i + 1, ke, _VEH_BYTES, _VEH_START)
        if k < 0 or seen & (1 << k):
            return -1
        seen |= 1 << k
        i = _ws(buf, ke + 1, end)
        if i >= end or buf[U(i)] != 58:
            return -1
        i = _ws(buf, i + 1, end)
        ve = _plain_string(buf, i, end)
        if ve < 0 or ve - i - 1 > 64:
            return -1
        i = _ws(buf, ve + 1, end)
        if i >= end:
            return -1
        if buf[U(i)] == 125:
            return i + 1
        if buf[U(i)] != 44:
            return -1
        i = _ws(buf, i + 1, end)


@nb.njit(cache=True)
def _plain_string(buf: NDArray[np.uint8], i: int, end: int) -> int:
    """At an opening quote: index of the closing quote, or -1 unless printable ASCII without escapes."""
    if i >= end or buf[U(i)] != 34:
        return -1
    i += 1
    while i < end:
        c = buf[U(i)]
        if c == 34:
            return i
        if c < 32 or c >= 127 or c == 92:
            return -1
        i += 1
    return -1


@nb.njit(cache=True)
def _skip_value(buf: NDArray[np.uint8], i: int, end: int) -> int:
    """Index after a value of an optional field, or -1. Lax inside containers: orjson judges those rows."""
    depth = 0
    while i < end:
        c = buf[U(i)]
        if c >= 128:
            return -1
        if c == 34:  # string, escapes skipped
            i += 1
            while i < end and buf[U(i)] != 34:
                if buf[U(i)] < 32 or buf[U(i)] >= 128:
                    return -1
                i += 2 if buf[U(i)] == 92 else 1
            if i >= end:
                return -1
            i += 1
        elif c == 123 or c == 91:
            depth += 1
            i += 1
        elif c == 125 or c == 93:
            if depth == 0:
                return i  # the enclosing object's end
            depth -= 1
            i += 1
        elif c == 44 and depth == 0:
            return i
        else:
            i += 1
        if depth == 0 and (i >= end or buf[U(i)] == 44 or buf[U(i)] == 125 or buf[U(i)] == 32 or buf[U(i)] == 10
                           or buf[U(i)] == 13 or buf[U(i)] == 9):
            return i
    return -1


@nb.njit(cache=True)
def _number(buf: NDArray[np.uint8], i: int, end: int, integer_only: bool) -> tuple[int, float, int]:
    """A JSON number at ``i``: (index after it or -1, value as float, value as int if ``integer_only``)."""
    neg = False
    if i < end and buf[U(i)] == 45:
        neg = True
        i += 1
    if not _digit(buf, i, end):
        return -1, 0.0, 0
    m = 0  # the digits as one integer, never more than 18 of them (no overflow)
    if buf[U(i)] == 48:
        i += 1
        if _digit(buf, i, end):
            return -1, 0.0, 0  # leading zero: not JSON
    else:
        while _digit(buf, i, end):
            if m >= _MAX_MANTISSA:
                return -1, 0.0, 0
            m = m * 10 + (buf[U(i)] - 48)
            i += 1
    frac = 0
    is_int = True
    if i < end and buf[U(i)] == 46:
        is_int = False
        i += 1
        if not _digit(buf, i, end):
            return -1, 0.0, 0
        while _digit(buf, i, end):
            if m >= _MAX_MANTISSA or frac > 40:
                return -1, 0.0, 0
            m = m * 10 + (buf[U(i)] - 48)
            frac += 1
            i += 1
    exp = 0
    if i < end and (buf[U(i)] == 101 or buf[U(i)] == 69):
        is_int = False
        i += 1
        eneg = False
        if i < end and (buf[U(i)] == 43 or buf[U(i)] == 45):
            eneg = buf[U(i)] == 45
            i += 1
        if not _digit(buf, i, end):
            return -1, 0.0, 0
        while _digit(buf, i, end):
            exp = exp * 10 + (buf[U(i)] - 48)
            if exp > 1000:
                return -1, 0.0, 0
            i += 1
        if eneg:
            exp = -exp
    if is_int:
        if m > _MAX_EXACT:
            return -1, 0.0, 0
        v = -m if neg else m  # -0 is the integer 0, as orjson reads it
        return i, float(v), v
    if integer_only or m > _MAX_EXACT:
        return -1, 0.0, 0
    e10 = exp - frac
    if e10 < -22 or e10 > 22:
        return -1, 0.0, 0
    f = float(m) * _POW10[e10] if e10 >= 0 else float(m) / _POW10[-e10]
    return i, -f if neg else f, 0


@nb.njit(cache=True)
def _string_ok(buf: NDArray[np.uint8], a: int, b: int, k: int, plates: NDArray[np.uint8], r: int) -> bool:
    """The schema's rules for core string ``k`` (plain ASCII here); a plate is also normalized into
    ``plates[r]`` (spaces and dashes dropped, upper case, NUL-padded)."""
    n = b - a
    if k == _PLATE:  # [ -]* ([A-Za-z0-9] [ -]*){1,10}, at most 16 characters
        if n > 16:
            return False
        m = 0
        for j in range(a, b):
            c = buf[U(j)]
            if c == 32 or c == 45:
                continue
            if 97 <= c <= 122:
                c -= 32
            elif not (48 <= c <= 57 or 65 <= c <= 90):
                return False
            if m == MAX_PLATE:
                return False
            plates[r, m] = c
            m += 1
        return m >= 1
    if k == _REGION:  # [A-Z]{2}-[A-Z0-9]{1,3}
        if n < 4 or n > 6 or buf[U(a + 2)] != 45:
            return False
        for j in range(n):
            c = buf[U(a + j)]
            if j == 2:
                continue
            if not (65 <= c <= 90 or (j > 2 and 48 <= c <= 57)):
                return False
        return True
    return 1 <= n <= 64  # ids; scanned strings hold no newline


@nb.njit(cache=True)
def _scan_one(buf: NDArray[np.uint8], i: int, end: int, spans: NDArray[np.int64],
              nums: NDArray[np.float64], ts: NDArray[np.int64], plates: NDArray[np.uint8], r: int) -> int:
    i = _ws(buf, i, end)
    if i >= end or buf[U(i)] != 123:
        return SLOW
    i = _ws(buf, i + 1, end)
    seen = 0
    extra = False
    opt_a = opt_b = -1  # the optional fields' text, if nothing else lies between them
    core_after = gap = False
    while True:
        ks = i
        ke = _plain_string(buf, i, end)
        if ke < 0:
            return SLOW
        k = _key_id(buf, i + 1, ke, _KEY_BYTES, _KEY_START)
        i = _ws(buf, ke + 1, end)
        if i >= end or buf[U(i)] != 58:
            return SLOW
        i = _ws(buf, i + 1, end)
        if k < 0:
            extra = True
            i = _skip_value(buf, i, end)
            if i < 0:
                return SLOW
        else:
            if seen & (1 << k):
                return SLOW
            seen |= 1 << k
            if k in (_HEADING, _LANE):
                i, f, v = _number(buf, i, end, k == _LANE)
                if i < 0 or not (0.0 <= f <= (360.0 if k == _HEADING else 64.0)):
                    return SLOW
            elif k == _VEHICLE:
                i = _vehicle(buf, i, end)
                if i < 0:
                    return SLOW
            elif k == _IMAGE_URI:
                ve = _plain_string(buf, i, end)
                if ve < 0 or ve - i - 1 > 2048:
                    return SLOW
                i = ve + 1
            elif k < N_STRINGS:
                ve = _plain_string(buf, i, end)
                if ve < 0 or not _string_ok(buf, i + 1, ve, k, plates, r):
                    return SLOW
                spans[r, 2 * k] = i + 1
                spans[r, 2 * k + 1] = ve
                i = ve + 1
            else:
                i, f, v = _number(buf, i, end, k == 5)
                if i < 0:
                    return SLOW
                if k == 5:
                    ts[r] = v
                else:
                    nums[r, k - 6] = f
            if k >= _HEADING:
                if opt_a < 0:
                    opt_a = ks
                elif core_after:
                    gap = True
                opt_b = i
            elif opt_a >= 0:
                core_after = True
        i = _ws(buf, i, end)
        if i >= end:
            return SLOW
        if buf[U(i)] == 44:
            i = _ws(buf, i + 1, end)
            continue
        if buf[U(i)] != 125:
            return SLOW
        break
    if _ws(buf, i + 1, end) != end or seen & _CORE_MASK != _CORE_MASK:
        return SLOW
    if opt_a >= 0 and not gap:
        spans[r, 2 * N_STRINGS] = opt_a
        spans[r, 2 * N_STRINGS + 1] = opt_b
    return EXTRA if extra else OPTIONAL if seen != _CORE_MASK else FAST


@nb.njit(cache=True)
def scan_reads(buf: NDArray[np.uint8], starts: NDArray[np.int64], ends: NDArray[np.int64],
               ) -> tuple[NDArray[np.uint8], NDArray[np.int64], NDArray[np.int64], NDArray[np.float64],
                          NDArray[np.uint8]]:
    """Messages ``buf[starts[r]:ends[r]]`` -> (status, spans, ts, (n, 3): lat, lon, confidence, plates).

    Core strings that break the schema's rules make a message ``SLOW`` (the reference path names the
    reason); ``plates`` (n, 10) holds each plate normalized, as ``plates_matrix`` would.

    ``spans`` (n, 12): start and end of read_id, camera_id, agency, plate and region, then of the optional
    fields' members (``"heading": 216, "vehicle": {...}``) when they are adjacent (else 0, 0): wrapped in
    braces, that text is the message's extras as one object. Columns of ``SLOW`` rows are meaningless."""
    n = starts.shape[0]
    status = np.empty(n, dtype=np.uint8)
    spans = np.zeros((n, 2 * N_STRINGS + 2), dtype=np.int64)
    ts = np.zeros(n, dtype=np.int64)
    nums = np.zeros((n, 3), dtype=np.float64)
    plates = np.zeros((n, MAX_PLATE), dtype=np.uint8)
    for r in range(n):
        status[r] = _scan_one(buf, starts[r], ends[r], spans, nums, ts, plates, r)
    return status, spans, ts, nums, plates


@nb.njit(cache=True)
def intern_spans(buf: NDArray[np.uint8], a: NDArray[np.int64], b: NDArray[np.int64],
                 ) -> tuple[NDArray[np.int32], NDArray[np.int64]]:
    """Byte strings ``buf[a[r]:b[r]]`` -> (code of each, row of each code's first occurrence).

    Equal strings get equal codes (compared byte by byte, not only by hash), codes in order of first
    occurrence: the caller makes one Python string per distinct value (cameras, agencies, plates repeat).
    """
    n = a.shape[0]
    size = 16
    while size < 2 * n:
        size *= 2
    mask = size - 1
    table = np.full(size, -1, dtype=np.int32)
    first = np.empty(n, dtype=np.int64)
    codes = np.empty(n, dtype=np.int32)
    k = 0
    for r in range(n):
        h = np.uint64(14695981039346656037)
        for j in range(a[r], b[r]):
            h = (h ^ np.uint64(buf[U(j)])) * np.uint64(1099511628211)
        slot = int(h ^ (h >> np.uint64(29))) & mask
        while True:
            t = table[slot]
            if t < 0:
                table[slot] = k
                first[k] = r
                codes[r] = k
                k += 1
                break
            f = first[t]
            ln = b[r] - a[r]
            same = b[f] - a[f] == ln
            if same:
                for j in range(ln):
                    if buf[U(a[f] + j)] != buf[U(a[r] + j)]:
                        same = False
                        break
            if same:
                codes[r] = t
                break
            slot = (slot + 1) & mask
    return codes, first[:k]
