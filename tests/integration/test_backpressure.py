"""Backpressure and a short soak: when Redis stalls, the worker stops pulling - lag grows, memory does not -
and when Redis returns, the lag drains to zero. (The 15-minute soak is ``make soak``; its report is in
benchmarks/results.)"""

from __future__ import annotations

import os
import signal

import pytest
import redis

from benchmarks import soak
from streams import stack

pytestmark = pytest.mark.integration
RATE = 5000.0


def test_redis_stall_grows_lag_not_memory(local_stack: stack.StackInfo) -> None:
    pause, resume = 20.0, 32.0
    # the server answering now, not the one the stack started with: a chaos test before this one may have
    # killed and restarted Redis
    pid = int(redis.Redis.from_url(local_stack.redis_url).info("server")["process_id"])

    def stall() -> None:
        os.kill(pid, signal.SIGSTOP)

    def wake() -> None:
        os.kill(pid, signal.SIGCONT)

    try:
        r = soak.run(55, RATE, sample_s=1.0, info=local_stack, events=[(pause, stall), (resume, wake)])
    finally:
        wake()
    samples = r["samples"]
    before = [x for x in samples if x["t"] < pause]
    during = [x for x in samples if pause + 1 <= x["t"] <= resume]
    after = [x for x in samples if x["t"] > resume + 10]
    print([(x["t"], x["rss_mb"], x["lag"]) for x in samples])
    # lag grows while Redis is stalled (nothing is committed past Redis), memory stays within the fetch buffers
    assert max(x["lag"] for x in during) > 5 * RATE
    assert max(x["rss_mb"] for x in during) - max(x["rss_mb"] for x in before) < 150
    # the dedup state (the worker's dedup_state_bytes) is there and holds still while nothing is processed
    assert before[-1]["dedup_state_mb"] > 0
    assert len({x["dedup_state_mb"] for x in during[2:]}) == 1, [x["dedup_state_mb"] for x in during]
    # and everything is processed once Redis is back: lag drains, memory settles
    assert r["lag_after_drain"] == 0 and min(x["lag"] for x in after) < RATE
    assert max(x["rss_mb"] for x in after) - max(x["rss_mb"] for x in before) < 150
    # (a stall longer than the Redis socket timeout is a sink error: the worker rewinds to its checkpoints
    # and retries with backoff - exactness through that path is tested in test_chaos.py)
