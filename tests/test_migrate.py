"""``platestream store migrate`` against the real Redis: a layout 5 Redis (members written by the layout 5 encoder,
below as its format was) becomes exactly what a layout 6 worker would have written, in place; an interrupted
migration finishes; a running worker, an unknown layout or a member of another version stop it before it changes
anything."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import yaml

from streams.cli import main
from streams.directory import collect
from streams.migrate import MigrationError, member_5_to_6, migrate
from streams.pipeline import PartitionPipeline
from streams.settings import Settings
from streams.store import (
    LAYOUT_VERSION,
    META_KEY,
    MIGRATING,
    PENDING_KEY,
    Sighting,
    apply_batch_sync,
    apply_batches,
    cell_key,
    checkpoint_key,
    pack_string,
    plan_batch,
    read_trail,
    source_code,
    source_names,
    trail_key,
)
from tests.conftest import settings_env
from tests.support import check_layout, dump_redis, pack_v5, pipeline_raws, recent_ms, store_reads

pytestmark = pytest.mark.integration


def _sightings(rng: random.Random, n: int) -> list[Sighting]:
    out = []
    for i in range(n):
        ts = 1_764_000_000_000 + rng.randrange(10**9)
        dur = rng.choice([0, 900, 2_500, 50 * 86_400_000])
        conf = float(np.float32(rng.choice([rng.random(), 0.90625, 0.65625, 0.0, 1.0])))  # ties round to even
        read_id = rng.choice([f"r{i}", "é" * 64, "x" * 300])
        out.append(Sighting(rng.getrandbits(64), ts, ts + dur, ts + dur // 3, rng.getrandbits(52),
                            rng.randrange(1, 300), conf, rng.choice(["cam-1", "cam-2"]), "hartford-pd", read_id,
                            rng.random() < 0.2))
    return out


def _as_stored(s: Sighting) -> Sighting:
    return dataclasses.replace(s, confidence=round(s.confidence, 4))


def _layout5(client: redis.Redis, trails: dict[bytes, list[Sighting]]) -> None:
    client.flushdb()
    client.hset(META_KEY, "layout", 5)
    for vehicle, sightings in trails.items():
        client.zadd(trail_key(vehicle), {pack_v5(s): 0 for s in sightings})
    for camera in ("cam-1", "cam-2"):
        client.hset("ps:src", source_code(camera, "hartford-pd"), pack_string(camera) + pack_string("hartford-pd"))
    client.zadd(cell_key("dr7abc", 490_000), {b"\x00\x01\x02" + b"v" * 12 + b"\x07": 0})
    client.hset(checkpoint_key("g", "plates.reads", 0), mapping={"offset": "120", "watermark": "5"})


def _trails(rng: random.Random) -> dict[bytes, list[Sighting]]:
    trails = {rng.randbytes(12): _sightings(rng, rng.randrange(1, 12)) for _ in range(30)}
    trails[b"commuter-001"] = _sightings(rng, 1_500)  # rewritten in more than one script call (see below)
    return trails


def _assert_layout6(client: redis.Redis, trails: dict[bytes, list[Sighting]]) -> None:
    """Every member is the bytes a layout 6 worker writes for the sighting; lookups read them back."""
    assert client.hget(META_KEY, "layout") == str(LAYOUT_VERSION).encode()
    assert client.hget(META_KEY, MIGRATING) is None
    for vehicle, sightings in trails.items():
        stored = set(client.zrange(trail_key(vehicle), 0, -1))
        assert stored == {_as_stored(s).pack() for s in sightings} == {s.pack() for s in sightings}
        assert read_trail(client, trail_key(vehicle)) == sorted(
            map(_as_stored, sightings), key=lambda s: s.pack())


def test_a_layout5_redis_becomes_what_layout6_writes_and_only_trails_change(settings: Settings,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("streams.migrate.PAIRS_PER_SCRIPT", 1_000)  # the commuter's trail takes two scripts
    client = redis.Redis.from_url(settings.redis_url)
    trails = _trails(random.Random(5))
    _layout5(client, trails)
    others = {k: client.dump(k) for k in client.scan_iter() if not k.startswith(b"ps:t:") and k != META_KEY.encode()}

    done = migrate(client, settle_s=0.2)

    assert (done.from_layout, done.trails, done.members, done.current) == (
        5, len(trails), sum(map(len, trails.values())), 0)
    _assert_layout6(client, trails)
    assert {k: client.dump(k) for k in others} == others  # area index, sources, checkpoints untouched
    assert migrate(client, settle_s=0).from_layout is None  # a second run finds nothing to do
    assert len(pack_v5(trails[b"commuter-001"][0])) - len(trails[b"commuter-001"][0].pack()) == 3


def test_an_interrupted_migration_finishes_and_workers_wait_for_it(settings: Settings) -> None:
    from streams.store import LayoutError

    client = redis.Redis.from_url(settings.redis_url)
    trails = _trails(random.Random(6))
    _layout5(client, trails)
    with pytest.raises(LayoutError, match="store migrate"):  # what a layout 6 worker tells the operator
        check_layout(settings.redis_url)
    # as a migration leaves it when it stops after the first few trails
    client.hset(META_KEY, mapping={"layout": LAYOUT_VERSION, MIGRATING: 5})
    first = list(trails)[:4]
    for vehicle in first:
        key = trail_key(vehicle)
        old = client.zrange(key, 0, -1)
        client.zrem(key, *old)
        client.zadd(key, {member_5_to_6(m): 0 for m in old})
    with pytest.raises(LayoutError, match="migration has not finished"):
        check_layout(settings.redis_url)

    done = migrate(client, settle_s=0)

    assert (done.from_layout, done.trails) == (5, len(trails) - 4)
    assert done.current == sum(len(trails[v]) for v in first)
    _assert_layout6(client, trails)
    check_layout(settings.redis_url)  # workers start again


def test_a_batch_a_crash_left_half_written_is_finished_before_the_rewrite(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    trails = _trails(random.Random(7))
    _layout5(client, trails)
    ck = checkpoint_key("g", "plates.reads", 1)
    late = {random.Random(8).randbytes(12): _sightings(random.Random(9), 3) for _ in range(3)}
    commands = [("ZADD", trail_key(v), 0, pack_v5(s)) for v, ss in late.items() for s in ss]
    plan = plan_batch(ck, None, 40, [*commands, ("HSET", ck, "offset", "40")], max_args=8)

    def crash() -> None:
        raise RuntimeError("the worker died between the chunks")

    with pytest.raises(RuntimeError, match="died"):
        apply_batches(client, [plan], after_first=crash)
    assert client.hget(ck, PENDING_KEY)

    migrate(client, settle_s=0)

    _assert_layout6(client, {**trails, **late})


def test_a_running_worker_or_a_foreign_layout_or_member_stops_it_before_any_change(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    trails = _trails(random.Random(10))
    _layout5(client, trails)
    before = {k: client.dump(k) for k in client.scan_iter()}

    # a worker still consuming: its checkpoint moves while the migration waits
    ck = checkpoint_key("g", "plates.reads", 0)
    writer = threading.Thread(target=lambda: (time.sleep(0.2), client.hset(ck, "offset", "121")))
    writer.start()
    with pytest.raises(MigrationError, match="stop every worker"):
        migrate(client, settle_s=1.0)
    writer.join()
    client.hset(ck, "offset", "120")
    assert {k: client.dump(k) for k in client.scan_iter()} == before

    client.hset(META_KEY, "layout", 3)
    with pytest.raises(MigrationError, match="layout 3"):
        migrate(client, settle_s=0)
    assert client.hget(META_KEY, "layout") == b"3"

    # a member of neither layout: its trail is left as it was, and the migration can be run again once it is dealt with
    client.hset(META_KEY, "layout", 5)
    odd = trail_key(b"odd-vehicle1")
    client.zadd(odd, {b"\x00" * 6 + b"\x04" + b"\x00" * 40: 0})
    with pytest.raises(MigrationError, match=r"neither layout 5 nor 6 \(version byte 0x04\)"):
        migrate(client, settle_s=0)
    assert client.zcard(odd) == 1
    client.delete(odd)
    assert migrate(client, settle_s=0).from_layout == 5
    _assert_layout6(client, trails)


def _cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings, **extra: str) -> None:
    """This process's environment as ``settings_env`` makes a subprocess's, for ``main`` run in it."""
    import os

    env = settings_env(settings, **extra)
    for k in [k for k in os.environ if k not in env]:  # the test runner's own PLATESTREAM_ variables, say
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def test_the_command_line_migrates_and_says_what_it_did(settings: Settings, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:

    client = redis.Redis.from_url(settings.redis_url)
    trails = _trails(random.Random(11))
    _layout5(client, trails)
    _cli_env(monkeypatch, settings)

    assert main(["store", "migrate", "--settle", "0"]) == 0
    n = sum(map(len, trails.values()))
    said = capsys.readouterr().out
    assert f"migrated layout 5 -> this version's: {n} sightings rewritten in {len(trails)} trails" in said
    _assert_layout6(client, trails)
    assert main(["store", "migrate", "--settle", "0"]) == 0
    assert "nothing to migrate" in capsys.readouterr().out
    client.hset(META_KEY, "layout", 3)
    assert main(["store", "migrate", "--settle", "0"]) == 2
    assert "error [migration_refused]: Redis holds layout 3" in capsys.readouterr().err


def test_a_worker_upgraded_mid_stream_ends_exactly_where_one_that_never_stopped_does(settings: Settings) -> None:
    """The pipeline's real output, as a layout 5 worker stored it, migrated, then revised by the layout 6 worker
    that resumes from the checkpoint (sightings written before the upgrade are extended, merged and retracted: it
    removes their old entries by rebuilding them byte for byte): every key ends as in a run that never stopped."""
    client = redis.Redis.from_url(settings.redis_url)
    raws = pipeline_raws(settings, 12)

    def run(pipe: PartitionPipeline, lo: int, hi: int) -> None:
        rng = random.Random(lo)
        while lo < hi:
            n = min(rng.randint(1, 200), hi - lo)
            expected = pipe.next_offset
            assert apply_batch_sync(client, pipe.ck_key, expected, pipe.process_raw(raws[lo : lo + n]).redis)
            lo += n

    run(PartitionPipeline(settings, settings.topic_reads, 0), 0, len(raws))
    collect(client)  # the directory keeps vehicles of revised plates until collected; other batches, other ones
    want = dump_redis(client)
    client.flushdb()

    half = len(raws) // 2
    run(PartitionPipeline(settings, settings.topic_reads, 0), 0, half)
    names = source_names(client, [k for k in client.hkeys("ps:src")])
    downgraded = 0
    for key in client.scan_iter(match="ps:t:*"):  # what a layout 5 worker had stored for the same reads
        members = client.zrange(key, 0, -1)
        client.delete(key)
        client.zadd(key, {pack_v5(Sighting.unpack(m, names)): 0 for m in members})
        downgraded += len(members)
    client.hset(META_KEY, "layout", 5)
    assert downgraded > 500

    assert migrate(client, settle_s=0).members == downgraded
    pipe = PartitionPipeline(settings, settings.topic_reads, 0)  # the upgraded worker, from the checkpoint
    pipe.restore(client.hgetall(pipe.ck_key))
    assert pipe.next_offset == half
    run(pipe, half, len(raws))

    collect(client)
    got = dump_redis(client)
    assert got.pop(META_KEY.encode()) == {b"layout": str(LAYOUT_VERSION).encode()}
    assert got == want


def test_lookups_work_all_through_an_upgrade_and_retention_waits_for_it(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The pipeline's layout 6 output turned back into layout 5 (``pack_v5``): trail, plate search and area search
    answer exactly as on layout 6 before the migration starts, halfway through it and after it; the retention
    sweeper (it removes members by their layout 6 bytes) refuses to begin until the migration is done, from the
    command line too, and a member of layout 5 stops it even where the marker is missing."""
    from streams.audit import AuditLog
    from streams.query import area_search, plate_search, trail
    from streams.retention import sweep
    from streams.store import LayoutError, MemberVersionError
    from tests.governance import TOKENS, policy, policy_doc, with_tokens

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(with_tokens(policy_doc())))
    # layout 5's workers did not record the area index's bucket, and wrote 900-second ones (``cell_bucket_in``)
    settings = dataclasses.replace(settings, cell_bucket_ms=900_000)

    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    base = recent_ms()
    plates = ["MIG123", "M1G123", "XYZ900"]
    store_reads(settings, client, [
        {"read_id": f"m{i}", "camera_id": f"cam-{i % 3}", "agency": "hartford-pd", "plate": plates[i % 3],
         "region": "US-CT", "ts": base + i * 90_000, "lat": 41.7 + i * 1e-4, "lon": -72.7, "confidence": 0.5 + i / 97}
        for i in range(60)])
    p = policy()
    audit = AuditLog(client, b"audit-test-key-0123456789")
    alice = p.context(TOKENS["alice"], "criminal_investigation", "C-1")

    def answers() -> list[object]:
        return [trail(client, settings, plate, "US-CT") for plate in plates] + [
            plate_search(client, settings, p, alice, audit, "M?G12*", "US-CT").rows,
            area_search(client, settings, p, alice, audit, 41.7, -72.7, 1_000, base, base + 60 * 90_000).rows]

    expected = answers()
    sizes = [len(a) for a in expected]  # type: ignore[arg-type]
    assert min(sizes) > 10 and sizes[3] == sizes[0] + sizes[1] and sizes[4] == sum(sizes[:3])
    keys = sorted(k for k in client.scan_iter("ps:t:*"))
    names = source_names(client, [m[24:32] for k in keys for m in client.zrange(k, 0, -1)])
    for key in keys:  # back to layout 5, member by member
        members = client.zrange(key, 0, -1)
        client.zrem(key, *members)
        client.zadd(key, {pack_v5(Sighting.unpack(m, names)): 0 for m in members})
    client.hset(META_KEY, "layout", 5)
    before = dump_redis(client, skip=(b"ps:{audit}",))

    assert answers() == expected
    late = base + 400 * 86_400_000  # everything past hartford-pd's retention
    with pytest.raises(LayoutError, match=r"layout 5.*store migrate"):
        sweep(client, settings, p, late)
    client.hdel(META_KEY, "layout")
    with pytest.raises(MemberVersionError):
        sweep(client, settings, p, late)
    client.hset(META_KEY, "layout", 5)
    assert dump_redis(client, skip=(b"ps:{audit}",)) == before

    client.hset(META_KEY, mapping={"layout": LAYOUT_VERSION, MIGRATING: 5})  # halfway: one trail rewritten
    first = client.zrange(keys[0], 0, -1)
    client.zrem(keys[0], *first)
    client.zadd(keys[0], {member_5_to_6(m): 0 for m in first})
    assert answers() == expected
    with pytest.raises(LayoutError, match="migration has not finished"):
        sweep(client, settings, p, late)
    _cli_env(monkeypatch, settings, PLATESTREAM_POLICY=str(policy_file))
    assert main(["retention", "sweep"]) == 2
    assert "error [layout_mismatch]: a layout migration has not finished" in capsys.readouterr().err

    migrate(client, settle_s=0)
    assert answers() == expected
    assert sum(sweep(client, settings, p, late).values()) == sum(len(t) for t in expected[:3])  # type: ignore[arg-type]
    assert not list(client.scan_iter("ps:t:*"))
