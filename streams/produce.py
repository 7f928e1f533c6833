"""Record batches the worker produces, built whole from their keys and values (``kernels.recordbatch``).

aiokafka's ``BatchBuilder.append`` is a Python call, a compiled call and a size check per message (~0.4-0.5 us
each here, for every sighting the worker publishes), and it needs the sightings' JSON cut into one ``bytes`` per
message. ``RecordsBatch`` is a ``BatchBuilder`` for ``AIOKafkaProducer.send_batch`` whose records are written in
one compiled pass from ``records.Messages`` (the keys and values as two byte columns, where the pipeline
assembled them); the producer then treats it as any other batch: the idempotent producer's
id, epoch and sequence are set when it is drained (the header and its CRC-32C are written then), and a retry
resends the same bytes. Messages without headers only (dead letters, which carry headers, use aiokafka's).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import google_crc32c
import numpy as np
from aiokafka.producer.message_accumulator import BatchBuilder

from streams.kernels.recordbatch import BATCH_HEADER, CRC, CRC_AT, CRC_FROM, build_records
from streams.records import Messages


class RecordsBatch(BatchBuilder):
    """One record batch of ``messages`` (v2, uncompressed, create-time timestamps: now; attributes 0,
    so not for a transactional producer, which the worker's is not)."""

    def __init__(self, messages: Messages) -> None:
        # (no BatchBuilder.__init__: its record builder is what this replaces)
        self._count = len(messages)
        # the header's bytes first, written when the producer drains the batch (``_build``)
        self._batch = build_records(messages.keys, messages.key_ends, messages.values, messages.value_ends,
                                    BATCH_HEADER.size)
        self._timestamp = int(time.time() * 1000)
        self._producer = (-1, -1, 0)  # id, epoch, base sequence: as aiokafka's builder starts
        self._built = False
        self._closed = True  # nothing is appended to it

    def append(self, *, timestamp: int | None, key: bytes | None, value: bytes | None,
               headers: Sequence[tuple[str, bytes]] = ()) -> None:
        return None  # full: built whole

    def _set_producer_state(self, producer_id: int, producer_epoch: int, base_sequence: int) -> None:
        self._producer = (producer_id, producer_epoch, base_sequence)

    def _build(self) -> memoryview:
        if not self._built:  # (once: a retry resends the same bytes)
            batch = self._batch
            BATCH_HEADER.pack_into(batch.data, 0, 0, batch.shape[0] - 12, 0, 2, 0, 0, self._count - 1,
                                   self._timestamp, self._timestamp, *self._producer, self._count)
            CRC.pack_into(batch.data, CRC_AT, google_crc32c.value(batch[CRC_FROM:]))
            self._built = True
        return self._batch.data  # (bytes-like: the request concatenates it; an ndarray would add elementwise)

    def size(self) -> int:
        return int(self._batch.shape[0])

    def record_count(self) -> int:
        return self._count


RECORD_OVERHEAD = 32  # bytes a record may add to its key and value (varints, attributes), at most


def records_batches(items: Sequence[tuple[bytes, bytes]], max_bytes: int) -> list[RecordsBatch]:
    """``items`` (key, value) in order (best as ``Messages``: no copy), in batches of at most ``max_bytes`` each
    (the producer's batch size)."""
    out: list[RecordsBatch] = []
    if not items:
        return out
    messages = Messages.of(items)
    sizes = messages.sizes() + RECORD_OVERHEAD
    if int(sizes.max()) + BATCH_HEADER.size > max_bytes:
        raise ValueError(f"a {int(sizes.max())}-byte message does not fit in a {max_bytes}-byte record batch")
    ends = np.cumsum(sizes)
    lo = 0
    while lo < len(messages):
        base = int(ends[lo - 1]) if lo else 0
        hi = int(np.searchsorted(ends, base + max_bytes - BATCH_HEADER.size, side="right"))
        out.append(RecordsBatch(messages[lo:hi]))
        lo = hi
    return out
