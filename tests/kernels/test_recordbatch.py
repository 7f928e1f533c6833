"""The record-batch parser against aiokafka's own parse of the same bytes (the oracle): same offsets, timestamps,
keys and values for any records, and a named error, never a wrong answer, for bytes that are not a batch."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.kernels.recordbatch import BAD_HEADERS, BAD_LENGTH, TRAILING, TRUNCATED, parse_records

HEADER = struct.Struct(">qiibIhiqqqhii")
LOG_APPEND_TIME = 0x08


def build(records: list[tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
          base_offset: int = 0) -> bytes:
    b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1,
                                  producer_epoch=-1, base_sequence=-1, batch_size=1 << 24)
    for offset_delta, ts, key, value, headers in records:
        assert b.append(offset_delta, timestamp=ts, key=key, value=value, headers=headers) is not None
    data = bytearray(b.build())
    struct.pack_into(">q", data, 0, base_offset)  # (the CRC does not cover the base offset)
    return bytes(data)


def parse(data: bytes, at: int = 0) -> tuple[int, list[tuple[int, int, bytes | None, bytes | None]]]:
    base, length, _, _, _, attributes, _, base_ts, max_ts, _, _, _, count = HEADER.unpack_from(data, at)
    offsets, timestamps = np.full(count, -9, dtype=np.int64), np.full(count, -9, dtype=np.int64)
    keys, values = np.full((count, 2), -9, dtype=np.int64), np.full((count, 2), -9, dtype=np.int64)
    got = parse_records(np.frombuffer(data, dtype=np.uint8), at + HEADER.size, at + 12 + length, count, base,
                        base_ts, max_ts if attributes & LOG_APPEND_TIME else -1, offsets, timestamps, keys, values)

    def piece(span: np.ndarray) -> bytes | None:
        return None if span[0] < 0 else data[span[0] : span[1]]

    return got, [(int(offsets[i]), int(timestamps[i]), piece(keys[i]), piece(values[i])) for i in range(count)]


def oracle(data: bytes) -> list[tuple[int, int, bytes | None, bytes | None]]:
    return [(r.offset, r.timestamp, r.key, r.value) for r in DefaultRecordBatch(data)]


blobs = st.one_of(st.none(), st.binary(max_size=40), st.binary(min_size=120, max_size=400))
record = st.tuples(st.integers(0, 2**40), blobs, blobs,
                   st.lists(st.tuples(st.text(max_size=5), st.one_of(st.none(), st.binary(max_size=200))), max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.lists(record, min_size=1, max_size=40), st.integers(0, 2**62), st.integers(1, 5))
def test_parse_gives_aiokafkas_records(items: list[Any], base_offset: int, gap: int) -> None:
    # offset deltas with gaps (a compacted batch keeps its others' deltas), timestamps in any order
    records = [(i * gap, ts, key, value, headers) for i, (ts, key, value, headers) in enumerate(items)]
    data = build(records, base_offset)
    got, parsed = parse(data)
    assert got == len(records)
    assert parsed == oracle(data)


def test_parse_reads_a_batch_where_it_lies_among_others() -> None:
    first = build([(0, 5, b"k", b"v" * 300, [])], base_offset=10)
    second = build([(0, 7, None, b"x", [("h", None)]), (1, 9, b"kk", None, [])], base_offset=11)
    got, parsed = parse(first + second, at=len(first))
    assert got == 2 and parsed == [(11, 7, None, b"x"), (12, 9, b"kk", None)] == oracle(second)


def test_log_append_time_is_every_records_timestamp() -> None:
    data = bytearray(build([(0, 1_000, b"a", b"1", []), (1, 2_000, b"b", b"2", [])]))
    attributes = struct.unpack_from(">h", data, 21)[0]
    struct.pack_into(">h", data, 21, attributes | LOG_APPEND_TIME)
    struct.pack_into(">q", data, 35, 1_700_000_000_123)  # the broker's append time: the max timestamp field
    got, parsed = parse(bytes(data))
    assert got == 2 and [ts for _, ts, _, _ in parsed] == [1_700_000_000_123] * 2
    assert parsed == oracle(bytes(data))


def test_bytes_that_are_not_a_batch_are_refused_by_name() -> None:
    data = build([(0, 5, b"key", b"value", [("h", b"x")]), (1, 6, None, b"v2", [])])
    length = HEADER.unpack_from(data)[1]

    def with_count(raw: bytes, count: int) -> bytes:
        out = bytearray(raw)
        struct.pack_into(">i", out, 57, count)
        return bytes(out)

    def with_length(raw: bytes, length: int) -> bytes:
        out = bytearray(raw)
        struct.pack_into(">i", out, 8, length)
        return bytes(out)

    assert parse(with_count(data, 1))[0] == TRAILING  # a record left over
    assert parse(with_count(data, 3))[0] == TRUNCATED  # a record that is not there
    assert parse(with_length(data, length - 1)[:-1])[0] == TRUNCATED  # the last record cut short
    first = HEADER.size
    # the first record's length one byte too long: its fields end before it does
    grown = bytearray(data)
    assert grown[first] < 0x80
    grown[first] += 2  # zigzag: +1
    assert parse(bytes(grown))[0] in (BAD_LENGTH, TRUNCATED)
    # a negative header count (zigzag 1 = -1) in the second record, whose fields are short and known
    second = bytes(data).rindex(b"v2") + 2
    broken = bytearray(data)
    assert broken[second] == 0  # zero headers
    broken[second] = 1
    assert parse(bytes(broken))[0] == BAD_HEADERS
