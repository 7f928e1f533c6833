"""The API server's audit publisher against the real broker and Redis: every record it acknowledges is in the
audit topic, and a record it cannot send fails the query (fail closed)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
import redis

from streams.access import LoopAuditPublisher
from streams.audit import AuditError, AuditLog
from streams.settings import Settings
from tests.support import read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop in a thread of its own, as the API server's is to its request threads."""
    lp = asyncio.new_event_loop()
    thread = threading.Thread(target=lp.run_forever, daemon=True)
    thread.start()
    yield lp
    lp.call_soon_threadsafe(lp.stop)
    thread.join(10)
    lp.close()


def _append(log: AuditLog, i: int) -> dict[str, Any]:
    return log.append(action="query.trail", agency="hartford-pd", user="alice", purpose="criminal_investigation",
                      case="HPD-1", terms={"i": i}, decision="allowed", result_count=i)


def test_loop_publisher_sends_from_request_threads_and_fails_closed(
        settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
    publisher = LoopAuditPublisher(settings)
    log = AuditLog(redis.Redis.from_url(settings.redis_url), b"access-test-key-0123456789", publisher)
    with pytest.raises(AuditError, match="not started"):  # seq 1: in the chain, never acknowledged, so refused
        _append(log, 0)

    asyncio.run_coroutine_threadsafe(publisher.start(), loop).result(60)
    with ThreadPoolExecutor(4) as pool:  # request threads publishing at once
        seqs = [r["seq"] for r in pool.map(lambda i: _append(log, i), range(1, 13))]
    assert sorted(seqs) == list(range(2, 14))

    async def on_the_loop() -> dict[str, Any]:  # a coroutine that called it directly would wait for itself
        return _append(log, 13)

    with pytest.raises(AuditError, match="its own event loop"):
        asyncio.run_coroutine_threadsafe(on_the_loop(), loop).result(10)

    publisher.close()  # as Access.close does, from another thread while the loop runs
    with pytest.raises(AuditError, match="not started"):
        _append(log, 14)
    publisher.close()  # twice: nothing left to stop

    published = read_topic(settings, settings.topic_audit)
    assert {r.key for r in published} == {b"audit"}
    # exactly the acknowledged records, each as the chain holds it
    chain = {r["seq"]: r for r in log.records()}
    assert sorted(orjson.loads(r.value)["seq"] for r in published) == sorted(seqs)
    assert all(orjson.loads(r.value) == chain[orjson.loads(r.value)["seq"]] for r in published)
    assert sorted(chain) == list(range(1, 16))  # and the refused ones (1, 14, 15): attempted, so recorded
