"""The audit chain against the real Redis: any edited, removed or reordered record is detected."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import orjson
import pytest
import redis

from streams.audit import HEAD_KEY, LOG_KEY, AuditError, AuditLog, Verification
from streams.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def log(settings: Settings) -> Iterator[AuditLog]:
    client = redis.Redis.from_url(settings.redis_url)
    a = AuditLog(client, b"audit-test-key-0123456789")
    for i in range(6):
        a.append(action="query.trail", agency="hartford-pd", user=f"u{i}", purpose="criminal_investigation",
                 case=f"c{i}", terms={"vehicle": "ab" * 12}, decision="allowed", result_count=i)
    yield a
    client.close()


def test_intact_chain_verifies(log: AuditLog) -> None:
    v = log.verify()
    assert (v.ok, v.records) == (True, 6)
    assert [r["seq"] for r in log.records()] == [1, 2, 3, 4, 5, 6]


def _edit(log: AuditLog, index: int, **changes: object) -> None:
    rec = orjson.loads(log.r.lindex(LOG_KEY, index))  # type: ignore[arg-type]
    rec.update(changes)
    log.r.lset(LOG_KEY, index, orjson.dumps(rec, option=orjson.OPT_SORT_KEYS))


def test_edited_record_is_detected(log: AuditLog) -> None:
    _edit(log, 2, result_count=0)  # someone hides how much a query returned
    v = log.verify()
    assert (v.ok, v.first_bad) == (False, 3) and "altered" in v.reason


def test_removed_record_is_detected(log: AuditLog) -> None:
    raw = log.r.lindex(LOG_KEY, 3)
    log.r.lrem(LOG_KEY, 1, raw)  # type: ignore[arg-type]
    v = log.verify()
    assert (v.ok, v.first_bad) == (False, 4)


def test_reordered_records_are_detected(log: AuditLog) -> None:
    a, b = log.r.lindex(LOG_KEY, 1), log.r.lindex(LOG_KEY, 2)
    log.r.lset(LOG_KEY, 1, b)  # type: ignore[arg-type]
    log.r.lset(LOG_KEY, 2, a)  # type: ignore[arg-type]
    assert log.verify().first_bad == 2


def test_truncated_tail_is_detected(log: AuditLog) -> None:
    log.r.rpop(LOG_KEY)
    v = log.verify()
    assert not v.ok and "head" in v.reason


def test_rewritten_chain_without_the_key_is_detected(log: AuditLog, settings: Settings) -> None:
    # an attacker with Redis access but not the key recomputes the chain with a key of their own
    forged = AuditLog(log.r, b"attacker-key-0123456789")
    log.r.delete(LOG_KEY, HEAD_KEY)
    forged.append(action="query.trail", agency="x", user="y", purpose="audit", case="c", terms={},
                  decision="allowed", result_count=0)
    assert not log.verify().ok


def test_append_fails_closed_when_the_topic_copy_fails(settings: Settings) -> None:
    def broken(_: bytes) -> None:
        raise OSError("broker down")

    a = AuditLog(redis.Redis.from_url(settings.redis_url), b"audit-test-key-0123456789", publish=broken)
    with pytest.raises(AuditError):
        a.append(action="query.trail", agency="a", user="u", purpose="audit", case="c", terms={}, decision="allowed",
                 result_count=0)


def _append_many(log: AuditLog, writer: str, n: int, errors: list[str]) -> None:
    for i in range(n):
        try:
            log.append(action="query.trail", agency="a", user=writer, purpose="audit", case="c", terms={"i": i},
                       decision="allowed", result_count=0)
        except AuditError as e:
            errors.append(str(e))


def test_concurrent_writers_lose_nothing_and_keep_one_chain(settings: Settings) -> None:
    # three AuditLogs with their own connections race for the head as API processes would; six threads
    # each, as an API's request threads would
    clients = [redis.Redis.from_url(settings.redis_url) for _ in range(3)]
    logs = [AuditLog(c, b"audit-test-key-0123456789") for c in clients]
    errors: list[str] = []
    threads = [threading.Thread(target=_append_many, args=(log, f"w{j}-{t}", 40, errors))
               for j, log in enumerate(logs) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    records = list(logs[0].records())
    assert [r["seq"] for r in records] == list(range(1, 721))
    assert sorted((r["user"], r["terms"]["i"]) for r in records) == sorted(
        (f"w{j}-{t}", i) for j in range(3) for t in range(6) for i in range(40))
    assert logs[0].verify() == Verification(True, 720)
    for c in clients:
        c.close()


def test_a_writer_whose_head_is_stale_chains_onto_the_current_one(log: AuditLog, settings: Settings) -> None:
    other = AuditLog(redis.Redis.from_url(settings.redis_url), b"audit-test-key-0123456789")
    for i in range(3):
        other.append(action="query.area", agency="b", user=f"o{i}", purpose="audit", case="c", terms={},
                     decision="allowed", result_count=0)
    rec = log.append(action="query.trail", agency="a", user="late", purpose="audit", case="c", terms={},
                     decision="allowed", result_count=0)
    assert rec["seq"] == 10
    assert rec["prev"] == list(log.records())[8]["hash"]
    log.r.delete(LOG_KEY, HEAD_KEY)  # wiped: the next record starts a new chain, which verifies on its own
    assert log.append(action="query.trail", agency="a", user="u", purpose="audit", case="c", terms={},
                      decision="allowed", result_count=0)["seq"] == 1
    assert log.verify() == Verification(True, 1)


def _move_head_back(log: AuditLog, keep: int) -> None:
    """What someone with Redis access (and not the audit key) can do unseen by the chain: drop the records after
    the ``keep``-th and move the head back to it (every value needed is in Redis)."""
    log.r.ltrim(LOG_KEY, 0, keep - 1)
    last = orjson.loads(log.r.lindex(LOG_KEY, keep - 1))  # type: ignore[arg-type]
    log.r.hset(HEAD_KEY, mapping={"seq": keep, "hash": last["hash"]})


def test_a_tail_removed_with_the_head_moved_back_shows_against_the_topic_copies(settings: Settings) -> None:
    """The chain alone cannot see it; the records' copies in the audit topic (the real broker) can, and so can they
    see the whole log deleted. A record whose publication failed (in Redis, not in the topic) is not a finding."""
    from streams.access import access

    with access(settings) as acc:
        for i in range(6):
            acc.audit.append(action="query.trail", agency="hartford-pd", user=f"u{i}", purpose="criminal_investigation",
                             case=f"c{i}", terms={}, decision="allowed", result_count=i)
        acc.audit.publish = None  # the 7th record's publication "failed": it is in Redis only
        acc.audit.append(action="query.trail", agency="hartford-pd", user="u7", purpose="audit", case="c", terms={},
                         decision="allowed", result_count=0)
        assert acc.verify_audit() == Verification(True, 7, witnessed=6)

        _move_head_back(acc.audit, 4)
        assert acc.verify_audit(with_copies=False) == Verification(True, 4)  # the chain alone: consistent
        v = acc.verify_audit()
        assert (v.ok, v.records, v.first_bad, v.witnessed) == (False, 4, 5, 6)
        assert "record 5 is in the audit topic but not in Redis" in v.reason

        acc.client.delete(LOG_KEY, HEAD_KEY)
        assert acc.verify_audit(with_copies=False) == Verification(True, 0)
        assert acc.verify_audit().first_bad == 1


def test_a_copy_that_differs_from_its_record_is_a_finding(log: AuditLog) -> None:
    copies = [orjson.dumps(r) for r in log.records()]
    assert log.verify(copies) == Verification(True, 6, witnessed=6)
    assert log.verify([*copies, copies[2]]) == Verification(True, 6, witnessed=7)  # a copy sent twice
    forged = {**orjson.loads(copies[2]), "hash": "f" * 64}
    v = log.verify([copies[0], orjson.dumps(forged)])
    assert (v.ok, v.first_bad) == (False, 3) and "differs from its copy" in v.reason
    assert not log.verify([b"not json"]).ok
