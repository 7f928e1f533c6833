"""Polling the reads topic a record batch at a time, as columns: no record object and no ``bytes`` per message.

aiokafka turns every fetched record into a ``ConsumerRecord`` dataclass (eleven fields, a headers tuple, two
size computations) and hands records over one at a time: a generator resumed per record, a method call and
an offset update per record in ``PartitionRecords``, a loop per record in ``FetchResult.getall``. Even its
compiled record objects cost ~0.5-0.7 us a record to make and free, and the columnar decode then joined their
values back into one buffer.

A consumer created with ``value_deserializer=raw_records`` gets each partition's poll as one ``records.Polled``
instead: the fetch response's bytes and, per record, its offset, timestamp and where its key and value lie in
those bytes. An uncompressed v2 record batch is parsed in place by a compiled kernel
(``kernels.recordbatch``, checked against aiokafka's own parse); a compressed one is decompressed with aiokafka's
codec functions and its records parsed by the same kernel where they lie in the decompressed bytes (producers
that compress are common: ``benchmarks.fetch --compression lz4`` 0.15-0.17 us of CPU per message, against 0.79 through
aiokafka's record objects and 0.34 for uncompressed batches, which carry more bytes); a pre-v2 one goes through
aiokafka's records. Batch-level rules stay aiokafka's: CRC check, aborted transactions and control batches
skipped, records before the fetch position (a fetch that starts inside a batch) dropped, the position after
the last record taken. One differs: a batch that fails its CRC (or whose records do not parse) is not raised,
which stopped the worker on it for good, but handed over alone, marked (``records.Corrupt``), for the
pipeline to dead-letter.

This reaches into three names of aiokafka's fetcher (``MemoryRecords``, which is wrapped to keep the bytes,
``PartitionRecords`` and ``FetchResult.getall``, unchanged from 0.8 to 0.14); the integration test compares
both paths record for record, in small and large polls, across an aborted transaction and from a position
inside a batch. Only consumers that asked for it differ: if aiokafka ever stops using these names,
``raw_records`` is still a correct (identity) deserializer and ``Polled.of`` makes columns of
``ConsumerRecord``s - slower, not wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import google_crc32c
import numpy as np
from aiokafka import codec, errors
from aiokafka.consumer import fetcher

from streams.kernels.recordbatch import (
    BATCH_HEADER,
    BATCH_LENGTH,
    CRC,
    CRC_AT,
    CRC_FROM,
    LOG_APPEND_TIME,
    PROBLEMS,
    parse_records,
)
from streams.records import Corrupt, Polled


def raw_records(value: bytes | None) -> bytes | None:
    """Value deserializer that marks a consumer for raw records (and is the identity otherwise)."""
    return value


_aiokafka_memory_records = fetcher.MemoryRecords
_FAST_CRC = google_crc32c.implementation == "c"  # (its pure-Python fallback is far slower than aiokafka's)
_EMPTY = np.empty(0, dtype=np.int64)
# a v2 batch's records section, decompressed, by its codec (the attributes' low 3 bits), as aiokafka's
# ``DefaultRecordBatch`` does it (each raises UnsupportedCodecError when its library is missing)
_DECOMPRESS = {1: codec.gzip_decode, 2: lambda b: codec.snappy_decode(bytes(b)),
               3: lambda b: codec.lz4_decode(bytes(b)), 4: lambda b: codec.zstd_decode(bytes(b))}
_CODEC_MASK = 0x07
_NO_SPANS = np.empty((0, 2), dtype=np.int64)


class _Buffered:
    """aiokafka's ``MemoryRecords`` of a fetch response, keeping its bytes (which the C type does not expose):
    the worker reads uncompressed batches' records where they lie."""

    __slots__ = ("data", "has_next", "next_batch", "records", "size_in_bytes")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.records = _aiokafka_memory_records(data)
        self.has_next, self.next_batch = self.records.has_next, self.records.next_batch
        self.size_in_bytes = self.records.size_in_bytes


class _PartitionRecords(fetcher.PartitionRecords):
    def __init__(self, tp: Any, records: Any, aborted_transactions: Any, fetch_offset: int, key_deserializer: Any,
                 value_deserializer: Any, *args: Any) -> None:
        # every other consumer keeps aiokafka's behaviour (set before the parent makes its record generator)
        self.raw = value_deserializer is raw_records
        self._data = records.data if isinstance(records, _Buffered) and isinstance(records.data, bytes) else None
        self._array = np.frombuffer(self._data if self._data is not None else b"", dtype=np.uint8)
        self._pos = 0  # where the next record batch starts in ``_data``
        self._batch: Polled | None = None  # the current record batch's records (at or past the fetch position)
        self._at = 0  # how many of them were taken
        self._batch_end = fetch_offset  # the offset after the current batch
        super().__init__(tp, records, aborted_transactions, fetch_offset, key_deserializer, value_deserializer,
                         *args)
        if self.raw:
            # the parent's record generator holds this object, which holds the generator: a reference cycle per
            # fetch that only the cycle collector frees (aiokafka breaks it when the generator runs out; ``take``
            # never runs it). The worker's collections are minutes apart (few objects per batch), so every fetch's
            # bytes stayed that long: +2 MB/s of RSS at 10k reads/s in the soak. ``__next__`` takes records itself.
            vars(self)["_records_iterator"].close()  # (the parent is untyped)
            self._records_iterator = None

    def _next_batch(self) -> bool:
        """Load the next record batch that holds records for this consumer; False when none is left."""
        records = self._records
        while records.has_next():
            batch = records.next_batch()
            at = self._pos
            if self._data is not None:
                self._pos += BATCH_LENGTH.size + BATCH_LENGTH.unpack_from(self._data, at)[1]
            if self._check_crcs and not self._crc_ok(batch, at):
                if self._load(batch, at, "fails its CRC-32C check"):
                    return True
                continue
            if self._isolation_level == fetcher.READ_COMMITTED and batch.producer_id is not None:
                self._consume_aborted_up_to(batch.base_offset)
                if batch.is_control_batch and self._contains_abort_marker(batch):
                    self._aborted_producers.discard(batch.producer_id)
                if batch.is_transactional and batch.producer_id in self._aborted_producers:
                    self.next_fetch_offset = batch.next_offset
                    continue
            if batch.is_control_batch:
                self.next_fetch_offset = batch.next_offset
                continue
            try:
                got = self._columns(batch, at)
            except errors.CorruptRecordException as e:  # a CRC that matches over bytes that do not parse
                if self._load(batch, at, f"has records that do not parse ({e})"):
                    return True
                continue
            if len(got) and got.offsets[0] < self.next_fetch_offset:  # the fetch started inside this batch
                got = got[int(np.searchsorted(got.offsets, self.next_fetch_offset)):]
            if not len(got):  # compacted away, or all before the position
                self.next_fetch_offset = max(self.next_fetch_offset, batch.next_offset)
                continue
            self._batch, self._at, self._batch_end = got, 0, batch.next_offset
            return True
        return False

    def _load(self, batch: Any, at: int, why: str) -> bool:
        """Make a damaged record batch the current one (``_damaged``); False if none of it is left to take."""
        got, end = self._damaged(batch, at, why)
        if got is None:
            self.next_fetch_offset = max(self.next_fetch_offset, end)
            return False
        self._batch, self._at, self._batch_end = got, 0, end
        return True

    def _damaged(self, batch: Any, at: int, why: str) -> tuple[Polled | None, int]:
        """A record batch that failed a check, as records to dead-letter (``Corrupt``; None if its records parse
        and all are before the fetch position), and the offset after it.

        Its records as they parse, if they do and their offsets are in order within the batch; else one record
        at the batch's first offset holding the batch's bytes. Where the batch ends: the next batch's first offset
        when this fetch holds one (the header's own count may be among the damaged bytes), else the header's.
        Raising instead, as aiokafka does, stopped the worker, and every worker the partition moved to after it,
        with no way on but a hand-edited checkpoint."""
        tp, data = self._tp, self._data
        first = max(int(batch.base_offset), self.next_fetch_offset)
        end = int(batch.next_offset)
        if data is not None and self._pos + 8 <= len(data):
            end = int.from_bytes(data[self._pos : self._pos + 8], "big", signed=True)
        end = max(end, first + 1)
        detail = (f"record batch at offsets {first}-{end - 1} of {tp.topic}[{tp.partition}] {why}: some of its bytes "
                  "were damaged (on the broker's disk, or in memory or transit), and which of its records hold them "
                  "is unknown")
        got: Polled | None = None
        try:
            got = self._columns(batch, at)
        except Exception:  # any failure to read damaged bytes: framing, a codec's own checks
            got = None
        if got is not None:
            got = got[int(np.searchsorted(got.offsets, first)):]
            ordered = bool(np.all(np.diff(got.offsets) > 0)) and (not len(got) or int(got.offsets[-1]) < end)
            if ordered and not len(got):
                return None, end
            if ordered:
                return Polled(tp.topic, tp.partition, got.data, got.offsets, got.timestamps, got.key_spans,
                              got.value_spans, Corrupt(f"{detail}; its records are dead-lettered as read", first,
                                                       end, False)), end
        raw = bytes(data[at : self._pos]) if data is not None else b""
        return Polled(tp.topic, tp.partition, raw, np.array([first], np.int64), np.array([-1], np.int64),
                      np.array([[-1, -1]], np.int64), np.array([[0, len(raw)]], np.int64),
                      Corrupt(f"{detail}; its records do not parse apart, and this letter holds the batch's bytes "
                              f"(offsets {first}-{end - 1})", first, end, True)), end

    def _crc_ok(self, batch: Any, at: int) -> bool:
        """The batch's CRC-32C checks out. A v2 batch's is computed here with google-crc32c (the CPU's CRC
        instruction: ~25 GB/s, read in place, against ~2 GB/s for aiokafka's table, ~0.1 us a read); others by
        aiokafka."""
        data = self._data
        if data is None or batch.magic != 2 or not _FAST_CRC:
            return bool(batch.validate_crc())
        stop = self._pos  # (this batch's end: ``_next_batch`` moved past it)
        return bool(google_crc32c.value(self._array[at + CRC_FROM : stop]) == CRC.unpack_from(data, at + CRC_AT)[0])

    def _columns(self, batch: Any, at: int) -> Polled:
        """The records of ``batch`` (at byte ``at`` of the fetched bytes) as columns: a v2 batch parsed by
        ``kernels.recordbatch`` in place, or in its decompressed bytes; a v0/v1 one through aiokafka's records."""
        tp, data = self._tp, self._data
        if data is None or batch.magic != 2 or batch.compression_type not in (0, *_DECOMPRESS):
            return Polled.of(tp.topic, tp.partition, list(batch))
        (base_offset, length, _, _, _, attributes, _, base_ts, max_ts, _, _, _,
         count) = BATCH_HEADER.unpack_from(data, at)
        if base_offset != batch.base_offset:  # out of step with aiokafka's batches: never expected
            raise errors.CorruptRecordException(f"record batch at {at} is not offset {batch.base_offset} - {tp}")
        if count <= 0:
            return Polled(tp.topic, tp.partition, data, _EMPTY, _EMPTY, _NO_SPANS, _NO_SPANS)
        buf, start, end = self._array, at + BATCH_HEADER.size, at + BATCH_LENGTH.size + length
        if attributes & _CODEC_MASK:
            data = _DECOMPRESS[attributes & _CODEC_MASK](memoryview(data)[start:end])
            buf, start, end = np.frombuffer(data, dtype=np.uint8), 0, len(data)
        offsets, timestamps = np.empty(count, dtype=np.int64), np.empty(count, dtype=np.int64)
        keys, values = np.empty((count, 2), dtype=np.int64), np.empty((count, 2), dtype=np.int64)
        got = parse_records(buf, start, end, count, base_offset, base_ts,
                            max_ts if attributes & LOG_APPEND_TIME else -1, offsets, timestamps, keys, values)
        if got != count:
            raise errors.CorruptRecordException(f"{PROBLEMS[got]} (batch at offset {base_offset}) - {tp}")
        return Polled(tp.topic, tp.partition, data, offsets, timestamps, keys, values)

    def take(self, limit: int | None) -> tuple[Polled, bool]:
        """Up to ``limit`` records (all if None), and whether none is left after them."""
        parts: list[Polled] = []
        taken = 0
        done = False
        while limit is None or taken < limit:
            if self._batch is None and not self._next_batch():
                done = True
                break
            batch = self._batch
            assert batch is not None
            if parts and (batch.corrupt is not None or parts[0].corrupt is not None):
                break  # a damaged batch's records are a poll of their own (``records.Corrupt``)
            n = len(batch) - self._at
            if limit is not None:
                n = min(n, limit - taken)
            parts.append(batch if n == len(batch) else batch[self._at : self._at + n])
            taken += n
            self._at += n
            self.next_fetch_offset = int(batch.offsets[self._at - 1]) + 1
            if self._at == len(batch):
                # past its last record: the batch's end (v2 batches keep it even if compaction dropped records)
                self.next_fetch_offset = self._batch_end
                self._batch, self._at = None, 0
        if not parts:
            return Polled(self._tp.topic, self._tp.partition, b"", _EMPTY, _EMPTY, _NO_SPANS, _NO_SPANS), done
        return Polled.concat(parts), done

    def __next__(self) -> Any:
        # the record-at-a-time path (``getone``) on the same position as ``take``
        if not self.raw:
            return super().__next__()
        got, _ = self.take(1)
        if not len(got):
            raise StopIteration
        return got[0]


_aiokafka_getall = fetcher.FetchResult.getall


def _getall(self: Any, max_records: int | None = None) -> Sequence[Any]:
    records = self._partition_records
    if not (isinstance(records, _PartitionRecords) and records.raw):
        return _aiokafka_getall(self, max_records)
    if not self.check_assignment(self._topic_partition) or not self.has_more():
        return []
    out, done = records.take(max_records)
    self._update_position()
    if done:
        self._partition_records = None
    return out


def install() -> None:
    """Make aiokafka's fetcher build ``_PartitionRecords`` and take raw records a batch at a time
    (idempotent; the worker calls it at start)."""
    if not issubclass(fetcher.PartitionRecords, _PartitionRecords):
        fetcher.PartitionRecords = _PartitionRecords
    fetcher.MemoryRecords = _Buffered
    fetcher.FetchResult.getall = _getall
