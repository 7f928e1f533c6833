"""Raw-record polling (``streams.fetch``) against the real broker: same records and positions as aiokafka's own
path in polls of any size and from inside a record batch, aborted transactions still skipped, other consumers
untouched."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from streams import connect, fetch
from streams.records import Polled
from streams.settings import Settings
from streams.topics import ensure_topics

pytestmark = pytest.mark.integration


async def _produce(s: Settings) -> None:
    """Offsets 0-3 plain (one tombstone), then one aborted and one committed transaction."""
    plain = AIOKafkaProducer(**connect.kafka(s), acks="all")
    await plain.start()
    try:
        for i, value in enumerate([b"a", b"b", None, b"d"]):
            await plain.send_and_wait(s.topic_reads, value, key=b"k%d" % i if i != 1 else None, partition=0,
                                      timestamp_ms=1_700_000_000_000 + i)
    finally:
        await plain.stop()
    await _transactions(s, "tx", [b"aborted-1", b"aborted-2"])


async def _transactions(s: Settings, name: str, aborted: list[bytes]) -> None:
    """A transaction of ``aborted`` that is aborted, then one of b"committed" that commits (partition 0)."""
    tx = AIOKafkaProducer(**connect.kafka(s), transactional_id=f"{s.group}-{name}")
    await tx.start()
    try:
        await tx.begin_transaction()
        for value in aborted:
            await tx.send_and_wait(s.topic_reads, value, partition=0)
        await tx.abort_transaction()
        async with tx.transaction():
            await tx.send_and_wait(s.topic_reads, b"committed", partition=0)
    finally:
        await tx.stop()


async def _poll_all(s: Settings, **kw: Any) -> list[Any]:
    tp = TopicPartition(s.topic_reads, 0)
    consumer = AIOKafkaConsumer(**connect.kafka(s), enable_auto_commit=False, isolation_level="read_committed",
                                auto_offset_reset="earliest", **kw)
    await consumer.start()
    try:
        consumer.assign([tp])
        out: list[Any] = []
        for _ in range(50):
            got = await consumer.getmany(timeout_ms=200)
            if tp in got:
                raw = kw.get("value_deserializer") is fetch.raw_records
                assert isinstance(got[tp], Polled) is raw  # a poll of columns, for the consumer that asked
                if raw:  # over the fetch response's bytes (record headers and all), not its records copied out
                    copied = sum(len(r.key or b"") + len(r.value or b"") for r in got[tp])
                    assert len(got[tp].data) > copied + 61
            out.extend(got.get(tp, []))
            if any(r.value == b"committed" for r in out):
                break
        return out
    finally:
        await consumer.stop()


def test_raw_records_are_the_records_aiokafka_would_return(settings: Settings) -> None:
    ensure_topics(settings)
    asyncio.run(_produce(settings))
    fetch.install()
    fetch.install()  # idempotent
    raw = asyncio.run(_poll_all(settings, value_deserializer=fetch.raw_records))
    plain = asyncio.run(_poll_all(settings))

    assert raw and not any(isinstance(r, ConsumerRecord) for r in raw)
    assert all(isinstance(r, ConsumerRecord) for r in plain)  # a consumer that did not ask: unchanged
    a, b = Polled.of(settings.topic_reads, 0, raw), Polled.of(settings.topic_reads, 0, plain)
    assert (a.offsets.tolist(), a.timestamps.tolist(), a.keys, a.values) == (
        b.offsets.tolist(), b.timestamps.tolist(), b.keys, b.values)
    # the aborted transaction's records are skipped on both paths (and its markers are not records)
    assert a.values == [b"a", b"b", None, b"d", b"committed"]
    assert a.keys == [b"k0", None, b"k2", b"k3", None]
    assert a.timestamps[:4].tolist() == [1_700_000_000_000 + i for i in range(4)]
    assert a.offsets[:4].tolist() == [0, 1, 2, 3] and a.offsets[4] > 6
    assert a[2] == b[2] and a[2].value is None and a[2].topic == settings.topic_reads


async def _produce_batches(s: Settings) -> list[int]:
    """Record batches of 5 and 3 records, an aborted transaction, a committed one, then a batch of 4: the
    offsets of the batches' first records (a batch is one producer batch, so polls cross batch ends)."""
    plain = AIOKafkaProducer(**connect.kafka(s), acks="all")
    await plain.start()
    firsts = []

    async def batch(values: list[bytes]) -> None:
        b = plain.create_batch()
        for v in values:
            assert b.append(key=v[:2], value=v, timestamp=None) is not None
        meta = await (await plain.send_batch(b, s.topic_reads, partition=0))
        firsts.append(meta.offset)

    try:
        await batch([b"a%d" % i for i in range(5)])
        await batch([b"b%d" % i for i in range(3)])
        await _transactions(s, "tx2", [b"aborted"])
        await batch([b"c%d" % i for i in range(4)])
    finally:
        await plain.stop()
    return firsts


async def _poll_in_steps(s: Settings, start: int, max_records: int | None, one_by_one: bool = False,
                         **kw: Any) -> tuple[list[tuple[Any, ...]], list[int]]:
    """(offset, key, value) of every record from ``start`` on, and the consumer's position after each poll."""
    tp = TopicPartition(s.topic_reads, 0)
    consumer = AIOKafkaConsumer(**connect.kafka(s), enable_auto_commit=False, isolation_level="read_committed",
                                **kw)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        records: list[tuple[Any, ...]] = []
        positions: list[int] = []
        for _ in range(200):
            if one_by_one:
                got = [await asyncio.wait_for(consumer.getone(), 5)]
            else:
                got = (await consumer.getmany(tp, timeout_ms=500, max_records=max_records)).get(tp, [])
            if max_records is not None:
                assert len(got) <= max_records
            records.extend((r.offset, r.key, r.value) for r in got)
            if got:
                positions.append(await consumer.position(tp))
            if records and records[-1][2] == b"c3":
                break
        return records, positions
    finally:
        await consumer.stop()


def test_raw_records_in_polls_of_any_size_and_from_inside_a_batch(settings: Settings) -> None:
    ensure_topics(settings)
    first = asyncio.run(_produce_batches(settings))
    assert first[:2] == [0, 5]  # batches at 0-4 and 5-7 (the transactions follow)
    fetch.install()
    expected, _ = asyncio.run(_poll_in_steps(settings, 0, None))  # aiokafka's own path
    values = [v for _, _, v in expected]
    assert values == [b"a0", b"a1", b"a2", b"a3", b"a4", b"b0", b"b1", b"b2", b"committed", b"c0", b"c1", b"c2",
                      b"c3"]
    for start in (0, 2, 6):  # from the first record, and from inside each of the two first batches
        want = [r for r in expected if r[0] >= start]
        for max_records in (1, 2, 3, 7, None):
            plain = asyncio.run(_poll_in_steps(settings, start, max_records))
            raw = asyncio.run(_poll_in_steps(settings, start, max_records, value_deserializer=fetch.raw_records))
            assert raw[0] == plain[0] == want, (start, max_records)
            # the same position after every poll (the next fetch starts where the last record taken ends)
            assert raw[1] == plain[1], (start, max_records)
        one = asyncio.run(_poll_in_steps(settings, start, None, one_by_one=True, value_deserializer=fetch.raw_records))
        assert one[0] == want


# every codec a Kafka producer may use (camera fleets' clients often default to lz4 or snappy; zstd is the
# broker's best): a plain batch, then one of each between plain ones (``MIXED``: the values in the order sent)
CODECS = ("gzip", "snappy", "lz4", "zstd")
MIXED = [b"p0", b"p1", *(v for c in CODECS for v in (c.encode() + b"0", c.encode() + b"1", c.encode() + b"2",
                                                      b"q" + c.encode()))]


async def _produce_mixed(s: Settings) -> None:
    """A plain batch, then a compressed one of each codec, each followed by a plain one (partition 0)."""
    batches: list[tuple[list[bytes], str | None]] = [([b"p0", b"p1"], None)]
    for c in CODECS:
        batches += [([c.encode() + b"0", c.encode() + b"1", c.encode() + b"2"], c), ([b"q" + c.encode()], None)]
    for values, compression in batches:
        producer = AIOKafkaProducer(**connect.kafka(s), acks="all", compression_type=compression)
        await producer.start()
        try:
            b = producer.create_batch()
            for v in values:
                assert b.append(key=None if v.endswith(b"1") else v[:1], value=v, timestamp=None) is not None
            await (await producer.send_batch(b, s.topic_reads, partition=0))
        finally:
            await producer.stop()


def test_compressed_batches_among_plain_ones_give_the_same_records(settings: Settings) -> None:
    """A compressed batch (any of Kafka's codecs: the install brings them) goes through aiokafka's records, the
    plain ones are parsed in place: one poll of all holds every record, in order, as aiokafka's own path gives
    them."""
    ensure_topics(settings)
    asyncio.run(_produce_mixed(settings))
    fetch.install()

    async def poll(**kw: Any) -> Any:
        tp = TopicPartition(settings.topic_reads, 0)
        consumer = AIOKafkaConsumer(**connect.kafka(settings), enable_auto_commit=False, **kw)
        await consumer.start()
        try:
            consumer.assign([tp])
            consumer.seek(tp, 0)
            out: list[Any] = []
            while len(out) < len(MIXED):
                out.extend((await consumer.getmany(tp, timeout_ms=500)).get(tp, []))
            return out
        finally:
            await consumer.stop()

    raw = asyncio.run(poll(value_deserializer=fetch.raw_records))
    plain = asyncio.run(poll())
    assert [(r.offset, r.timestamp, r.key, r.value) for r in raw] == [
        (r.offset, r.timestamp, r.key, r.value) for r in plain]
    assert [r.value for r in raw] == MIXED and [r.key for r in raw[2:6]] == [b"g", None, b"g", b"q"]
