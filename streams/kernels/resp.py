"""``resp_commands(blob)``: a batch's flat msgpack command blob (``store.pack_commands``) as Redis protocol (RESP)
commands, so the batch can run as a plain ``MULTI``/``EXEC`` instead of through a Lua script.

Why not pack RESP directly: the worker's event-loop thread packs each batch as msgpack in C (~0.35 us per
message); packing the same commands as RESP in Python (``hiredis.pack_command``) cost it ~0.96 (benchmarks
HISTORY, round 22). This kernel runs in the Redis-writer thread and releases the GIL (``nogil``), so the thread
that computes the next batch pays nothing more. Redis then runs the commands without Lua: the script's
``cmsgpack.unpack``, one Lua call and one reply conversion per command cost more than the commands themselves.

The blob is an array ``[argc, arg1, ..., argc, arg1, ...]`` of strings and integers (``use_bin_type=False``:
bytes are msgpack raw strings). Integers become their decimal text, as Lua's ``redis.call`` and redis-py send
them. Anything else (nil, booleans, floats, maps, nested arrays) is refused: (empty, -1).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numpy.typing import NDArray

from streams.kernels.bytecopy import copy_bytes
from streams.kernels.index import U

UNSUPPORTED = -1


@nb.njit(inline="always", cache=True)
def _be(b: NDArray[np.uint8], i: int, n: int) -> np.uint64:
    """The ``n``-byte big-endian unsigned integer at ``b[i:]``."""
    v = np.uint64(0)
    for k in range(n):
        v = (v << np.uint64(8)) | np.uint64(b[U(i + k)])
    return v


@nb.njit(inline="always", cache=True)
def _digits(v: np.uint64) -> int:
    n = 1
    while v >= np.uint64(10):
        v //= np.uint64(10)
        n += 1
    return n


@nb.njit(inline="always", cache=True)
def _put_uint(out: NDArray[np.uint8], o: int, v: np.uint64) -> int:
    """Write ``v`` in decimal at ``out[o:]``; returns the position after it."""
    n = _digits(v)
    for k in range(n - 1, -1, -1):
        out[U(o + k)] = np.uint8(48 + v % np.uint64(10))
        v //= np.uint64(10)
    return o + n


@nb.njit(inline="always", cache=True)
def _header(out: NDArray[np.uint8], o: int, kind: int, n: int, write: bool) -> int:
    """``<kind><n>\\r\\n`` (``*`` for a command's argument count, ``$`` for a string's length)."""
    if not write:
        return o + 3 + _digits(np.uint64(n))
    out[U(o)] = kind
    o = _put_uint(out, o + 1, np.uint64(n))
    out[U(o)] = 13
    out[U(o + 1)] = 10
    return o + 2


@nb.njit(cache=True)
def _element(b: NDArray[np.uint8], i: int) -> tuple[int, int, int, np.uint64, bool]:
    """The msgpack element at ``b[i]``: (kind, start, end, magnitude, negative). kind 1: a string at
    ``b[start:end]``; kind 2: an integer; kind 0: unsupported or cut short. ``end`` is where the next element is."""
    m = b.shape[0]
    if i >= m:
        return 0, i, i, np.uint64(0), False
    t = int(b[U(i)])
    if t <= 0x7F:
        return 2, i, i + 1, np.uint64(t), False
    if t >= 0xE0:
        return 2, i, i + 1, np.uint64(256 - t), True
    if 0xA0 <= t <= 0xBF:
        return 1, i + 1, i + 1 + (t & 0x1F), np.uint64(0), False
    size = 0  # bytes of a string's length (strings) or of an integer (integers)
    kind = 1
    signed = False
    if t == 0xD9 or t == 0xC4:
        size = 1
    elif t == 0xDA or t == 0xC5:
        size = 2
    elif t == 0xDB or t == 0xC6:
        size = 4
    elif 0xCC <= t <= 0xCF:
        kind, size = 2, 1 << (t - 0xCC)
    elif 0xD0 <= t <= 0xD3:
        kind, size, signed = 2, 1 << (t - 0xD0), True
    else:
        return 0, i, i, np.uint64(0), False
    if i + 1 + size > m:
        return 0, i, i, np.uint64(0), False
    v = _be(b, i + 1, size)
    if kind == 1:
        return 1, i + 1 + size, i + 1 + size + int(np.int64(v)), np.uint64(0), False
    if signed and v >> np.uint64(8 * size - 1):  # two's complement: the magnitude of a negative value
        mask = np.uint64(0xFFFFFFFFFFFFFFFF) if size == 8 else (np.uint64(1) << np.uint64(8 * size)) - np.uint64(1)
        return 2, i, i + 1 + size, ((~v) & mask) + np.uint64(1), True
    return 2, i, i + 1 + size, v, False


@nb.njit(cache=True)
def _walk(b: NDArray[np.uint8], out: NDArray[np.uint8], write: bool) -> tuple[int, int]:
    """(bytes of RESP, commands), writing them to ``out`` if ``write``; (-1, -1) if the blob is not a flat
    command array of strings and integers."""
    m = b.shape[0]
    if m == 0:
        return -1, -1
    t = int(b[0])
    if 0x90 <= t <= 0x9F:
        items, i = t & 0x0F, 1
    elif t == 0xDC and m >= 3:
        items, i = int(np.int64(_be(b, 1, 2))), 3
    elif t == 0xDD and m >= 5:
        items, i = int(np.int64(_be(b, 1, 4))), 5
    else:
        return -1, -1
    o = 0
    commands = 0
    left = 0  # arguments of the current command still to come
    for _ in range(items):
        kind, start, end, v, neg = _element(b, i)
        if kind == 0 or end > m:
            return -1, -1
        if left == 0:  # an argument count
            if kind != 2 or neg or v == np.uint64(0):
                return -1, -1
            left = int(np.int64(v))
            o = _header(out, o, 42, left, write)  # '*'
            commands += 1
        else:
            if kind == 1:
                n = end - start
                o = _header(out, o, 36, n, write)  # '$'
                if write:
                    copy_bytes(out, o, b, start, n)
            else:
                n = _digits(v) + (1 if neg else 0)
                o = _header(out, o, 36, n, write)
                if write:
                    if neg:
                        out[U(o)] = 45  # '-'
                    _put_uint(out, o + (1 if neg else 0), v)
            o += n
            if write:
                out[U(o)] = 13
                out[U(o + 1)] = 10
            o += 2
            left -= 1
        i = end
    if left != 0 or i != m:
        return -1, -1
    return o, commands


@nb.njit(nogil=True, cache=True)
def _resp(b: NDArray[np.uint8]) -> tuple[NDArray[np.uint8], int]:
    size, commands = _walk(b, np.empty(0, np.uint8), False)
    if size < 0:
        return np.empty(0, np.uint8), UNSUPPORTED
    out = np.empty(size, np.uint8)
    _walk(b, out, True)
    return out, commands


def resp_commands(blob: bytes) -> tuple[bytes, int]:
    """(RESP of every command, number of commands); (b"", -1) if the blob holds anything but a flat command
    array of strings and integers. Releases the GIL while it works."""
    out, commands = _resp(np.frombuffer(blob, np.uint8))
    return out.tobytes(), int(commands)
