"""The hot-path validator agrees with schemas/plate_read.v1.json (checked by the jsonschema library)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.records import (
    Coded,
    Invalid,
    Messages,
    Polled,
    Raw,
    ReadBatch,
    Spans,
    _decode_reference,
    decode_batch,
    extras,
    normalize_plate,
    validate_read,
)
from streams.simulate import generate
from tests.kernels.test_scan import documents

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
READ_SCHEMA = json.loads((SCHEMAS / "plate_read.v1.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(READ_SCHEMA)


def valid_read() -> dict[str, Any]:
    return {"read_id": "r1", "camera_id": "cam-1", "agency": "hartford-pd", "plate": "7ab-c 123",
            "region": "US-CT", "ts": 1_700_000_000_000, "lat": 41.76, "lon": -72.68, "confidence": 0.93}


def ours_ok(doc: Any) -> bool:
    try:
        validate_read(doc)
        return True
    except Invalid:
        return False


# Values chosen to sit on and around every boundary of the schema.
weird_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, 64, 65, 90, 91, -90, -91, 180, -181, 360, 361, 4102444800000, 4102444800001,
                     0.0, 1.0, 1.5, -0.0, 5.0, 0.999, 1.0000001, 89.9999, 90.0000001]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["", "A", "ab-c 12", "ABCDEFGHIJK", "1234567890", " - 12-34 ", "ÄBC", "AB\n", "US-CT",
                     "US-C", "us-ct", "US-CT1", "XX-123", "X" * 64, "X" * 65, "a\nb", "---", "A B C D E F G"]),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2),
    st.dictionaries(st.sampled_from(["make", "model", "color", "type", "x"]),
                    st.one_of(st.text(max_size=70), st.integers(-5, 5)), max_size=3),
)
FIELDS = ["read_id", "camera_id", "agency", "plate", "region", "ts", "lat", "lon", "confidence",
          "heading", "lane", "vehicle", "image_uri", "unknown"]


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELDS), weird_values, max_size=4), st.sets(st.sampled_from(FIELDS)))
def test_validator_agrees_with_json_schema(changes: dict[str, Any], removed: set[str]) -> None:
    doc = valid_read()
    doc.update(changes)
    for name in removed:
        doc.pop(name, None)
    # compare on what the wire carries: round-trip through JSON like a real message
    wire = orjson.dumps(doc)
    doc = orjson.loads(wire)
    assert ours_ok(doc) == VALIDATOR.is_valid(doc), (doc, list(VALIDATOR.iter_errors(doc)))
    # the column-wise fast path of decode_batch accepts exactly what the reference validator accepts,
    # alone and in a batch with valid neighbours
    alone = decode_batch([Raw("t", 0, 0, None, None, wire)], 65536)
    assert (len(alone) == 1) == ours_ok(doc)
    good = orjson.dumps(valid_read())
    mixed = decode_batch([Raw("t", 0, i, None, None, v) for i, v in enumerate([good, wire, good])], 65536)
    assert list(mixed.offset) == ([0, 1, 2] if ours_ok(doc) else [0, 2])
    assert_columns_match_docs(mixed)


def assert_columns_match_docs(batch: ReadBatch) -> None:
    """Whichever path built the batch (reused validated columns or the documents), the columns are the docs'."""
    docs = batch.docs
    assert batch.ts.tolist() == [d["ts"] for d in docs] and batch.ts.dtype == np.int64
    assert batch.lat.tolist() == [float(d["lat"]) for d in docs]
    assert batch.lon.tolist() == [float(d["lon"]) for d in docs]
    assert batch.conf.tolist() == np.array([d["confidence"] for d in docs], dtype=np.float32).tolist()
    assert batch.plates == [normalize_plate(d["plate"]).encode() for d in docs]
    assert tuple(map(list, (batch.camera, batch.read_id, batch.region, batch.agency))) == tuple(
        [d[k] for d in docs] for k in ("camera_id", "read_id", "region", "agency"))


def test_columns_of_simulated_traffic_match_the_documents() -> None:
    traffic = generate(seed=5, vehicles=300, hours=0.5)
    raws = [Raw("t", 0, i, None, k, v) for i, (k, v) in enumerate(traffic.messages)]
    clean = [r for r in raws if decode_batch([r], 65536).dead == []]
    assert len(clean) < len(raws)  # the traffic has malformed messages: both paths are exercised
    for part in (raws[:2000], clean[:2000]):
        batch = decode_batch(part, 65536)
        assert len(batch) + len(batch.dead) == len(part)
        assert_columns_match_docs(batch)


@settings(max_examples=500)
@given(st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers()), st.floats(allow_nan=False)))
def test_non_objects_agree(doc: Any) -> None:
    assert ours_ok(doc) == VALIDATOR.is_valid(doc) == False  # noqa: E712


def test_valid_read_and_normalization() -> None:
    assert validate_read(valid_read()) == "7ABC123"
    assert VALIDATOR.is_valid(valid_read())


def test_decode_batch_routes_every_bad_message_with_a_reason() -> None:
    good = orjson.dumps(valid_read())
    bad = [b"\xff\xfe", b"{not json", b"[1,2]", orjson.dumps({**valid_read(), "lat": 91}),
           orjson.dumps({k: v for k, v in valid_read().items() if k != "ts"}), b"x" * 70_000, None]
    raws = [Raw("plates.reads", 2, i, None, None, v) for i, v in enumerate([good, *bad, good])]
    batch = decode_batch(raws, max_bytes=65536)
    assert list(batch.offset) == [0, 8]
    got = [(d.raw.offset, d.reason, d.field) for d in batch.dead]
    assert got == [(1, "invalid_utf8", None), (2, "invalid_json", None), (3, "not_an_object", None),
                   (4, "invalid_field", "lat"), (5, "missing_field", "ts"), (6, "too_large", None),
                   (7, "invalid_json", None)]
    rec = batch.dead[0].to_record()
    assert rec["value_encoding"] == "base64" and rec["partition"] == 2 and rec["offset"] == 1
    dlq_schema = json.loads((SCHEMAS / "dlq.v1.json").read_text())
    for d in batch.dead:
        jsonschema.validate(d.to_record(), dlq_schema)


def test_a_damaged_record_batchs_records_are_all_dead_letters_valid_looking_or_not() -> None:
    """``records.Corrupt``: every record as read, a valid one too (which holds the damage is unknown), with the
    batch's detail; a whole batch's bytes as one letter (base64). Both valid ``dlq.v1`` records."""
    from streams.records import Corrupt, Polled

    dlq_schema = json.loads((SCHEMAS / "dlq.v1.json").read_text())
    raws = [Raw("plates.reads", 2, 40 + i, None, None, v) for i, v in enumerate(
        [orjson.dumps(valid_read()), b"{not json", orjson.dumps(valid_read())])]
    p = Polled.of("plates.reads", 2, raws)
    for corrupt in (Corrupt("record batch at offsets 40-42 fails its CRC-32C check", 40, 43, False),
                    Corrupt("record batch at offsets 40-49 ...", 40, 50, True)):
        batch = decode_batch(Polled(p.topic, p.partition, p.data, p.offsets, p.timestamps, p.key_spans,
                                    p.value_spans, corrupt), max_bytes=65536)
        assert len(batch) == 0
        assert [(d.raw.offset, d.reason, d.step, d.detail) for d in batch.dead] == [
            (o, "corrupt_batch", "fetch", corrupt.detail) for o in (40, 41, 42)]
        for d in batch.dead:
            jsonschema.validate(d.to_record(), dlq_schema)
    whole = Polled("plates.reads", 2, b"\x00\xffbatch", np.array([40]), np.array([-1]), np.array([[-1, -1]]),
                   np.array([[0, 7]]), Corrupt("...", 40, 50, True))
    [letter] = decode_batch(whole, max_bytes=65536).dead
    rec = letter.to_record()
    assert (rec["value_encoding"], rec["offset"], whole.next_offset) == ("base64", 40, 50)
    jsonschema.validate(rec, dlq_schema)


def test_a_dead_letter_too_big_for_a_kafka_record_keeps_the_first_bytes_size_and_digest() -> None:
    """Whole when it fits ``DLQ_RECORD_MAX_BYTES`` as JSON; else the first ``DLQ_VALUE_PREFIX_BYTES`` (a UTF-8
    character the cut splits left out; base64 if the rest is not UTF-8), which fit at any escaping."""
    import hashlib

    from streams.records import DLQ_RECORD_MAX_BYTES, DLQ_VALUE_PREFIX_BYTES, DeadLetter

    dlq_schema = json.loads((SCHEMAS / "dlq.v1.json").read_text())
    n = DLQ_VALUE_PREFIX_BYTES
    fits = b"\x01" * (DLQ_RECORD_MAX_BYTES // 6 - 1000)  # 6 bytes each as JSON text ("\u0001")
    letters = {name: DeadLetter(Raw("plates.reads", 1, 7, None, b"cam", v), "too_large", "decode", None, "big")
               for name, v in {"fits": fits, "escaped": b"\x01" * (DLQ_RECORD_MAX_BYTES // 6 + 1000),
                               "split": b"a" * (n - 1) + "é".encode() + b"x" * DLQ_RECORD_MAX_BYTES,
                               "binary": b"\xff" * (DLQ_RECORD_MAX_BYTES + 1)}.items()}
    recs = {name: orjson.loads(d.dumps()) for name, d in letters.items()}
    assert recs["fits"]["value"].encode() == fits and "value_truncated" not in recs["fits"]
    for name in ("escaped", "split", "binary"):
        whole = letters[name].raw.value
        assert whole is not None
        rec = recs[name]
        assert (rec["value_truncated"], rec["value_bytes"], rec["value_sha256"]) == (
            True, len(whole), hashlib.sha256(whole).hexdigest()), name
        assert (rec["offset"], rec["key"]) == (7, "cam") and len(letters[name].dumps()) <= DLQ_RECORD_MAX_BYTES
        jsonschema.validate(rec, dlq_schema)
    assert recs["escaped"]["value"] == "\x01" * n and recs["split"]["value"] == "a" * (n - 1)
    assert recs["binary"]["value_encoding"] == "base64" and base64.b64decode(recs["binary"]["value"]) == b"\xff" * n
    jsonschema.validate(recs["fits"], dlq_schema)


def test_undecodable_messages_anywhere_in_a_batch_keep_offset_order() -> None:
    # every other message valid: the dead letters come from decoding alone (first, last, adjacent ones)
    good = orjson.dumps(valid_read())
    values = [b"{", good, b"x" * 70_000, b"[1,", b"\xff", good, None, good, b"nul"]
    batch = decode_batch([Raw("t", 0, 10 + i, None, None, v) for i, v in enumerate(values)], max_bytes=65536)
    assert batch.offset.tolist() == [11, 15, 17]
    assert len(batch.docs) == 3 and all(d == valid_read() for d in batch.docs)
    assert [(d.raw.offset, d.reason) for d in batch.dead] == [
        (10, "invalid_json"), (12, "too_large"), (13, "invalid_json"), (14, "invalid_utf8"), (16, "invalid_json"),
        (18, "invalid_json")]


def assert_same_batch(got: ReadBatch, ref: ReadBatch) -> None:
    for name in ("offset", "ts", "lat", "lon", "conf"):
        a, b = getattr(got, name), getattr(ref, name)
        assert a.dtype == b.dtype and a.tolist() == b.tolist(), name
        assert np.signbit(a).tolist() == np.signbit(b).tolist(), name  # -0.0 stays -0.0, 0 stays 0.0
    for name in ("plates", "camera", "read_id", "region", "agency"):
        assert list(getattr(got, name)) == list(getattr(ref, name)), name
    assert list(got.docs) == list(ref.docs)
    assert got.docs.extras_of([*range(len(got)), -1]) == [*(extras(d) for d in ref.docs), None]
    assert [(d.raw.offset, d.reason, d.step, d.field, d.detail) for d in got.dead] == [
        (d.raw.offset, d.reason, d.step, d.field, d.detail) for d in ref.dead]


BOUNDARY = [orjson.dumps({**valid_read(), **change}) for change in (
    {"read_id": "x" * 64}, {"read_id": "x" * 65}, {"read_id": ""}, {"camera_id": "c" * 65}, {"agency": ""},
    {"region": "US-CT1"}, {"region": "us-ct"}, {"region": "U1-CT"}, {"region": "US-"}, {"region": "US-CT12"},
    {"region": "USXCT"}, {"region": "US-C"}, {"plate": "A" * 10}, {"plate": "A" * 11}, {"plate": "--"},
    {"plate": "A-B-C-D-E-F-G-H-"}, {"plate": "A-B-C-D-E-F-G-H-I"}, {"plate": "ab_c"}, {"camera_id": "c" * 64},
    {"ts": 4102444800000}, {"ts": 4102444800001}, {"ts": -1}, {"confidence": 1.0000001}, {"lat": -90.0},
    {"lon": 180.0000001}, {"lane": 3.0}, {"heading": 361, "speed": 1}, {"heading": 360, "speed": 1},
    {"vehicle": {"color": "c" * 65}, "speed": 1}, {"vehicle": {"color": "c" * 64}}, {"image_uri": "u" * 2049})]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.one_of(documents(), st.just(orjson.dumps(valid_read())), st.sampled_from(
    [b"{", b"", b"\xff", b"[1]", b"null", None, b"x" * 3000, *BOUNDARY])), max_size=12))
def test_columnar_decode_gives_the_reference_batch(values: list[bytes | None]) -> None:
    """The scan takes what it understands, the reference path the rest: together exactly the reference."""
    records = [Raw("t", 1, 100 + 2 * i, 5 * i, None if i % 3 else b"k%d" % i, v) for i, v in enumerate(values)]
    ref = _decode_reference(records, 2500)[0]
    assert_same_batch(decode_batch(records, 2500), ref)
    # the worker's columns of a poll decode to the same batch, dead letters holding the same records
    polled = decode_batch(Polled.of("t", 1, records), 2500)
    assert_same_batch(polled, ref)
    assert [d.raw for d in polled.dead] == [d.raw for d in ref.dead]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.one_of(documents(), st.just(orjson.dumps(valid_read())), st.sampled_from(BOUNDARY)),
                          st.sampled_from([None, 0, valid_read()["ts"] - 1000, valid_read()["ts"] - 1001,
                                           1_700_000_000_000, 4_102_444_800_000])), max_size=12),
       st.sampled_from([None, 1_700_000_000_000, valid_read()["ts"] - 1000]))
def test_columnar_decode_judges_capture_times_ahead_of_kafka_like_the_reference(
        items: list[tuple[bytes, int | None]], now: int | None) -> None:
    """``max_ahead_ms``: both paths refuse the same reads (field ts), by each message's Kafka timestamp, or by
    ``now`` (the worker's clock) where that is earlier."""
    records = [Raw("t", 1, 100 + i, stamp, None, v) for i, (v, stamp) in enumerate(items)]
    ref = _decode_reference(records, 2500, 1000, now)[0]
    assert_same_batch(decode_batch(records, 2500, 1000, now), ref)
    assert_same_batch(decode_batch(Polled.of("t", 1, records), 2500, 1000, now), ref)
    by_offset = {r.offset: r for r in records}

    def judged_by(stamp: int | None) -> int | None:
        return None if stamp is None else stamp if now is None else min(stamp, now)

    for d in ref.dead:  # refused for the clock: ahead by more than the limit, by the earlier time
        if "Kafka timestamp" in d.detail:
            stamp = judged_by(by_offset[d.raw.offset].timestamp)
            assert d.field == "ts" and stamp is not None and orjson.loads(d.raw.value or b"")["ts"] > stamp + 1000
    for offset, ts in zip(ref.offset.tolist(), ref.ts.tolist(), strict=True):  # kept: not ahead, or no timestamp
        stamp = judged_by(by_offset[offset].timestamp)
        assert stamp is None or ts <= stamp + 1000


def test_polled_columns_index_and_slice_as_records() -> None:
    records = [Raw("plates.reads", 3, 40 + i, 1000 + i, b"k%d" % i if i % 2 else None, b"v%d" % i) for i in range(5)]
    records[2] = Raw("plates.reads", 3, 42, None, b"", None)  # an empty key, a null value, no timestamp
    polled = Polled.of("plates.reads", 3, records)
    assert len(polled) == 5 and list(polled) == records
    assert polled.offsets.tolist() == [40, 41, 42, 43, 44]
    assert polled.timestamps.tolist() == [1000, 1001, -1, 1003, 1004]
    assert polled.keys == [None, b"k1", b"", b"k3", None] and polled.values == [b"v0", b"v1", None, b"v3", b"v4"]
    assert polled[-1] == records[-1] and polled[0] == records[0] and Polled.of("x", 0, polled) is polled
    part = polled[1:4]
    assert isinstance(part, Polled) and list(part) == records[1:4] and part.values == [b"v1", None, b"v3"]
    # polls joined: in place when they share one buffer, copied when they do not
    again = Polled.concat([polled[:2], polled[2:]])
    assert again.data is polled.data and list(again) == records
    other = Polled.of("plates.reads", 3, [Raw("plates.reads", 3, 45, 9, b"k5", b"v5")])
    both = Polled.concat([polled[3:], other])
    assert list(both) == [*records[3:], other[0]] and both.values == [b"v3", b"v4", b"v5"]
    assert len(both.data) == len(b"k3v3v4k5v5")  # only the parts' keys and values were copied
    try:
        polled[5]
    except IndexError:
        pass
    else:
        raise AssertionError("index past the end")


def test_messages_index_slice_and_join_as_their_pairs() -> None:
    pairs = [(b"k%d" % i, b"v" * i) for i in range(6)]
    pairs[3] = (b"", b"")  # an empty key and value
    m = Messages.of(pairs)
    assert len(m) == 6 and list(m) == pairs and m == pairs and m[-1] == pairs[-1] and Messages.of(m) is m
    assert m.sizes().tolist() == [len(k) + len(v) for k, v in pairs]
    for lo, hi in ((0, 6), (1, 4), (2, 3), (3, 4), (5, 6), (4, 2)):
        part = m[lo:hi]
        assert isinstance(part, Messages) and list(part) == pairs[lo:hi]
        assert part.sizes().tolist() == [len(k) + len(v) for k, v in pairs[lo:hi]]
    assert Messages.concat([m[:2], Messages.of([]), m[2:5], m[5:]]) == pairs
    assert Messages.concat([]) == [] and Messages.concat([m[1:3]]) == pairs[1:3]
    assert m != pairs[:5] and m != [*pairs[:5], (b"k5", b"v")]
    with pytest.raises(IndexError):
        m[6]
    with pytest.raises(ValueError, match="a key and a value"):
        Messages(m.keys, m.key_ends, m.values, m.value_ends[:3])


def test_columnar_decode_of_each_boundary_document_gives_the_reference_batch() -> None:
    for raw in BOUNDARY:
        one = [Raw("t", 1, 7, None, None, raw)]
        assert_same_batch(decode_batch(one, 2500), _decode_reference(one, 2500)[0])


def test_columnar_decode_of_simulated_traffic_gives_the_reference_batch() -> None:
    traffic = generate(seed=11, vehicles=400, hours=0.5)
    records = [Raw("t", 0, i, None, k, v) for i, (k, v) in enumerate(traffic.messages)]
    for lo in range(0, len(records), 1500):
        part = records[lo : lo + 1500]
        assert_same_batch(decode_batch(part, 65536), _decode_reference(part, 65536)[0])


@given(st.lists(st.sampled_from(["cam-1", "cam-2", "", "caméra-3"]), max_size=30), st.data())
def test_coded_and_spans_columns_read_like_the_list_they_stand_for(items: list[str], data: st.DataObject) -> None:
    rows = data.draw(st.lists(st.integers(0, max(len(items) - 1, 0)), max_size=10)) if items else []
    for column in (Coded.of(items), Spans.of(items)):
        assert len(column) == len(items) and list(column) == column.tolist() == items
        assert [column[i] for i in range(len(items))] == items and column[1:4] == items[1:4]
        assert column.take(rows) == [items[r] for r in rows]
        assert column.take(np.array(rows, dtype=np.intp)) == [items[r] for r in rows]
    coded = Coded.of(items)
    assert sorted(coded.values) == sorted(set(items)) and len(coded.values) == len(set(items))
