"""Topic administration against the real broker: what a run leaves is deleted, nothing else."""

from __future__ import annotations

import uuid

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from streams.settings import Settings
from streams.topics import delete_run_topics, ensure_topics, run_topics, topic_names
from tests.conftest import wait_for


def test_run_topics_are_a_runs_own_topics_its_groups_and_quix_changelogs() -> None:
    names = ["demo.2e46c1.reads", "demo-2e46c1-app-__assignor-__leader", "changelog__quix-1--demo.2e46c1.reads--x",
             "demos.reads", "plates.demo.reads", "platestream-app-__assignor-__leader", "__consumer_offsets"]
    assert run_topics(names, "demo") == names[:3]


@pytest.mark.integration
def test_delete_run_topics_removes_an_earlier_runs_topics_and_keeps_the_rest(settings: Settings) -> None:
    ensure_topics(settings)
    prefix = f"run{uuid.uuid4().hex[:6]}"
    left = [f"{prefix}.1a2b3c.reads", f"{prefix}.1a2b3c.dlq", f"{prefix}-1a2b3c-app-__assignor-__leader"]
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(name=t, num_partitions=1, replication_factor=1) for t in left])
        wait_for(lambda: set(left) <= set(admin.list_topics()), 30, "the run's topics to be listed")
        assert sorted(delete_run_topics(settings.kafka_bootstrap, prefix)) == sorted(left)
        wait_for(lambda: not set(left) & set(admin.list_topics()), 30, "the run's topics to be deleted")
        assert set(topic_names(settings)) <= set(admin.list_topics())
        assert delete_run_topics(settings.kafka_bootstrap, prefix) == []
    finally:
        admin.close()


@pytest.mark.integration
def test_topics_are_created_with_the_configured_replicas(settings: Settings) -> None:
    """-1 (the default) takes the brokers' default.replication.factor (1 on the one-broker local stack); a
    number is asked of the broker as it is, so 2 on one broker is refused by it, naming the reason."""
    import dataclasses

    from kafka.errors import InvalidReplicationFactorError

    assert settings.replication_factor == -1
    ensure_topics(settings)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        described = admin.describe_topics(topic_names(settings))
        assert {t["name"]: {len(p["replica_nodes"]) for p in t["partitions"]} for t in described} == {
            t: {1} for t in topic_names(settings)}
    finally:
        admin.close()
    two = dataclasses.replace(settings, topic_reads=settings.topic_reads + ".rf2", topic_deduped="rf2.d",
                              topic_dlq="rf2.q", topic_alerts="rf2.a", topic_audit="rf2.u", replication_factor=2)
    with pytest.raises(InvalidReplicationFactorError):
        ensure_topics(two)
