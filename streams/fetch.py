"""Polling the reads topic without one ``ConsumerRecord`` per message.

aiokafka turns every fetched record into a ``ConsumerRecord`` dataclass (eleven fields, a headers tuple, two
size computations) before ``getmany`` returns it: about 0.5 us per message, several percent of the worker's
whole budget, for fields the batch path never reads. A consumer created with
``value_deserializer=raw_records`` gets aiokafka's own decoded record objects instead (they carry
``offset``, ``timestamp``, ``key`` and ``value``), and the worker wraps each partition's poll in one
``records.Polled`` (columns, with the topic and partition the dead-letter path needs).

This reaches into one class of aiokafka's fetcher (``PartitionRecords``, unchanged from 0.8 to 0.14): the
subclass only differs for consumers that asked for it, and if aiokafka ever stops using the class,
``raw_records`` is still a correct (identity) deserializer and ``Polled.of`` reads the same four
attributes of ``ConsumerRecord``s - slower, not wrong.
"""

from __future__ import annotations

from typing import Any

from aiokafka.consumer import fetcher


def raw_records(value: bytes | None) -> bytes | None:
    """Value deserializer that marks a consumer for raw records (and is the identity otherwise)."""
    return value


def _record_itself(tp: Any, record: Any) -> Any:
    return record


class _PartitionRecords(fetcher.PartitionRecords):
    def __init__(self, tp: Any, records: Any, aborted_transactions: Any, fetch_offset: int, key_deserializer: Any,
                 value_deserializer: Any, *args: Any) -> None:
        super().__init__(tp, records, aborted_transactions, fetch_offset, key_deserializer, value_deserializer,
                         *args)
        if value_deserializer is raw_records:  # every other consumer keeps aiokafka's behaviour
            self._consumer_record = _record_itself


def install() -> None:
    """Make aiokafka's fetcher build ``_PartitionRecords`` (idempotent; the worker calls it at start)."""
    if not issubclass(fetcher.PartitionRecords, _PartitionRecords):
        fetcher.PartitionRecords = _PartitionRecords
