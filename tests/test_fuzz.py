"""Poison input: 100,000+ malformed and adversarial payloads never stop the pipeline, every one is
dead-lettered with a reason and its coordinates, and no valid read among them is dropped."""

from __future__ import annotations

import random

import orjson

from streams.pipeline import PartitionPipeline
from streams.records import Raw
from streams.settings import Settings

VALID = {"read_id": "r", "camera_id": "cam-1", "agency": "a", "plate": "ABC123", "region": "US-CT",
         "ts": 1_764_000_000_000, "lat": 41.7, "lon": -72.7, "confidence": 0.9}


def adversarial(rng: random.Random, i: int, nest: int = 5000, huge: int = 70_000) -> bytes:
    """The i-th poison payload (16 kinds in turn); ``nest``/``huge`` size the nesting and the long string."""
    kind = i % 16
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))  # random bytes, bad UTF-8
    if kind == 1:
        return b"[" * nest + b"]" * nest  # deep nesting
    if kind == 2:
        return b'{"plate": "' + b"A" * huge + b'"}'  # huge string, over the size limit
    if kind == 3:
        return b'{"lat": NaN, "lon": Infinity}'
    if kind == 4:
        return orjson.dumps({**VALID, "ts": "soon"})  # wrong types
    if kind == 5:
        return b'{"plate": "A", "plate": 5}'  # duplicate keys
    if kind == 6:
        return b"\xef\xbb\xbf" + orjson.dumps(VALID)  # BOM
    if kind == 7:
        return orjson.dumps({**VALID, "lat": 91})
    if kind == 8:
        return orjson.dumps({**VALID, "plate": "A" * 17})
    if kind == 9:
        return orjson.dumps({**VALID, "region": "US-CT\n"})
    if kind == 10:
        return b""
    if kind == 11:
        return orjson.dumps([VALID])
    if kind == 12:
        return orjson.dumps({**VALID, "confidence": True})
    if kind == 13:
        return orjson.dumps({**VALID, "vehicle": [1, 2]})
    if kind == 14:
        return b'{"read_id": "\\ud800"}'  # lone surrogate
    missing = rng.choice(list(VALID))
    return orjson.dumps({k: v for k, v in VALID.items() if k != missing})


def test_hundred_thousand_poison_messages(settings: Settings) -> None:
    rng = random.Random(1)
    payloads: list[tuple[bytes | None, bool]] = []
    for i in range(100_000):
        payloads.append((adversarial(rng, i), False))
        if i % 10 == 0:  # valid reads interleaved: none may be lost
            payloads.append((orjson.dumps({**VALID, "read_id": f"ok-{i}", "ts": VALID["ts"] + i * 60_000}), True))
    payloads.append((None, False))  # a tombstone
    raws = [Raw("plates.reads", 0, off, None, None, v) for off, (v, _) in enumerate(payloads)]
    pipe = PartitionPipeline(settings, "plates.reads", 0)
    dead: dict[int, str] = {}
    valid = 0
    for lo in range(0, len(raws), 5000):
        result = pipe.process_raw(raws[lo : lo + 5000])
        valid += result.valid
        for _, value, headers in result.dlq:
            rec = orjson.loads(value)
            assert rec["reason"] and rec["detail"] and rec["topic"] == "plates.reads" and rec["partition"] == 0
            assert dict(headers)["ps.offset"] == str(rec["offset"]).encode()
            dead[rec["offset"]] = rec["reason"]
    bad = {off for off, (_, ok) in enumerate(payloads) if not ok}
    assert valid == len(payloads) - len(bad) == 10_000
    assert set(dead) == bad  # every poison message dead-lettered, exactly once, with its offset
    assert set(dead.values()) >= {"invalid_utf8", "invalid_json", "too_large", "not_an_object", "missing_field",
                                  "invalid_field"}
