"""The stored sighting encoding round-trips; vehicle ids are keyed (no key, no plate)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from streams.settings import Settings
from streams.store import Sighting, sighting_id, sighting_ids, source_code, trail_key, vehicle_id

# the schema allows 64 characters: up to 256 bytes of UTF-8 (4-byte characters are drawn on purpose)
text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=64) | st.sampled_from(["\U0001F600" * 64, "é" * 64])


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**52 - 1), st.integers(0, 2**40), st.integers(0, 10**6),
       st.integers(0, 10**5), st.integers(1, 10**6), st.floats(0, 1, width=32), text, text, text)
def test_sighting_round_trip(sid: int, geo: int, ts: int, dur: int, best: int, reads: int, conf: float,
                             cam: str, agency: str, read_id: str) -> None:
    s = Sighting(sid, ts, ts + dur, ts + min(best, dur), geo, reads, conf, cam, agency, read_id)
    stored = dataclasses.replace(s, confidence=round(conf, 4))  # kept to the 4 decimals a lookup shows
    assert Sighting.unpack(s.pack(), {source_code(cam, agency): (cam, agency)}) == stored
    # a source missing from the registry reads as an agency no policy knows (never shown, never expired)
    assert Sighting.unpack(s.pack(), {}) == dataclasses.replace(stored, camera_id="", agency="")


def test_strings_of_every_length_the_schema_allows_round_trip() -> None:
    from streams.store import pack_strings, unpack_strings

    values = ["", "a" * 254, "b" * 255, "\U0001F600" * 64, "x"]  # 254, 255 and 256 bytes around the escape
    assert unpack_strings(b"hdr" + pack_strings(*values), 3, len(values)) == values


def test_pack_string_many_packs_each_value_as_pack_string_does() -> None:
    from streams.store import pack_string, pack_string_many

    short = ["", "x", "AB-123", "\u00e9\u00e9", "a" * 254]
    assert pack_string_many(short) == [pack_string(v) for v in short]
    mixed = [*short, "b" * 255, "\U0001F600" * 64]  # one long value: three length bytes for it only
    assert pack_string_many(mixed) == [pack_string(v) for v in mixed]
    assert pack_string_many(mixed)[-1][:3] == b"\xff\x00\x01"
    assert pack_string_many([]) == []


def test_vehicle_id_depends_on_key_region_and_plate() -> None:
    a = vehicle_id(b"k" * 16, "US-CT", "7ABC123")
    assert a == vehicle_id(b"k" * 16, "US-CT", "7ABC123")
    assert a != vehicle_id(b"j" * 16, "US-CT", "7ABC123")
    assert a != vehicle_id(b"k" * 16, "US-NY", "7ABC123")
    assert "7ABC123" not in trail_key(a)
    # stored trails are found by this id: it must stay the documented keyed BLAKE2b, computed independently
    for key in (b"k" * 16, b"j" * 16, b"k" * 16):  # keys interleaved: no state leaks between them
        want = hashlib.blake2b(b"US-CT|7ABC123", key=key, digest_size=12).digest()
        assert vehicle_id(key, "US-CT", "7ABC123") == want


@given(st.lists(st.integers(0, 2**62), max_size=20), st.integers(0, 1000))
def test_sighting_ids_are_the_hash_of_the_kafka_coordinates(offsets: list[int], partition: int) -> None:
    # stored ids must never change: checked against the documented formula, computed here independently
    def reference(o: int) -> int:
        return int.from_bytes(hashlib.blake2b(f"plate-reads|{partition}|{o}".encode(), digest_size=8).digest(), "big")

    assert sighting_ids("plate-reads", partition, offsets) == [reference(o) for o in offsets]
    assert [sighting_id("plate-reads", partition, o) for o in offsets] == [reference(o) for o in offsets]


def test_split_long_keeps_every_argument_and_pairs() -> None:
    from streams.store import MAX_ARGS, split_long

    fields = [x for i in range(5000) for x in (f"f{i}", f"v{i}")]
    cmds = split_long([("HSET", "k", *fields), ("HDEL", "k", *[f"f{i}" for i in range(9000)]), ("ZADD", "z", 1, "m")])
    assert all(len(c) <= MAX_ARGS for c in cmds)
    hset = [c for c in cmds if c[0] == "HSET"]
    assert [x for c in hset for x in c[2:]] == fields and all(len(c[2:]) % 2 == 0 for c in hset)
    assert sum(len(c) - 2 for c in cmds if c[0] == "HDEL") == 9000
    assert cmds[-1] == ("ZADD", "z", 1, "m")


@hypothesis_settings(deadline=None)  # the first example compiles split_members on a fresh clone (no Numba cache yet)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**52 - 1), st.integers(0, 2**40),
                          st.integers(0, 10**6), st.integers(1, 10**6), st.floats(0, 1, width=32), text, text,
                          text, st.booleans()), max_size=20))
def test_unpack_many_equals_unpacking_each(rows: list[tuple[Any, ...]]) -> None:
    from streams.store import TrailColumns, unpack_columns, unpack_many

    # confidences as stored (4 decimals), so that unpacking gives back exactly these
    sightings = [Sighting(sid, ts, ts + dur, ts, geo, reads, round(conf, 4), cam, agency, read_id, hit)
                 for sid, geo, ts, dur, reads, conf, cam, agency, read_id, hit in rows]
    members = [s.pack() for s in sightings]
    names = {source_code(s.camera_id, s.agency): (s.camera_id, s.agency) for s in sightings}
    assert unpack_many(members, names) == [
        Sighting.unpack(m, names) for m, s in zip(members, sightings, strict=True)] == sightings
    # the columns lookups use hold the same values, with the same Python types
    cols = unpack_columns(members, names)
    assert cols.sightings() == sightings and TrailColumns.of(sightings).sightings() == sightings
    asked: list[list[bytes]] = []  # the names of distinct codes only, asked for once
    by_call = unpack_columns(members, lambda codes: asked.append(codes) or names)
    assert by_call.sightings() == sightings
    assert all(sorted(a) == sorted(set(names)) for a in asked) and len(asked) == (1 if sightings else 0)
    # columns are arrays of the stored widths, sources once per distinct (camera, agency); their values as
    # Python objects are the sightings' own, with the same types
    assert [str(a.dtype) for a in (cols.sighting_id, cols.ts, cols.ts_last, cols.best_ts, cols.geo52, cols.reads,
                                   cols.confidence, cols.hit)] == ["uint64", "int64", "int64", "int64", "uint64",
                                                                   "uint32", "float64", "bool"]
    assert sorted(cols.sources) == sorted(set(names.values()))
    as_rows = list(zip(cols.sighting_id.tolist(), cols.ts.tolist(), cols.ts_last.tolist(), cols.best_ts.tolist(),
                       cols.geo52.tolist(), cols.reads.tolist(), cols.confidence.tolist(), cols.camera_id, cols.agency,
                       cols.read_id, cols.hit.tolist(), strict=True))
    expected = [(s.sighting_id, s.ts, s.ts_last, s.best_ts, s.geo52, s.reads, s.confidence, s.camera_id, s.agency,
                 s.read_id, s.hit) for s in sightings]
    assert [[type(v) for v in r] for r in as_rows] == [[type(v) for v in r] for r in expected] and as_rows == expected


@hypothesis_settings(deadline=None)  # the first example compiles pack_members on a fresh clone (no Numba cache yet)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**52 - 1), st.integers(0, 2**47 - 1),
                          st.integers(0, 2**40), st.integers(0, 2**40), st.integers(1, 2**31 - 1),
                          st.floats(0, 1, width=32), st.booleans()), max_size=10))
def test_batch_packed_members_equal_sighting_pack(rows: list[tuple[Any, ...]]) -> None:
    """The pipeline's whole-batch encoder writes exactly Sighting.pack's bytes before the read id (any duration:
    no saturation since layout 5)."""
    from streams.store import member_heads

    sightings = [Sighting(sid, ts, ts + dur, ts + min(best, dur), geo, reads, conf, "cam", "agency", "r1", hit)
                 for sid, geo, ts, dur, best, reads, conf, hit in rows]

    def column(name: str, dtype: Any) -> np.ndarray:
        return np.array([getattr(s, name) for s in sightings], dtype=dtype)

    heads = member_heads(column("sighting_id", np.uint64), column("geo52", np.uint64), column("ts", np.int64),
                         column("ts_last", np.int64), column("best_ts", np.int64), column("reads", np.int32),
                         column("confidence", np.float32), column("hit", np.uint8),
                         np.frombuffer(source_code("cam", "agency") * len(rows), dtype="V8"))
    assert [h + b"\x02r1" for h in heads] == [s.pack() for s in sightings]


def test_a_sighting_that_ends_before_it_starts_is_refused_not_written() -> None:
    """A varint of a negative number would be a huge one: both encoders refuse it."""
    from streams.store import member_heads

    with pytest.raises(ValueError, match="negative"):
        Sighting(1, 2_000, 1_999, 2_000, 0, 1, 0.5, "cam", "agency", "r1").pack()
    with pytest.raises(ValueError, match="negative"):
        member_heads(*(np.array([v], dtype) for v, dtype in ((1, np.uint64), (0, np.uint64), (2_000, np.int64),
                                                             (2_500, np.int64), (1_999, np.int64), (1, np.int32),
                                                             (0.5, np.float32), (0, np.uint8))),
                     np.frombuffer(source_code("cam", "agency"), dtype="V8"))


@given(st.integers(0, 2**45), st.integers(60_000, 7 * 86_400_000), st.integers(0, 2**64 - 1))
def test_area_index_entries_lead_with_the_time_into_their_bucket(ts: int, bucket_ms: int, sid: int) -> None:
    """The member leads with the milliseconds into the bucket the key names (3 bytes up to 4.6-hour buckets,
    else 4), then the vehicle and the id's low byte: 16 bytes for an hour's bucket, and its score is 0."""
    from streams.store import area_entry, area_member_parts, cell_key

    key, member = area_entry("dr7abc", b"v" * 12, sid, ts, bucket_ms)
    bucket = int(key.rsplit(":", 1)[1].rstrip("}"))
    offset, vehicle, tag = area_member_parts(member, bucket_ms)
    assert key == cell_key("dr7abc", bucket) and bucket * bucket_ms + offset == ts and 0 <= offset < bucket_ms
    assert (vehicle, tag) == (b"v" * 12, sid % 256)
    assert len(member) == (16 if bucket_ms <= 2**24 else 17)


@given(st.lists(st.tuples(st.integers(0, 2**45), st.integers(0, 2**64 - 1), st.binary(min_size=12, max_size=12)),
                max_size=20), st.integers(60_000, 7 * 86_400_000))
def test_batch_area_entries_equal_one_at_a_time(rows: list[tuple[int, int, bytes]], bucket_ms: int) -> None:
    """The pipeline writes a batch's area entries with ``area_entries``; retention and the replaced-entry check
    compute single ones with ``area_entry``: they must agree."""
    from streams.store import area_entries, area_entry

    cells = [f"dr7ab{i % 3}" for i in range(len(rows))]
    keys, members = area_entries(cells, [v for _, _, v in rows], np.array([sid for _, sid, _ in rows], dtype=np.uint64),
                                 np.array([ts for ts, _, _ in rows], dtype=np.int64), bucket_ms)
    assert list(zip(keys, members, strict=True)) == [area_entry(c, v, sid, ts, bucket_ms)
                                                     for c, (ts, sid, v) in zip(cells, rows, strict=True)]


@given(st.lists(st.integers(0, 3 * 3_600_000 - 1), max_size=30), st.integers(0, 3 * 3_600_000 - 1),
       st.integers(0, 3 * 3_600_000 - 1), st.sampled_from([60_000, 3_600_000, 86_400_000]))
def test_area_ranges_select_exactly_the_entries_first_seen_in_the_window(times: list[int], a: int, b: int,
                                                                          bucket_ms: int) -> None:
    """``area_range``'s lexicographic bounds on each bucket's members pick exactly the times in [since, until]
    (checked by sorting and comparing the members as Redis does)."""
    from streams.store import area_entry, area_range

    since, until = min(a, b), max(a, b)
    picked = []
    for ts in times:
        member = area_entry("c", b"v" * 12, 1, ts, bucket_ms)[1]
        bucket = ts // bucket_ms
        if not since // bucket_ms <= bucket <= until // bucket_ms:  # the keys a search reads
            continue
        lo, hi = area_range(since, until, bucket, bucket_ms)
        above = lo == "-" or (member >= lo[1:] if lo[:1] == b"[" else member > lo[1:])
        below = hi == "+" or (member < hi[1:] if hi[:1] == b"(" else member <= hi[1:])
        if above and below:
            picked.append(ts)
    assert sorted(picked) == sorted(t for t in times if since <= t <= until)


@pytest.mark.integration
def test_source_names_come_from_the_registry_and_only_when_they_match_their_code(settings: Settings) -> None:
    """A pipeline registers each (camera, agency) in the batch that first stores it; a reader resolves the
    codes with one HMGET and refuses an entry that is not the hash of its own content."""
    import orjson
    import redis

    from streams import store
    from streams.pipeline import PartitionPipeline
    from streams.records import Raw

    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    store._SOURCE_NAMES.clear()
    doc = {"read_id": "r1", "camera_id": "cam-\u00e9", "agency": "hartford-pd", "plate": "7ABC123",
           "region": "US-CT", "ts": 1_700_000_000_000, "lat": 41.7, "lon": -72.7, "confidence": 0.9}
    pipe = PartitionPipeline(settings, settings.topic_reads, 0)
    result = pipe.process_raw([Raw(settings.topic_reads, 0, 0, None, None, orjson.dumps(doc))])
    code = source_code("cam-\u00e9", "hartford-pd")
    assert [c for c in result.redis if c[0] == "HSET" and c[1] == store.SOURCES_KEY] == [
        ("HSET", store.SOURCES_KEY, code, store.pack_strings("cam-\u00e9", "hartford-pd"))]
    assert store.apply_batch_sync(client, pipe.ck_key, None, result.redis)
    again = pipe.process_raw([Raw(settings.topic_reads, 0, 1, None, None, orjson.dumps({**doc, "read_id": "r2"}))])
    assert not [c for c in again.redis if c[1] == store.SOURCES_KEY]  # registered once per pipeline

    [sighting] = store.read_trail(client, trail_key(vehicle_id(settings.hash_key, "US-CT", "7ABC123")))
    assert (sighting.camera_id, sighting.agency) == ("cam-\u00e9", "hartford-pd")

    forged = source_code("cam-x", "other-pd")
    client.hset(store.SOURCES_KEY, forged, store.pack_strings("cam-x", "hartford-pd"))  # content != code
    assert forged not in store.source_names(client, [forged, code])
    assert store.source_names(client, [code])[code] == ("cam-\u00e9", "hartford-pd")


@pytest.mark.integration
def test_a_redis_of_another_layout_is_refused_and_a_fresh_one_is_marked(settings: Settings) -> None:
    import redis

    from streams.store import LAYOUT_VERSION, META_KEY, LayoutError
    from tests.support import check_layout

    sync = redis.Redis.from_url(settings.redis_url)

    def check() -> None:
        check_layout(settings.redis_url)

    sync.flushdb()
    check()
    check()  # idempotent
    assert sync.hget(META_KEY, "layout") == str(LAYOUT_VERSION).encode()

    sync.hset(META_KEY, "layout", LAYOUT_VERSION - 1)
    with pytest.raises(LayoutError, match=f"layout {LAYOUT_VERSION - 1}, this version writes {LAYOUT_VERSION}"):
        check()

    # data from before the marker: recognised by the trail members' version byte
    sync.flushdb()
    sync.zadd(trail_key(b"v" * 12), {b"\x02" + b"\x00" * 60: 1})
    with pytest.raises(LayoutError, match="members of version 2"):
        check()
    assert sync.hget(META_KEY, "layout") is None  # nothing written
    sync.flushdb()
    sync.zadd(trail_key(b"v" * 12), {Sighting(1, 5, 6, 5, 0, 1, 0.5, "c", "a", "r").pack(): 0})
    check()
    assert sync.hget(META_KEY, "layout") == str(LAYOUT_VERSION).encode()


def test_the_area_index_s_time_bucket_is_recorded_once_and_another_is_refused(settings: Settings) -> None:
    """A worker records its ``PLATESTREAM_CELL_BUCKET_S`` with the layout (a Redis marked before it was recorded
    takes the configured one); a worker, the retention sweeper or an area search set to another bucket
    is refused, saying which one the data was written with, before it writes or reads anything."""
    import redis

    from streams.retention import sweep
    from streams.store import CELL_BUCKET, META_KEY, CellBucketError, require_layout
    from tests.governance import policy
    from tests.support import check_layout

    sync = redis.Redis.from_url(settings.redis_url)
    sync.flushdb()
    check_layout(settings.redis_url, 900_000)
    check_layout(settings.redis_url, 900_000)
    assert sync.hget(META_KEY, CELL_BUCKET) == b"900"
    with pytest.raises(CellBucketError, match=r"900-second time buckets.*BUCKET_S=300 would.*set PLATESTREAM_CELL_"
                                              r"BUCKET_S=900"):
        check_layout(settings.redis_url, 300_000)
    assert sync.hget(META_KEY, CELL_BUCKET) == b"900"  # not replaced
    require_layout(sync, 900_000)
    with pytest.raises(CellBucketError):
        require_layout(sync, 300_000)
    with pytest.raises(CellBucketError):
        sweep(sync, settings.with_cell_bucket(300_000), policy(), 10**13)

    sync.hdel(META_KEY, CELL_BUCKET)  # marked by a version that did not record it
    check_layout(settings.redis_url, 300_000)
    assert sync.hget(META_KEY, CELL_BUCKET) == b"300"
    check_layout(settings.redis_url)  # (tools that do not know the setting check the layout only)


def test_left_unset_the_area_index_s_bucket_is_the_one_redis_holds(settings: Settings) -> None:
    """``PLATESTREAM_CELL_BUCKET_S`` unset: a fresh Redis gets the default (300 s); a Redis that records another
    bucket, or was marked before buckets were recorded (every worker wrote 900 s then), keeps its own. So the
    default's change hides no stored entry: the area search finds them and the retention sweep removes them."""
    import redis

    from streams.audit import AuditLog
    from streams.query import area_search
    from streams.retention import sweep
    from streams.store import CELL_BUCKET, LAYOUT_VERSION, META_KEY, CellBucketError, require_layout
    from tests.governance import TOKENS, policy
    from tests.support import check_layout, recent_ms, store_reads

    assert (settings.cell_bucket_ms, settings.cell_bucket_pinned) == (300_000, False)  # the test fixture's: unset
    sync = redis.Redis.from_url(settings.redis_url)
    sync.flushdb()
    assert check_layout(settings.redis_url, settings.cell_bucket_ms, pinned=False) == 300_000
    assert sync.hget(META_KEY, CELL_BUCKET) == b"300"
    sync.hset(META_KEY, CELL_BUCKET, 600)  # recorded by a worker set to 600
    assert check_layout(settings.redis_url, settings.cell_bucket_ms, pinned=False) == 600_000
    assert require_layout(sync, settings.cell_bucket_ms, pinned=False) == 600_000
    assert sync.hget(META_KEY, CELL_BUCKET) == b"600"

    sync.flushdb()
    sync.hset(META_KEY, "layout", LAYOUT_VERSION)  # marked by a version that did not record the bucket
    assert require_layout(sync, settings.cell_bucket_ms, pinned=False) == 900_000  # (reads record nothing)
    assert sync.hget(META_KEY, CELL_BUCKET) is None
    # that version's entries, 900-second buckets: reads 4 minutes apart, in 2 of those and 4 of 300 seconds
    t0 = recent_ms()  # a 900-second bucket's start (midnight)
    times = [t0 + i * 240_000 for i in range(5)]
    reads = [{"read_id": f"old-{i}", "camera_id": "cam-old", "agency": "hartford-pd", "plate": "OLD1",
              "region": "US-CT", "ts": t, "lat": 41.7637, "lon": -72.6851, "confidence": 0.9}
             for i, t in enumerate(times)]
    store_reads(settings.with_cell_bucket(900_000), sync, reads)
    cells = sync.keys("ps:c:*")
    assert len(cells) == 2 and {int(k.decode().rstrip("}").rsplit(":", 1)[1]) * 900_000 for k in cells} == {
        t0, t0 + 900_000}
    p = policy()
    audit = AuditLog(sync, b"audit-test-key-0123456789")
    ctx = p.context(TOKENS["alice"], "criminal_investigation", "HPD-OLD")
    rows = area_search(sync, settings, p, ctx, audit, 41.7637, -72.6851, 200, times[0], times[-1]).rows
    assert [r["read_id"] for r in rows] == [r["read_id"] for r in reads]
    # a worker starting now records the bucket it found; then one set to 300 explicitly is refused, not answered
    # from empty keys; the sweep removes every entry the old version wrote
    assert check_layout(settings.redis_url, settings.cell_bucket_ms, pinned=False) == 900_000
    assert sync.hget(META_KEY, CELL_BUCKET) == b"900"
    with pytest.raises(CellBucketError, match="900-second"):
        area_search(sync, settings.with_cell_bucket(settings.cell_bucket_ms), p, ctx, audit, 41.7637, -72.6851,
                    200, times[0], times[-1])
    assert sweep(sync, settings, p, times[-1] + 10**12).total() == len(reads)
    assert sync.keys("ps:c:*") == [] and sync.keys("ps:t:*") == []


@pytest.mark.integration
def test_batch_script_runs_every_command_of_a_flat_blob_and_of_the_nested_layout(settings: Settings) -> None:
    """Flat blobs (argument count, arguments) are what workers write; a nested one (a list per command) can
    still be in a Redis Cluster ``pending`` record written before, and must run the same."""
    import msgpack
    import redis

    from streams.store import MAX_ARGS, BatchWrite, apply_batch_sync, apply_batches, pack_commands

    client = redis.Redis.from_url(settings.redis_url)
    fields = [x for i in range(MAX_ARGS + 10) for x in (f"f{i}", i)]  # split in two by pack_commands
    commands: list[tuple[Any, ...]] = [("HSET", "ck", "offset", "7"), ("ZADD", "z", 5, b"m\x00\xff"),
                                       ("HSET", "h", *fields), ("HINCRBY", "n", "x", 3), ("ZREM", "z", b"gone")]
    expect = {"z": [(b"m\x00\xff", 5.0)], "n": {b"x": b"3"}, "h": len(fields) // 2}
    for blob in (pack_commands(commands), msgpack.packb([list(c) for c in commands[:2] + commands[3:]]
                                                      + [["HSET", "h", *fields[:MAX_ARGS - 2]],
                                                         ["HSET", "h", *fields[MAX_ARGS - 2:]]],
                                                      use_bin_type=False)):
        client.flushdb()
        assert apply_batches(client, [BatchWrite("ck", None, 7, blob, b"", ())]) == [True]
        assert client.zrange("z", 0, -1, withscores=True) == expect["z"]
        assert client.hgetall("n") == expect["n"] and client.hlen("h") == expect["h"]
        assert client.hget("ck", "offset") == b"7"
    assert not apply_batch_sync(client, "ck", 3, [("HINCRBY", "n", "x", 1)])
    assert client.hget("n", "x") == b"3"  # fenced: the checkpoint is at 7, not at 3


@pytest.mark.integration
@pytest.mark.parametrize("chunk_args", [0, 40])
def test_batches_as_transactions_store_exactly_what_scripts_store(settings: Settings, chunk_args: int) -> None:
    """A simulated partition written batch by batch through ``apply_batches`` (MULTI/EXEC: one per batch, or per
    chunk) and through ``apply_scripts`` leaves the same keys and values; each of the writes fences: a batch
    that starts where the checkpoint is not writes nothing."""
    import random

    import redis

    from streams.store import apply_batches, apply_scripts, plan_batch
    from tests.support import dump_redis, pipeline_raws, write_in_batches

    client = redis.Redis.from_url(settings.redis_url)
    raws = pipeline_raws(settings, 31)
    out = []
    for apply in (apply_batches, apply_scripts):
        client.flushdb()
        client.config_resetstat()
        write_in_batches(settings, raws, random.Random(7), lambda p, expected, r, apply=apply: apply(
            client, [plan_batch(p.ck_key, expected, r.next_offset, r.redis, chunk_args)]) == [True])
        stats = client.info("commandstats")
        out.append(dump_redis(client, skip=(b"ps:fence:",)))  # (fence values depend on where batches ended)
        ck_key = next(k for k in out[-1] if k.startswith(b"ps:ck:")).decode()
        stale = plan_batch(ck_key, 5, 10, [("HSET", "zombie", "f", "v"), ("HSET", ck_key, "offset", "10")])
        assert apply(client, [stale]) == [False] and client.exists("zombie") == 0
        if apply is apply_batches:  # (not a script in disguise)
            assert stats["cmdstat_exec"]["calls"] > 20 and "cmdstat_evalsha" not in stats
    assert len(out[0]) > 100 and out[0] == out[1]


@pytest.mark.integration
def test_a_transaction_fences_each_batch_and_starts_again_when_a_checkpoint_changes_under_it(
        settings: Settings) -> None:
    """Of two partitions' batches, the one whose checkpoint moved is left out and the other written. A write to
    a watched checkpoint between reading it and EXEC (another worker) makes EXEC write nothing, and the
    round starts again from the fence: now fenced if the offset moved, written if it did not."""
    import redis

    from streams.store import apply_transaction, plan_batch, resp_commands

    client = redis.Redis.from_url(settings.redis_url)
    other = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    client.hset("ck:a", "offset", "10")
    client.hset("ck:b", "offset", "20")

    def batch(key: str, expected: int, nxt: int, field: str) -> Any:
        return plan_batch(key, expected, nxt, [("HINCRBY", "n", field, 1), ("HSET", key, "offset", str(nxt))])

    def apply(batches: list[Any], between: Any = None) -> list[bool]:
        return apply_transaction(client, batches, [resp_commands(b.first) for b in batches], between)

    assert apply([batch("ck:a", 10, 11, "a"), batch("ck:b", 19, 21, "b")]) == [True, False]
    assert client.hgetall("n") == {b"a": b"1"} and client.hget("ck:b", "offset") == b"20"

    rounds = []

    def same_offset() -> None:  # a write that keeps the offset: EXEC refuses, the fence passes again
        rounds.append(1)
        if len(rounds) == 1:
            other.hset("ck:a", "offset", "11")

    assert apply([batch("ck:a", 11, 12, "a"), batch("ck:b", 20, 21, "b")], same_offset) == [True, True]
    assert len(rounds) == 2 and client.hgetall("n") == {b"a": b"2", b"b": b"1"}

    rounds.clear()

    def moved() -> None:  # a newer owner moved the checkpoint: the second round finds this batch fenced
        rounds.append(1)
        if len(rounds) == 1:
            other.hset("ck:a", "offset", "99")

    assert apply([batch("ck:a", 12, 13, "a")], moved) == [False]
    assert len(rounds) == 1 and client.hgetall("n") == {b"a": b"2", b"b": b"1"}  # fenced before the hook ran again
    assert client.hget("ck:a", "offset") == b"99"


@pytest.mark.integration
def test_a_refused_transaction_writes_nothing_and_a_failing_command_is_reported(settings: Settings) -> None:
    """A command Redis refuses while queuing (here: unknown) aborts the whole batch. A command that fails while
    EXEC runs (a key of another type) does not stop the others, the checkpoint included, unlike a script: the
    write is reported failed with Redis's error (the difference ``store.py`` documents)."""
    import redis

    from streams.store import BatchCommandError, apply_batches, plan_batch

    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    client.hset("ck", "offset", "1")
    refused = plan_batch("ck", 1, 2, [("HINCRBY", "n", "x", 1), ("NOSUCHCOMMAND", "k"), ("HSET", "ck", "offset", "2")])
    with pytest.raises(redis.ResponseError, match=r"nothing written.*unknown command"):
        apply_batches(client, [refused])
    assert client.exists("n") == 0 and client.hget("ck", "offset") == b"1"

    client.set("s", "not a hash")
    failing = plan_batch("ck", 1, 2, [("HINCRBY", "n", "x", 1), ("HSET", "s", "f", "v"), ("HSET", "ck", "offset", "2")])
    with pytest.raises(BatchCommandError, match="WRONGTYPE"):
        apply_batches(client, [failing])
    assert client.hget("n", "x") == b"1" and client.hget("ck", "offset") == b"2"
    assert client.ping()  # the connection that saw the error is usable again (dropped, reconnected)


@pytest.mark.integration
def test_chunked_batches_write_what_one_script_writes_even_when_torn(settings: Settings) -> None:
    """A batch written as chunks (``plan_batch``) leaves exactly what one script per batch leaves, also when
    the writer dies after the first chunk: the next owner's ``replay_pending`` finishes the batch, and the
    dead writer's leftover chunks, sent late, change nothing."""
    import random

    import redis

    from streams.directory import collect
    from streams.pipeline import PartitionPipeline
    from streams.store import APPLY_NODE, apply_batches, plan_batch, replay_pending_sync
    from tests.support import dump_redis, pipeline_raws, write_in_batches

    client = redis.Redis.from_url(settings.redis_url)
    raws = pipeline_raws(settings, 31)
    rng = random.Random(7)

    def data() -> dict[bytes, object]:
        collect(client)  # directory entries of plates a sighting held only between batches
        out = dump_redis(client, skip=(b"ps:fence:",))  # (fence values depend on where batches ended)
        for key, value in out.items():
            assert not key.startswith(b"ps:wal:")  # the last chunk drops the record
            if key.startswith(b"ps:ck:"):
                assert b"pending_key" not in value  # type: ignore[operator]
        return out

    client.flushdb()
    write_in_batches(settings, raws, rng, lambda p, expected, r: apply_batches(
        client, [plan_batch(p.ck_key, expected, r.next_offset, r.redis)]) == [True])
    want = data()
    client.flushdb()

    class Crash(Exception):
        pass

    def crash() -> None:
        raise Crash

    pb = PartitionPipeline(settings, settings.topic_reads, 0)
    committed, torn, chunks, late = 0, 0, 0, []
    while committed < len(raws):
        n = rng.randint(1, 200)
        expected = pb.next_offset
        r = pb.process_raw(raws[committed : committed + n])
        plan = plan_batch(pb.ck_key, expected, r.next_offset, r.redis, rng.choice([16, 40, 100, 400]))
        chunks += 1 + len(plan.rest)
        if plan.rest and rng.random() < 0.3:  # dies after the first chunk: a torn batch
            with pytest.raises(Crash):
                apply_batches(client, [plan], after_first=crash)
            torn += 1
            late.append(plan)
        else:
            assert apply_batches(client, [plan]) == [True]
            committed = r.next_offset
            continue
        pb = PartitionPipeline(settings, settings.topic_reads, 0)
        assert replay_pending_sync(client, pb.ck_key) == len(plan.rest)  # what the worker does on load
        assert replay_pending_sync(client, pb.ck_key) == 0
        pb.restore(client.hgetall(pb.ck_key))
        committed = pb.next_offset or 0
        assert committed == r.next_offset  # the torn batch counts as written
    assert torn >= 3 and chunks > 3 * torn
    node = client.register_script(APPLY_NODE)
    for plan in late:  # a zombie's chunks, after the heir finished its batch
        assert all(node(keys=[fence], args=[plan.ck_key, plan.next_offset, blob]) == 0 for fence, blob in plan.rest)
    assert data() == want


@pytest.mark.integration
def test_a_stalled_writer_s_later_chunks_are_skipped_once_the_next_owner_finished_them(settings: Settings) -> None:
    """A writer stalls after its first chunk (a transaction) while the partition's next owner finishes the batch
    from its write-ahead record; when it resumes, each of its later chunks (transactions fenced on the chunk's
    fence hash) finds its end offset there and runs nothing: every counter is incremented once, not twice."""
    import redis

    from streams.store import PENDING_KEY, apply_batches, plan_batch, replay_pending_sync

    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    commands = [("HINCRBY", "n", f"f{i}", 1) for i in range(20)]  # 80 arguments: a first chunk and 4 more
    plan = plan_batch("ps:ck:{g:t:0}", None, 10, commands, 16)
    replayed = []

    def next_owner() -> None:
        replayed.append(replay_pending_sync(client, plan.ck_key))

    assert apply_batches(client, [plan], after_first=next_owner) == [True]
    assert replayed == [4]
    assert client.hgetall("n") == {f"f{i}".encode(): b"1" for i in range(20)}
    assert client.hget(plan.ck_key, "offset") == b"10" and client.hget(plan.ck_key, PENDING_KEY) is None
    assert client.exists(plan.record_key) == 0


@pytest.mark.integration
def test_a_chunked_batch_s_write_ahead_record_is_live_only_while_its_batch_is_unfinished(settings: Settings) -> None:
    """The record goes in a key of its own before the first chunk: the first chunk makes it live (no expiry)
    and names it in the checkpoint; a fenced first chunk deletes it; a first chunk whose record is missing
    writes nothing; a checkpoint naming a missing record stops the replay with a clear error."""
    import redis

    from streams.store import (
        APPLY_BATCH,
        PENDING,
        PENDING_KEY,
        WriteAheadRecordMissing,
        apply_batches,
        apply_scripts,
        plan_batch,
        replay_pending_sync,
    )

    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    commands = [("HINCRBY", "n", f"f{i}", 1) for i in range(20)]  # 80 arguments: chunks of 16 hold 4 each

    class Crash(Exception):
        pass

    def crash() -> None:
        raise Crash

    plan = plan_batch("ps:ck:{g:t:0}", None, 10, commands, 16)
    assert plan.record_key.startswith("ps:wal:{g:t:0}:") and len(plan.rest) == 4
    assert plan.record_key != plan_batch("ps:ck:{g:t:0}", None, 10, commands, 16).record_key  # fresh per batch
    with pytest.raises(Crash):
        apply_batches(client, [plan], after_first=crash)
    assert client.hget(plan.ck_key, PENDING_KEY) == plan.record_key.encode()
    assert client.get(plan.record_key) == plan.pending and client.pttl(plan.record_key) == -1  # live: kept
    assert client.hlen("n") == 4  # the first chunk only

    zombie = plan_batch(plan.ck_key, None, 12, commands[:8], 16)  # starts where the checkpoint no longer is
    assert apply_batches(client, [zombie]) == [False]
    assert client.exists(zombie.record_key) == 0 and client.hlen("n") == 4  # fenced: its record is gone too

    assert replay_pending_sync(client, plan.ck_key) == 4
    assert client.hgetall("n") == {f"f{i}".encode(): b"1" for i in range(20)}
    assert client.exists(plan.record_key) == 0 and client.hget(plan.ck_key, PENDING_KEY) is None
    assert client.hget(plan.ck_key, "offset") == b"10"

    # a first chunk finds no record (it expired, or its SET failed): an error, and nothing is written
    script = client.register_script(APPLY_BATCH)
    nxt = plan_batch(plan.ck_key, 10, 20, commands, 16)
    with pytest.raises(redis.ResponseError, match=r"write-ahead record ps:wal:.* is missing"):
        script(keys=[plan.ck_key], args=["10", nxt.first, "20", nxt.record_key])
    assert client.hget(plan.ck_key, "offset") == b"10" and client.hgetall("n")[b"f0"] == b"1"
    # a record no first chunk made live (here a script's first chunk failed; or the writer died before sending
    # it) expires. (A transaction's failing command does not stop the rest: see the refused-transaction test.)
    client.set("s", "not a hash")
    failing = plan_batch(plan.ck_key, 10, 20, [("HSET", "s", "f", "v"), *commands], 16)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        apply_scripts(client, [failing])
    assert 0 < client.pttl(failing.record_key) <= 3_600_000 and client.hget(plan.ck_key, "offset") == b"10"

    # a record an earlier version wrote inside the checkpoint (``pending``) is still finished on load
    client.delete("n")
    old = plan_batch(plan.ck_key, 10, 30, commands, 16)
    client.hset(plan.ck_key, mapping={"offset": "30", PENDING: old.pending})
    assert replay_pending_sync(client, plan.ck_key) == 4
    assert client.hgetall("n") == {f"f{i}".encode(): b"1" for i in range(4, 20)}  # the chunks after the first

    client.hset(plan.ck_key, PENDING_KEY, "ps:wal:{g:t:0}:gone")
    with pytest.raises(WriteAheadRecordMissing, match=re.escape("ps:wal:{g:t:0}:gone")):
        replay_pending_sync(client, plan.ck_key)


def test_chunks_hold_at_most_their_arguments_and_every_command_in_order() -> None:
    from streams.store import chunk_commands, split_long

    commands: list[tuple[Any, ...]] = [("HSET", "h", *range(101)), ("ZADD", "z", 1, b"a"), ("HDEL", "h", *range(50)),
                                       ("HINCRBY", "n", "x", 1)]
    for limit in (16, 17, 40, 1000):
        chunks = chunk_commands(commands, limit)
        assert all(sum(map(len, c)) <= limit for c in chunks)
        assert [cmd for c in chunks for cmd in c] == split_long(commands, limit)
    assert chunk_commands(commands, 0) == [commands]
    assert len(chunk_commands(commands, 1000)) == 1


@pytest.mark.integration
def test_trail_time_ranges_are_exact_at_every_bound(settings: Settings) -> None:
    """Trail members lead with their first capture time and all score 0: ``ZRANGEBYLEX`` over the bounds
    ``time_range`` makes returns exactly the sightings first captured in [lo, hi], oldest first, with
    ties in one millisecond, the schema's first and last millisecond, and bounds outside the member range."""
    import random

    import redis

    from streams.store import read_trail, time_range

    client = redis.Redis.from_url(settings.redis_url)
    key = trail_key(b"t" * 12)
    rng = random.Random(7)
    last = 4_102_444_800_000  # the schema's latest capture time
    times = [0, 1, 255, 256, 65_535, 65_536, last - 1, last, *(rng.randrange(0, last) for _ in range(150))]
    times += times[:40]  # sightings that share a millisecond
    sightings = [Sighting(rng.getrandbits(64), ts, ts + rng.randrange(0, 10**6), ts, rng.getrandbits(52), 1, 0.5,
                          "cam", "agency", f"r{i}") for i, ts in enumerate(times)]
    client.zadd(key, {s.pack(): 0 for s in sightings})
    bounds = [*times, -5, -1, 2**48 - 1, 2**48, 2**60, "-inf", "+inf"]
    bounds += [b + d for b in times[:30] for d in (-1, 1)]
    for _ in range(300):
        lo, hi = rng.choice(bounds), rng.choice(bounds)
        found = read_trail(client, key, lo, hi)
        lo_v = float(lo) if isinstance(lo, str) else lo
        hi_v = float(hi) if isinstance(hi, str) else hi
        expect = sorted((s for s in sightings if lo_v <= s.ts <= hi_v), key=lambda s: (s.ts, s.pack()))
        assert [s.read_id for s in found] == [s.read_id for s in expect], (lo, hi)
    assert time_range("-inf", "+inf") == ("-", "+")
    limited = read_trail(client, key, 256, last, limit=5)
    assert [s.ts for s in limited] == sorted(t for t in times if 256 <= t <= last)[:5]


def test_a_redis_that_would_store_trails_as_skiplists_is_detected(settings: Settings) -> None:
    import asyncio

    import redis
    import redis.asyncio as aioredis

    from streams.store import compact_trails

    async def probe(**kw: str) -> bool | None:
        client = aioredis.from_url(settings.redis_url, **kw)
        try:
            return await compact_trails(client)
        finally:
            await client.aclose()

    sync = redis.Redis.from_url(settings.redis_url)
    tuned = sync.config_get("zset-max-listpack-*")
    try:
        assert asyncio.run(probe()) is True  # the local stack's settings
        for name, value in (("zset-max-listpack-value", "64"), ("zset-max-listpack-entries", "128")):
            sync.config_set(name, value)  # Redis's default
            assert asyncio.run(probe()) is False
            sync.config_set(name, tuned[name])
            assert asyncio.run(probe()) is True
        # a user whose ACL refuses OBJECT: no answer, and the probe key is still removed
        sync.acl_setuser("probe-test", enabled=True, passwords=["+probe-pw"], keys=["ps:*"],
                         commands=["+@all", "-object"])
        assert asyncio.run(probe(username="probe-test", password="probe-pw")) is None
    finally:
        sync.acl_deluser("probe-test")
        for name, value in tuned.items():
            sync.config_set(name, value)
    assert sync.keys("ps:probe:*") == []


@given(st.lists(st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 2**63, 2**64 - 1]), max_size=200))
def test_sighting_hex_names_each_id_as_its_16_digit_hex(sids: list[int]) -> None:
    from streams.store import sighting_hex

    assert sighting_hex(np.array(sids, dtype=np.uint64)) == [f"{s:016x}" for s in sids]
