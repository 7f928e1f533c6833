"""Retention with a controllable clock against the real Redis: nothing outlives its agency's limit."""

from __future__ import annotations

import pytest
import redis

from streams.policy import DAY_MS
from streams.query import trail
from streams.retention import sweep
from streams.settings import Settings
from tests.governance import policy
from tests.support import store_reads

pytestmark = pytest.mark.integration
NOW = 1_800_000_000_000


def _store(settings: Settings, client: redis.Redis) -> None:
    reads = []
    for agency in ("hartford-pd", "westport-pd", "nypd"):  # limits: 7 days, 30 days, none
        for age_days in (1, 10, 40):
            reads.append({"read_id": f"{agency}-{age_days}", "camera_id": f"cam-{agency}", "agency": agency,
                          "plate": "RET123", "region": "US-CT", "ts": NOW - age_days * DAY_MS, "lat": 41.7,
                          "lon": -72.7, "confidence": 0.9})
    store_reads(settings, client, reads)


def _left(settings: Settings, client: redis.Redis) -> set[str]:
    return {r["read_id"] for r in trail(client, settings, "RET123", "US-CT")}


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
