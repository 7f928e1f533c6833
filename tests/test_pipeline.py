"""PartitionPipeline against the real Redis: restarts from the checkpoint converge to the same state."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import orjson
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from streams.directory import collect
from streams.pipeline import PartitionPipeline, reads_per_agency_day
from streams.policy import DAY_MS
from streams.records import Coded, Raw
from streams.settings import Settings
from streams.store import apply_batch_sync
from tests.support import area_clash, dump_redis, pipeline_raws

pytestmark = pytest.mark.integration


def _apply(client: redis.Redis, pipe: PartitionPipeline, expected: int | None, commands: list) -> None:
    assert apply_batch_sync(client, pipe.ck_key, expected, commands), "fenced unexpectedly"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_crash_and_restore_anywhere_gives_the_same_redis_state(settings: Settings, seed: int) -> None:
    base = settings.redis_url.rsplit("/", 1)[0]
    a, b = redis.Redis.from_url(base + "/2"), redis.Redis.from_url(base + "/3")
    a.flushdb()
    b.flushdb()
    raws = pipeline_raws(settings, seed)
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
    # directory entries of plates a better read corrected depend on batching until the sweeper collects them
    collect(a)
    collect(b)
    assert dump_redis(a) == dump_redis(b)
    assert len(dump_redis(a)) > 100


def test_a_zombie_with_a_stale_offset_writes_nothing(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    raws = pipeline_raws(settings, 4)
    owner = PartitionPipeline(settings, settings.topic_reads, 0)
    zombie = PartitionPipeline(settings, settings.topic_reads, 0)
    assert apply_batch_sync(client, owner.ck_key, None, owner.process_raw(raws[:500]).redis)
    stale = zombie.process_raw(raws[:800])  # the old owner still thinks it starts from scratch
    before = dump_redis(client)
    assert not apply_batch_sync(client, zombie.ck_key, None, stale.redis)
    assert dump_redis(client) == before
    assert apply_batch_sync(client, owner.ck_key, 500, owner.process_raw(raws[500:800]).redis)


def _read(rid: str, agency: str, plate: str, ts: int, conf: float = 0.9) -> bytes:
    import orjson

    return orjson.dumps({"read_id": rid, "camera_id": f"cam-{agency}", "agency": agency, "plate": plate,
                         "region": "US-CT", "ts": ts, "lat": 41.7, "lon": -72.7, "confidence": conf})


@pytest.mark.parametrize("westport_shares", [False, True])
def test_hotlist_hits_alerts_hit_only_and_hit_retention(settings: Settings, westport_shares: bool) -> None:
    import orjson

    from streams.hotlist import make_entry
    from streams.pipeline import build_hot_context
    from streams.policy import DAY_MS, Policy
    from streams.query import trail
    from streams.retention import sweep
    from tests.governance import policy_doc, with_tokens

    doc = with_tokens(policy_doc())
    westport = doc["agencies"][1]
    westport["hit_only"] = True
    grants = {}
    if westport_shares:
        westport["sharing"]["share_purposes"] = ["criminal_investigation", "hotlist_response"]
        grants = {"westport-pd|hartford-pd": {"status": "approved", "purposes": ["hotlist_response"]}}
    policy = Policy.from_dict(doc)
    now = 1_800_000_000_000
    entry = make_entry("hartford-pd", {"plate": "HOT1", "region": "US-CT", "reason": "stolen"}, "t")
    hot = build_hot_context(policy, [entry], grants, now)
    t = now - 3 * DAY_MS
    raws = [Raw(settings.topic_reads, 0, i, None, None, v) for i, v in enumerate([
        _read("h1", "hartford-pd", "HOT1", t), _read("h2", "hartford-pd", "H0T1", t + 200, 0.5),  # OCR variant
        _read("h3", "hartford-pd", "HOT1", t + 400),
        _read("w1", "westport-pd", "HOT1", t + 60_000),  # westport's camera, a hit only if westport shares
        _read("w2", "westport-pd", "COLD1", t + 60_000),  # hit-only agency, no hit: never stored
        _read("c1", "hartford-pd", "COLD2", t),  # ordinary sighting
    ])]
    client = redis.Redis.from_url(settings.redis_url)
    pipe = PartitionPipeline(settings, settings.topic_reads, 0)
    result = pipe.process_raw(raws, hot)
    assert apply_batch_sync(client, pipe.ck_key, None, result.redis)

    alerts = [orjson.loads(v) for _, v in result.alerts]
    assert [(a["camera_id"], a["entry_id"]) for a in alerts] == [("cam-hartford-pd", entry.id)] + (
        [("cam-westport-pd", entry.id)] if westport_shares else [])
    hot_trail = {(r["agency"], r["hit"], r["reads"]) for r in trail(client, settings, "HOT1", "US-CT")}
    assert hot_trail == {("hartford-pd", True, 3)} | ({("westport-pd", True, 1)} if westport_shares else set())
    assert trail(client, settings, "COLD1", "US-CT") == []  # hit-only: the non-hit was never written
    # ... only counted, as westport's HOT1 is too where westport does not share (no hit for it then)
    assert result.sightings_withheld == (1 if westport_shares else 2)
    assert [r["hit"] for r in trail(client, settings, "COLD2", "US-CT")] == [False]
    assert all(m["plate"] != "COLD1" for m in (orjson.loads(v) for _, v in result.deduped))

    # retention: 10 days later hartford's non-hit (7-day limit) is gone, its hit (365 days) stays
    sweep(client, settings, policy, now + 7 * DAY_MS)
    assert trail(client, settings, "COLD2", "US-CT") == []
    assert {r["agency"] for r in trail(client, settings, "HOT1", "US-CT")} >= {"hartford-pd"}


def test_a_sighting_past_its_owners_retention_on_arrival_is_never_written(settings: Settings) -> None:
    """A camera's backlog sent ten days late: Hartford's non-hit (7-day limit) is neither stored nor published, only
    counted; its hit (365 days), its 6-day-old sighting and NYPD's (no limit) year-old one are, and a hit 400 days
    old is neither written nor alerted on. A later frame of the expired pass merges into it (its dedup state is
    kept) and is not written either."""
    from streams.hotlist import make_entry
    from streams.pipeline import build_hot_context
    from streams.query import trail
    from tests.governance import policy

    p = policy()
    now = 1_800_000_000_000
    hot = build_hot_context(p, [make_entry("hartford-pd", {"plate": "HOT1", "region": "US-CT", "reason": "x"}, "t")],
                            {}, now)
    old, recent = now - 10 * DAY_MS, now - 6 * DAY_MS
    client = redis.Redis.from_url(settings.redis_url)
    pipe = PartitionPipeline(settings, settings.topic_reads, 0)
    result = pipe.process_raw([Raw(settings.topic_reads, 0, i, None, None, v) for i, v in enumerate([
        _read("late1", "hartford-pd", "OLD1", old), _read("late2", "hartford-pd", "OLD1", old + 300),
        _read("hit", "hartford-pd", "HOT1", old), _read("fresh", "hartford-pd", "NEW1", recent),
        _read("ny", "nypd", "NYC1", now - 400 * DAY_MS),
        _read("hit-400", "hartford-pd", "HOT1", now - 400 * DAY_MS)])], hot)  # past even a hit's 365 days
    assert apply_batch_sync(client, pipe.ck_key, None, result.redis)
    assert (result.sightings_new, result.sightings_expired) == (5, 2)
    stored = {plate: [r["read_id"] for r in trail(client, settings, plate, "US-CT")]
              for plate in ("OLD1", "HOT1", "NEW1", "NYC1")}
    assert stored == {"OLD1": [], "HOT1": ["hit"], "NEW1": ["fresh"], "NYC1": ["ny"]}
    assert sorted(orjson.loads(v)["read_id"] for _, v in result.deduped) == ["fresh", "hit", "ny"]
    assert [orjson.loads(v)["read_id"] for _, v in result.alerts] == ["hit"]

    # a partition of that backlog alone: the pass's next frame, a batch later, merges into the unwritten sighting
    other = PartitionPipeline(settings, settings.topic_reads, 1)
    first = other.process_raw([Raw(settings.topic_reads, 1, 0, None, None, _read("b1", "hartford-pd", "OLD2", old))],
                              hot)
    then = other.process_raw([Raw(settings.topic_reads, 1, 1, None, None,
                                  _read("b2", "hartford-pd", "OLD2", old + 500))], hot)
    assert [(r.sightings_new, r.sightings_expired, list(r.deduped)) for r in (first, then)] == [(1, 1, []), (0, 0, [])]
    for r, expected in ((first, None), (then, 1)):
        assert apply_batch_sync(client, other.ck_key, expected, r.redis)
    assert trail(client, settings, "OLD2", "US-CT") == []


def test_longest_utf8_strings_the_schema_allows_are_stored_and_restored(settings: Settings) -> None:
    """64 four-byte characters are 256 bytes: once a worker-crashing poison pill (one-byte length prefixes)."""
    import orjson

    from streams.kernels.plates import unpack_plates
    from streams.store import read_trail, trail_key, vehicle_id

    client = redis.Redis.from_url(settings.redis_url)
    long_id, long_cam, long_agency = "\U0001F600" * 64, "\u00e9" * 64, "\U0001F697" * 64
    doc = {"read_id": long_id, "camera_id": long_cam, "agency": long_agency, "plate": "7ABC123",
           "region": "US-CT", "ts": 1_700_000_000_000, "lat": 41.7, "lon": -72.7, "confidence": 0.9}
    pipe = PartitionPipeline(settings, settings.topic_reads, 0)
    result = pipe.process_raw([Raw(settings.topic_reads, 0, 0, None, None, orjson.dumps(doc))])
    assert result.dlq == [] and len(result.deduped) == 1
    assert orjson.loads(result.deduped[0][1])["read_id"] == long_id
    assert apply_batch_sync(client, pipe.ck_key, None, result.redis)
    [sighting] = read_trail(client, trail_key(vehicle_id(settings.hash_key, "US-CT", "7ABC123")))
    assert (sighting.read_id, sighting.camera_id, sighting.agency) == (long_id, long_cam, long_agency)
    restored = PartitionPipeline(settings, settings.topic_reads, 0)
    restored.restore(client.hgetall(pipe.ck_key))
    assert restored.best_reads(np.arange(restored.state.n_used)) == [(long_id, "US-CT", long_agency)]
    assert unpack_plates(restored.state.pool["best_plate"][: restored.state.n_used]) == ["7ABC123"]
    assert restored.cam_names == [long_cam]


def test_warm_up_compiles_every_kernel_the_batch_path_calls() -> None:
    """In a fresh interpreter (nothing compiled by other tests): after ``warm_up``, each kernel a batch
    calls from Python has its compiled signature, so the worker's first batch compiles nothing."""
    import subprocess
    import sys

    code = """
import importlib, json
from numba.core.registry import CPUDispatcher
from streams.pipeline import warm_up
from streams.settings import Settings
before = {}
def counts():
    out = {}
    for m in ("scan", "dedup", "plates", "geohash", "resp", "jsonrows", "recordbatch"):
        for name, obj in vars(importlib.import_module("streams.kernels." + m)).items():
            if isinstance(obj, CPUDispatcher):
                out[m + "." + name] = len(obj.signatures)
    return out
before = counts()
warm_up(Settings.from_env(env={}, kafka_bootstrap="x:1", redis_url="redis://x:1/0", hash_key=b"k" * 24))
from streams.kernels.dedup import _kept_runs
print(json.dumps([before, counts(), [str(sig[0].dtype) for sig in _kept_runs.signatures]]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after, kept_runs_masks = orjson.loads(out.splitlines()[-1])
    # compaction's runs are found on the pool's alive column itself (reserve, reclaim): that signature
    assert kept_runs_masks == ["uint8"]
    entry_points = ["scan.scan_reads", "scan.intern_spans", "dedup.dedup_batch", "dedup.expired", "dedup._reindex",
                    "dedup._kept_runs", "dedup._move_runs", "plates.pack_plates", "plates._unpack_matrix",
                    "geohash.geo52_into", "geohash.geo52_decode", "geohash.geohash_text", "resp._resp",
                    "jsonrows.split_array", "jsonrows.assemble", "recordbatch.build_records",
                    "recordbatch.parse_records"]
    assert all(before[k] == 0 for k in entry_points)
    assert {k: after[k] > 0 for k in entry_points} == dict.fromkeys(entry_points, True)


def test_a_merge_keeps_the_best_read_of_the_absorbed_sighting_across_batches(settings: Settings) -> None:
    """The best read of a merged sighting can be the absorbed one's, read in an earlier batch: its id,
    region and agency must follow it into the survivor, for this batch's upsert and for later ones."""
    from streams.store import read_trail, trail_key, vehicle_id

    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    t0 = 1_700_000_000_000
    w = settings.dedup_window_ms

    def raw(offset: int, read_id: str, dt: int, conf: float, agency: str) -> Raw:
        doc = {"read_id": read_id, "camera_id": "cam-1", "agency": agency, "plate": "7ABC123", "region": "US-CT",
               "ts": t0 + dt, "lat": 41.7, "lon": -72.7, "confidence": conf}
        return Raw(settings.topic_reads, 0, offset, None, None, orjson.dumps(doc))

    pipe = PartitionPipeline(settings, settings.topic_reads, 0)
    upserts: list[dict] = []
    for batch in ([raw(0, "early", 0, 0.5, "a-pd"), raw(1, "best", w + w // 2, 0.9, "b-pd")],
                  [raw(2, "bridge", (w + w // 2) // 2, 0.1, "a-pd")],  # within W of both: one sighting
                  [raw(3, "later", w + w // 2 + 1, 0.2, "a-pd")]):  # touches it again, best unchanged
        expected = pipe.next_offset
        result = pipe.process_raw(batch)
        _apply(client, pipe, expected, result.redis)
        upserts.append(orjson.loads(result.deduped[-1][1]))
    assert [(u["op"], u["read_id"], u["agency"], u["reads"]) for u in upserts[1:]] == [
        ("upsert", "best", "b-pd", 3), ("upsert", "best", "b-pd", 4)]
    [sighting] = read_trail(client, trail_key(vehicle_id(settings.hash_key, "US-CT", "7ABC123")))
    assert (sighting.read_id, sighting.agency, sighting.reads, sighting.ts) == ("best", "b-pd", 4, t0)


def test_a_merge_into_an_entry_the_absorbed_sighting_shared_keeps_it(settings: Settings) -> None:
    """The survivor of a merge can take over the absorbed sighting's first capture time: when their ids also
    have the same low byte (1 in 256), its new area entry is the absorbed one's old entry, which the batch
    must not remove after writing it."""
    from streams.store import area_entry, read_trail, sighting_id, trail_key, vehicle_id

    s = area_clash(settings)
    client = redis.Redis.from_url(s.redis_url)
    client.flushdb()
    t0 = 1_700_000_000_000
    w = s.dedup_window_ms

    def raw(offset: int, dt: int) -> Raw:
        doc = {"read_id": f"r{offset}", "camera_id": "cam-1", "agency": "a-pd", "plate": "7ABC123",
               "region": "US-CT", "ts": t0 + dt, "lat": 41.7, "lon": -72.7, "confidence": 0.5}
        return Raw(s.topic_reads, 0, offset, None, None, orjson.dumps(doc))

    pipe = PartitionPipeline(s, s.topic_reads, 0)
    # offset 0 opens the later sighting, offset 1 an earlier one; the bridge merges them into offset 0's (the
    # first to arrive survives), which now starts at offset 1's time
    for batch in ([raw(0, w + w // 2), raw(1, 0)], [raw(2, (w + w // 2) // 2)]):
        expected = pipe.next_offset
        _apply(client, pipe, expected, pipe.process_raw(batch).redis)
    vid = vehicle_id(s.hash_key, "US-CT", "7ABC123")
    [sighting] = read_trail(client, trail_key(vid))
    assert (sighting.sighting_id, sighting.ts, sighting.reads) == (sighting_id(s.topic_reads, 0, 0), t0, 3)
    [cell] = client.scan_iter(match="ps:c:*")
    key, member = area_entry(cell.decode()[6:].split(":")[0], vid, sighting.sighting_id, t0, s.cell_bucket_ms)
    assert (cell.decode(), client.zrange(cell, 0, -1)) == (key, [member])


def test_state_bytes_accounts_for_the_dedup_state_tracemalloc_sees() -> None:
    # the worker's dedup_state_bytes metric: its arrays and arena are what the state holds (an independent
    # count: every allocation of a fresh pipeline, traced)
    import gc
    import tracemalloc

    from benchmarks.memory import warm_up
    from streams.directory import shared_sealer
    from streams.simulate import generate

    s = Settings.from_env(env={}, kafka_bootstrap="unused:1", redis_url="redis://unused:1/0",
                          hash_key=b"test-key-0123456789abcdef")
    traffic = generate(seed=5, vehicles=3000, hours=1.0)
    raws = [Raw("t", 0, i, None, k, v) for i, (k, v) in enumerate(traffic.messages)]
    warm_up(s, raws)
    shared_sealer.cache_clear()  # the plate directory's cache is not dedup state: counted apart, from empty
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        pipe = PartitionPipeline(s, "t", 0)
        for lo in range(0, len(raws) // 2, 5000):
            result = pipe.process_raw(raws[lo : lo + 5000])
            del result
            gc.collect()
            traced = tracemalloc.get_traced_memory()[0] - base - shared_sealer(s.hash_key).nbytes()
            assert 0.9 * traced <= pipe.state_bytes() <= traced, (pipe.state_bytes(), traced)
    finally:
        tracemalloc.stop()


def test_region_and_agency_codes_widen_past_16_bits_and_outputs_do_not_change() -> None:
    s = Settings.from_env(env={}, kafka_bootstrap="unused:1", redis_url="redis://unused:1/0",
                          hash_key=b"test-key-0123456789abcdef")
    raws = pipeline_raws(s, seed=3)
    plain, crowded = PartitionPipeline(s, s.topic_reads, 0), PartitionPipeline(s, s.topic_reads, 0)
    # a partition that has already seen 65,530 distinct regions and agencies: the next few overflow 16 bits
    for i in range(65_530):
        crowded.text_index[f"seen-{i}"] = i
        crowded.texts.append(f"seen-{i}")
    assert crowded.state.pool["region"].dtype == np.uint16
    for lo in range(0, len(raws), 500):
        a, b = plain.process_raw(raws[lo : lo + 500]), crowded.process_raw(raws[lo : lo + 500])
        assert (a.redis, a.deduped, a.dlq) == (b.redis, b.deduped, b.dlq)
        live = np.flatnonzero(plain.state.pool["alive"][: plain.state.n_used])
        assert plain.best_reads(live) == crowded.best_reads(live)
    assert len(crowded.texts) > 65_536 and crowded.state.pool["region"].dtype == np.int32
    assert plain.state.pool["region"].dtype == np.uint16


def test_revisions_remove_exactly_the_entries_written_before() -> None:
    # a sighting revised or merged away in a later batch has its old trail and area entries rebuilt from its
    # pre-batch snapshot: every ZREM must name an entry an earlier batch added, and replaying all commands
    # must leave exactly one trail entry per sighting (small batches: many sightings straddle two)
    from streams.simulate import generate
    from streams.store import MEMBER_PREFIX

    s = Settings.from_env(env={}, kafka_bootstrap="unused:1", redis_url="redis://unused:1/0",
                          hash_key=b"test-key-0123456789abcdef")
    traffic = generate(seed=7, vehicles=2000, hours=1.0)
    raws = [Raw("t", 0, i, None, k, v) for i, (k, v) in enumerate(traffic.messages)]
    pipe = PartitionPipeline(s, "t", 0)
    zsets: dict[str, set[bytes]] = {}
    removed = {"trail": 0, "area": 0}
    for lo in range(0, len(raws), 2000):
        for cmd in pipe.process_raw(raws[lo : lo + 2000]).redis:
            if cmd[0] == "ZADD":
                zsets.setdefault(cmd[1], set()).update(cmd[3::2])
            elif cmd[0] == "ZREM":
                key, member = cmd[1], cmd[2]
                assert member in zsets.get(key, set()), (key, member)
                zsets[key].remove(member)
                removed["trail" if key.startswith("ps:t:") else "area"] += 1
    assert min(removed.values()) > 50, removed
    sids = [MEMBER_PREFIX.unpack_from(m)[2] for key, members in zsets.items() if key.startswith("ps:t:")
            for m in members]
    assert len(sids) == len(set(sids)) > 1000


@given(st.lists(st.tuples(st.sampled_from(["a-pd", "b-pd", "c-sheriff"]), st.integers(0, 3 * DAY_MS)),
                max_size=60), st.booleans())
def test_reads_per_agency_day_counts_every_pair_like_a_counter_of_pairs(reads: list[tuple[str, int]],
                                                                        one_day: bool) -> None:
    if one_day:  # the common case, counted by agency alone
        reads = [(a, DAY_MS + t % DAY_MS) for a, t in reads]
    agency = [a for a, _ in reads]
    ts = np.array([t for _, t in reads], dtype=np.int64)
    got = reads_per_agency_day(Coded.of(agency), ts)
    assert got == Counter((a, t // DAY_MS) for a, t in reads)
    assert all(type(day) is int for _, day in got)  # formatted into the key as a date


def test_a_read_from_a_clock_far_ahead_is_dead_lettered_and_leaves_dedup_alone(settings: Settings) -> None:
    """A capture time years after the message reached Kafka (a camera whose clock is wrong) is refused with the
    reason: stored, it would hold the partition's watermark there - every later read counted late and a pass
    read across two batches split in two - and keep its sighting past any retention."""
    from streams.store import read_trail, trail_key, vehicle_id

    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    t0 = 1_700_000_000_000
    w = settings.dedup_window_ms

    def raw(offset: int, plate: str, ts: int, kafka_ts: int | None) -> Raw:
        doc = {"read_id": f"r{offset}", "camera_id": "cam-1", "agency": "a-pd", "plate": plate, "region": "US-CT",
               "ts": ts, "lat": 41.7, "lon": -72.7, "confidence": 0.9}
        return Raw(settings.topic_reads, 0, offset, kafka_ts, None, orjson.dumps(doc))

    ahead = settings.max_clock_ahead_ms
    pipe = PartitionPipeline(settings, settings.topic_reads, 0)
    results = []
    for batch in ([raw(0, "7ABC123", t0, t0 + 50), raw(1, "FUTURE1", 4_000_000_000_000, t0 + 60),
                   raw(2, "EDGE1", t0 + ahead + 70, t0 + 70)],  # as far ahead as allowed: kept
                  [raw(3, "7ABC123", t0 + w // 2, t0 + w // 2 + 40)],  # the same pass, next batch
                  [raw(4, "NOTIME1", 4_000_000_000_000, None),  # no Kafka timestamp: nothing to judge by
                   # a producer stamping each message with its read's capture time: the worker's clock is earlier
                   raw(5, "STAMPED1", 4_000_000_000_000, 4_000_000_000_000)]):
        expected = pipe.next_offset
        results.append(pipe.process_raw(batch))
        _apply(client, pipe, expected, results[-1].redis)
    letters = [orjson.loads(value) for r in results for _, value, _ in r.dlq]
    assert [(d["offset"], d["reason"], d["field"]) for d in letters] == [(1, "invalid_field", "ts"),
                                                                         (5, "invalid_field", "ts")]
    assert all("ahead of the message's Kafka timestamp" in d["detail"] for d in letters)
    assert sum(r.late for r in results[:2]) == 0
    [sighting] = read_trail(client, trail_key(vehicle_id(settings.hash_key, "US-CT", "7ABC123")))
    assert sighting.reads == 2  # one pass, one sighting
    assert len(read_trail(client, trail_key(vehicle_id(settings.hash_key, "US-CT", "EDGE1")))) == 1


def test_a_damaged_record_batchs_records_are_dead_lettered_and_the_checkpoint_moves_past_it(
        settings: Settings) -> None:
    """Records of a batch that failed its CRC (``records.Corrupt``) are all dead-lettered as read, valid-looking
    or not, and none reaches the dedup; read as one record of the batch's bytes, the checkpoint moves to the
    batch's end, not past that one offset."""
    from streams.pipeline import META_OFFSET
    from streams.records import Corrupt, Polled
    from streams.store import read_trail, trail_key, vehicle_id

    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    t0 = 1_700_000_000_000

    def raw(offset: int) -> Raw:
        return Raw(settings.topic_reads, 0, offset, t0, b"cam-1", orjson.dumps({
            "read_id": f"r{offset}", "camera_id": "cam-1", "agency": "a-pd", "plate": f"DMG{offset}",
            "region": "US-CT", "ts": t0 + offset, "lat": 41.7, "lon": -72.7, "confidence": 0.9}))

    def damaged(records: list[Raw], end: int, whole: bool) -> Polled:
        p = Polled.of(settings.topic_reads, 0, records)
        return Polled(p.topic, p.partition, p.data, p.offsets, p.timestamps, p.key_spans, p.value_spans,
                      Corrupt("record batch at offsets ... fails its CRC-32C check", int(p.offsets[0]), end, whole))

    pipe = PartitionPipeline(settings, settings.topic_reads, 0)
    results = []
    for batch in ([raw(0)], damaged([raw(1), raw(2)], 3, False), damaged([raw(3)], 6, True), [raw(6)]):
        expected = pipe.next_offset
        results.append(pipe.process_raw(batch))
        _apply(client, pipe, expected, results[-1].redis)
    assert [r.next_offset for r in results] == [1, 3, 6, 7]
    assert [(r.consumed, r.valid, r.dead, r.sightings_new) for r in results] == [
        (1, 1, 0, 1), (2, 0, 2, 0), (1, 0, 1, 0), (1, 1, 0, 1)]
    letters = [(orjson.loads(value), dict(headers)) for r in results for _, value, headers in r.dlq]
    assert [(d["offset"], d["reason"], d["step"], h["ps.reason"], h["ps.step"], h["ps.offset"])
            for d, h in letters] == [(o, "corrupt_batch", "fetch", b"corrupt_batch", b"fetch", str(o).encode())
                                     for o in (1, 2, 3)]
    assert all(d["detail"].endswith("fails its CRC-32C check") for d, _ in letters)
    assert client.hget(pipe.ck_key, META_OFFSET) == b"7"
    for offset, stored in ((0, 1), (1, 0), (2, 0), (3, 0), (6, 1)):
        assert len(read_trail(client, trail_key(vehicle_id(settings.hash_key, "US-CT", f"DMG{offset}")))) == stored
