"""The kernel microbenchmarks measure what their names say."""

from __future__ import annotations

import numpy as np

from benchmarks.kernels import _geohash_traffic, geohash_points_per_s


def test_the_plain_copy_kernel_moves_the_geohash_kernels_bytes() -> None:
    rng = np.random.default_rng(4)
    lat, lon = rng.uniform(-85, 85, 1001), rng.uniform(-180, 180, 1001)
    out = np.zeros(1001, dtype=np.uint64)
    _geohash_traffic(lat.view(np.uint64), lon.view(np.uint64), out)
    assert np.array_equal(out, lat.view(np.uint64) ^ lon.view(np.uint64))


def test_geohash_figures_name_one_pass_a_plain_copy_and_a_cached_batch() -> None:
    r = geohash_points_per_s(n=100_000, batch=20_000)
    assert set(r) == {"geohash_points_per_s", "geohash_with_fresh_output_points_per_s",
                      "geohash_numpy_one_axis_points_per_s", "geohash_plain_copy_points_per_s",
                      "geohash_cached_batch_points_per_s"}
    assert all(v > 0 for v in r.values())


def test_dedup_figures_split_the_time_into_kernel_expiry_and_compaction() -> None:
    from benchmarks.kernels import dedup_reads_per_s

    r = dedup_reads_per_s(n=120_000, batch=20_000)
    assert r["dedup_kernel_batches"] == 6 and 0 <= r["dedup_kernel_compactions"] <= 6
    parts = [r[f"dedup_kernel_{k}_ns_per_read"] for k in ("batch", "expiry", "compaction")]
    assert all(p > 0 for p in parts[:2]) and parts[2] >= 0
    assert r["dedup_sessions_alive"] > 0
