"""Retention with a controllable clock against the real Redis: nothing outlives its agency's limit."""

from __future__ import annotations

import pytest
import redis

from streams.audit import AuditLog
from streams.policy import DAY_MS, Policy
from streams.query import area_search, trail
from streams.retention import sweep
from streams.settings import Settings
from tests.governance import TOKENS, policy, policy_doc, with_tokens
from tests.support import area_clash, store_reads

pytestmark = pytest.mark.integration
NOW = 1_800_000_000_000


def _read(agency: str, age_days: int, ms: int = 0) -> dict[str, object]:
    return {"read_id": f"{agency}-{age_days}", "camera_id": f"cam-{agency}", "agency": agency, "plate": "RET123",
            "region": "US-CT", "ts": NOW - age_days * DAY_MS - ms, "lat": 41.7, "lon": -72.7, "confidence": 0.9}


def _store(settings: Settings, client: redis.Redis) -> None:
    # limits: 7 days, 30 days, none; the agencies' reads are a millisecond apart, so each sighting has its own
    # area index entry (a shared one: the test after this one)
    store_reads(settings, client, [_read(agency, age_days, ms)
                                   for ms, agency in enumerate(("hartford-pd", "westport-pd", "nypd"))
                                   for age_days in (1, 10, 40)])


def _left(settings: Settings, client: redis.Redis) -> set[str]:
    return {r["read_id"] for r in trail(client, settings, "RET123", "US-CT")}


def _directory(client: redis.Redis) -> int:
    return sum(int(client.hlen(k)) for k in client.scan_iter(match="ps:pd:*"))  # type: ignore[arg-type]


def _cell_members(client: redis.Redis) -> int:
    return sum(int(client.zcard(k)) for k in client.scan_iter(match="ps:c:*"))  # type: ignore[arg-type]


def test_each_agency_keeps_exactly_what_its_limit_allows(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    _store(settings, client)
    p = policy()
    assert _cell_members(client) == 9

    removed = sweep(client, settings, p, NOW)
    assert dict(removed) == {"hartford-pd": 2, "westport-pd": 1}
    assert _left(settings, client) == {"hartford-pd-1", "westport-pd-1", "westport-pd-10", "nypd-1", "nypd-10",
                                       "nypd-40"}
    assert _cell_members(client) == 6  # the area index forgets them too

    assert sweep(client, settings, p, NOW).total() == 0  # idempotent
    removed = sweep(client, settings, p, NOW + 25 * DAY_MS)  # time passes
    assert dict(removed) == {"hartford-pd": 1, "westport-pd": 1}
    assert _left(settings, client) == {"westport-pd-1", "nypd-1", "nypd-10", "nypd-40"}
    assert _cell_members(client) == 4


def test_an_area_entry_two_agencies_share_stays_as_long_as_one_keeps_its_sighting(settings: Settings) -> None:
    # two agencies' cameras over one road read the car at the same millisecond, and the sightings' ids have
    # the same low byte (chosen here; 1 in 256 by chance): both sightings have one area index entry
    s = area_clash(settings)
    client = redis.Redis.from_url(s.redis_url)
    store_reads(s, client, [_read("hartford-pd", 10), _read("westport-pd", 10)])
    assert _left(s, client) == {"hartford-pd-10", "westport-pd-10"}
    assert _cell_members(client) == 1
    p = policy()
    walt = p.context(TOKENS["walt"], "criminal_investigation", "W-1")
    audit = AuditLog(client, b"audit-test-key-0123456789")

    def found() -> list[str]:
        return [r["read_id"] for r in area_search(client, s, p, walt, audit, 41.7, -72.7, 100, NOW - 11 * DAY_MS,
                                                  NOW).rows]

    assert found() == ["westport-pd-10"]
    assert dict(sweep(client, s, p, NOW)) == {"hartford-pd": 1}  # past Hartford's 7 days, within Westport's 30
    assert _left(s, client) == {"westport-pd-10"}
    assert _cell_members(client) == 1
    assert found() == ["westport-pd-10"]  # the entry stayed: Westport's sighting is still found in the area
    assert dict(sweep(client, s, p, NOW + 25 * DAY_MS)) == {"westport-pd": 1}
    assert _cell_members(client) == 0
    assert found() == []


def test_a_query_shows_nothing_past_its_owners_limit_before_any_sweep(settings: Settings) -> None:
    """Between two sweeps (or with no worker sweeping at all) a governed query answers as the sweep would leave
    Redis: Hartford's sighting 10 days old is past its 7-day limit and never shown, its hotlist hit of that age
    (365 days) and its sighting 6 days old are; the sweep then removes exactly what was hidden."""
    import orjson

    from streams.hotlist import make_entry
    from streams.pipeline import PartitionPipeline, build_hot_context
    from streams.query import governed_trail
    from streams.records import Raw
    from streams.store import apply_batch_sync

    p = policy()
    entry = make_entry("hartford-pd", {"plate": "HOT1", "region": "US-CT", "reason": "stolen"}, "t")
    reads = [{**_read("hartford-pd", age), "read_id": f"{plate}-{age}", "plate": plate, "ts": NOW - age * DAY_MS + i}
             for i, (plate, age) in enumerate((("RET123", 10), ("RET123", 6), ("HOT1", 10)))]
    pipe = PartitionPipeline(settings, settings.topic_reads, 0)
    result = pipe.process_raw([Raw(settings.topic_reads, 0, i, None, None, orjson.dumps(r))
                               for i, r in enumerate(reads)], build_hot_context(p, [entry], {}, NOW - 5 * DAY_MS))
    client = redis.Redis.from_url(settings.redis_url)
    assert apply_batch_sync(client, pipe.ck_key, None, result.redis)
    assert _left(settings, client) == {"RET123-10", "RET123-6"}  # written 5 days ago, young then; no sweep since
    audit = AuditLog(client, b"audit-test-key-0123456789", clock=lambda: NOW)
    alice = p.context(TOKENS["alice"], "criminal_investigation", "H-1")

    def answers() -> tuple[list[str], list[str], list[str]]:
        return ([r["read_id"] for r in governed_trail(client, settings, p, alice, audit, "RET123", "US-CT").rows],
                [r["read_id"] for r in governed_trail(client, settings, p, alice, audit, "HOT1", "US-CT").rows],
                sorted(r["read_id"] for r in area_search(client, settings, p, alice, audit, 41.7, -72.7, 100,
                                                         NOW - 11 * DAY_MS, NOW).rows))

    before = answers()
    assert before == (["RET123-6"], ["HOT1-10"], ["HOT1-10", "RET123-6"])
    assert [r["result_count"] for r in list(audit.records())[-3:]] == [1, 1, 2]
    assert dict(sweep(client, settings, p, NOW)) == {"hartford-pd": 1}
    assert _left(settings, client) == {"RET123-6"}
    assert answers() == before
    # two days later the 6-day-old sighting is past the limit too: hidden at once, whenever the next sweep runs
    audit.clock = lambda: NOW + 2 * DAY_MS
    assert answers() == ([], ["HOT1-10"], ["HOT1-10"])


def test_a_pass_after_a_complete_one_reads_only_what_aged_past_a_limit_since(settings: Settings) -> None:
    """The windows: Hartford's sighting that turned 7 days old in the last hour goes; one planted behind the
    sweep's back, already 20 days old, is below every window and stays until a full pass (asked for, the limits
    changed, or a day after the last full one)."""
    import dataclasses

    from streams.retention import SWEPT_KEY

    client = redis.Redis.from_url(settings.redis_url)
    hour = 3_600_000
    store_reads(settings, client, [_read("hartford-pd", 1), _read("westport-pd", 10), _read("westport-pd", 40, 1)])
    p = policy()
    assert dict(sweep(client, settings, p, NOW)) == {"westport-pd": 1}  # none recorded: a full pass
    assert int(client.hget(SWEPT_KEY, "full")) == NOW  # type: ignore[arg-type]
    planted = dataclasses.replace(settings, topic_reads=settings.topic_reads + ".later")  # other sighting ids
    store_reads(planted, client, [{**_read("hartford-pd", 0), "read_id": "ages-now", "plate": "GONE1",
                                   "ts": NOW - 7 * DAY_MS + hour // 2}, _read("hartford-pd", 20)])
    assert _left(settings, client) == {"hartford-pd-1", "westport-pd-10", "hartford-pd-20"}
    assert _directory(client) == 2 and trail(client, settings, "GONE1", "US-CT")

    assert dict(sweep(client, settings, p, NOW + hour)) == {"hartford-pd": 1}
    assert _left(settings, client) == {"hartford-pd-1", "westport-pd-10", "hartford-pd-20"}
    assert _directory(client) == 1 and not trail(client, settings, "GONE1", "US-CT")  # its vehicle left the directory
    assert dict(sweep(client, settings, p, NOW + hour, full=True)) == {"hartford-pd": 1}
    assert _left(settings, client) == {"hartford-pd-1", "westport-pd-10"}

    again = dataclasses.replace(settings, topic_reads=settings.topic_reads + ".again")
    store_reads(again, client, [_read("hartford-pd", 21)])
    assert dict(sweep(client, settings, p, NOW + 2 * hour)) == {}  # (below the windows)
    assert dict(sweep(client, settings, p, NOW + hour + DAY_MS)) == {"hartford-pd": 1}  # a day after the full one
    tighter = with_tokens(policy_doc())
    tighter["agencies"][1]["retention"] = {"non_hit_days": 5}  # Westport's 10-day-old sighting: in no window
    assert dict(sweep(client, settings, Policy.from_dict(tighter), NOW + hour + DAY_MS)) == {"westport-pd": 1}
    assert _left(settings, client) == {"hartford-pd-1"}


def test_one_worker_of_many_sweeps_per_interval(settings: Settings) -> None:
    """The lease: the first worker sweeps, another skips while it is held, the holder sweeps again (and renews
    it), and once it lapses (its holder gone: here, deleted) the other takes over."""
    from collections import Counter

    from streams.retention import LEASE_KEY, SWEPT_KEY, leased_sweep

    client = redis.Redis.from_url(settings.redis_url)
    _store(settings, client)
    p = policy()
    first = leased_sweep(client, settings, p, NOW, "a", 60_000)
    assert first is not None and dict(first) == {"hartford-pd": 2, "westport-pd": 1}
    assert leased_sweep(client, settings, p, NOW + 1, "b", 60_000) is None  # a holds it
    assert int(client.hget(SWEPT_KEY, "at")) == NOW  # type: ignore[arg-type]  (b did not sweep)
    client.pexpire(LEASE_KEY, 5_000)
    assert leased_sweep(client, settings, p, NOW + 2, "a", 60_000) == Counter()  # the holder again, renewed
    assert 5_000 < int(client.pttl(LEASE_KEY)) <= 60_000  # type: ignore[arg-type]
    client.delete(LEASE_KEY)  # a gone: its lease lapsed
    assert leased_sweep(client, settings, p, NOW + 3, "b", 60_000) == Counter()
    assert client.get(LEASE_KEY) == b"b" and int(client.hget(SWEPT_KEY, "at")) == NOW + 3  # type: ignore[arg-type]


def _calls(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))  # type: ignore[union-attr]


def _fleet(n: int, age_days: int) -> list[dict[str, object]]:
    """``n`` vehicles, each seen once ``age_days`` ago (a minute apart)."""
    return [{**_read("hartford-pd", age_days, 60_000 * k), "read_id": f"fleet-{k}", "plate": f"FL{k:04d}"}
            for k in range(n)]


def test_a_pass_after_a_complete_one_finds_its_trails_from_the_day_index_not_by_reading_every_trail(
        settings: Settings) -> None:
    """Each day's cells (``store.cells_key``) lead to the area entries, and those to the vehicles, whose
    sightings aged past a limit since the last pass: it reads their trails and no others (no SCAN), removes
    exactly what a full pass would, and a full pass drops the sets of days no window reads again."""
    import pygeohash

    from streams.store import cells_key

    client = redis.Redis.from_url(settings.redis_url)
    hour = 3_600_000
    store_reads(settings, client, [*_fleet(300, 1), {**_read("hartford-pd", 7), "read_id": "ages-now",
                                   "plate": "GONE1", "ts": NOW - 7 * DAY_MS + hour // 2}, _read("hartford-pd", 20),
                                   _read("westport-pd", 40, 1)])
    day = (NOW - DAY_MS) // DAY_MS
    assert client.smembers(cells_key(day)) == {pygeohash.encode(41.7, -72.7, settings.cell_precision).encode()}
    p = policy()
    assert dict(sweep(client, settings, p, NOW)) == {"hartford-pd": 1, "westport-pd": 1}  # a full pass
    # (Hartford keeps hits 365 days: a window still reads each day's set that long)
    assert client.exists(*(cells_key((NOW - d * DAY_MS) // DAY_MS) for d in (1, 7, 20, 40))) == 4

    client.config_resetstat()
    assert dict(sweep(client, settings, p, NOW + hour)) == {"hartford-pd": 1}
    assert _calls(client, "scan") == 0
    # an hour's 5-minute buckets of the one cell and GONE1's trail, against 3 windows of 302 trails by SCAN
    assert _calls(client, "zrangebylex") <= 15
    assert not trail(client, settings, "GONE1", "US-CT")
    assert [r["read_id"] for r in trail(client, settings, "FL0123", "US-CT")] == ["fleet-123"]
    assert len(list(client.scan_iter(match="ps:t:*"))) == 300
    assert sweep(client, settings, p, NOW + hour, full=True).total() == 0  # nothing the windows missed
    assert dict(sweep(client, settings, p, NOW + 326 * DAY_MS, full=True)) == {"hartford-pd": 300}  # the fleet
    assert not client.exists(cells_key((NOW - 40 * DAY_MS) // DAY_MS))  # wholly before every limit now
    assert client.exists(cells_key((NOW - 20 * DAY_MS) // DAY_MS), cells_key(day)) == 2


def test_a_redis_written_before_the_day_index_is_read_by_scan_until_a_full_pass_indexes_it(settings: Settings) -> None:
    """A Redis a version without the index wrote (layout marked, no ``CELLS_INDEXED``): windows are read by SCAN
    until a full pass, which reads whole trails and indexes them exactly as workers do; and a catch-up over a
    long gap (more cell buckets to probe than Redis has keys) is read by SCAN."""
    from streams.store import CELLS_INDEXED, LAYOUT_VERSION, META_KEY

    client = redis.Redis.from_url(settings.redis_url)
    hour = 3_600_000
    store_reads(settings, client, [*_fleet(20, 1), {**_read("hartford-pd", 7), "read_id": "ages-now",
                                   "plate": "GONE1", "ts": NOW - 7 * DAY_MS + hour // 2}])
    indexed = {k: client.smembers(k) for k in client.scan_iter(match="ps:cells:*")}
    assert len(indexed) == 2

    def unindexed() -> None:
        client.delete(*indexed)
        client.hset(META_KEY, "layout", LAYOUT_VERSION)
        client.hdel(META_KEY, CELLS_INDEXED)

    unindexed()
    p = policy()
    assert sweep(client, settings, p, NOW).total() == 0  # a full pass: indexes the trails it reads
    assert client.hget(META_KEY, CELLS_INDEXED) == b"1"
    assert {k: client.smembers(k) for k in client.scan_iter(match="ps:cells:*")} == indexed

    unindexed()
    client.config_resetstat()
    assert dict(sweep(client, settings, p, NOW + hour)) == {"hartford-pd": 1}
    assert _calls(client, "scan") > 0  # not known to be complete
    assert sweep(client, settings, p, NOW + hour, full=True).total() == 0
    assert client.hget(META_KEY, CELLS_INDEXED) == b"1"
    client.config_resetstat()
    assert sweep(client, settings, p, NOW + 2 * hour).total() == 0
    assert _calls(client, "scan") == 0
    client.config_resetstat()
    assert sweep(client, settings, p, NOW + 22 * hour).total() == 0  # 20 hours of 5-minute buckets > the keys
    assert _calls(client, "scan") > 0


def test_a_sweeper_keeps_its_lease_through_a_long_pass_and_stops_where_it_lost_it(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass renews its lease page by page (a full pass over millions of sightings outlasts the interval it is
    taken for, and another worker would start the same pass beside it); one that finds the lease another's stops
    at that page, recorded as not complete, so the next pass is full again."""
    import streams.retention as retention
    from streams.retention import LEASE_KEY, SWEPT_KEY, leased_sweep, renewer

    client = redis.Redis.from_url(settings.redis_url)
    monkeypatch.setattr(retention, "SCAN_PAGE", 2)
    store_reads(settings, client, _fleet(10, 10))  # 10 trails, each with a sighting past Hartford's 7 days
    p = policy()
    client.config_resetstat()
    assert dict(sweep(client, settings, p, NOW, held=lambda: False)) == {"hartford-pd": 2}  # the first page only
    assert not client.exists(SWEPT_KEY)  # not complete: the next pass is a full one
    assert len(list(client.scan_iter(match="ps:t:*"))) == 8

    renews = _calls(client, "evalsha")
    assert dict(leased_sweep(client, settings, p, NOW, "a", 60_000) or {}) == {"hartford-pd": 8}
    assert _calls(client, "evalsha") + _calls(client, "eval") - renews >= 3  # renewed before each later page
    assert int(client.hget(SWEPT_KEY, "at")) == NOW  # type: ignore[arg-type]

    held = renewer(client, "a", 60_000)
    client.pexpire(LEASE_KEY, 1_000)
    assert held() and 1_000 < int(client.pttl(LEASE_KEY)) <= 60_000  # type: ignore[arg-type]  (renewed)
    client.set(LEASE_KEY, "b", px=60_000)  # lapsed, and another worker took it
    assert not held() and client.get(LEASE_KEY) == b"b"
