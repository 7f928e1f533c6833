"""Geohash kernels.

``geo52`` is the 52-bit integer Redis's GEOADD stores as the sorted-set score (26 bits per axis, latitude
limited to the Web-Mercator range +-85.05112878, latitude bits in even positions). Because the score is
identical, platestream's cell sets can be read with GEOSEARCH and Redis's own tools.

On a CPU with AVX2, ``geo52_into`` encodes four points at a time with a byte-shuffle spread (see
``_geo52_x4``), and over arrays larger than the caches streams its output past them.

``geohash_str`` is the standard base32 geohash (latitude +-90) at a chosen precision. It scales each axis to
its cell number and interleaves the bits like ``geo52`` (not a loop per bit), then checks the cell against
the exact boundaries the reference definition's bisection compares with, so boundary points agree bit for bit.
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba.core import cgutils, errors, types
from numba.extending import intrinsic, overload
from numpy.typing import NDArray

from streams.kernels.prefetch import prefetch

GEO_LAT_MIN = -85.05112878
GEO_LAT_MAX = 85.05112878
GEO_LON_MIN = -180.0
GEO_LON_MAX = 180.0
GEO_STEP = 26
_BASE32 = np.frombuffer(b"0123456789bcdefghjkmnpqrstuvwxyz", dtype=np.uint8).copy()


@nb.njit(inline="always", cache=True)
def _spread(v: np.uint64) -> np.uint64:
    # Insert a zero bit between each of the low 32 bits (the "Morton" spread Redis's interleave64 uses).
    v = v & np.uint64(0xFFFFFFFF)
    v = (v | (v << np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    v = (v | (v << np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    v = (v | (v << np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    v = (v | (v << np.uint64(2))) & np.uint64(0x3333333333333333)
    v = (v | (v << np.uint64(1))) & np.uint64(0x5555555555555555)
    return v


@nb.njit(inline="always", cache=True)
def _squash(v: np.uint64) -> np.uint64:
    v = v & np.uint64(0x5555555555555555)
    v = (v | (v >> np.uint64(1))) & np.uint64(0x3333333333333333)
    v = (v | (v >> np.uint64(2))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    v = (v | (v >> np.uint64(4))) & np.uint64(0x00FF00FF00FF00FF)
    v = (v | (v >> np.uint64(8))) & np.uint64(0x0000FFFF0000FFFF)
    v = (v | (v >> np.uint64(16))) & np.uint64(0x00000000FFFFFFFF)
    return v


@nb.njit(inline="always", cache=True)
def geo52_one(lat: float, lon: float) -> np.uint64:
    # Latitudes beyond the Web-Mercator limit are clamped (GEOADD would refuse them). Same double
    # arithmetic as Redis's geohashEncode (divide, then scale), so results are bit-identical; branch-free
    # so the loop vectorizes.
    lat = min(max(lat, GEO_LAT_MIN), GEO_LAT_MAX)
    lat_off = (lat - GEO_LAT_MIN) / (GEO_LAT_MAX - GEO_LAT_MIN) * float(1 << GEO_STEP)
    lon_off = (lon - GEO_LON_MIN) / (GEO_LON_MAX - GEO_LON_MIN) * float(1 << GEO_STEP)
    ilat = np.uint64(np.int64(lat_off)) & np.uint64(0xFFFFFFFF)
    ilon = np.uint64(np.int64(lon_off)) & np.uint64(0xFFFFFFFF)
    return _spread(ilat) | (_spread(ilon) << np.uint64(1))


# The scalar loop vectorizes, but the spread's five shift/or/and steps per axis are most of its arithmetic.
# With AVX2, one byte shuffle and one 16-entry table lookup (pshufb) spread four points' axes at once: the
# bytes of each 32-bit cell number are doubled, each copy keeps one nibble, and the table spreads a nibble to
# 8 bits. Arrays larger than the caches are written with streaming stores (a line is not read before it is
# overwritten) while the inputs are prefetched 8 KB ahead: 24 bytes a point then move at the memory's pace.
_NIBBLE_SPREAD = [0x00, 0x01, 0x04, 0x05, 0x10, 0x11, 0x14, 0x15, 0x40, 0x41, 0x44, 0x45, 0x50, 0x51, 0x54, 0x55]
STREAM_MIN_POINTS = 1 << 17  # 1 MB of output; a pipeline batch (~20,000 points) stays in cache for what follows
_AHEAD = 1024  # points of each input between a prefetch hint and its use


def _avx2_target() -> bool:
    """Whether Numba compiles for a CPU with AVX2: the host's, unless NUMBA_CPU_NAME / _FEATURES name another."""
    name, features = getattr(nb.config, "CPU_NAME", None), getattr(nb.config, "CPU_FEATURES", None)
    if name or features:
        return "+avx2" in (features or "").split(",")
    return bool(llvm.get_host_cpu_features().get("avx2", False))


VECTOR = _avx2_target()


def _vector_args(lat: Any, lon: Any, out: Any) -> bool:
    def ok(t: Any, dtype: Any) -> bool:
        return isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and t.aligned and t.dtype == dtype

    return ok(lat, types.float64) and ok(lon, types.float64) and ok(out, types.uint64)


def _x4_codegen(stream: bool) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        f64, i64, i8 = ir.DoubleType(), ir.IntType(64), ir.IntType(8)
        vd, vq, vb = ir.VectorType(f64, 4), ir.VectorType(i64, 4), ir.VectorType(i8, 32)

        def splat(t: ir.VectorType, c: float | int) -> ir.Constant:
            return ir.Constant(t, [c] * t.count)

        def at(k: int) -> Any:  # pointer to 4 elements of argument k from the index on
            ary = context.make_array(signature.args[k])(context, builder, args[k])
            return builder.gep(ary.data, [args[3]])

        lat = builder.load(builder.bitcast(at(0), vd.as_pointer()), align=8)
        lon = builder.load(builder.bitcast(at(1), vd.as_pointer()), align=8)
        lo, hi = splat(vd, GEO_LAT_MIN), splat(vd, GEO_LAT_MAX)
        # geo52_one's arithmetic, operation for operation: the clamp as Numba's max() and min() (a NaN
        # passes), divide, then scale, truncate to 64 bits and keep the low 32
        lat = builder.select(builder.fcmp_ordered(">", lo, lat), lo, lat)
        lat = builder.select(builder.fcmp_ordered("<", hi, lat), hi, lat)
        scale = splat(vd, float(1 << GEO_STEP))
        t_lat = builder.fmul(builder.fdiv(builder.fsub(lat, lo), splat(vd, GEO_LAT_MAX - GEO_LAT_MIN)), scale)
        t_lon = builder.fmul(builder.fdiv(builder.fsub(lon, splat(vd, GEO_LON_MIN)),
                                          splat(vd, GEO_LON_MAX - GEO_LON_MIN)), scale)
        low32 = splat(vq, 0xFFFFFFFF)
        pshufb = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vb, [vb, vb]), "llvm.x86.avx2.pshuf.b")
        table = ir.Constant(vb, _NIBBLE_SPREAD * 2)
        doubled = ir.Constant(ir.VectorType(ir.IntType(32), 32), [8 * (j // 8) + (j % 8) // 2 for j in range(32)])
        odd = ir.Constant(ir.VectorType(ir.IntType(1), 32), [j % 2 for j in range(32)])

        def spread(t: Any) -> Any:
            b = builder.bitcast(builder.and_(builder.fptosi(t, vq), low32), vb)
            d = builder.shuffle_vector(b, b, doubled)  # byte j of each point <- its byte j // 2
            nibble = builder.select(odd, builder.lshr(d, splat(vb, 4)), builder.and_(d, splat(vb, 0x0F)))
            return builder.bitcast(builder.call(pshufb, [table, nibble]), vq)

        bits = builder.or_(spread(t_lat), builder.shl(spread(t_lon), splat(vq, 1)))
        store = builder.store(bits, builder.bitcast(at(2), vq.as_pointer()), align=32 if stream else 8)
        if stream:
            store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return codegen


@intrinsic
def _geo52_x4(typingctx: Any, lat: Any, lon: Any, out: Any, i: Any) -> Any:
    """``out[i:i + 4]`` = the scores of points ``i:i + 4`` (AVX2; no bounds checked)."""
    if not _vector_args(lat, lon, out):
        raise errors.TypingError("_geo52_x4 takes C-contiguous float64, float64 and uint64 arrays")
    return types.void(lat, lon, out, i), _x4_codegen(stream=False)


@intrinsic
def _geo52_x4_stream(typingctx: Any, lat: Any, lon: Any, out: Any, i: Any) -> Any:
    """``_geo52_x4`` with a streaming store; ``out[i:]`` must start on 32 bytes."""
    if not _vector_args(lat, lon, out):
        raise errors.TypingError("_geo52_x4_stream takes C-contiguous float64, float64 and uint64 arrays")
    return types.void(lat, lon, out, i), _x4_codegen(stream=True)


@intrinsic
def _store_fence(typingctx: Any) -> Any:
    """Order the streaming stores before whatever follows (they bypass the usual ordering)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        fence = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                               "llvm.x86.sse.sfence")
        builder.call(fence, [])
        return context.get_dummy_value()

    return types.void(), codegen


def _encode_vectors(lat: NDArray[np.float64], lon: NDArray[np.float64], out: NDArray[np.uint64]) -> int:
    """Encode a prefix of the points four at a time; returns its length (0 where that is not possible). Numba
    compiles it from the overload below, by the arrays' types and the CPU."""
    raise NotImplementedError("only called from Numba kernels")


@overload(_encode_vectors)
def _encode_vectors_impl(lat, lon, out):  # type: ignore[no-untyped-def]  # (Numba matches the names unannotated)
    if not (VECTOR and _vector_args(lat, lon, out)):
        return lambda lat, lon, out: 0

    def impl(lat, lon, out):  # type: ignore[no-untyped-def]
        n = lat.shape[0]
        i = 0
        if n < STREAM_MIN_POINTS:
            while i + 4 <= n:
                _geo52_x4(lat, lon, out, i)
                i += 4
            return i
        while (out.ctypes.data + 8 * i) & 31:  # streaming stores are aligned (an aligned array: < 4 steps)
            out[i] = geo52_one(lat[i], lon[i])
            i += 1
        while i + 8 <= n:
            if i + _AHEAD < n:
                prefetch(lat, i + _AHEAD)
                prefetch(lon, i + _AHEAD)
            _geo52_x4_stream(lat, lon, out, i)
            _geo52_x4_stream(lat, lon, out, i + 4)
            i += 8
        _store_fence()
        return i

    return impl


@nb.njit(cache=True, boundscheck=False)
def geo52_into(lat: NDArray[np.float64], lon: NDArray[np.float64], out: NDArray[np.uint64]) -> None:
    """52-bit Redis GEOADD score for each point, written into ``out`` (no allocation on the hot path)."""
    if lon.shape[0] != lat.shape[0] or out.shape[0] != lat.shape[0]:  # (no bounds are checked below)
        raise ValueError("geo52_into: lat, lon and out differ in length")
    for i in range(_encode_vectors(lat, lon, out), lat.shape[0]):
        out[i] = geo52_one(lat[i], lon[i])


def geo52(lat: NDArray[np.float64], lon: NDArray[np.float64]) -> NDArray[np.uint64]:
    """52-bit Redis GEOADD score for each point."""
    out = np.empty(lat.shape[0], dtype=np.uint64)
    geo52_into(lat, lon, out)
    return out


@nb.njit(cache=True)
def geo52_decode(bits: NDArray[np.uint64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Centre of each 52-bit cell, as Redis's GEOPOS returns it."""
    n = bits.shape[0]
    lat = np.empty(n, dtype=np.float64)
    lon = np.empty(n, dtype=np.float64)
    scale = float(1 << GEO_STEP)
    for i in range(n):
        ilat = _squash(bits[i])
        ilon = _squash(bits[i] >> np.uint64(1))
        lat_lo = GEO_LAT_MIN + (GEO_LAT_MAX - GEO_LAT_MIN) * (float(ilat) / scale)
        lat_hi = GEO_LAT_MIN + (GEO_LAT_MAX - GEO_LAT_MIN) * (float(ilat + np.uint64(1)) / scale)
        lon_lo = GEO_LON_MIN + (GEO_LON_MAX - GEO_LON_MIN) * (float(ilon) / scale)
        lon_hi = GEO_LON_MIN + (GEO_LON_MAX - GEO_LON_MIN) * (float(ilon + np.uint64(1)) / scale)
        lat[i] = (lat_lo + lat_hi) / 2.0
        lon[i] = (lon_lo + lon_hi) / 2.0
    return lat, lon


@nb.njit(inline="always", cache=True)
def _cell(x: float, lo: float, span: float, bits: int) -> np.uint64:
    # Which of the 2**bits equal cells of [lo, lo + span] holds x, as the reference bisection decides it:
    # a point on a boundary goes to the upper cell, one beyond the range (or NaN: every comparison fails)
    # to the end cell. Scaling can be one off next to a boundary, and the boundaries are exact doubles
    # (multiples of span / 2**bits), so one comparison each way puts it right.
    top = (1 << bits) - 1
    if not x >= lo:
        return np.uint64(0)
    if x >= lo + span:
        return np.uint64(top)
    n = float(1 << bits)
    q = np.int64((x - lo) / span * n)
    if q > top:
        q = np.int64(top)
    if q > 0 and x < lo + span * float(q) / n:
        q -= 1
    elif q < top and x >= lo + span * float(q + 1) / n:
        q += 1
    return np.uint64(q)


@nb.njit(inline="always", cache=True)
def _geohash_into(lat: float, lon: float, precision: int, out: NDArray[np.uint8], at: int) -> None:
    # the bisection's bits, interleaved longitude first (a longitude bit more when 5 * precision is odd)
    lon_bits = (5 * precision + 1) // 2
    lat_bits = 5 * precision // 2
    q_lat = _cell(lat, -90.0, 180.0, lat_bits) << np.uint64(lon_bits - lat_bits)
    code = ((_spread(_cell(lon, -180.0, 360.0, lon_bits)) << np.uint64(1)) | _spread(q_lat)) >> np.uint64(
        lon_bits - lat_bits)
    for c in range(precision):
        out[at + c] = _BASE32[(code >> np.uint64(5 * (precision - 1 - c))) & np.uint64(31)]


@nb.njit(cache=True)
def geohash_str(lat: NDArray[np.float64], lon: NDArray[np.float64], precision: int) -> NDArray[np.uint8]:
    """Standard base32 geohash, one row of ``precision`` ASCII bytes per point (precision 1-12)."""
    n = lat.shape[0]
    out = np.empty((n, precision), dtype=np.uint8)
    flat = out.reshape(n * precision)
    for i in range(n):
        _geohash_into(lat[i], lon[i], precision, flat, i * precision)
    return out


@nb.njit(cache=True)
def geohash_text(lat: NDArray[np.float64], lon: NDArray[np.float64], precision: int) -> NDArray[np.uint8]:
    """``geohash_str`` as one ASCII text, each geohash followed by a space: ``split()`` makes the strings."""
    n = lat.shape[0]
    out = np.empty(n * (precision + 1), dtype=np.uint8)
    for i in range(n):
        _geohash_into(lat[i], lon[i], precision, out, i * (precision + 1))
        out[i * (precision + 1) + precision] = 32
    return out


def split_geohashes(text: NDArray[np.uint8]) -> list[str]:
    """The strings of a ``geohash_text`` (one decode and one split: no Python call per point)."""
    return text.tobytes().decode("ascii").split(" ")[:-1]


def geohash_strings(lat: NDArray[np.float64], lon: NDArray[np.float64], precision: int) -> list[str]:
    """``geohash_str`` as Python strings."""
    if precision <= 0:
        return [""] * lat.shape[0]
    return split_geohashes(geohash_text(lat, lon, precision))
