"""The simulator is seeded and its ground truth is consistent with what it sends."""

from __future__ import annotations

import itertools

import orjson

from streams.records import Invalid, validate_read
from streams.simulate import generate

T0 = 1_764_000_000_000


def test_same_seed_same_traffic() -> None:
    a, b = generate(seed=5, vehicles=50, start_ts=T0), generate(seed=5, vehicles=50, start_ts=T0)
    assert a.messages == b.messages and a.truth == b.truth
    assert generate(seed=6, vehicles=50, start_ts=T0).messages != a.messages


def test_truth_accounts_for_every_message() -> None:
    t = generate(seed=3, vehicles=200, malformed=0.05, late=0.1)
    valid = bad = 0
    ts = []
    for _, value in t.messages:
        try:
            doc = orjson.loads(value)
            validate_read(doc)
            valid += 1
            ts.append(doc["ts"])
        except (Invalid, orjson.JSONDecodeError):
            bad += 1
    assert (valid, bad) == (t.valid_reads, t.malformed)
    assert sum(s.reads for s in t.truth) == t.valid_reads
    # some reads really arrive out of event-time order
    assert any(b < a for a, b in itertools.pairwise(ts))


def test_traffic_without_a_start_ends_by_the_hour_before_now() -> None:
    """Trips run past the span; the traffic is moved back whole so no capture time is ahead of when it is sent
    (the worker refuses reads ahead of their message's Kafka timestamp), and it is still the seed's traffic."""
    import time

    import orjson

    hour = int(time.time() // 3600 * 3600 * 1000)
    now = generate(seed=8, vehicles=300, hours=2, malformed=0.0)
    ts = [orjson.loads(v)["ts"] for _, v in now.messages]
    assert max(ts) <= hour and max(s.ts_last for s in now.truth) <= hour
    fixed = generate(seed=8, vehicles=300, hours=2, malformed=0.0, start_ts=0)
    shift = min(ts) - min(orjson.loads(v)["ts"] for _, v in fixed.messages)
    assert [(k, {**orjson.loads(v), "ts": orjson.loads(v)["ts"] + shift}) for k, v in fixed.messages] == [
        (k, orjson.loads(v)) for k, v in now.messages]
    assert [(s.ts + shift, s.ts_last + shift, s.best_read_id) for s in fixed.truth] == [
        (s.ts, s.ts_last, s.best_read_id) for s in now.truth]
