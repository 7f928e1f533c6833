"""split_members against the members Sighting.pack writes, unpacked one at a time by Sighting.unpack; pack_members
against Sighting.pack (``tests/test_store.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.kernels.members import (
    AT_CONF,
    AT_VERSION,
    BAD_LENGTH,
    BAD_VERSION,
    FLAG_BITS,
    OK,
    PREFIX,
    SEPARATOR_IN_ID,
    distinct_values,
    split_members,
)
from streams.store import MEMBER_VERSION, Sighting, source_code, unpack_columns

NAMES = {source_code("cam-1", "hartford-pd"): ("cam-1", "hartford-pd")}


def _sightings(read_ids: list[str]) -> list[Sighting]:
    return [Sighting(i + 1, 1_764_000_000_000 + i * 60_000, 1_764_000_000_000 + i * 60_000 + 900,
                     1_764_000_000_000 + i * 60_000 + 300, 0x1234_5678_9ABC + i, 3 + i, 0.75, "cam-1",
                     "hartford-pd", rid, i % 2 == 0) for i, rid in enumerate(read_ids)]


def _split(members: list[bytes]) -> tuple[int, list[tuple[Any, ...]], np.ndarray, int]:
    """(status, each member's (ts, flags, sid, geo52, confidence, source, duration, best offset, reads), read id
    text, its length)."""
    buf = np.frombuffer(b"".join(members), dtype=np.uint8)
    status, ts, flags, sid, geo, conf, source, dur, best, reads, ids, used = split_members(buf, len(members),
                                                                                          MEMBER_VERSION)
    cols = [c.tolist() for c in (ts, flags, sid, geo, conf / 10_000, source, dur, best, reads)]
    return int(status), list(zip(*cols, strict=True)), ids, int(used)


def _fields(s: Sighting) -> tuple[Any, ...]:
    code = int.from_bytes(source_code(s.camera_id, s.agency), "little")
    return (s.ts, int(s.hit), s.sighting_id, s.geo52, s.confidence, code, s.ts_last - s.ts, s.best_ts - s.ts, s.reads)


# read ids across the one-byte length (below 255 bytes) and the escaped two-byte one, in UTF-8
READ_IDS = ["r", "é" * 64, "x" * 254, "y" * 255, "\U0001F600" * 64, "z" * 64, "r-2026-11-26T22:40:55Z"]


def test_fixed_parts_times_and_read_ids_are_those_of_each_member() -> None:
    sightings = _sightings(READ_IDS)
    members = [s.pack() for s in sightings]
    status, fields, ids, used = _split(members)
    assert status == OK
    assert fields == [_fields(s) for s in sightings]
    assert ids[:used].tobytes().decode().split("\n") == READ_IDS
    assert unpack_columns(members, NAMES).sightings() == [Sighting.unpack(m, NAMES) for m in members] == sightings


def test_a_read_id_holding_the_separator_is_reported_and_the_rest_is_complete() -> None:
    sightings = _sightings(["a", "line\nbreak", "c"])
    members = [s.pack() for s in sightings]
    status, fields, _, _ = _split(members)
    assert status == SEPARATOR_IN_ID
    assert fields == [_fields(s) for s in sightings]
    assert unpack_columns(members, NAMES).sightings() == sightings


@pytest.mark.parametrize("cut", [1, PREFIX, PREFIX + 2])
def test_a_truncated_or_padded_reply_is_malformed(cut: int) -> None:
    members = [s.pack() for s in _sightings(["a", "b" * 300])]
    assert _split([members[0], members[1][:-cut]])[0] == BAD_LENGTH
    assert _split([members[0], members[1] + b"\x00" * cut])[0] == BAD_LENGTH
    with pytest.raises(ValueError, match="malformed"):
        unpack_columns([members[0], members[1][:-cut]], NAMES)


def test_a_member_of_another_version_is_refused() -> None:
    members = [s.pack() for s in _sightings(["a", "b"])]
    assert members[0][AT_VERSION] == MEMBER_VERSION << FLAG_BITS | 1  # the version, then the hit flag
    other = members[1][:AT_VERSION] + bytes([(MEMBER_VERSION + 1) << FLAG_BITS]) + members[1][AT_VERSION + 1 :]
    assert _split([members[0], other])[0] == BAD_VERSION
    with pytest.raises(ValueError, match="version"):
        unpack_columns([members[0], other], NAMES)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 16_383, 16_384, 2**21, 50 * 86_400_000, 2**40])
def test_durations_and_offsets_of_any_length_round_trip_in_as_few_bytes_as_they_need(value: int) -> None:
    """Varints: a pass of seconds takes 2 bytes, and a sighting of 50 days (past layout 4's 32-bit saturation)
    keeps its exact end."""
    s = Sighting(7, 1_764_000_000_000, 1_764_000_000_000 + value, 1_764_000_000_000 + value // 2, 1, 3, 0.5,
                 "cam-1", "hartford-pd", "r")
    member = s.pack()
    size = max(1, (value.bit_length() + 6) // 7) + max(1, ((value // 2).bit_length() + 6) // 7)
    assert len(member) == PREFIX + size + 1 + 2
    assert unpack_columns([member], NAMES).sightings() == [Sighting.unpack(member, NAMES)] == [s]


def test_a_varint_that_never_ends_is_malformed() -> None:
    member = _sightings(["a"])[0].pack()
    endless = member[:PREFIX] + b"\xff" * 12 + b"\x00" * 3
    assert _split([endless])[0] == BAD_LENGTH
    assert _split([member[: PREFIX + 2]])[0] == BAD_LENGTH


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 5) | st.sampled_from([2**63, 2**64 - 1]), max_size=300))
def test_distinct_values_are_those_of_np_unique_in_order_of_first_appearance(values: list[int]) -> None:
    arr = np.array(values, dtype=np.uint64)
    distinct, inverse = distinct_values(arr)
    assert distinct.tolist() == list(dict.fromkeys(values))
    assert sorted(distinct.tolist()) == np.unique(arr).tolist()
    assert distinct[inverse].tolist() == values


@settings(max_examples=300, deadline=None)
@given(st.floats(0, 1, width=32))
def test_a_confidence_is_stored_as_the_four_decimals_a_lookup_shows(conf: float) -> None:
    """Two bytes of ten-thousandths where layout 5 kept a float32: what a lookup shows, ``round(c, 4)`` of the
    float32, is unchanged, and packing what a lookup read back gives the same member (a revision's old entry is
    rebuilt from the worker's float32 and must match the stored one byte for byte)."""
    s = Sighting(7, 1_764_000_000_000, 1_764_000_000_100, 1_764_000_000_000, 1, 2, conf, "cam-1", "hartford-pd", "r")
    [back] = unpack_columns([s.pack()], NAMES).sightings()
    assert back.confidence == round(float(np.float32(conf)), 4)
    assert back.pack() == s.pack()
    assert int.from_bytes(s.pack()[AT_CONF : AT_CONF + 2], "little") == round(back.confidence * 10_000)


@pytest.mark.parametrize("conf", [-0.01, 1.01, float("nan")])
def test_a_confidence_outside_0_to_1_is_refused(conf: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        Sighting(7, 1, 2, 1, 1, 2, conf, "cam-1", "hartford-pd", "r").pack()


def test_ten_thousandths_are_round_to_4_decimals_at_every_boundary() -> None:
    """Both encoders take the float32's product with 10,000 (exact in a double) rounded half to even for
    ``round(c, 4)``: checked at every k / 10,000 and at the float32 values on either side of each half-way point."""
    from streams.store import confidence_unit, confidence_units

    halves = np.arange(20_001, dtype=np.float64) / 20_000
    c = halves.astype(np.float32)
    values = np.concatenate([c, np.nextafter(c, np.float32(0)), np.nextafter(c, np.float32(1))]).astype(np.float32)
    values = values[(values >= 0) & (values <= 1)]
    want = [round(round(float(v), 4) * 10_000) for v in values]
    assert confidence_units(values).tolist() == want
    assert [confidence_unit(float(v)) for v in values.tolist()] == want
