"""The memory anatomies the report shows: listpack entry sizes against the listpack Redis itself serializes."""

from __future__ import annotations

import os

import pytest
import redis

from benchmarks.memory import dedup_state_bytes_per_key, listpack_entry_bytes, sorted_set_anatomy
from streams.settings import Settings


def _listpack_total_bytes(client: redis.Redis, key: str) -> int:
    """The listpack's own size field, from the DUMP of a listpack-encoded sorted set (compression off)."""
    payload = client.dump(key)
    assert payload[0] == 17  # RDB_TYPE_ZSET_LISTPACK
    first = payload[1]
    if first >> 6 == 0:
        n, pos = first & 0x3F, 2
    elif first >> 6 == 1:
        n, pos = ((first & 0x3F) << 8) | payload[2], 3
    else:
        assert first == 0x80
        n, pos = int.from_bytes(payload[2:6], "big"), 6
    total = int.from_bytes(payload[pos : pos + 4], "little")
    assert total == n
    return total


@pytest.mark.integration
def test_entry_sizes_add_up_to_the_listpack_redis_serializes(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    client.config_set("rdbcompression", "no")
    try:
        cases = {
            "z:small": {os.urandom(16): s for s in (0, 127, 128, 4095, 4096, 899_999)},
            "z:wide": {os.urandom(66): 1_764_000_000_000 + s for s in range(40)},
            "z:mixed": {b"x" * 63: -5, b"y" * 64: 2**31 - 1, b"z": 2**31, os.urandom(120): 0.25},
        }
        for key, members in cases.items():
            client.zadd(key, members)
            assert client.object("encoding", key) == b"listpack"
            entries = sum(sum(listpack_entry_bytes(m)) for m in members)
            scores = sum(sum(listpack_entry_bytes(int(s) if float(s).is_integer() else f"{s:.17g}".encode()))
                         for s in members.values())
            assert 6 + entries + scores + 1 == _listpack_total_bytes(client, key), key
    finally:
        client.config_set("rdbcompression", "yes")

    client.flushdb()
    client.zadd("ps:c:{a}", {os.urandom(16): s for s in range(0, 20_000, 1000)})
    client.zadd("ps:c:{b}", {os.urandom(16): s for s in range(0, 20_000, 1000)})
    client.zadd("ps:t:{big}", {os.urandom(16): s for s in range(2000)})  # over the listpack limit: skiplist
    got = sorted_set_anatomy(client, client.keys("ps:c:*"))
    usage = sum(int(client.memory_usage(k, samples=0)) for k in ("ps:c:{a}", "ps:c:{b}"))
    assert (got["member"], got["member_framing"], got["entries_per_key"], got["listpack_key_share"]) == (16, 2, 20, 1)
    # with its back-length: 0 takes 2 bytes, 1000..4000 are 13-bit integers (3), 5000..19000 16-bit (4)
    assert got["score"] == (1 * 2 + 4 * 3 + 15 * 4) / 20
    assert (got["member"] + got["member_framing"] + got["score"] + got["key_and_allocation"]) * 40 == usage
    assert sorted_set_anatomy(client, client.keys("ps:t:*"))["listpack_key_share"] == 0


def test_dedup_state_parts_add_up_to_what_tracemalloc_counted() -> None:
    got = dedup_state_bytes_per_key(vehicles=2000)
    parts = [v for k, v in got.items() if k.startswith("dedup_state_") and k.endswith("_bytes_per_key")
             and k != "dedup_state_bytes_per_key"]
    assert len(parts) == 6 and all(v > 0 for v in parts[:5])
    assert sum(parts) == pytest.approx(got["dedup_state_bytes_per_key"])
    assert got["dedup_state_active_keys"] > 1000


def _compiled() -> dict[str, int]:
    """How many specializations each Numba kernel of the package has loaded or compiled in this process."""
    import importlib
    import pkgutil

    import numba

    import streams.kernels

    out = {}
    for info in pkgutil.iter_modules(streams.kernels.__path__):
        module = importlib.import_module(f"streams.kernels.{info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, numba.core.registry.CPUDispatcher):
                out[f"{info.name}.{name}"] = len(obj.signatures)
    return out


def test_the_warm_up_compiles_every_kernel_the_measured_batches_use() -> None:
    # memory traced while Numba compiles counted as dedup state: ~17 bytes per key more on a machine whose
    # on-disk cache was cold (a kernel of the later batches' path compiled inside the measurement)
    from benchmarks.memory import BATCH, warm_up
    from streams.pipeline import PartitionPipeline
    from streams.records import Raw
    from streams.simulate import generate

    s = Settings.from_env(env={}, kafka_bootstrap="unused:1", redis_url="redis://unused:1/0",
                          hash_key=b"benchmark-key-0123456789")
    raws = [Raw("t", 0, i, None, k, v) for i, (k, v) in enumerate(generate(seed=9, vehicles=2000, hours=1.0).messages)]
    assert len(raws) > 3 * BATCH  # more batches than the warm-up takes
    warm_up(s, raws)
    before = _compiled()
    pipe = PartitionPipeline(s, "t", 0)
    for lo in range(0, len(raws), BATCH):
        pipe.process_raw(raws[lo : lo + BATCH])
    assert {k: v for k, v in _compiled().items() if v != before.get(k)} == {}
