"""Record batches built whole (``streams.produce``) read back by aiokafka's own parser: CRC, producer state,
every record in order; and split to the producer's batch size."""

from __future__ import annotations

import pytest
from aiokafka.record.default_records import DefaultRecordBatch
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.produce import RecordsBatch, records_batches
from streams.records import Messages


def read(batch: RecordsBatch) -> DefaultRecordBatch:
    return DefaultRecordBatch(bytes(batch._build()))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=700)), min_size=1, max_size=60),
       st.integers(0, 2**40), st.integers(0, 30_000), st.integers(0, 2**31 - 1))
def test_a_batch_reads_back_as_its_records_with_the_producers_state(items: list[tuple[bytes, bytes]], pid: int,
                                                                     epoch: int, seq: int) -> None:
    [batch] = records_batches(items, 1 << 24)
    assert batch.record_count() == len(items) and batch.append(timestamp=None, key=b"k", value=b"v") is None
    batch._set_producer_state(pid, epoch, seq)  # the idempotent producer, when it drains the batch
    got = read(batch)
    assert got.validate_crc() and (got.producer_id, got.producer_epoch, got.base_sequence) == (pid, epoch, seq)
    assert not got.is_transactional and got.compression_type == 0 and got.next_offset == len(items)
    records = list(got)
    assert [(r.offset, r.key, r.value, r.headers) for r in records] == [
        (i, k, v, []) for i, (k, v) in enumerate(items)]
    assert len({r.timestamp for r in records}) == 1 and batch.size() == len(batch._build())
    assert bytes(batch._build()) == bytes(batch._build())  # built once: a retry resends the same bytes


def test_batches_keep_the_order_and_the_size_limit() -> None:
    items = [(b"k%04d" % i, b"v" * (i % 97) * 10) for i in range(3_000)]
    batches = records_batches(items, 64 << 10)
    assert len(batches) > 10 and all(b.size() <= 64 << 10 for b in batches)
    assert [(r.key, r.value) for b in batches for r in read(b)] == items
    # from a slice of joined messages (the worker's sightings follow its retractions): each batch its own part
    tail = records_batches(Messages.of(items)[1_000:], 64 << 10)
    assert [(r.key, r.value) for b in tail for r in read(b)] == items[1_000:]
    assert records_batches([], 1 << 20) == []
    with pytest.raises(ValueError, match="does not fit"):
        records_batches([(b"k", b"x" * 70_000)], 64 << 10)
