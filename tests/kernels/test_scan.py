"""The columnar scanner against orjson (the oracle): whatever it accepts, it read exactly as orjson does."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.kernels.plates import plates_matrix
from streams.kernels.scan import EXTRA, FAST, OPTIONAL, SLOW, _number, intern_spans, scan_reads
from streams.records import REQUIRED, _id_ok, _optional_ok, _plate_ok, _region_ok, extras, normalize_plate
from streams.simulate import generate

OPTIONAL_FIELDS = {"heading", "lane", "vehicle", "image_uri"}


def scan(messages: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    lens = np.array([len(m) for m in messages], dtype=np.int64)
    ends = np.cumsum(lens)
    return scan_reads(np.frombuffer(b"".join(messages), dtype=np.uint8), ends - lens, ends)


def number(text: str, integer_only: bool = False) -> tuple[int, float, int]:
    raw = text.encode()
    end, f, v = _number(np.frombuffer(raw + b",", dtype=np.uint8), 0, len(raw) + 1, integer_only)
    return end, f, v


def number_texts() -> st.SearchStrategy[str]:
    floats = st.floats(allow_nan=False, allow_infinity=False)
    return st.one_of(
        floats.map(repr), floats.map(lambda x: f"{x:e}"), floats.map(lambda x: f"{x:.7f}"),
        floats.map(lambda x: f"{x:.20E}"), st.integers(-(2**70), 2**70).map(str),
        st.tuples(st.integers(-(10**19), 10**19), st.integers(0, 30), st.integers(-40, 40)).map(
            lambda t: f"{t[0]}.{'0' * t[1]}1e{t[2]}"),
        st.sampled_from(["0", "-0", "-0.0", "0.0", "1E5", "1e+5", "1e-5", "-1.5E-3", "90", "90.0000000",
                         "41.824517", "-72.711113", "0.9102", "4102444800000", "9007199254740993",
                         "9007199254740992", "1.7976931348623157e308", "5e-324", "923.0000000000000001e0", "01", "1.",
                         ".5", "-", "1e",
                         "--1", "+1", "1.5e", "0x10", "1_0", "Infinity", "NaN", "1e400", "123456789012345678"]),
    )


@settings(max_examples=3000, deadline=None)
@given(number_texts(), st.booleans())
def test_numbers_it_accepts_are_read_exactly_as_orjson_reads_them(text: str, integer_only: bool) -> None:
    end, f, v = number(text, integer_only)
    if end < 0:
        return  # declined: the reference path decides
    if end != len(text):  # stopped before the end: in a message, the scan then finds no delimiter
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(text)
        return
    ref = orjson.loads(text)
    assert type(ref) in (int, float)
    if integer_only:
        assert type(ref) is int and v == ref
    assert f == float(ref) and np.signbit(f) == np.signbit(float(ref)), (text, f, ref)


def test_plain_numbers_are_accepted() -> None:
    for text in ("41.824517", "-72.711113", "0.9102", "0", "1", "90", "-0.0", "1e-5", "2.5E+2"):
        assert number(text)[0] == len(text), text
    assert number("1795654801194", integer_only=True)[2] == 1795654801194
    for text in ("1.0", "1e3"):
        assert number(text, integer_only=True)[0] == -1  # ts must be an integer literal


def plain_read() -> dict[str, Any]:
    return {"read_id": "r1", "camera_id": "cam-1", "agency": "hartford-pd", "plate": "7ab-c 123",
            "region": "US-CT", "ts": 1_700_000_000_000, "lat": 41.76, "lon": -72.68, "confidence": 0.93}


# text-level pieces, so the documents are not only orjson's canonical output
WS = st.sampled_from(["", " ", "\n", "\t ", "\r\n  "])
KEYS = st.sampled_from([*REQUIRED, *OPTIONAL_FIELDS, "unknown", "read\\u005fid", "ts ", "TS", "lat\\n", "é"])
STRINGS = st.one_of(
    st.sampled_from(["r1", "cam-1", "US-CT", "7ab-c 123", "", "a\\\"b", "a\\u0041", "\\n", "x" * 65, "ÄBC",
                     "\u2028", "a\\\\", "white", "y" * 2049]),
    st.text(max_size=12),
).map(lambda s: '"' + s + '"' if '"' not in s.replace('\\"', "") else orjson.dumps(s).decode())
VALUES = st.one_of(
    STRINGS, number_texts(), st.sampled_from(["true", "false", "null", "[]", "[1, {\"a\": [2]}]", "{}"]),
    st.lists(st.tuples(st.sampled_from(["make", "model", "color", "type", "x", "color"]), STRINGS),
             max_size=3).map(lambda kv: "{" + ",".join(f'"{k}": {v}' for k, v in kv) + "}"),
)


VEHICLE_VALUES = ['"black"', '"' + "m" * 64 + '"', '"' + "m" * 65 + '"', "1"]
OPTIONAL_VALUES = st.one_of(
    st.tuples(st.just("heading"), st.one_of(number_texts(), st.sampled_from(["0", "216", "359.5", "360", "-0.0"]))),
    st.tuples(st.just("lane"), st.one_of(number_texts(), st.sampled_from(["0", "3", "64", "65", "3.0"]))),
    st.tuples(st.just("image_uri"), STRINGS),
    st.tuples(st.just("vehicle"), st.lists(st.tuples(st.sampled_from(["make", "model", "color", "type", "x"]),
                                                     st.sampled_from(VEHICLE_VALUES)),
                                           max_size=3).map(lambda kv: "{" + ", ".join(f'"{k}" :{v}' for k, v in kv)
                                                           + "}")),
)


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    fields = {k: orjson.dumps(v).decode() for k, v in plain_read().items()}
    for k, v in draw(st.lists(st.one_of(st.tuples(KEYS, VALUES), OPTIONAL_VALUES), max_size=4)):
        fields[k] = v
    for k in draw(st.sets(st.sampled_from(REQUIRED), max_size=1)):
        fields.pop(k, None)
    pairs = list(fields.items())
    if draw(st.booleans()):
        pairs = draw(st.permutations(pairs))
    if draw(st.integers(0, 9)) == 0 and pairs:
        pairs.append(pairs[0])  # a duplicate key
    body = ",".join(draw(WS) + f'"{k}"' + draw(WS) + ":" + draw(WS) + v + draw(WS) for k, v in pairs)
    text = draw(WS) + "{" + body + "}" + draw(WS)
    if draw(st.integers(0, 19)) == 0:
        text += draw(st.sampled_from(["x", ",", "}", "{}"]))
    return text.encode()


@settings(max_examples=3000, deadline=None)
@given(st.lists(documents(), min_size=1, max_size=4))
def test_what_the_scan_accepts_is_what_orjson_reads(messages: list[bytes]) -> None:
    status, spans, ts, nums, plates = scan(messages)
    offset = 0
    for r, raw in enumerate(messages):
        if status[r] != SLOW:
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                assert status[r] == EXTRA  # unknown fields are only skipped: the caller parses, orjson judges
                offset += len(raw)
                continue
            assert type(doc) is dict
            for k, name in enumerate(REQUIRED[:5]):
                a, b = spans[r, 2 * k] - offset, spans[r, 2 * k + 1] - offset
                assert raw[a:b].decode("ascii") == doc[name]
            assert type(doc["ts"]) is int and ts[r] == doc["ts"]
            # the schema's string rules hold, and the plate is normalized as the reference does it
            assert all(_id_ok(doc[k]) for k in ("read_id", "camera_id", "agency"))
            assert _plate_ok(doc["plate"]) and _region_ok(doc["region"])
            assert plates[r].tolist() == plates_matrix([normalize_plate(doc["plate"]).encode()])[0].tolist()
            assert nums[r].tolist() == [float(doc[k]) for k in ("lat", "lon", "confidence")]
            others = set(doc) - set(REQUIRED)
            if status[r] == FAST:
                assert not others
            elif status[r] == OPTIONAL:
                assert others and others <= OPTIONAL_FIELDS and _optional_ok(doc)
                a, b = spans[r, 10] - offset, spans[r, 11] - offset
                if a < b:  # adjacent optional fields: their text is the extras object
                    assert orjson.loads(b"{" + raw[a:b] + b"}") == extras(doc)
                    assert list(orjson.loads(b"{" + raw[a:b] + b"}")) == list(extras(doc))
            else:
                assert status[r] == EXTRA and others
        offset += len(raw)


def test_plain_reads_take_the_fast_path() -> None:
    """Guards the speed, not the result: simulated traffic must not fall back wholesale."""
    traffic = generate(seed=3, vehicles=200, hours=0.5)
    messages = [v for _, v in traffic.messages]
    status, spans, *_ = scan(messages)
    valid = []
    for raw in messages:
        try:
            doc = orjson.loads(raw)
            valid.append(type(doc) is dict and set(REQUIRED) <= set(doc))
        except orjson.JSONDecodeError:
            valid.append(False)
    fast = np.isin(status, [FAST, OPTIONAL])
    assert fast[np.array(valid)].mean() > 0.98
    optional = status == OPTIONAL
    assert optional.any() and (spans[optional, 10] < spans[optional, 11]).all()  # extras without a full parse
    assert status[0] in (FAST, OPTIONAL)
    assert scan([orjson.dumps(plain_read())])[0][0] == FAST
    assert scan([orjson.dumps({**plain_read(), "heading": 12, "vehicle": {"color": "red"}})])[0][0] == OPTIONAL
    assert scan([orjson.dumps({**plain_read(), "speed": 12})])[0][0] == EXTRA


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"", b"a", b"b", b"ab", b"ba", b"cam-1", b"cam-10", b"\x00", b"a\x00"]),
                max_size=60))
def test_intern_spans_gives_equal_codes_to_equal_strings(values: list[bytes]) -> None:
    lens = np.array([len(v) for v in values], dtype=np.int64)
    ends = np.cumsum(lens)
    codes, first = intern_spans(np.frombuffer(b"".join(values), dtype=np.uint8), ends - lens, ends)
    seen: dict[bytes, int] = {}
    expected = [seen.setdefault(v, len(seen)) for v in values]
    assert codes.tolist() == expected
    assert [values[i] for i in first.tolist()] == list(seen)
