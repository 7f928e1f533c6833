"""Topic administration with kafka-python: the topics platestream reads and writes, created if missing."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from streams import connect
from streams.settings import Settings

log = logging.getLogger("platestream.topics")


def topic_names(s: Settings) -> list[str]:
    return [s.topic_reads, s.topic_deduped, s.topic_dlq, s.topic_alerts, s.topic_audit]


def ensure_topics(s: Settings, partitions: int | None = None) -> None:
    """Create missing topics with ``partitions`` (default: the setting) and ``s.replication_factor`` replicas (-1:
    the brokers' default); existing ones are left alone."""
    admin = KafkaAdminClient(**connect.kafka(s), client_id="platestream-admin")
    try:
        existing = set(admin.list_topics())
        n = partitions or s.partitions
        new = [NewTopic(name=t, num_partitions=n, replication_factor=s.replication_factor)
               for t in topic_names(s) if t not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was faster
                admin.create_topics(new)
            log.info("created topics %s with %d partitions", [t.name for t in new], n)
    finally:
        admin.close()


def run_topics(names: Iterable[str], prefix: str) -> list[str]:
    """The topics among ``names`` that runs named ``prefix`` made: their own topics ``<prefix>.<tag>.*``, the
    topic faust adds per consumer group ``<prefix>-<tag>-app-__assignor-__leader``, and Quix Streams'
    ``changelog__quix-...--<prefix>.<tag>...`` ones."""
    return [t for t in names if t.startswith((f"{prefix}.", f"{prefix}-")) or f"--{prefix}." in t]


def delete_run_topics(bootstrap: str, prefix: str) -> list[str]:
    """Delete the topics earlier runs named ``prefix`` left in a broker (``run_topics``); returns their names.

    Demos and benchmarks fill topics of their own, and nothing else removes them: the broker's retention never
    deletes a log's active segment, so a local stack grows by every run (72 GB of benchmark topics once filled
    the disk and stopped the broker mid-run)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="platestream-admin")
    try:
        old = run_topics(admin.list_topics(), prefix)
        for lo in range(0, len(old), 100):
            admin.delete_topics(old[lo : lo + 100], timeout_ms=60_000)
        return old
    finally:
        admin.close()


def end_offsets(s: Settings, topic: str) -> dict[int, int]:
    """Partition -> end offset (the number of records ever written, for a never-compacted topic)."""
    c = KafkaConsumer(**connect.kafka(s), enable_auto_commit=False)  # no group: no commits (and no warning)
    try:
        parts = c.partitions_for_topic(topic) or set()
        ends = c.end_offsets([TopicPartition(topic, p) for p in parts])
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        c.close()
