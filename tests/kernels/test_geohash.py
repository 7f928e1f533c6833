"""geo52 == the score Redis's own GEOADD stores; geohash_str == a reference geohash library."""

from __future__ import annotations

import numba as nb
import numpy as np
import pygeohash
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.kernels import geohash as gh
from streams.kernels.geohash import GEO_LAT_MAX, GEO_LAT_MIN, geo52, geo52_decode, geohash_str, geohash_strings
from streams.stack import StackInfo

N = 20_000


def _points(seed: int, lat_limit: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lat = rng.uniform(-lat_limit, lat_limit, N)
    lon = rng.uniform(-180, 180, N)
    # plus exact edges, and 52-bit cell boundaries with the doubles either side of them
    edges_lat = np.array([0.0, -lat_limit, lat_limit, 45.0, -45.0, 1e-12, -1e-12, 41.7637, 85.0])
    edges_lon = np.array([0.0, -180.0, 179.999999, 90.0, -90.0, 1e-12, -1e-12, -72.6851, 180.0 - 1e-9])
    k = rng.integers(0, 2**26, 300)
    b_lat = -lat_limit + 2 * lat_limit * k / 2**26
    b_lon = -180.0 + 360.0 * k / 2**26
    b_lat = np.clip(np.concatenate([b_lat, np.nextafter(b_lat, -90), np.nextafter(b_lat, 90)]), -lat_limit, lat_limit)
    b_lon = np.clip(np.concatenate([b_lon, np.nextafter(b_lon, 180), np.nextafter(b_lon, -180)]), -180, 180)
    return np.concatenate([lat, edges_lat, b_lat]), np.concatenate([lon, edges_lon, b_lon])


@pytest.mark.integration
def test_geo52_equals_redis_geoadd_score(local_stack: StackInfo) -> None:
    lat, lon = _points(1, GEO_LAT_MAX)
    ours = geo52(lat, lon)
    client = redis.Redis.from_url(local_stack.redis_url.rsplit("/", 1)[0] + "/4")
    client.delete("geo-oracle")
    with client.pipeline(transaction=False) as pipe:
        for i in range(0, lat.shape[0], 1000):
            args: list[float | str] = []
            for j in range(i, min(i + 1000, lat.shape[0])):
                args += [float(lon[j]), float(lat[j]), str(j)]
            pipe.geoadd("geo-oracle", args)
        pipe.execute()
    scores = dict(client.zrange("geo-oracle", 0, -1, withscores=True))
    theirs = np.array([int(scores[str(j).encode()]) for j in range(lat.shape[0])], dtype=np.uint64)
    mismatch = np.flatnonzero(ours != theirs)
    assert mismatch.size == 0, [(lat[i], lon[i], ours[i], theirs[i]) for i in mismatch[:5]]
    client.delete("geo-oracle")


def test_geohash_string_equals_reference_library() -> None:
    lat, lon = _points(2, 90.0)
    for precision in (1, 5, 6, 9, 12):
        ours = geohash_strings(lat, lon, precision)
        ref = [pygeohash.encode(float(a), float(b), precision) for a, b in zip(lat, lon, strict=True)]
        bad = [(lat[i], lon[i], ours[i], ref[i]) for i in range(len(ref)) if ours[i] != ref[i]]
        assert not bad, bad[:5]


_BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"


def _bisection(lat: float, lon: float, precision: int) -> str:
    """The geohash definition, a bit at a time (the independent oracle for points on and next to boundaries)."""
    box = {True: [-180.0, 180.0], False: [-90.0, 90.0]}
    bits, even = [], True
    for _ in range(5 * precision):
        lo, hi = box[even]
        mid = (lo + hi) / 2
        x = lon if even else lat
        bits.append(x >= mid)
        box[even] = [mid, hi] if x >= mid else [lo, mid]
        even = not even
    return "".join(_BASE32[int("".join("1" if b else "0" for b in bits[i : i + 5]), 2)]
                   for i in range(0, len(bits), 5))


def test_geohash_on_and_next_to_cell_boundaries_equals_the_bisection() -> None:
    rng = np.random.default_rng(3)
    for precision in range(1, 13):
        lon_bits, lat_bits = (5 * precision + 1) // 2, 5 * precision // 2
        # exact boundaries of this precision's cells, and the doubles either side of them
        lat_b = -90.0 + 180.0 * rng.integers(0, 2**lat_bits + 1, 300) / 2.0**lat_bits
        lon_b = -180.0 + 360.0 * rng.integers(0, 2**lon_bits + 1, 300) / 2.0**lon_bits
        lat = np.concatenate([lat_b, np.nextafter(lat_b, -np.inf), np.nextafter(lat_b, np.inf), [np.nan, -91.0]])
        lon = np.concatenate([lon_b, np.nextafter(lon_b, np.inf), np.nextafter(lon_b, -np.inf), [10.0, 181.0]])
        ours = geohash_strings(lat, lon, precision)
        bad = [(lat[i], lon[i], ours[i]) for i in range(lat.shape[0])
               if ours[i] != _bisection(float(lat[i]), float(lon[i]), precision)]
        assert not bad, (precision, bad[:5])
        assert [r.tobytes().decode() for r in geohash_str(lat, lon, precision)] == ours


@settings(max_examples=500, deadline=None)
@given(st.floats(-GEO_LAT_MAX, GEO_LAT_MAX), st.floats(-180, 180, exclude_max=True))
def test_geo52_decode_round_trips_within_cell(lat: float, lon: float) -> None:
    bits = geo52(np.array([lat]), np.array([lon]))
    la, lo = geo52_decode(bits)
    # a 26-bit cell is 360/2^26 deg wide in longitude and (2*85.05)/2^26 in latitude
    assert abs(la[0] - lat) <= 170.1 / 2**26
    assert abs(lo[0] - lon) <= 360 / 2**26
    assert geo52(la, lo)[0] == bits[0]


def test_latitudes_beyond_web_mercator_are_clamped() -> None:
    assert geo52(np.array([89.9]), np.array([10.0]))[0] == geo52(np.array([GEO_LAT_MAX]), np.array([10.0]))[0]


@nb.njit
def _one_by_one(lat: np.ndarray, lon: np.ndarray, out: np.ndarray) -> None:
    for i in range(lat.shape[0]):
        out[i] = gh.geo52_one(lat[i], lon[i])


@nb.njit
def _vector_prefix(lat: np.ndarray, lon: np.ndarray, out: np.ndarray) -> int:
    return gh._encode_vectors(lat, lon, out)


def test_four_at_a_time_and_streamed_scores_equal_the_scalar_arithmetic() -> None:
    # every length around the 4- and 8-point steps, every 8-byte offset from a 32-byte line (the streamed path
    # first reaches one), arrays past the streaming threshold; odd values too (NaN, infinities, out of range,
    # signed zeros, the clamp's edges and cell boundaries)
    rng = np.random.default_rng(9)
    n = gh.STREAM_MIN_POINTS + 21
    lat, lon = rng.uniform(-90, 90, n + 8), rng.uniform(-200, 200, n + 8)
    odd_lat = [np.nan, np.inf, -np.inf, 90.0, -90.0, 0.0, -0.0, GEO_LAT_MAX, GEO_LAT_MIN, 1e300, 41.7637]
    odd_lon = [1e300, np.nan, -1e300, 181.0, -181.0, -180.0, 180.0, -0.0, 0.0, np.inf, 360.0 * 3 / 2**26 - 180]
    for at in (0, 5, 1000, n - 20):
        lat[at : at + len(odd_lat)], lon[at : at + len(odd_lon)] = odd_lat, odd_lon
    for length in (*range(0, 20), 1001, gh.STREAM_MIN_POINTS - 1, gh.STREAM_MIN_POINTS, n):
        for offset in range(4):
            a, b = lat[offset : offset + length], lon[offset : offset + length]
            want = np.empty(length, dtype=np.uint64)
            _one_by_one(a, b, want)
            got = np.zeros(length + 4, dtype=np.uint64)[offset : offset + length]  # out misaligned as the inputs
            gh.geo52_into(a, b, got)
            assert np.array_equal(got, want), (length, offset, np.flatnonzero(got != want)[:5])
            if gh.VECTOR:  # the vector path did the work (all but a short tail and the alignment head)
                assert _vector_prefix(a, b, np.empty(length, dtype=np.uint64)) >= length - 7


def test_strided_arrays_take_the_scalar_loop_with_the_same_scores() -> None:
    rng = np.random.default_rng(10)
    lat, lon = rng.uniform(-85, 85, 2001), rng.uniform(-180, 180, 2001)
    assert _vector_prefix(lat[::2], lon[::2], np.empty(1001, dtype=np.uint64)) == 0
    want = np.empty(1001, dtype=np.uint64)
    _one_by_one(lat[::2], lon[::2], want)
    assert np.array_equal(geo52(lat[::2], lon[::2]), want)


def test_the_vector_path_follows_the_cpu_numba_compiles_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nb.config, "CPU_NAME", "generic", raising=False)
    monkeypatch.setattr(nb.config, "CPU_FEATURES", None, raising=False)
    assert not gh._avx2_target()
    monkeypatch.setattr(nb.config, "CPU_FEATURES", "+sse4.2,+avx2,+fma", raising=False)
    assert gh._avx2_target()
    monkeypatch.setattr(nb.config, "CPU_FEATURES", "+sse4.2,-avx2", raising=False)
    assert not gh._avx2_target()


def test_arrays_of_different_lengths_are_refused_before_anything_is_written() -> None:
    out = np.zeros(3, dtype=np.uint64)
    for lat, lon, o in ((np.zeros(4), np.zeros(4), out), (np.zeros(3), np.zeros(2), out)):
        with pytest.raises(ValueError, match="differ in length"):
            gh.geo52_into(lat, lon, o)
    assert not out.any()
