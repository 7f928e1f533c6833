"""Topic administration with kafka-python: the topics platestream reads and writes, created if missing."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any, cast

import kafka.errors
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaTimeoutError, TopicAlreadyExistsError

from streams import connect
from streams.policy import Policy
from streams.settings import Settings

log = logging.getLogger("platestream.topics")


def topic_names(s: Settings) -> list[str]:
    return [s.topic_reads, s.topic_deduped, s.topic_dlq, s.topic_alerts, s.topic_audit]


def app_id(s: Settings) -> str:
    """The faust application's id: its consumer group and the prefix of the topics faust makes for it."""
    return f"{s.group}-app"


def leader_topic(s: Settings) -> str:
    """The one-partition topic faust's partition assignor uses to elect a leader among a group's workers."""
    return f"{app_id(s)}-__assignor-__leader"


# The audit topic holds the audit log's copies, what ``audit verify`` checks the log in Redis against (records cut
# from its end show only there); Redis keeps the log for good, so the copies are not left to the brokers' retention
# (a day on the local stack, a week by Kafka's default). An operator with an audit retention rule sets its own.
AUDIT_TOPIC_CONFIGS = {"retention.ms": "-1", "retention.bytes": "-1"}


def ensure_topics(s: Settings, partitions: int | None = None, app: bool = False) -> None:
    """Create missing topics with ``partitions`` (default: the setting) and ``s.replication_factor`` replicas (-1:
    the brokers' default), the audit topic keeping its records (``AUDIT_TOPIC_CONFIGS``); existing ones are left
    alone. ``app``: faust's leader topic too (``leader_topic``),
    which faust would otherwise create with one replica whatever the brokers' default — created here first, faust
    finds it and leaves it be."""
    admin = KafkaAdminClient(**connect.kafka(s), client_id="platestream-admin")
    try:
        existing = set(admin.list_topics())
        n = partitions or s.partitions
        wanted = [(t, n) for t in topic_names(s)] + ([(leader_topic(s), 1)] if app else [])
        new = [NewTopic(name=t, num_partitions=parts, replication_factor=s.replication_factor,
                        topic_configs=AUDIT_TOPIC_CONFIGS if t == s.topic_audit else {})
               for t, parts in wanted if t not in existing]
        if new:
            # each topic's own error: one another worker created meanwhile is fine, and must not hide the others'
            # (a list taken a moment after a creation may still miss it)
            for found in admin.create_topics(new, raise_errors=False)["topics"]:
                error = kafka.errors.for_code(found["error_code"])
                if error not in (kafka.errors.NoError, TopicAlreadyExistsError):
                    raise error(f"{found['name']}: {found['error_message']}")
            log.info("created topics %s", {t.name: t.num_partitions for t in new})
    finally:
        admin.close()


# Kafka deletes a topic's records a segment at a time, once the segment's newest record is past ``retention.ms``, so
# a record can live ``retention.ms + segment.ms``; segments are made short enough that a record outlives the policy's
# limit by at most a tenth of it, or a minute (plus the brokers' retention check, every 5 minutes by default)
SEGMENT_SHARE = 10
MIN_SEGMENT_MS = 60_000
# a policy may keep non-hits for minutes, but a worker behind by more than a topic's retention would never see the
# reads Kafka deleted meanwhile: every data topic keeps at least this long, whatever the policy
MIN_RETENTION_MS = 3_600_000


def retention_limits(s: Settings, policy: Policy) -> dict[str, int]:
    """The longest each data topic may keep a record under ``policy`` (ms): the shortest retention of any agency,
    since one topic holds every agency's data — reads, sightings and dead letters their non-hits too, alerts only
    hits. Never below ``MIN_RETENTION_MS``. A topic no agency limits is absent; the audit topic is never limited
    here (it is the audit log's copy)."""
    agencies = policy.agencies.values()
    every = [ms for a in agencies for ms in (a.retention_ms(False), a.retention_ms(True)) if ms is not None]
    hits = [ms for a in agencies if (ms := a.retention_ms(True)) is not None]
    limits = dict.fromkeys((s.topic_reads, s.topic_deduped, s.topic_dlq), min(every)) if every else {}
    if hits:
        limits[s.topic_alerts] = min(hits)
    return {topic: max(ms, MIN_RETENTION_MS) for topic, ms in limits.items()}


def apply_retention(s: Settings, policy: Policy, existing_only: bool = False) -> dict[str, dict[str, int]]:
    """Lower each data topic's ``retention.ms`` to ``retention_limits`` where Kafka would keep records longer, and
    its ``segment.ms`` to a tenth of what it keeps where records could otherwise outlive the limit by more than
    ``SEGMENT_SHARE`` allows; never raises either (an operator's shorter setting stays). The retention enforced
    in Redis is then also what Kafka's copies get. Returns the changed configs by topic.

    ``existing_only``: topics the brokers do not list are left out (a command run before any worker made them)
    instead of waited for (a worker's, created a moment ago)."""
    limits = retention_limits(s, policy)
    if not limits:
        return {}
    admin = KafkaAdminClient(**connect.kafka(s), client_id="platestream-admin")
    try:
        if existing_only:
            listed = set(admin.list_topics())
            limits = {t: ms for t, ms in limits.items() if t in listed}
            if not limits:
                return {}
        found = retention_configs(admin, list(limits))
        changes: dict[str, dict[str, int]] = {}
        for topic, limit in limits.items():
            kept, segment = (int(found[topic][k]["value"]) for k in ("retention.ms", "segment.ms"))
            want: dict[str, int] = {}
            if kept < 0 or kept > limit:  # (-1: forever)
                want["retention.ms"] = kept = limit
            if kept + segment > limit + max(limit // SEGMENT_SHARE, MIN_SEGMENT_MS):
                want["segment.ms"] = max(kept // SEGMENT_SHARE, MIN_SEGMENT_MS)
            if want:
                changes[topic] = want
        if changes:
            done = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, t, {k: str(v) for k, v in c.items()})
                                        for t, c in changes.items()]).get("topic", {})
            # kafka-python reports a refusal (no ALTER_CONFIGS right, say) per topic, as text, without raising
            refused = {t: done.get(t, "no answer") for t in changes if done.get(t) != "OK"}
            if refused:
                raise kafka.errors.KafkaError(f"the brokers did not change the topics' configs: {refused}")
            log.info("Kafka retention lowered to the policy's: %s", changes)
        return changes
    finally:
        admin.close()


def retention_configs(admin: KafkaAdminClient, topics: list[str], wait_s: float = 30.0) -> dict[str, Any]:
    """``retention.ms`` and ``segment.ms`` of ``topics``; a topic created a moment ago is waited for (the brokers
    describe it once its metadata has reached them)."""
    deadline = time.monotonic() + wait_s
    while True:
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t, ["retention.ms", "segment.ms"])
                                        for t in topics], config_filter="all")["topic"]
        if all(len(found.get(t, ())) == 2 for t in topics):
            return cast(dict[str, Any], found)
        if time.monotonic() > deadline:
            raise KafkaTimeoutError(f"no retention settings for {sorted(set(topics) - set(found))} in {wait_s} s "
                                    "(the topics are not there, or no DESCRIBE_CONFIGS right on them)")
        time.sleep(0.2)


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


def read_to_end(s: Settings, topic: str, timeout_ms: int = 10_000) -> Iterator[ConsumerRecord]:
    """Every record ``topic`` holds as of now, partition by partition in offset order; records written meanwhile are
    left for the next reader. Partitions retention emptied are skipped; a record missing for ``timeout_ms`` before
    a partition's end raises ``TimeoutError``."""
    consumer = KafkaConsumer(**connect.kafka(s), enable_auto_commit=False, consumer_timeout_ms=timeout_ms)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = {tp.partition: end for tp, end in consumer.end_offsets(tps).items()}
        starts = {tp.partition: start for tp, start in consumer.beginning_offsets(tps).items()}
        left = {p for p in ends if starts[p] < ends[p]}
        if not left:
            return
        consumer.assign([TopicPartition(topic, p) for p in sorted(left)])
        consumer.seek_to_beginning()
        for rec in consumer:
            if rec.offset < ends[rec.partition]:
                yield rec
            if rec.offset >= ends[rec.partition] - 1:
                left.discard(rec.partition)
            if not left:
                return
        raise TimeoutError(f"{topic}: no record for {timeout_ms} ms before the end of partitions {sorted(left)}")
    finally:
        consumer.close()
