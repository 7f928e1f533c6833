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
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis

LOG_KEY = "ps:{audit}:log"  # the hash tag keeps the log and its head in one Redis Cluster slot
HEAD_KEY = "ps:{audit}:head"
GENESIS = "0" * 64
CONTENDED_AFTER_S = 5.0  # an append still losing the race for the head after this long fails (closed)
# Append ARGV[2] (hash ARGV[3]) if the head is still at seq ARGV[1]; else reply with the head (seq, hash).
_APPEND_LUA = """
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if seq ~= tonumber(ARGV[1]) then
  return {seq, redis.call('HGET', KEYS[1], 'hash') or ''}
end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], 'seq', seq + 1, 'hash', ARGV[3])
return false
"""


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
    witnessed: int | None = None  # records checked against their copies in the audit topic (None: not checked)


class AuditLog:
    """Append, verify and summarise the chain. ``publish`` sends each record to Kafka (may be None)."""

    def __init__(self, client: redis.Redis, key: bytes, publish: Callable[[bytes], None] | None = None,
                 clock: Callable[[], int] | None = None) -> None:
        self.r = client
        self.key = key
        self.publish = publish
        self.clock = clock or (lambda: int(time.time() * 1000))
        self._append = client.register_script(_APPEND_LUA)
        self._lock = threading.Lock()
        self._head: tuple[int, str] | None = None  # (seq, hash) of the head as this process last saw it

    def append(self, **fields: Any) -> dict[str, Any]:
        """Append one record; returns it with seq/prev/hash.

        One round trip when this process knows the head: the record is chained onto the head it last saw
        and the server appends it only if that is still the head (``_APPEND_LUA``, a compare-and-set). If
        another writer got there first, the reply is the new head and the record is chained again. Threads
        of one process take turns (a lock), so they never race each other: with a read of the head, WATCH
        and MULTI per attempt, 16 threads appended 487 records/s with a p99 of 166 ms (one thread: 4,268/s).
        """
        with self._lock:
            deadline = time.monotonic() + CONTENDED_AFTER_S
            for attempt in itertools.count():
                if attempt > 1:
                    if time.monotonic() > deadline:
                        raise AuditError("audit log too contended")
                    # a writer that just won has the head already and goes again at once: without a
                    # jittered wait the others can lose to it for as long as it has records to write
                    time.sleep(random.uniform(0, min(0.002, 0.0001 * 2**attempt)))
                seq, prev = self._head or (0, GENESIS)
                body = {"seq": seq + 1, "time": self.clock(), **fields}
                digest = _digest(self.key, prev, body)
                record = {**body, "prev": prev, "hash": digest}
                raw = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
                try:
                    found = self._append(keys=[HEAD_KEY, LOG_KEY], args=[seq, raw, digest])
                except redis.RedisError as e:
                    self._head = None
                    raise AuditError(f"audit log unavailable: {e}") from e
                if found is None:
                    self._head = (seq + 1, digest)
                    break
                self._head = (int(found[0]), found[1].decode() if found[1] else GENESIS)
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

    def verify(self, copies: Iterable[bytes] | None = None) -> Verification:
        """Recompute the chain; the first record that does not fit says where it was tampered with.

        The chain alone cannot show records removed from its end together with the head moved back to the last
        one left (or the whole log and head deleted): what is left is a consistent chain. ``copies``, the
        records as published to the audit topic, can: each must be in the chain at its seq with its hash.
        Records in Redis without a copy are normal (an append whose publication failed returned nothing, and
        the topic's retention drops old copies)."""
        prev = GENESIS
        n = 0
        hashes = bytearray()  # each record's hash, 32 bytes (a log of millions: a str each would be ~113)
        for n, rec in enumerate(self.records(), start=1):
            body = {k: v for k, v in rec.items() if k not in ("prev", "hash")}
            if rec.get("seq") != n:
                return Verification(False, n - 1, n, f"record {n} has seq {rec.get('seq')} (removed or reordered)")
            if rec.get("prev") != prev:
                return Verification(False, n - 1, n, f"record {n} does not follow record {n - 1}")
            if not hmac.compare_digest(_digest(self.key, prev, body), str(rec.get("hash"))):
                return Verification(False, n - 1, n, f"record {n} was altered (hash mismatch)")
            prev = rec["hash"]
            hashes += bytes.fromhex(prev)
        head = cast(dict[bytes, bytes], self.r.hgetall(HEAD_KEY))
        if head and (int(head[b"seq"]) != n or head[b"hash"].decode() != prev):
            return Verification(False, n, n + 1, "records after the last one were removed (head mismatch)")
        if copies is None:
            return Verification(True, n)
        missing: int | None = None
        witnessed = 0
        for raw in copies:
            try:
                copy = orjson.loads(raw)
                seq = int(copy["seq"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                return Verification(False, n, None, "the audit topic holds a record that is not an audit record",
                                    witnessed)
            if seq < 1:
                return Verification(False, n, None, f"the audit topic holds a record with seq {seq}", witnessed)
            if seq > n:
                missing = seq if missing is None else min(missing, seq)
            elif not hmac.compare_digest(hashes[32 * (seq - 1) : 32 * seq].hex(), str(copy.get("hash"))):
                return Verification(False, n, seq, f"record {seq} differs from its copy in the audit topic",
                                    witnessed)
            witnessed += 1
        if missing is not None:
            return Verification(False, n, missing, f"record {missing} is in the audit topic but not in Redis "
                                f"(removed from the end of the log: {n} records left)", witnessed)
        return Verification(True, n, witnessed=witnessed)

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
