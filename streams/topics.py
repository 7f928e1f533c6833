"""Topic administration with kafka-python: the topics platestream reads and writes, created if missing."""

from __future__ import annotations

import logging

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from streams.settings import Settings

log = logging.getLogger("platestream.topics")


def topic_names(s: Settings) -> list[str]:
    return [s.topic_reads, s.topic_deduped, s.topic_dlq, s.topic_alerts]


def ensure_topics(s: Settings, partitions: int | None = None) -> None:
    """Create missing topics with ``partitions`` (default: the setting); existing ones are left alone."""
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, client_id="platestream-admin")
    try:
        existing = set(admin.list_topics())
        n = partitions or s.partitions
        new = [NewTopic(name=t, num_partitions=n, replication_factor=1) for t in topic_names(s) if t not in existing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
            log.info("created topics %s with %d partitions", [t.name for t in new], n)
    finally:
        admin.close()
