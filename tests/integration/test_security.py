"""Security defaults against a secured stack: Kafka SASL_SSL only, Redis TLS only with an ACL user.

The same end-to-end check as the plain stack (exact accounting against ground truth), plus: the audit
copy reaches Kafka over SASL_SSL, plaintext and anonymous connections are refused, and no plate, token
or password appears in any log line.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from streams import stack
from streams.access import Access
from streams.query import governed_trail
from streams.settings import Settings
from streams.simulate import generate
from tests.governance import TOKENS, policy_doc, with_tokens
from tests.support import process_all, read_topic, record_run, verify_against_truth

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.SecureStack]:
    st = stack.up_secure(tmp_path_factory.mktemp("secure"))
    try:
        yield st
    finally:
        stack.stop_pid(st.redis_pid)
        stack.stop_pid(st.kafka_pid)


def test_end_to_end_over_sasl_ssl_and_redis_tls_acl(secure: stack.SecureStack, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    policy_file = tmp_path / "policy.json"
    policy_file.write_bytes(orjson.dumps(with_tokens(policy_doc())))
    s = Settings.from_env({
        **secure.env, "PLATESTREAM_STATE_DIR": str(tmp_path), "PLATESTREAM_TOPIC_READS": f"s{tag}.reads",
        "PLATESTREAM_TOPIC_DEDUPED": f"s{tag}.deduped", "PLATESTREAM_TOPIC_DLQ": f"s{tag}.dlq",
        "PLATESTREAM_TOPIC_ALERTS": f"s{tag}.alerts", "PLATESTREAM_TOPIC_AUDIT": f"s{tag}.audit",
        "PLATESTREAM_GROUP": f"s{tag}", "PLATESTREAM_HASH_KEY": f"secure-test-key-{tag}",
        "PLATESTREAM_AUDIT_KEY": f"secure-audit-key-{tag}", "PLATESTREAM_POLICY": str(policy_file)})
    traffic = generate(seed=21, vehicles=400, hours=4, malformed=0.01, late=0.03)
    worker = process_all(s, tmp_path, traffic.messages)
    acc = verify_against_truth(s, traffic)
    assert (acc.lost, acc.duplicated, acc.wrong) == (0, 0, [])
    assert acc.stored + acc.merged + acc.dead_lettered == acc.produced and acc.dead_lettered == traffic.malformed
    record_run("10. Kafka SASL_SSL + Redis TLS with an ACL user, end to end", acc.row())

    # a governed query: its audit record is published to Kafka over SASL_SSL too
    t = next(t for t in traffic.truth if t.agency == "hartford-pd")
    acc_ = Access(s)
    try:
        ctx = acc_.policy().context(TOKENS["alice"], "criminal_investigation", "SEC-1")
        result = governed_trail(acc_.client, s, acc_.policy(), ctx, acc_.audit, t.plate, t.region)
    finally:
        acc_.close()
    assert result.rows and [orjson.loads(r.value)["seq"] for r in read_topic(s, s.topic_audit)] == [1]

    # nothing reaches either server without TLS and credentials
    port = int(s.redis_url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=port, socket_timeout=2).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, ssl=True, ssl_ca_certs=s.redis_ca_file, socket_timeout=2,
                    username="default", password="x").ping()
    # no plate, token or password in the worker's log (INFO level)
    log = worker.log()
    assert "INFO" in log
    assert "could not read Redis's maxmemory-policy (INFO refused)" in log  # (-@dangerous: the README's ACL)
    secrets = [s.kafka_sasl_password, s.redis_url.split(":")[2].split("@")[0], *TOKENS.values()]
    assert not [x for x in secrets if x in log]
    # plates as whole tokens of the log messages (timestamp and pid prefixes stripped); a plate of digits
    # only ("448") or letters only ("SSL") cannot be told from a number or word of a message (a log line's
    # milliseconds once matched "448"), so the check covers the plates that mix both - nine in ten here
    messages = re.sub(r"^\[[^\]]*\] \[\d+\] \[[A-Z]+\] ", "", log, flags=re.MULTILINE)
    mixed = {t.plate for t in traffic.truth if not t.plate.isdigit() and not t.plate.isalpha()}
    assert len(mixed) > 0.8 * len({t.plate for t in traffic.truth})
    assert not mixed & set(re.findall(r"[A-Za-z0-9]+", messages))


def test_a_worker_without_the_right_to_alter_topic_configs_runs_says_so_and_retries(secure: stack.SecureStack,
                                                                                    tmp_path: Path) -> None:
    """An ACL takes ALTER_CONFIGS on its topics from the worker's user: the worker still starts and processes, logs
    at ERROR that Kafka keeps reads longer than the policy allows, and sets the limit at the first sweep after the
    right is given back (``follow_retention``)."""
    from kafka.admin import (
        ACL,
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        KafkaAdminClient,
        ResourcePattern,
        ResourceType,
    )

    from streams.producer import send_all
    from streams.topics import ensure_topics, retention_configs
    from tests.conftest import wait_for
    from tests.support import Worker, wait_caught_up

    tag = uuid.uuid4().hex[:8]
    doc = with_tokens(policy_doc())
    doc["agencies"][0]["retention"] = {"non_hit_days": 0.5, "hit_days": 365}
    policy_file = tmp_path / "policy.json"
    policy_file.write_bytes(orjson.dumps(doc))
    s = Settings.from_env({
        **secure.env, "PLATESTREAM_STATE_DIR": str(tmp_path), "PLATESTREAM_TOPIC_READS": f"a{tag}.reads",
        "PLATESTREAM_TOPIC_DEDUPED": f"a{tag}.deduped", "PLATESTREAM_TOPIC_DLQ": f"a{tag}.dlq",
        "PLATESTREAM_TOPIC_ALERTS": f"a{tag}.alerts", "PLATESTREAM_TOPIC_AUDIT": f"a{tag}.audit",
        "PLATESTREAM_GROUP": f"a{tag}", "PLATESTREAM_HASH_KEY": f"secure-test-key-{tag}",
        "PLATESTREAM_AUDIT_KEY": f"secure-audit-key-{tag}", "PLATESTREAM_POLICY": str(policy_file),
        "PLATESTREAM_RETENTION_INTERVAL_S": "1"})
    data = [s.topic_reads, s.topic_deduped, s.topic_dlq]
    topics = ResourcePattern(ResourceType.TOPIC, f"a{tag}.", ACLResourcePatternType.PREFIXED)
    user = f"User:{s.kafka_sasl_username}"
    deny = ACL(user, "*", ACLOperation.ALTER_CONFIGS, ACLPermissionType.DENY, topics)
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, **secure.kafka_admin)
    try:
        # (an ACL on a resource ends its "no ACL found" openness: every other right is given explicitly)
        admin.create_acls([ACL(user, "*", ACLOperation.ALL, ACLPermissionType.ALLOW, topics), deny])
        wait_for(lambda: len(admin.describe_acls(ACLFilter(user, "*", ACLOperation.ANY, ACLPermissionType.ANY,
                                                           topics))[0]) == 2, 30, "the ACLs to be listed")
        ensure_topics(s)

        def kept() -> dict[str, int]:
            return {t: int(c["retention.ms"]["value"]) for t, c in retention_configs(admin, data).items()}

        before = kept()  # the brokers' default (a day on the local stacks)
        assert min(before.values()) > 43_200_000
        traffic = generate(seed=22, vehicles=50, hours=1)
        assert send_all(s, s.topic_reads, traffic.messages) == len(traffic.messages)
        worker = Worker(s, tmp_path, name="no-alter-configs")
        try:
            wait_caught_up(s, worker, 120)  # it runs: every read stored
            wait_for(lambda: "Kafka topics' retention not set to the policy's" in worker.log(), 30, "the error")
            assert "ERROR" in next(line for line in worker.log().splitlines() if "not set to the policy's" in line)
            assert kept() == before

            admin.delete_acls([deny])
            wait_for(lambda: kept() == dict.fromkeys(data, 43_200_000), 60, "12 hours once the right is back")
        finally:
            assert worker.stop() == 0, worker.log()[-3000:]
    finally:
        admin.close()
