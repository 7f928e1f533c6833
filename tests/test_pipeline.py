"""PartitionPipeline against the real Redis: restarts from the checkpoint converge to the same state."""

from __future__ import annotations

import random

import pytest
import redis

from streams.pipeline import PartitionPipeline
from streams.records import Raw
from streams.settings import Settings
from streams.simulate import generate
from streams.store import apply_batch_sync

pytestmark = pytest.mark.integration


def _apply(client: redis.Redis, pipe: PartitionPipeline, expected: int | None, commands: list) -> None:
    assert apply_batch_sync(client, pipe.ck_key, expected, commands), "fenced unexpectedly"


def _dump(client: redis.Redis) -> dict[bytes, object]:
    out: dict[bytes, object] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"zset":
            out[key] = sorted(client.zrange(key, 0, -1, withscores=True))
        elif kind == b"hash":
            out[key] = client.hgetall(key)
        else:
            raise AssertionError(f"unexpected key type {kind!r} for {key!r}")
    return out


def _raws(settings: Settings, seed: int) -> list[Raw]:
    traffic = generate(seed=seed, vehicles=300, sites=8, hours=2, malformed=0.02, late=0.1, start_ts=1_764_000_000_000)
    return [Raw(settings.topic_reads, 0, i, None, k, v) for i, (k, v) in enumerate(traffic.messages)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_crash_and_restore_anywhere_gives_the_same_redis_state(settings: Settings, seed: int) -> None:
    base = settings.redis_url.rsplit("/", 1)[0]
    a, b = redis.Redis.from_url(base + "/2"), redis.Redis.from_url(base + "/3")
    a.flushdb()
    b.flushdb()
    raws = _raws(settings, seed)
    rng = random.Random(seed)

    # A: uninterrupted, batches of varying size
    pa = PartitionPipeline(settings, settings.topic_reads, 0)
    pos = 0
    while pos < len(raws):
        n = rng.randint(1, 200)
        expected = pa.next_offset
        _apply(a, pa, expected, pa.process_raw(raws[pos : pos + n]).redis)
        pos += n

    # B: crashes at random points - before Redis (batch lost), or after Redis before the Kafka commit
    # (batch replayed) - then restores from the Redis checkpoint and goes on from the committed offset
    pb = PartitionPipeline(settings, settings.topic_reads, 0)
    committed = 0
    crashes = 0
    while committed < len(raws):
        n = rng.randint(1, 200)
        expected = pb.next_offset
        result = pb.process_raw(raws[committed : committed + n])
        fate = rng.random()
        if fate < 0.15:  # crash before the Redis transaction: nothing of this batch landed
            crashes += 1
        else:
            _apply(b, pb, expected, result.redis)
            if fate < 0.3:  # crash after Redis, before the commit: Kafka redelivers this batch
                crashes += 1
            else:
                committed = result.next_offset
                continue
        pb = PartitionPipeline(settings, settings.topic_reads, 0)
        pb.restore(b.hgetall(pb.ck_key))
        # the worker skips what the checkpoint says Redis already has
        committed = max(committed, pb.next_offset or 0)
    assert crashes > 5
    assert _dump(a) == _dump(b)
    assert len(_dump(a)) > 100


def test_a_zombie_with_a_stale_offset_writes_nothing(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    raws = _raws(settings, 4)
    owner = PartitionPipeline(settings, settings.topic_reads, 0)
    zombie = PartitionPipeline(settings, settings.topic_reads, 0)
    assert apply_batch_sync(client, owner.ck_key, None, owner.process_raw(raws[:500]).redis)
    stale = zombie.process_raw(raws[:800])  # the old owner still thinks it starts from scratch
    before = _dump(client)
    assert not apply_batch_sync(client, zombie.ck_key, None, stale.redis)
    assert _dump(client) == before
    assert apply_batch_sync(client, owner.ck_key, 500, owner.process_raw(raws[500:800]).redis)
