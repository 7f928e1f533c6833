"""The tamper-evident audit log: every query and sharing decision, allowed or refused.

Records are appended to a Redis list (``ps:{audit}:log``) as a hash chain: each record carries the previous
record's hash and its own ``hash = HMAC-SHA256(audit key, previous hash + canonical JSON of the record)``.
Editing, removing or reordering any record breaks the chain from that point, and without the audit key
nobody can forge a consistent replacement. Each record is also published to the ``plates.audit`` topic
(kept by Kafka independently of Redis). Appending is fail-closed: a query whose audit record cannot be
written returns nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis

LOG_KEY = "ps:{audit}:log"  # the hash tag keeps the log and its head in one Redis Cluster slot
HEAD_KEY = "ps:{audit}:head"
GENESIS = "0" * 64


class AuditError(RuntimeError):
    """The audit record could not be written; the action it describes must not proceed."""


def _digest(key: bytes, prev: str, body: dict[str, Any]) -> str:
    payload = prev.encode() + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    records: int
    first_bad: int | None = None
    reason: str = ""


class AuditLog:
    """Append, verify and summarise the chain. ``publish`` sends each record to Kafka (may be None)."""

    def __init__(self, client: redis.Redis, key: bytes, publish: Callable[[bytes], None] | None = None,
                 clock: Callable[[], int] | None = None) -> None:
        self.r = client
        self.key = key
        self.publish = publish
        self.clock = clock or (lambda: int(time.time() * 1000))

    def append(self, **fields: Any) -> dict[str, Any]:
        """Append one record (optimistic concurrency on the head); returns it with seq/prev/hash."""
        for _ in range(50):
            try:
                with self.r.pipeline(transaction=True) as tx:
                    tx.watch(HEAD_KEY)
                    head = tx.hgetall(HEAD_KEY)
                    seq = int(head.get(b"seq", b"0")) + 1
                    prev = head.get(b"hash", GENESIS.encode()).decode()  # type: ignore[union-attr]
                    body = {"seq": seq, "time": self.clock(), **fields}
                    digest = _digest(self.key, prev, body)
                    record = {**body, "prev": prev, "hash": digest}
                    raw = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
                    tx.multi()
                    tx.rpush(LOG_KEY, raw)
                    tx.hset(HEAD_KEY, mapping={"seq": seq, "hash": digest})
                    tx.execute()
                break
            except redis.WatchError:
                continue
            except redis.RedisError as e:
                raise AuditError(f"audit log unavailable: {e}") from e
        else:
            raise AuditError("audit log too contended")
        if self.publish is not None:
            try:
                self.publish(raw)
            except Exception as e:  # fail closed: the caller must not return results
                raise AuditError(f"audit topic unavailable: {e}") from e
        return record

    def records(self) -> Iterator[dict[str, Any]]:
        n = int(self.r.llen(LOG_KEY))
        for lo in range(0, n, 1000):
            for raw in self.r.lrange(LOG_KEY, lo, lo + 999):
                yield orjson.loads(raw)

    def verify(self) -> Verification:
        """Recompute the chain; the first record that does not fit says where it was tampered with."""
        prev = GENESIS
        n = 0
        for n, rec in enumerate(self.records(), start=1):
            body = {k: v for k, v in rec.items() if k not in ("prev", "hash")}
            if rec.get("seq") != n:
                return Verification(False, n - 1, n, f"record {n} has seq {rec.get('seq')} (removed or reordered)")
            if rec.get("prev") != prev:
                return Verification(False, n - 1, n, f"record {n} does not follow record {n - 1}")
            if not hmac.compare_digest(_digest(self.key, prev, body), str(rec.get("hash"))):
                return Verification(False, n - 1, n, f"record {n} was altered (hash mismatch)")
            prev = rec["hash"]
        head = cast(dict[bytes, bytes], self.r.hgetall(HEAD_KEY))
        if head and (int(head[b"seq"]) != n or head[b"hash"].decode() != prev):
            return Verification(False, n, n + 1, "records after the last one were removed (head mismatch)")
        return Verification(True, n)

    def report(self, agency: str | None = None) -> dict[str, Any]:
        """Who queried what: counts by user, purpose, decision and data owner (for one agency or all)."""
        by_user: Counter[str] = Counter()
        by_purpose: Counter[str] = Counter()
        by_decision: Counter[str] = Counter()
        owners: Counter[str] = Counter()
        received: Counter[str] = Counter()
        rows = []
        for rec in self.records():
            mine = agency is None or rec.get("agency") == agency
            shared = agency is not None and agency in (rec.get("owners") or {})
            if not (mine or shared):
                continue
            if mine:
                by_user[str(rec.get("user"))] += 1
                by_purpose[str(rec.get("purpose"))] += 1
                by_decision[str(rec.get("decision"))] += 1
                for owner, count in (rec.get("owners") or {}).items():
                    owners[owner] += count
            if shared and rec.get("agency") != agency:
                received[str(rec.get("agency"))] += int(rec["owners"][agency])
            rows.append({k: rec.get(k) for k in ("seq", "time", "action", "agency", "user", "purpose", "case",
                                                 "decision", "result_count")})
        return {"agency": agency, "records": len(rows), "by_user": dict(by_user), "by_purpose": dict(by_purpose),
                "by_decision": dict(by_decision), "data_owners": dict(owners),
                "agencies_that_received_our_data": dict(received), "recent": rows[-20:]}
