"""Redis Cluster: the same exactness as standalone Redis, on a local 3-primary cluster started by the project.

The cluster write path (store.py) splits each batch by node: crash it anywhere - including between the
checkpoint node and the others - and the data converges to what an uninterrupted run writes; a real
worker process on the cluster passes the end-to-end accounting through a SIGKILL; governed queries,
partial-plate search, retention and the audit chain work on it.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from streams import stack
from streams.audit import AuditLog
from streams.connect import redis_client
from streams.directory import collect
from streams.pipeline import PartitionPipeline
from streams.policy import DAY_MS
from streams.producer import send_all
from streams.query import area_search, governed_trail, plate_search
from streams.retention import sweep
from streams.settings import Settings
from streams.simulate import generate
from streams.store import apply_cluster_sync, replay_pending_sync
from streams.topics import ensure_topics
from tests.conftest import wait_for
from tests.governance import TOKENS, policy
from tests.support import (
    Worker,
    checkpoint_offsets,
    dump_redis,
    pipeline_raws,
    record_run,
    store_reads,
    verify_against_truth,
    wait_caught_up,
    write_in_batches,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.ClusterInfo]:
    info = stack.start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield info
    finally:
        for pid in info.pids:
            stack.stop_pid(pid)


@pytest.fixture
def csettings(settings: Settings, cluster: stack.ClusterInfo) -> Settings:
    s = dataclasses.replace(settings, redis_url=cluster.url, redis_cluster=True)
    redis_client(s).flushdb(target_nodes=RedisCluster.PRIMARIES)  # type: ignore[call-arg]
    return s


def _flush(client: redis.Redis) -> None:
    client.flushdb(target_nodes=RedisCluster.PRIMARIES)  # type: ignore[call-arg]


def test_cluster_batches_converge_after_crashes_anywhere(csettings: Settings) -> None:
    client = redis_client(csettings)
    raws = pipeline_raws(csettings, 5)
    rng = random.Random(5)
    skip = (b"ps:fence:", b"ps:wal:")  # write-ahead bookkeeping; depends on where batches ended

    def data() -> dict[bytes, object]:
        collect(client)
        out = dump_redis(client, skip)
        named = set()
        for key, value in out.items():
            if key.startswith(b"ps:ck:"):
                assert b"pending" not in value  # type: ignore[operator]  # (only earlier versions wrote it)
                named.add(value.pop(b"pending_key"))  # type: ignore[attr-defined]
        # one record per partition, its last batch's: the others were deleted (fenced, or finished)
        assert set(client.scan_iter(match="ps:wal:*")) == named
        assert all(client.pttl(k) == -1 for k in named)  # made permanent by the batch's first step
        return out

    write_in_batches(csettings, raws, rng,
                     lambda p, expected, r: apply_cluster_sync(client, p.ck_key, expected, r.next_offset, r.redis))
    want = data()
    nodes = {client.nodes_manager.get_node_from_slot(_slot(k)).name for k in want}  # type: ignore[attr-defined]
    assert len(want) > 100 and len(nodes) == 3  # the data really is spread over the three nodes
    _flush(client)

    pb = PartitionPipeline(csettings, csettings.topic_reads, 0)
    committed, crashes, torn = 0, 0, 0
    while committed < len(raws):
        n = rng.randint(1, 200)
        expected = pb.next_offset
        r = pb.process_raw(raws[committed : committed + n])
        fate = rng.random()
        if fate < 0.1:  # crash before Redis
            crashes += 1
        elif fate < 0.25:  # crash after the checkpoint node, before the other nodes: a torn batch
            assert apply_cluster_sync(client, pb.ck_key, expected, r.next_offset, r.redis, crash_after_primary=True)
            crashes += 1
            torn += 1
        else:
            assert apply_cluster_sync(client, pb.ck_key, expected, r.next_offset, r.redis)
            if fate < 0.35:  # crash after Redis, before the Kafka commit
                crashes += 1
            else:
                committed = r.next_offset
                continue
        pb = PartitionPipeline(csettings, csettings.topic_reads, 0)
        replay_pending_sync(client, pb.ck_key)  # what the worker does on load
        pb.restore(client.hgetall(pb.ck_key))
        committed = max(committed, pb.next_offset or 0)
    assert torn >= 3 and crashes > 6
    # a zombie's batch, from an offset the checkpoint has left: nothing written, its record deleted
    zombie = PartitionPipeline(csettings, csettings.topic_reads, 0).process_raw(raws[:50])
    assert not apply_cluster_sync(client, pb.ck_key, None, zombie.next_offset, zombie.redis)
    assert data() == want


def _slot(key: bytes) -> int:
    from redis.crc import key_slot

    return int(key_slot(key))


def test_worker_on_redis_cluster_exact_through_a_sigkill(csettings: Settings, tmp_path: Path) -> None:
    traffic = generate(seed=31, vehicles=800, hours=6, malformed=0.01, late=0.03)
    ensure_topics(csettings)
    send_all(csettings, csettings.topic_reads, traffic.messages)
    client = redis_client(csettings)
    small = {"PLATESTREAM_BATCH_MAX_RECORDS": "300"}
    first = Worker(csettings, tmp_path, "w1", **small)
    wait_for(lambda: sum(checkpoint_offsets(csettings, client).values()) > len(traffic.messages) // 3, 120,
             "a third of the traffic")
    first.kill()
    first.proc.wait()
    second = Worker(csettings, tmp_path, "w2", **small)
    try:
        wait_caught_up(csettings, second)
    finally:
        assert second.stop() == 0, second.log()[-3000:]
    acc = verify_against_truth(csettings, traffic)
    assert (acc.lost, acc.duplicated, acc.wrong) == (0, 0, [])
    assert acc.stored + acc.merged + acc.dead_lettered == acc.produced
    record_run("9. Redis Cluster (3 primaries): SIGKILL the worker mid-stream, restart", acc.row())


def test_governed_queries_retention_and_audit_on_cluster(csettings: Settings) -> None:
    client = redis_client(csettings)
    now = 1_800_000_000_000
    reads = [{"read_id": f"c{i}", "camera_id": f"cam-{i % 3}", "agency": "hartford-pd", "plate": f"CLU{i:03d}",
              "region": "US-CT", "ts": now - (i % 10) * DAY_MS, "lat": 41.7 + i * 1e-3, "lon": -72.7,
              "confidence": 0.9} for i in range(60)]
    store_reads(csettings, client, reads)
    p = policy()
    audit = AuditLog(client, b"cluster-audit-key-0123456789")
    ctx = p.context(TOKENS["alice"], "criminal_investigation", "CL-1")
    assert [r["read_id"] for r in governed_trail(client, csettings, p, ctx, audit, "CLU007", "US-CT").rows] == ["c7"]
    assert len(plate_search(client, csettings, p, ctx, audit, "CLU0*").rows) == 60
    area = area_search(client, csettings, p, ctx, audit, 41.7, -72.7, 2_000, now - 10 * DAY_MS, now)
    assert {r["read_id"] for r in area.rows} == {f"c{i}" for i in range(18)}  # within 2 km of the point
    assert audit.verify().ok and audit.verify().records == 3
    # hartford keeps non-hits 7 days: reads 8 and 9 days old (and their index and directory entries) go
    assert sweep(client, csettings, p, now).total() == 12
    assert len(plate_search(client, csettings, p, ctx, audit, "CLU0*").rows) == 48
    assert sum(1 for _ in client.scan_iter(match="ps:t:*")) == 48
    cells = sum(int(client.zcard(k)) for k in client.scan_iter(match="ps:c:*"))  # type: ignore[arg-type]
    dirs = sum(int(client.hlen(k)) for k in client.scan_iter(match="ps:pd:*"))  # type: ignore[arg-type]
    assert (cells, dirs) == (48, 48)
    # an hour later the 7-day-old reads go, found through the day index (its sets on other nodes than the trails)
    from redis.cluster import RedisCluster

    client.config_resetstat(target_nodes=RedisCluster.PRIMARIES)  # type: ignore[call-arg]
    assert sweep(client, csettings, p, now + 3_600_000).total() == 6
    stats = client.info("commandstats", target_nodes=RedisCluster.PRIMARIES)  # type: ignore[call-arg]
    assert not any("cmdstat_scan" in node for node in stats.values())  # no trail read but those 6 vehicles'
    assert sweep(client, csettings, p, now + 3_600_000, full=True).total() == 0  # nothing the windows missed
    assert sum(1 for _ in client.scan_iter(match="ps:t:*")) == 42


def test_store_migrate_rewrites_every_node_and_finishes_a_torn_batch_first(csettings: Settings) -> None:
    """Layout 5 -> 6 on the cluster: trails on all three nodes are rewritten, and a batch a crash tore between
    the checkpoint's node and the others (its write-ahead record holds layout 5 members) is finished before;
    every trail ends as the layout 6 pipeline writes it."""
    from streams.migrate import migrate
    from streams.store import META_KEY, Sighting, source_names
    from tests.support import pack_v5

    client = redis_client(csettings)
    raws = pipeline_raws(csettings, 13)
    write_in_batches(csettings, raws, random.Random(13),
                     lambda p, expected, r: apply_cluster_sync(client, p.ck_key, expected, r.next_offset, r.redis))
    collect(client)

    def data() -> dict[bytes, object]:
        return dump_redis(client, (b"ps:fence:", b"ps:wal:", b"ps:ck:", META_KEY.encode()))

    want = data()
    names = source_names(client, client.hkeys("ps:src"))  # type: ignore[arg-type]
    trails = {key: client.zrange(key, 0, -1) for key in client.scan_iter(match="ps:t:*")}
    for key, members in trails.items():  # what a layout 5 worker had stored
        client.delete(key)
        client.zadd(key, {pack_v5(Sighting.unpack(m, names)): 0 for m in members})
    client.hset(META_KEY, "layout", 5)
    # the last batch of another partition, torn: only the checkpoint's node has its part
    ck = "ps:ck:{g:torn:7}"
    node_of = client.nodes_manager.get_node_from_slot  # type: ignore[attr-defined]
    torn = [k for k in trails if node_of(_slot(k)).name != node_of(_slot(ck.encode())).name][:20]
    client.delete(*torn)
    commands = [("ZADD", k.decode(), 0, pack_v5(Sighting.unpack(m, names))) for k in torn for m in trails[k]]
    assert apply_cluster_sync(client, ck, None, 50, commands, crash_after_primary=True)
    assert all(client.zcard(k) == 0 for k in torn)

    done = migrate(client, settle_s=0)

    assert done.members == sum(map(len, trails.values()))
    assert data() == want
    assert client.hget(META_KEY, "layout") == b"6"
