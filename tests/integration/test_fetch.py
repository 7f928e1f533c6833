"""Raw-record polling (``streams.fetch``) against the real broker: same records as aiokafka's own path,
aborted transactions still skipped, other consumers untouched."""

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
    tx = AIOKafkaProducer(**connect.kafka(s), transactional_id=f"{s.group}-tx")
    await tx.start()
    try:
        await tx.begin_transaction()
        await tx.send_and_wait(s.topic_reads, b"aborted-1", partition=0)
        await tx.send_and_wait(s.topic_reads, b"aborted-2", partition=0)
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
    assert (a.offsets, a.timestamps, a.keys, a.values) == (b.offsets, b.timestamps, b.keys, b.values)
    # the aborted transaction's records are skipped on both paths (and its markers are not records)
    assert a.values == [b"a", b"b", None, b"d", b"committed"]
    assert a.keys == [b"k0", None, b"k2", b"k3", None]
    assert a.timestamps[:4] == [1_700_000_000_000 + i for i in range(4)]
    assert a.offsets[:4] == [0, 1, 2, 3] and a.offsets[4] > 6
    assert a[2] == b[2] and a[2].value is None and a[2].topic == settings.topic_reads
