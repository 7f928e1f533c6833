"""Geohash kernels.

``geo52`` is the 52-bit integer Redis's GEOADD stores as the sorted-set score (26 bits per axis, latitude
limited to the Web-Mercator range +-85.05112878, latitude bits in even positions). Because the score is
identical, platestream's cell sets can be read with GEOSEARCH and Redis's own tools.

``geohash_str`` is the standard base32 geohash (latitude +-90) at a chosen precision. It scales each axis to
its cell number and interleaves the bits like ``geo52`` (not a loop per bit), then checks the cell against
the exact boundaries the reference definition's bisection compares with, so boundary points agree bit for bit.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numpy.typing import NDArray

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


@nb.njit(cache=True, boundscheck=False)
def geo52_into(lat: NDArray[np.float64], lon: NDArray[np.float64], out: NDArray[np.uint64]) -> None:
    """52-bit Redis GEOADD score for each point, written into ``out`` (no allocation on the hot path)."""
    for i in range(lat.shape[0]):
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
