"""Wiring for governed access: the reloadable policy, the audit log and its Kafka copy, in one place.

Used by the CLI (and by any API front end): nothing that reads sightings for a person goes around it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Protocol

import redis
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError as AIOKafkaError
from kafka import KafkaProducer
from kafka.errors import KafkaError

from streams import connect
from streams.audit import AuditError, AuditLog, Verification
from streams.policy import Policy, PolicyError, PolicyStore
from streams.settings import Settings
from streams.topics import ensure_topics, read_to_end

PUBLISH_TIMEOUT_S = 30.0  # a record the broker has not acknowledged by then fails the query (fail closed)


class AuditPublisher(Protocol):
    """Sends one audit record to the audit topic and returns once the broker acknowledged it, else raises."""

    def __call__(self, record: bytes) -> None: ...
    def close(self) -> None: ...


class KafkaAuditPublisher:
    """Publishes each audit record to ``plates.audit`` and waits for the broker's ack (fail closed)."""

    def __init__(self, settings: Settings) -> None:
        ensure_topics(settings)
        self.topic = settings.topic_audit
        self.producer = KafkaProducer(**connect.kafka(settings), acks="all", linger_ms=0)

    def __call__(self, record: bytes) -> None:
        self.producer.send(self.topic, value=record, key=b"audit").get(timeout=PUBLISH_TIMEOUT_S)

    def close(self) -> None:
        self.producer.close()


class LoopAuditPublisher:
    """The API server's audit publisher: an aiokafka producer on the server's event loop, called from the request
    threads; each call waits for the broker's ack (fail closed, as ``KafkaAuditPublisher``). A call hands over to
    the loop once, where kafka-python's producer hands over to its sender thread and back: idle, p50 0.85 against
    1.7 ms and p99 1.5 against 2.8 (README: the API's answer)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic_audit
        self._producer: AIOKafkaProducer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    async def start(self) -> None:
        """Create the audit topic if needed and connect; on the loop that will carry the records."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, ensure_topics, self.settings)
        producer = AIOKafkaProducer(**connect.kafka(self.settings), acks="all", linger_ms=0)
        await producer.start()
        self._producer, self._loop, self._loop_thread = producer, loop, threading.get_ident()

    def __call__(self, record: bytes) -> None:
        producer, loop = self._producer, self._loop
        if producer is None or loop is None:
            raise RuntimeError("the audit publisher is not started")
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("the audit publisher was called on its own event loop, which would wait for itself")
        fut = asyncio.run_coroutine_threadsafe(producer.send_and_wait(self.topic, record, key=b"audit"), loop)
        try:
            fut.result(timeout=PUBLISH_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    async def unreachable(self, timeout_s: float) -> str | None:
        """Why an audit record could not be acknowledged now, or None: the brokers answer a metadata request
        within ``timeout_s`` and name a leader for each of the audit topic's partitions. (On the loop.)"""
        producer = self._producer
        if producer is None:
            return "the audit publisher is not started"
        try:
            md = await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout_s)
        except (TimeoutError, AIOKafkaError) as e:
            return f"no broker answered within {timeout_s:g} s ({type(e).__name__})"
        partitions = md.partitions_for_topic(self.topic)
        if not partitions:
            return f"the audit topic {self.topic} does not exist"
        leaderless = sorted(p for p in partitions
                            if md.leader_for_partition(TopicPartition(self.topic, p)) in (None, -1))
        return f"the audit topic {self.topic} has no leader for partitions {leaderless}" if leaderless else None

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    def close(self) -> None:
        """``stop`` from another thread (``Access.close``), while the loop still runs."""
        if self._producer is not None and self._loop is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(timeout=PUBLISH_TIMEOUT_S)


class Access:
    def __init__(self, settings: Settings, client: redis.Redis | None = None, publish: bool = True,
                 publisher: AuditPublisher | None = None) -> None:
        """``publisher`` sends the audit records to Kafka (default: ``KafkaAuditPublisher``; none if not
        ``publish``)."""
        self.settings = settings
        self.client = client or connect.redis_client(settings)
        self.store = PolicyStore(settings.policy_path) if settings.policy_path else None
        self.publisher: AuditPublisher | None = publisher or (KafkaAuditPublisher(settings) if publish else None)
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

    def verify_audit(self, with_copies: bool = True) -> Verification:
        """``AuditLog.verify``, by default against the records' copies in the audit topic (read to its end)."""
        if not with_copies:
            return self.audit.verify()
        try:
            return self.audit.verify(rec.value for rec in read_to_end(self.settings, self.settings.topic_audit))
        except (KafkaError, TimeoutError) as e:
            raise AuditError(f"the audit topic {self.settings.topic_audit} could not be read: {e!r}") from e

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
