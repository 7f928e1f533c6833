"""Transparency report from the worker's counters and the audit log, against the real Redis."""

from __future__ import annotations

import orjson
import pytest
import redis

from streams import sharing
from streams.audit import AuditLog
from streams.hotlist import make_entry
from streams.pipeline import PartitionPipeline, build_hot_context
from streams.policy import DAY_MS, Policy
from streams.query import governed_trail
from streams.records import Raw
from streams.settings import Settings
from streams.store import apply_batch_sync
from streams.transparency import markdown, report
from tests.governance import TOKENS, policy_doc, with_tokens

pytestmark = pytest.mark.integration
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z


def test_report_counts_collection_hits_queries_and_recipients(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    doc = with_tokens(policy_doc())
    doc["agencies"][0]["retention"] = {"non_hit_days": 90, "hit_days": 365}  # all of it shown when queried
    p = Policy.from_dict(doc)
    audit = AuditLog(client, b"audit-test-key-0123456789", clock=lambda: T0 + 41 * DAY_MS)  # queried after it
    reads = [{"read_id": f"r{i}", "camera_id": "cam-h", "agency": "hartford-pd", "plate": "TR1" if i % 3 else "WANT1",
              "region": "US-CT", "ts": T0 + (i % 40) * DAY_MS + i * 20_000, "lat": 41.7, "lon": -72.7,
              "confidence": 0.9} for i in range(120)]
    reads += [{**reads[0], "read_id": "w1", "agency": "westport-pd", "camera_id": "cam-w"}]
    hot = build_hot_context(p, [make_entry("hartford-pd", {"plate": "WANT1", "region": "US-CT", "reason": "x"},
                                           "t")], {}, T0)
    pipe = PartitionPipeline(settings, settings.topic_reads, 0)
    raws = [Raw(settings.topic_reads, 0, i, None, None, orjson.dumps(r)) for i, r in enumerate(reads)]
    result = pipe.process_raw(raws, hot)
    assert apply_batch_sync(client, pipe.ck_key, None, result.redis)
    assert not apply_batch_sync(client, pipe.ck_key, None, result.redis)  # a replay counts nothing twice

    sharing.request_access(client, p, audit, p.authenticate(TOKENS["wadmin"]), "hartford-pd",
                           ["criminal_investigation"], "burglaries")
    sharing.decide(client, p, audit, p.authenticate(TOKENS["hank"]), "westport-pd", approve=True)
    for token, purpose in (("alice", "criminal_investigation"), ("alice", "missing_person"),
                           ("walt", "criminal_investigation"), ("fred", "criminal_investigation")):
        governed_trail(client, settings, p, p.context(TOKENS[token], purpose, "c"), audit, "TR1", "US-CT")

    rep = report(client, audit, "hartford-pd", by="month")
    jan, feb = rep["periods"]["2026-01"], rep["periods"]["2026-02"]
    assert jan["reads_collected"] + feb["reads_collected"] == 120  # westport's read is not hartford's
    assert jan["hotlist_hits"] + feb["hotlist_hits"] == len(result.alerts) == 40  # one per WANT1 sighting
    queried = {k: v for p_ in rep["periods"].values() for k, v in p_["queries_by_purpose"].items()}
    assert queried == {"criminal_investigation": 1, "missing_person": 1}
    received = {k: v for p_ in rep["periods"].values() for k, v in p_["sightings_received_by_agency"].items()}
    assert received == {"westport-pd": 80}  # walt got hartford's 80 TR1 sightings; fred got none
    md = markdown(rep)
    assert "| 2026-01 |" in md and "TR1" not in md and "WANT1" not in md  # aggregates only
