"""Wiring for governed access: the reloadable policy, the audit log and its Kafka copy, in one place.

Used by the CLI (and by any API front end): nothing that reads sightings for a person goes around it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis
from kafka import KafkaProducer

from streams import connect
from streams.audit import AuditLog
from streams.policy import Policy, PolicyError, PolicyStore
from streams.settings import Settings
from streams.topics import ensure_topics


class KafkaAuditPublisher:
    """Publishes each audit record to ``plates.audit`` and waits for the broker's ack (fail closed)."""

    def __init__(self, settings: Settings) -> None:
        ensure_topics(settings)
        self.topic = settings.topic_audit
        self.producer = KafkaProducer(**connect.kafka(settings), acks="all", linger_ms=0)

    def __call__(self, record: bytes) -> None:
        self.producer.send(self.topic, value=record, key=b"audit").get(timeout=30)

    def close(self) -> None:
        self.producer.close()


class Access:
    def __init__(self, settings: Settings, client: redis.Redis | None = None, publish: bool = True) -> None:
        self.settings = settings
        self.client = client or connect.redis_client(settings)
        self.store = PolicyStore(settings.policy_path) if settings.policy_path else None
        self.publisher = KafkaAuditPublisher(settings) if publish else None
        self.audit = AuditLog(self.client, settings.audit_key, self.publisher)

    def policy(self) -> Policy:
        if self.store is None:
            raise PolicyError("no_policy", "no policy file is configured (PLATESTREAM_POLICY): every query is refused")
        return self.store.get()

    def audit_report(self, token: str | None, agency: str) -> dict[str, Any]:
        """``AuditLog.report`` for an auditor of ``agency`` (admins: any agency); the report is audited too."""
        ctx = self.policy().context(token, "audit", f"audit-report-{agency}", role="auditor")
        if agency != ctx.agency.id and "admin" not in ctx.user.roles:
            raise PolicyError("forbidden_role", "auditors report on their own agency")
        report = self.audit.report(agency)
        self.audit.append(action="audit.report", agency=ctx.agency.id, user=ctx.user.id, purpose="audit",
                          case=ctx.case, terms={"agency": agency}, decision="allowed", result_count=report["records"])
        return report

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()


@contextlib.contextmanager
def access(settings: Settings, publish: bool = True) -> Iterator[Access]:
    a = Access(settings, publish=publish)
    try:
        yield a
    finally:
        a.close()
