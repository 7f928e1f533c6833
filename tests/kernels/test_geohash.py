"""geo52 == the score Redis's own GEOADD stores; geohash_str == a reference geohash library."""

from __future__ import annotations

import numpy as np
import pygeohash
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.kernels.geohash import GEO_LAT_MAX, geo52, geo52_decode, geohash_str, geohash_strings
from streams.stack import StackInfo

N = 20_000


def _points(seed: int, lat_limit: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lat = rng.uniform(-lat_limit, lat_limit, N)
    lon = rng.uniform(-180, 180, N)
    # plus exact edges and values on cell boundaries
    edges_lat = np.array([0.0, -lat_limit, lat_limit, 45.0, -45.0, 1e-12, -1e-12, 41.7637, 85.0])
    edges_lon = np.array([0.0, -180.0, 179.999999, 90.0, -90.0, 1e-12, -1e-12, -72.6851, 180.0 - 1e-9])
    return np.concatenate([lat, edges_lat]), np.concatenate([lon, edges_lon])


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
