"""Polling the reads topic a record batch at a time, without one ``ConsumerRecord`` per message.

aiokafka turns every fetched record into a ``ConsumerRecord`` dataclass (eleven fields, a headers tuple, two
size computations) and hands records over one at a time: a generator resumed per record, a method call and
an offset update per record in ``PartitionRecords``, a loop per record in ``FetchResult.getall``. Measured
on a pre-filled topic (``benchmarks.fetch``) that Python is most of the consumer's time per message, for
fields the batch path never reads.

A consumer created with ``value_deserializer=raw_records`` gets aiokafka's own decoded record objects
instead (they carry ``offset``, ``timestamp``, ``key`` and ``value``), taken a record batch at a time:
``list(batch)`` iterates the batch in aiokafka's compiled code, and ``getall`` returns slices of those
lists. Batch-level rules stay aiokafka's: CRC check, aborted transactions and control batches skipped,
records before the fetch position (a fetch that starts inside a batch) dropped, the position after the
last record taken. The worker wraps each partition's poll in one ``records.Polled`` (columns, with the
topic and partition the dead-letter path needs).

This reaches into two classes of aiokafka's fetcher (``PartitionRecords`` and ``FetchResult.getall``,
unchanged from 0.8 to 0.14); the integration test compares both paths record for record, in small and
large polls, across an aborted transaction and from a position inside a batch. Only consumers that
asked for it differ: if aiokafka ever stops using these classes, ``raw_records`` is still a correct
(identity) deserializer and ``Polled.of`` reads the same four attributes of ``ConsumerRecord``s - slower,
not wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aiokafka import errors
from aiokafka.consumer import fetcher


def raw_records(value: bytes | None) -> bytes | None:
    """Value deserializer that marks a consumer for raw records (and is the identity otherwise)."""
    return value


class _PartitionRecords(fetcher.PartitionRecords):
    def __init__(self, tp: Any, records: Any, aborted_transactions: Any, fetch_offset: int, key_deserializer: Any,
                 value_deserializer: Any, *args: Any) -> None:
        # every other consumer keeps aiokafka's behaviour (set before the parent makes its record generator)
        self.raw = value_deserializer is raw_records
        self._batch: list[Any] = []  # the current record batch's records (at or past the fetch position)
        self._at = 0  # how many of them were taken
        self._batch_end = fetch_offset  # the offset after the current batch
        super().__init__(tp, records, aborted_transactions, fetch_offset, key_deserializer, value_deserializer,
                         *args)

    def _next_batch(self) -> bool:
        """Load the next record batch that holds records for this consumer; False when none is left."""
        records = self._records
        while records.has_next():
            batch = records.next_batch()
            if self._check_crcs and not batch.validate_crc():
                raise errors.CorruptRecordException(f"Invalid CRC - {self._tp}")
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
            got = list(batch)
            if got and got[0].offset < self.next_fetch_offset:  # the fetch started inside this batch
                got = [r for r in got if r.offset >= self.next_fetch_offset]
            if not got:  # compacted away, or all before the position
                self.next_fetch_offset = max(self.next_fetch_offset, batch.next_offset)
                continue
            self._batch, self._at, self._batch_end = got, 0, batch.next_offset
            return True
        return False

    def take(self, limit: int | None) -> tuple[list[Any], bool]:
        """Up to ``limit`` records (all if None), and whether none is left after them."""
        out: list[Any] = []
        while limit is None or len(out) < limit:
            if not self._batch and not self._next_batch():
                return out, True
            n = len(self._batch) - self._at
            if limit is not None:
                n = min(n, limit - len(out))
            piece = self._batch if n == len(self._batch) else self._batch[self._at : self._at + n]
            if out:
                out.extend(piece)
            else:
                out = piece  # (a whole batch's own list: it is let go of below)
            self._at += n
            self.next_fetch_offset = piece[-1].offset + 1
            if self._at == len(self._batch):
                # past its last record: the batch's end (v2 batches keep it even if compaction dropped records)
                self.next_fetch_offset = self._batch_end
                self._batch, self._at = [], 0
        return out, False

    def _unpack_records(self) -> Iterator[Any]:
        # the record-at-a-time path (``getone``) on the same position as ``take``
        if not self.raw:
            yield from super()._unpack_records()
            return
        while True:
            got, done = self.take(1)
            yield from got
            if done:
                return


_aiokafka_getall = fetcher.FetchResult.getall


def _getall(self: Any, max_records: int | None = None) -> list[Any]:
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
    fetcher.FetchResult.getall = _getall
