"""The encrypted plate directory: deterministic, bound to its vehicle, kept in step with the trails."""

from __future__ import annotations

import orjson
import pytest
import redis

import streams.directory
from streams.directory import Sealer, collect, directory_key, entries, open_entry, seal
from streams.pipeline import PartitionPipeline
from streams.policy import DAY_MS
from streams.records import Raw
from streams.retention import sweep
from streams.settings import Settings
from streams.store import apply_batch_sync, vehicle_id
from tests.governance import policy
from tests.support import store_reads

KEY, OLD = b"directory-test-key-0123", b"directory-old-key-0123"


def test_sealer_gives_vehicle_id_key_and_seal_and_remembers_at_most_two_generations(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []

    def counted(hash_key: bytes, vehicle: bytes, region: str, plate: str) -> bytes:
        calls.append(vehicle)
        return seal(hash_key, vehicle, region, plate)

    def expected(region: str, plate: str) -> tuple[bytes, str, bytes]:  # computed apart, without the cache
        vid = vehicle_id(KEY, region, plate)
        return vid, directory_key(vid), seal(KEY, vid, region, plate)

    monkeypatch.setattr(streams.directory, "seal", counted)
    plates = [f"7AB{i:04d}" for i in range(5)]
    vids = [vehicle_id(KEY, "US-CT", p) for p in plates]
    sealer = Sealer(KEY, capacity=2)
    # one call, a pair twice in it (computed once), and a region that makes another vehicle of the same plate
    got = sealer.vehicles(["US-CT"] * 5 + ["US-CT", "US-MA"], [*plates, plates[4], plates[4]])
    assert got == [expected("US-CT", p) for p in plates] + [expected("US-CT", plates[4]), expected("US-MA", plates[4])]
    assert got[6][0] != vids[4]
    assert (sealer.hits, sealer.misses, len(calls)) == (1, 6, 6)
    assert len(sealer) <= 4  # generations of at most 2
    assert sealer.vehicles(["US-CT", "US-MA"], [plates[4], plates[4]]) == [expected("US-CT", plates[4]),
                                                                           expected("US-MA", plates[4])]
    assert (sealer.hits, len(calls)) == (3, 6)  # both remembered: the older generation and the newer one
    assert sealer.vehicles(["US-CT"], [plates[0]]) == [expected("US-CT", plates[0])]  # dropped: sealed again
    assert (sealer.misses, calls[-1]) == (7, vids[0])
    sealer.vehicles(["US-CT"] * 100, [f"9ZZ{i:04d}" for i in range(100)])
    assert len(sealer) <= 4
    assert sealer.nbytes() > 0
    with pytest.raises(ValueError):
        Sealer(KEY, capacity=0)


def test_seal_is_deterministic_and_opens_only_with_its_key_and_vehicle() -> None:
    v, w = vehicle_id(KEY, "US-CT", "7ABC123"), vehicle_id(KEY, "US-CT", "7ABC124")
    sealed = seal(KEY, v, "US-CT", "7ABC123")
    assert sealed == seal(KEY, v, "US-CT", "7ABC123")  # replays write identical bytes
    assert b"7ABC123" not in sealed and b"US-CT" not in sealed
    assert open_entry((KEY,), v, sealed) == ("US-CT", "7ABC123")
    assert open_entry((OLD,), v, sealed) is None  # wrong key
    assert open_entry((KEY,), w, sealed) is None  # entry moved to another vehicle
    assert open_entry((KEY, OLD), v, seal(OLD, v, "US-CT", "7ABC123")) == ("US-CT", "7ABC123")  # rotation
    flipped = bytes([sealed[0] ^ 1]) + sealed[1:]
    assert open_entry((KEY,), v, flipped) is None  # tampered


def _read(i: int, plate: str, ts: int, conf: float = 0.9, agency: str = "hartford-pd") -> dict:
    return {"read_id": f"r{i}", "camera_id": "cam-1", "agency": agency, "plate": plate, "region": "US-CT",
            "ts": ts, "lat": 41.7, "lon": -72.7, "confidence": conf}


@pytest.mark.integration
def test_directory_holds_exactly_the_vehicles_with_a_trail(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    t0 = 1_800_000_000_000
    # r0/r1: one pass; its best read is first "7ABC1O3" (an OCR error) and then "7ABC103" (higher
    # confidence), so the sighting moves to another vehicle and the first plate must leave the directory
    reads = [_read(0, "7ABC1O3", t0, 0.5), _read(1, "7ABC103", t0 + 1000, 0.95), _read(2, "XYZ999", t0 + 5000)]
    pipe = PartitionPipeline(settings, settings.topic_reads, 0)
    raws = [Raw(settings.topic_reads, 0, i, None, None, orjson.dumps(r)) for i, r in enumerate(reads)]
    assert apply_batch_sync(client, pipe.ck_key, None, pipe.process_raw(raws[:1]).redis)
    assert {p for _, _, p in entries(client, (settings.hash_key,))} == {"7ABC1O3"}
    assert apply_batch_sync(client, pipe.ck_key, 1, pipe.process_raw(raws[1:]).redis)
    found = sorted((r, p) for _, r, p in entries(client, (settings.hash_key,)))
    assert found == [("US-CT", "7ABC103"), ("US-CT", "7ABC1O3"), ("US-CT", "XYZ999")]
    assert collect(client) == 1  # the corrected plate has no trail: the sweeper drops it
    found = sorted((r, p) for _, r, p in entries(client, (settings.hash_key,)))
    assert found == [("US-CT", "7ABC103"), ("US-CT", "XYZ999")]
    raw = b"".join(k + b"".join(client.hgetall(k)) for k in client.keys("ps:pd:*"))  # type: ignore[operator]
    assert b"7ABC" not in raw and b"XYZ" not in raw

    # retention: a vehicle whose every sighting expired leaves the directory
    sweep(client, settings, policy(), t0 + 8 * DAY_MS)  # hartford keeps non-hits 7 days
    assert list(entries(client, (settings.hash_key,))) == []
    assert client.keys("ps:pd:*") == [] and client.keys("ps:t:*") == []


@pytest.mark.integration
def test_directory_entry_stays_while_the_trail_has_sightings(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    now = 1_800_000_000_000
    store_reads(settings, client, [_read(0, "KEEP1", now - 10 * DAY_MS), _read(1, "KEEP1", now - DAY_MS)])
    assert sweep(client, settings, policy(), now).total() == 1
    vid = vehicle_id(settings.hash_key, "US-CT", "KEEP1")
    assert client.hexists(directory_key(vid), vid)
    assert [p for _, _, p in entries(client, (settings.hash_key,))] == ["KEEP1"]


@pytest.mark.integration
@pytest.mark.parametrize("vehicles", [False, True], ids=["whole-directory", "named-vehicles"])
def test_collect_puts_back_an_entry_whose_vehicle_a_worker_stored_meanwhile(settings: Settings,
                                                                           vehicles: bool) -> None:
    """Two entries without a trail; while they are removed, a worker stores a sighting of one of them (its trail
    appears right after the removal). That one is put back, the other stays removed: in the whole-directory pass
    and in a retention pass's named vehicles alike."""
    from typing import cast

    from streams.store import trail_key

    class RacingRedis(redis.Redis):
        def hdel(self, name: str, *keys: str) -> int:  # type: ignore[override]
            out = cast(int, super().hdel(name, *keys))
            plain.zadd(trail_key(late), {b"member": 0})  # the worker's batch lands right after the removal
            return out

    plain = redis.Redis.from_url(settings.redis_url)
    client = RacingRedis.from_url(settings.redis_url)
    gone, late = vehicle_id(KEY, "US-CT", "GONE1"), vehicle_id(KEY, "US-CT", "LATE1")
    for v, plate in ((gone, "GONE1"), (late, "LATE1")):
        plain.hset(directory_key(v), v, seal(KEY, v, "US-CT", plate))
    assert collect(client, vehicles=[gone, late] if vehicles else None) == 1
    assert plain.hget(directory_key(gone), gone) is None
    assert plain.hget(directory_key(late), late) == seal(KEY, late, "US-CT", "LATE1")
