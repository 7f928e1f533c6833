"""Topic administration against the real broker: what a run leaves is deleted, nothing else."""

from __future__ import annotations

import uuid

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from streams.policy import Policy
from streams.settings import Settings
from streams.topics import (
    MIN_RETENTION_MS,
    apply_retention,
    delete_run_topics,
    ensure_topics,
    leader_topic,
    retention_configs,
    retention_limits,
    run_topics,
    topic_names,
)
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


@pytest.mark.integration
def test_faust_leader_topic_is_created_with_the_configured_replicas(settings: Settings) -> None:
    """faust would create its assignor's leader topic with one replica whatever the brokers' default; a worker
    creates it first (one partition, the setting's replicas), and a count the brokers cannot give is refused
    even when every data topic already exists."""
    import dataclasses

    from kafka.errors import InvalidReplicationFactorError

    ensure_topics(settings)
    assert leader_topic(settings) == f"{settings.group}-app-__assignor-__leader"
    with pytest.raises(InvalidReplicationFactorError):
        ensure_topics(dataclasses.replace(settings, replication_factor=2), app=True)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        assert leader_topic(settings) not in admin.list_topics()
        ensure_topics(settings, app=True)
        wait_for(lambda: leader_topic(settings) in admin.list_topics(), 30, "the leader topic to be listed")
        [described] = admin.describe_topics([leader_topic(settings)])
        assert [len(p["replica_nodes"]) for p in described["partitions"]] == [1]
    finally:
        admin.close()


DAY = 86_400_000


def _policy(retentions: list[dict[str, float]]) -> Policy:
    """Agencies with these retention blocks (and nothing else that matters here)."""
    return Policy.from_dict({"version": 1, "agencies": [
        {"id": f"a{i}", "name": f"A{i}", "state": "CT", "kind": "local", "retention": r}
        for i, r in enumerate(retentions)]})


def test_kafka_keeps_no_record_longer_than_the_strictest_agency_allows(settings: Settings) -> None:
    """One topic holds every agency's reads: its limit is the shortest retention of any; alerts are hits only."""
    limits = retention_limits(settings, _policy([{"non_hit_days": 14, "hit_days": 365}, {"non_hit_days": 0.5},
                                                 {"hit_days": 90}, {}]))
    data = dict.fromkeys([settings.topic_reads, settings.topic_deduped, settings.topic_dlq], DAY // 2)
    assert limits == {**data, settings.topic_alerts: 90 * DAY}
    assert retention_limits(settings, _policy([{}, {}])) == {}  # nobody limits: Kafka's own settings stand
    assert set(retention_limits(settings, _policy([{"non_hit_days": 0.001}])).values()) == {MIN_RETENTION_MS}
    assert settings.topic_audit not in retention_limits(settings, _policy([{"non_hit_days": 1, "hit_days": 1}]))


@pytest.mark.integration
def test_topic_retention_is_lowered_to_the_policys_and_never_raised(settings: Settings) -> None:
    ensure_topics(settings)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)

    def configs() -> dict[str, tuple[int, int]]:
        found = retention_configs(admin, topic_names(settings))
        return {t: (int(c["retention.ms"]["value"]), int(c["segment.ms"]["value"])) for t, c in found.items()}

    try:
        before = configs()
        assert before[settings.topic_audit][0] == -1  # the audit log's copies are kept (not the broker's day)
        # 2 hours for non-hits of one agency, a year for hits: the data topics come down, alerts keep the broker's
        strict = _policy([{"non_hit_days": 1 / 12, "hit_days": 365}, {"non_hit_days": 30}])
        changed = apply_retention(settings, strict)
        data = [settings.topic_reads, settings.topic_deduped, settings.topic_dlq]
        assert changed == {t: {"retention.ms": DAY // 12, "segment.ms": DAY // 120} for t in data}
        wait_for(lambda: {t: configs()[t] for t in data} == dict.fromkeys(data, (DAY // 12, DAY // 120)), 30,
                 "the brokers to apply the new settings")
        after = configs()
        assert {t: after[t] for t in (settings.topic_alerts, settings.topic_audit)} == {
            t: before[t] for t in (settings.topic_alerts, settings.topic_audit)}
        # a longer policy raises nothing; applying the same one again changes nothing
        assert apply_retention(settings, _policy([{"non_hit_days": 30}])) == {}
        assert apply_retention(settings, strict) == {}
        # a policy's minutes still leave the reads an hour (a worker that far behind loses none), segments a tenth
        assert apply_retention(settings, _policy([{"non_hit_days": 1 / 2880}]))[settings.topic_reads] == {
            "retention.ms": MIN_RETENTION_MS, "segment.ms": MIN_RETENTION_MS // 10}
    finally:
        admin.close()
