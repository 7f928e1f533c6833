"""Governed queries against the real Redis: no query path returns a sighting its policy forbids."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from streams.audit import LOG_KEY, AuditLog
from streams.policy import Policy, PolicyError, token_hash
from streams.query import ROW_KEYS, ROW_TEMPLATE, governed_trail, trail
from streams.settings import Settings
from streams.sharing import GRANTS_KEY
from tests.support import recent_ms, store_reads

pytestmark = pytest.mark.integration
AGENCIES = ["a-local", "b-local", "c-state", "d-fed", "e-private", "f-ny"]
KINDS = {"a-local": "local", "b-local": "local", "c-state": "state", "d-fed": "federal", "e-private": "private",
         "f-ny": "local"}
STATES = {a: ("NY" if a == "f-ny" else "CT") for a in AGENCIES}
BASE = recent_ms()


def _store_sightings(settings: Settings, client: redis.Redis) -> None:
    """Two sightings of vehicle ABC123 by each agency (one more agency unknown to every policy)."""
    reads = [{"read_id": f"{a}-{i}", "camera_id": f"cam-{a}", "agency": a, "plate": "ABC123", "region": "US-CT",
              "ts": BASE + (j * 2 + i) * 60_000, "lat": 41.7, "lon": -72.7, "confidence": 0.9}
             for j, a in enumerate([*AGENCIES, "zz-unknown"]) for i in range(2)]
    store_reads(settings, client, reads)
    assert len(trail(client, settings, "ABC123", "US-CT")) == 14


# few purposes, many grants: so that every rule often decides the outcome (a rule that never matters
# in the examples would not be tested)
FEW = ["criminal_investigation", "immigration_enforcement", "missing_person"]
rules = st.fixed_dictionaries({
    "never_outside_state": st.booleans(),
    "never_with_kinds": st.lists(st.sampled_from(["local", "state", "federal", "private"]), unique=True, max_size=2),
    "never_with_agencies": st.lists(st.sampled_from(AGENCIES), unique=True, max_size=2),
    "never_for_purposes": st.lists(st.sampled_from(FEW), unique=True, max_size=1),
    "share_purposes": st.lists(st.sampled_from(FEW), unique=True, min_size=1),
})
grants = st.dictionaries(st.tuples(st.sampled_from(AGENCIES), st.sampled_from(AGENCIES)),
                         st.lists(st.sampled_from(FEW), unique=True, min_size=1), min_size=10, max_size=36)


def oracle(doc: dict, grant_map: dict, requester: str, purpose: str, owner: str) -> bool:
    """Independent statement of the rules: may ``requester`` see ``owner``'s data for ``purpose``?"""
    spec = next((a for a in doc["agencies"] if a["id"] == owner), None)
    if spec is None:
        return False
    sh = spec.get("sharing", {})
    if purpose in sh.get("never_for_purposes", []):
        return False
    if owner == requester:
        return True
    if sh.get("never_outside_state") and STATES[requester] != STATES[owner]:
        return False
    if KINDS[requester] in sh.get("never_with_kinds", []) or requester in sh.get("never_with_agencies", []):
        return False
    if purpose not in sh.get("share_purposes", []):
        return False
    return purpose in grant_map.get((owner, requester), [])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_no_query_returns_a_sighting_its_policy_forbids(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    _store_sightings(settings, client)
    audit = AuditLog(client, b"audit-test-key-0123456789")

    @hsettings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(rules, min_size=len(AGENCIES), max_size=len(AGENCIES)), grants, st.sampled_from(AGENCIES),
           st.sampled_from(FEW))
    def check(agency_rules: list[dict], grant_map: dict, requester: str, purpose: str) -> None:
        doc = {"version": 1,
               "agencies": [{"id": a, "name": a, "state": STATES[a], "kind": KINDS[a], "sharing": r}
                            for a, r in zip(AGENCIES, agency_rules, strict=True)],
               "users": [{"id": "u", "agency": requester, "roles": ["analyst"], "token_sha256": token_hash("t")}]}
        policy = Policy.from_dict(doc)
        client.delete(GRANTS_KEY)
        for (owner, req), purposes in grant_map.items():
            client.hset(GRANTS_KEY, f"{owner}|{req}", orjson.dumps(
                {"owner": owner, "requester": req, "purposes": purposes, "status": "approved", "expires": None}))
        before = client.llen(LOG_KEY)
        ctx = policy.context("t", purpose, "case-42")
        result = governed_trail(client, settings, policy, ctx, audit, "ABC123", "US-CT")
        got = {r["agency"] for r in result.rows}
        allowed = {a for a in AGENCIES if oracle(doc, grant_map, requester, purpose, a)}
        assert got == allowed  # nothing forbidden, and nothing allowed withheld
        assert all(len([r for r in result.rows if r["agency"] == a]) == 2 for a in got)
        assert client.llen(LOG_KEY) == before + 1  # every query is audited, allowed or not
        assert set(result.refused) == set(AGENCIES) - allowed

    check()
    assert audit.verify().ok


def test_query_without_purpose_or_case_is_refused_and_nothing_is_read(settings: Settings) -> None:
    from tests.governance import TOKENS, policy

    p = policy()
    with pytest.raises(PolicyError) as e:
        p.context(TOKENS["alice"], None, "c1")
    assert e.value.code == "purpose_required"


def test_historical_hits_find_ocr_variants_and_are_audited(settings: Settings) -> None:
    from streams.hotlist import make_entry
    from streams.query import QueryError, historical_hits
    from tests.governance import TOKENS, policy

    client = redis.Redis.from_url(settings.redis_url)
    reads = [{"read_id": f"r{i}", "camera_id": "cam-h", "agency": "hartford-pd", "plate": plate, "region": "US-CT",
              "ts": BASE + i * 3_600_000, "lat": 41.7, "lon": -72.7, "confidence": 0.9}
             for i, plate in enumerate(["HOT1", "H0T1", "HOTI", "NOT1"])]
    store_reads(settings, client, reads)
    p = policy()
    audit = AuditLog(client, b"audit-test-key-0123456789")
    ctx = p.context(TOKENS["alice"], "hotlist_response", "HL-1")
    entry = make_entry("hartford-pd", {"plate": "HOT1", "region": "US-CT", "reason": "stolen"}, "t")
    result = historical_hits(client, settings, p, ctx, audit, entry)
    assert [r["read_id"] for r in result.rows] == ["r0", "r1", "r2"]  # every OCR variant, not NOT1
    rec = list(audit.records())[-1]
    assert (rec["action"], rec["result_count"], rec["terms"]["entry_id"]) == ("hotlist.history", 3, entry.id)
    # the same query by someone the policy refuses returns nothing, and is audited too
    fred = p.context(TOKENS["fred"], "hotlist_response", "X")
    assert historical_hits(client, settings, p, fred, audit, entry).rows == []
    assert audit.verify().records == 2
    # a wildcard entry for every region runs through the encrypted plate directory
    wildcard = make_entry("hartford-pd", {"plate": "HOT*", "reason": "r"}, "t")
    assert [r["read_id"] for r in historical_hits(client, settings, p, ctx, audit, wildcard).rows] == ["r0", "r1",
                                                                                                       "r2"]
    broad = make_entry("hartford-pd", {"plate": "HO*", "reason": "r"}, "t")
    with pytest.raises(QueryError, match="pattern_too_broad"):
        historical_hits(client, settings, p, ctx, audit, broad)


def test_partial_plate_search_is_ocr_tolerant_policy_filtered_and_audited(settings: Settings) -> None:
    from streams.query import QueryError, plate_search
    from tests.governance import TOKENS, policy

    client = redis.Redis.from_url(settings.redis_url)
    plates = [("7ABC123", "hartford-pd", "US-CT"), ("7A8C123", "hartford-pd", "US-CT"),
              ("7ABD999", "westport-pd", "US-CT"), ("X7ABC12", "hartford-pd", "US-CT"),
              ("7ABC129", "nypd", "US-NY"), ("7ABC120", "ice-hartford", "US-CT")]
    store_reads(settings, client, [
        {"read_id": f"p{i}", "camera_id": "cam-p", "agency": a, "plate": plate, "region": region,
         "ts": BASE + i * 60_000, "lat": 41.7, "lon": -72.7, "confidence": 0.9}
        for i, (plate, a, region) in enumerate(plates)])
    p = policy()
    audit = AuditLog(client, b"audit-test-key-0123456789")
    alice = p.context(TOKENS["alice"], "criminal_investigation", "C-7")

    def search(ctx: object, pattern: str, region: str | None = None) -> list[tuple[str, str]]:
        return [(r["plate"], r["read_id"]) for r in plate_search(client, settings, p, ctx, audit, pattern,  # type: ignore[arg-type]
                                                                 region).rows]

    # alice (hartford) sees her own data, and westport's for criminal_investigation only with a grant:
    # none here; NYPD has no sharing rules, ICE never shares
    assert search(alice, "7AB*") == [("7ABC123", "p0"), ("7A8C123", "p1")]  # B/8 tolerant, anchored
    assert search(alice, "?ABC12?") == [("7ABC123", "p0"), ("7A8C123", "p1")]
    assert search(alice, "7ABC12*", "US-NY") == []
    nina = p.context(TOKENS["nina"], "criminal_investigation", "N-1")  # NYPD: sees only its own
    assert search(nina, "7ABC12?") == [("7ABC129", "p4")]
    walt = p.context(TOKENS["walt"], "criminal_investigation", "W-1")
    assert search(walt, "7AB*") == [("7ABD999", "p2")]  # hartford never shares without a grant

    records = list(audit.records())
    assert [r["action"] for r in records] == ["query.plate_search"] * 5
    assert records[0]["terms"]["pattern_shape"] == "###*" and records[0]["result_count"] == 2
    assert b"7AB" not in orjson.dumps(records)  # the audit names the pattern's shape and digest, not its text
    with pytest.raises(QueryError, match="pattern_too_broad"):
        search(alice, "7*")
    with pytest.raises(QueryError, match="pattern must be"):
        search(alice, "7AB%")
    last = list(audit.records())
    assert [(r["decision"], r["rules"]) for r in last[5:]] == [("refused", ["pattern_too_broad"]),
                                                                ("refused", ["invalid_query"])]


def test_lookups_during_hash_key_rotation_read_both_keys(settings: Settings) -> None:
    import dataclasses

    from streams.query import area_search, plate_search
    from tests.governance import TOKENS, policy

    client = redis.Redis.from_url(settings.redis_url)
    read = {"camera_id": "cam-r", "agency": "hartford-pd", "plate": "ROT8", "region": "US-CT",
            "lat": 41.7, "lon": -72.7, "confidence": 0.9}
    old_reads = [dict(read, read_id="o1", ts=BASE), dict(read, read_id="o2", ts=BASE + 3_600_000)]
    store_reads(settings, client, old_reads)
    rotated = dataclasses.replace(settings, hash_key=b"the-new-key-0123456789", previous_hash_key=settings.hash_key)
    client.delete(*client.keys("ps:ck:*"))
    # a worker restarted with the new key replays from its checkpoint: the second pass gets one more frame
    # (its new revision lands in the new key's trail, the old revision stays in the old one), then a new pass
    store_reads(rotated, client, [*old_reads, dict(read, read_id="n1", ts=BASE + 3_601_000, confidence=0.95),
                                  dict(read, read_id="n2", ts=BASE + 7_200_000)])
    assert len(client.keys("ps:t:*")) == 2  # one trail per key

    assert [(r["read_id"], r["reads"]) for r in trail(client, rotated, "ROT8", "US-CT")] == [
        ("o1", 1), ("n1", 2), ("n2", 1)]  # each sighting once, at its latest revision
    assert [r["read_id"] for r in trail(client, settings, "ROT8", "US-CT")] == ["o1", "o2"]  # old key alone
    p = policy()
    alice = p.context(TOKENS["alice"], "criminal_investigation", "C-8")
    audit = AuditLog(client, b"audit-test-key-0123456789")
    assert [r["read_id"] for r in plate_search(client, rotated, p, alice, audit, "R0T*").rows] == ["o1", "n1", "n2"]
    area = area_search(client, rotated, p, alice, audit, 41.7, -72.7, 100, BASE, BASE + 8_000_000)
    assert sorted(r["read_id"] for r in area.rows) == ["n1", "n2", "o1"]
    # once the old key is dropped, the old trail is unreachable and ages out under retention
    fresh = dataclasses.replace(rotated, previous_hash_key=b"")
    assert [r["read_id"] for r in trail(client, fresh, "ROT8", "US-CT")] == ["o1", "n1", "n2"]


def test_trails_of_many_vehicles_in_one_round_trip_equal_each_looked_up_alone(settings: Settings) -> None:
    """A plate search or a hotlist entry's OCR variants read hundreds of trails in one pipeline: each the
    same rows as its own lookup, for every window and limit, also during a key rotation (two keys each)."""
    import dataclasses

    from streams.query import trails

    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    plates = [f"MNY{i:03d}" for i in range(60)]
    reads = [{"read_id": f"{p}-{k}", "camera_id": f"cam-{k % 3}", "agency": ["hartford-pd", "nypd"][k % 2],
              "plate": p, "region": "US-CT", "ts": BASE + (i * 7 + k * 5) * 60_000, "lat": 41.7 + k / 100,
              "lon": -72.7, "confidence": 0.5 + k / 20} for i, p in enumerate(plates[:50]) for k in range(i % 6)]
    store_reads(settings, client, reads)
    rotated = dataclasses.replace(settings, hash_key=b"the-new-key-0123456789", previous_hash_key=settings.hash_key)
    # later passes, written under the new key by another partition's pipeline (its own checkpoint and ids)
    store_reads(dataclasses.replace(rotated, topic_reads=settings.topic_reads + "-b"), client,
                [dict(r, read_id=r["read_id"] + "-new", ts=r["ts"] + 86_400_000) for r in reads[::3]])
    vehicles = [("US-CT", p) for p in plates] + [("US-NY", "MNY001")]
    for s in (settings, rotated):
        for since, until, limit in ((None, None, None), (BASE + 60_000 * 40, BASE + 60_000 * 200, None),
                                    (None, None, 2), (BASE + 86_400_000, None, None)):
            together = trails(client, s, vehicles, since, until, limit)
            alone = [trail(client, s, p, r, since, until, limit) for r, p in vehicles]
            assert [t.rows() for t in together] == alone
            later_only = since == BASE + 86_400_000  # only the new key holds sightings that late
            assert (sum(map(len, alone)) > 5) == (s is rotated or not later_only) and [] in alone
    assert trails(client, settings, []) == []


def test_area_search_is_exact_policy_filtered_and_audited(settings: Settings) -> None:
    from streams.query import QueryError, area_search
    from tests.governance import TOKENS, policy

    client = redis.Redis.from_url(settings.redis_url)
    lat0, lon0 = 41.7637, -72.6851
    placed = []  # (read_id, agency, metres north, metres east)
    for agency in ("hartford-pd", "westport-pd"):
        for north, east in ((100, 0), (0, 900), (-700, -500), (1500, 0), (0, -5000)):
            placed.append((f"{agency}-{north}-{east}", agency, north, east))
    reads = [{"read_id": rid, "camera_id": f"cam-{rid}", "agency": agency, "plate": f"AR{i:04d}", "region": "US-CT",
              "ts": BASE + i * 1000, "lat": lat0 + north / 111_195.0,
              "lon": lon0 + east / (111_195.0 * float(np.cos(np.radians(lat0)))), "confidence": 0.9}
             for i, (rid, agency, north, east) in enumerate(placed)]
    reads.append({**reads[0], "read_id": "too-early", "plate": "EARLY1", "ts": BASE - 3_600_000})
    store_reads(settings, client, reads)
    p = policy()
    audit = AuditLog(client, b"audit-test-key-0123456789")
    ctx = p.context(TOKENS["alice"], "criminal_investigation", "HPD-AREA")

    result = area_search(client, settings, p, ctx, audit, lat0, lon0, 1000, BASE, BASE + 3_600_000)
    assert sorted(r["read_id"] for r in result.rows) == [
        "hartford-pd--700--500", "hartford-pd-0-900", "hartford-pd-100-0"]  # within 1 km, in time, allowed
    assert all(r["distance_m"] <= 1000 and len(r["vehicle"]) == 24 and "plate" not in r for r in result.rows)
    assert "westport-pd.no_grant" in result.refused.values()
    rec = list(audit.records())[-1]
    assert (rec["action"], rec["result_count"], rec["owners"]) == ("query.area", 3, {"hartford-pd": 3})

    wide = area_search(client, settings, p, ctx, audit, lat0, lon0, 6000, BASE, BASE + 3_600_000)
    assert len(wide.rows) == 5
    with pytest.raises(QueryError, match="area_too_large"):
        area_search(client, settings, p, ctx, audit, lat0, lon0, 50_000, BASE, BASE + 365 * 86_400_000)
    # the limit is in cell-hours, not keys: 5-minute buckets allow the range quarter-hour ones did (2 km, 10 days:
    # ~140,000 keys here)
    assert settings.cell_bucket_ms == 300_000
    assert len(area_search(client, settings, p, ctx, audit, lat0, lon0, 2000, BASE, BASE + 10 * 86_400_000).rows) == 4

    # a polygon instead of a circle: the rectangle 200 m south to 200 m north, 1 km west to 1 km east
    # (the edge counts), and a concave L-shape that cuts out the north-east quadrant
    from streams.query import polygon_search

    def at(north: float, east: float) -> tuple[float, float]:
        return lat0 + north / 111_195.0, lon0 + east / (111_195.0 * float(np.cos(np.radians(lat0))))

    box = [at(-200, -1000), at(-200, 1000), at(200, 1000), at(200, -1000)]
    rows = polygon_search(client, settings, p, ctx, audit, box, BASE, BASE + 3_600_000).rows
    assert sorted(r["read_id"] for r in rows) == ["hartford-pd-0-900", "hartford-pd-100-0"]
    ell = [at(-800, -600), at(-800, 1000), at(50, 1000), at(50, -50), at(200, -50), at(200, -600)]
    rows = polygon_search(client, settings, p, ctx, audit, ell, BASE, BASE + 3_600_000).rows
    assert sorted(r["read_id"] for r in rows) == ["hartford-pd--700--500", "hartford-pd-0-900"]  # not (100, 0)
    assert list(audit.records())[-1]["terms"]["polygon"][0] == list(ell[0])
    with pytest.raises(QueryError, match="simple polygon"):
        polygon_search(client, settings, p, ctx, audit, [at(0, 0), at(100, 100), at(0, 100), at(100, 0)], BASE,
                       BASE + 1)  # a bow tie
    with pytest.raises(QueryError, match="area_too_large"):
        polygon_search(client, settings, p, ctx, audit, [(41.0, -73.0), (41.0, -71.5), (42.0, -72.0)], BASE, BASE)


def test_area_search_time_range_is_exact_across_bucket_borders(settings: Settings) -> None:
    """Area index scores are relative to their bucket: a window must find exactly the sightings whose first
    capture time lies in it (both ends included), wherever the bucket borders fall - including one
    vehicle passing the same camera several times in one bucket (distinct entries in one sorted set)."""
    from streams.query import area_search
    from tests.governance import TOKENS, policy

    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    size, gap = settings.cell_bucket_ms, settings.dedup_window_ms + 1
    start = (BASE // size + 1) * size  # a bucket border
    # more than W apart, so each read is a sighting of its own
    times = [start - size + 3, start - 1, start + gap, start + 2 * gap + 1, start + size, start + 2 * size - 1,
             start + 3 * size]
    reads = [{"read_id": f"pass-{t}", "camera_id": "cam-area", "agency": "hartford-pd", "plate": "PASS1",
              "region": "US-CT", "ts": t, "lat": 41.7637, "lon": -72.6851, "confidence": 0.9} for t in times]
    store_reads(settings, client, reads)
    p = policy()
    audit = AuditLog(client, b"audit-test-key-0123456789")
    ctx = p.context(TOKENS["alice"], "criminal_investigation", "HPD-BUCKETS")
    windows = [(start - 1, start - 1), (start - 1, start + size), (start, start + size - 1),
               (times[0], times[-1]), (start + 3 * size, start + 4 * size)]
    windows += [(a + da, b + db) for a in times for b in times for da in (-1, 0, 1) for db in (-1, 0, 1)
                if a + da <= b + db][::7]
    for since, until in windows:
        rows = area_search(client, settings, p, ctx, audit, 41.7637, -72.6851, 200, since, until).rows
        assert [r["ts"] for r in rows] == [t for t in times if since <= t <= until], (since, until)
        assert [r["read_id"] for r in rows] == [f"pass-{r['ts']}" for r in rows]
    # configured for another bucket than the data was written with: refused, not an empty answer
    from streams.store import CELL_BUCKET, META_KEY, CellBucketError

    client.hset(META_KEY, CELL_BUCKET, size // 1000)
    other = settings.with_cell_bucket(size * 2)
    with pytest.raises(CellBucketError, match=f"set PLATESTREAM_CELL_BUCKET_S={size // 1000}"):
        area_search(client, other, p, ctx, audit, 41.7637, -72.6851, 200, times[0], times[-1])


def test_a_lookup_between_the_chunks_of_a_batch_sees_each_sighting_once(settings: Settings) -> None:
    """A batch that revises sightings, written in small chunks (store.plan_batch): after every chunk each
    vehicle's trail holds its sighting exactly once - the old revision or the new, never neither, never
    both - and after the last chunk the new one."""
    from streams.pipeline import PartitionPipeline
    from streams.records import Raw
    from streams.store import APPLY_NODE, apply_batches, plan_batch

    client = redis.Redis.from_url(settings.redis_url)
    plates = [f"CHK{i}" for i in range(40)]

    def read(i: int, plate: str, frame: int) -> dict:
        return {"read_id": f"{plate}-{frame}", "camera_id": "cam-c", "agency": "a-local", "plate": plate,
                "region": "US-CT", "ts": BASE + i * 100 + frame * 2000, "lat": 41.7, "lon": -72.7,
                "confidence": 0.5 + frame / 10}

    pipe = PartitionPipeline(settings, settings.topic_reads, 0)
    first = [Raw(settings.topic_reads, 0, i, None, None, orjson.dumps(read(i, p, 0))) for i, p in enumerate(plates)]
    again = [Raw(settings.topic_reads, 0, len(plates) + i, None, None, orjson.dumps(read(i, p, 1)))
             for i, p in enumerate(plates)]
    r1 = pipe.process_raw(first)
    assert apply_batches(client, [plan_batch(pipe.ck_key, None, r1.next_offset, r1.redis)]) == [True]
    r2 = pipe.process_raw(again)
    plan = plan_batch(pipe.ck_key, r1.next_offset, r2.next_offset, r2.redis, 16)
    assert len(plan.rest) > 10

    views: list[list[tuple[str, int]]] = []

    def look() -> None:
        views.append([(r["read_id"], r["reads"]) for p in plates for r in trail(client, settings, p, "US-CT")])

    class Stop(Exception):
        pass

    def stop() -> None:
        look()
        raise Stop

    with pytest.raises(Stop):
        apply_batches(client, [plan], after_first=stop)
    node = client.register_script(APPLY_NODE)
    for fence, blob in plan.rest:
        assert node(keys=[fence], args=[plan.ck_key, plan.next_offset, blob]) == 1
        look()
    for view in views:
        assert len(view) == len(plates)  # one sighting per vehicle, old or new
        assert all(v in {(f"{p}-0", 1), (f"{p}-1", 2)} for p, v in zip(plates, view, strict=True))
    assert views[-1] == [(f"{p}-1", 2) for p in plates]
    assert any(views[k] != views[-1] for k in range(len(views)))  # the chunks really were seen half-done


def test_trail_columns_and_rows_equal_each_sighting_built_alone(settings: Settings) -> None:
    """A lookup's arrays and rows against each stored sighting decoded on its own (``Sighting.as_dict``,
    pygeohash of its position), and rows cut to some agencies against filtering the whole rows."""
    import pygeohash

    from streams.query import trail_columns
    from streams.store import read_trail, trail_key, vehicle_id

    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    reads = [{"read_id": f"r{i}", "camera_id": f"cam-{i % 4}", "agency": AGENCIES[i % 3], "plate": "COL123",
              "region": "US-CT", "ts": BASE + i * 60_000, "lat": 41.7 + i * 0.00123, "lon": -72.7 - i * 0.0071,
              "confidence": 0.5 + (i % 7) / 16} for i in range(41)]
    store_reads(settings, client, reads)
    stored = read_trail(client, trail_key(vehicle_id(settings.hash_key, "US-CT", "COL123")))
    expected = [{**s.as_dict(), "plate": "COL123", "region": "US-CT",
                 "geohash": pygeohash.encode(*s.position(), settings.geohash_precision)} for s in stored]
    got = trail_columns(client, settings, "COL123", "US-CT")
    assert len(got) == len(stored) == 41 and got.rows() == expected
    assert got.lat.tolist() == [r["lat"] for r in expected] and got.geohash == [r["geohash"] for r in expected]
    assert got.cols.read_id == [f"r{i}" for i in range(41)] and len(got.cols.sources) == 12
    # what the API serves: the columns' JSON, byte for byte the rows'
    assert tuple(got.rows()[0]) == ROW_KEYS and ROW_TEMPLATE.dumps_array(got.columns()) == orjson.dumps(got.rows())
    for agencies in ({AGENCIES[0]}, {AGENCIES[1]}, {AGENCIES[1], AGENCIES[2]}, set(), {"nobody"}, set(AGENCIES)):
        assert got.rows(agencies) == [r for r in expected if r["agency"] in agencies]
        assert ROW_TEMPLATE.dumps_array(got.columns(got.kept(agencies))) == orjson.dumps(got.rows(agencies))
    empty = trail_columns(client, settings, "NONE99", "US-CT")
    assert len(empty) == 0 and empty.rows() == [] and empty.rows({AGENCIES[0]}) == [] and empty.geohash == []
    assert ROW_TEMPLATE.dumps_array(empty.columns()) == b"[]"


def test_governed_sightings_of_many_vehicles_are_in_time_then_id_order_and_serialize_as_their_rows(
        settings: Settings) -> None:
    """A plate search merges the OCR variants' trails column by column: the order, the limit and the JSON are
    those of sorting all the rows by (ts, sighting_id), the way they were made before (the oracle here)."""
    from operator import itemgetter

    from streams.query import MAX_PATTERN_PLATES, plate_search, trails
    from tests.governance import TOKENS, policy

    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    # three variants (cameras of their own, or the dedup would merge them), sightings at the same instants
    # (ties broken by the sighting id), one agency withheld
    plates = [("7ABC123", "hartford-pd"), ("7A8C123", "hartford-pd"), ("7ABC1Z3", "westport-pd"),
              ("7A8C12E", "hartford-pd")]
    store_reads(settings, client, [
        {"read_id": f"g{i}-{j}", "camera_id": f"cam-{i}-{j}", "agency": agency, "plate": plate, "region": "US-CT",
         "ts": BASE + (j % 3) * 600_000, "lat": 41.7, "lon": -72.7, "confidence": 0.9}
        for i, (plate, agency) in enumerate(plates) for j in range(5)])
    p = policy()
    audit = AuditLog(client, b"audit-test-key-0123456789")
    alice = p.context(TOKENS["alice"], "criminal_investigation", "C-9")
    variants = [("US-CT", plate) for plate, _ in plates[:3]]
    oracle = sorted((r for t in trails(client, settings, variants) for r in t.rows({"hartford-pd"})),
                    key=itemgetter("ts", "sighting_id"))
    assert len(oracle) == 10 and len({r["ts"] for r in oracle}) == 3 < MAX_PATTERN_PLATES
    result = plate_search(client, settings, p, alice, audit, "7A?C1?3", "US-CT")  # not 7A8C12E
    assert result.rows == oracle and result.sightings_json() == orjson.dumps(oracle)
    limited = plate_search(client, settings, p, alice, audit, "7A?C1?3", "US-CT", limit=4)
    assert limited.rows == oracle[:4] and list(audit.records())[-1]["result_count"] == 4
