"""Backpressure and a short soak: when Redis stalls, the worker stops pulling - lag grows, memory does not -
and when Redis returns, the lag drains to zero. (The 15-minute soak is ``make soak``; its report is in
benchmarks/results.)"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import redis

from benchmarks import soak
from streams import stack
from streams.settings import Settings

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
    # the soak's loops are sightings, not dead letters: each loop is hours later in event time than the one
    # before (the run overrides the check for camera clocks ahead to allow it)
    assert r["loops"] >= 2 and r["input_accounted"], {k: r[k] for k in ("loops", "consumed", "produced",
                                                                         "dead_lettered", "dead_lettered_expected",
                                                                         "sightings_new", "sightings_expected")}
    # (a stall longer than the Redis socket timeout is a sink error: the worker rewinds to its checkpoints
    # and retries with backoff - exactness through that path is tested in test_chaos.py)


def test_a_full_redis_holds_the_worker_back_and_loses_nothing(settings: Settings, tmp_path: Path,
                                                             own_redis: tuple[str, int]) -> None:
    """maxmemory 3 MB with noeviction: Redis refuses the batches' writes once full, the worker rewinds (lag
    grows, /health 503 after PLATESTREAM_HEALTH_STALL_S) and, once Redis has room again, stores every pass
    exactly."""
    import dataclasses

    from streams.producer import send_all
    from streams.simulate import generate
    from streams.topics import ensure_topics
    from tests.conftest import wait_for
    from tests.support import Worker, verify_against_truth, wait_caught_up

    s = dataclasses.replace(settings, redis_url=own_redis[0])
    client = redis.Redis.from_url(s.redis_url)
    client.config_set("maxmemory", 3 << 20)
    traffic = generate(seed=26, vehicles=2000, hours=6, malformed=0.005)
    ensure_topics(s)
    send_all(s, s.topic_reads, traffic.messages)
    worker = Worker(s, tmp_path, PLATESTREAM_HEALTH_STALL_S="2")

    def metrics() -> dict[str, float]:
        try:
            return worker.metrics()
        except OSError:  # (its web server not up yet)
            return {}

    try:
        wait_for(lambda: metrics().get("sink_errors", 0) >= 3 and metrics().get("healthy") == 0, 90,
                 "Redis to refuse writes (OOM) for 2 s")
        assert "OOM" in worker.log() and client.info("memory")["maxmemory_policy"] == "noeviction"
        assert metrics()["lag_records"] > 0  # what it holds back, in its /metrics
        client.config_set("maxmemory", 0)
        wait_caught_up(s, worker)
        wait_for(lambda: metrics().get("lag_records") == 0, 30, "the worker's lag to drain")
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    acc = verify_against_truth(s, traffic)
    assert acc.wrong == [] and (acc.lost, acc.duplicated) == (0, 0) and acc.stored == len(traffic.truth)
    assert acc.dead_lettered == traffic.malformed


def test_a_worker_refuses_a_redis_that_evicts_keys(settings: Settings, tmp_path: Path,
                                                  own_redis: tuple[str, int]) -> None:
    """Any maxmemory-policy but noeviction would let a full Redis drop sightings, checkpoints and audit records
    with nobody deleting them: the worker exits before writing anything, saying what to set."""
    import dataclasses

    from tests.support import Worker

    s = dataclasses.replace(settings, redis_url=own_redis[0])
    client = redis.Redis.from_url(s.redis_url)
    client.config_set("maxmemory-policy", "volatile-lru")
    worker = Worker(s, tmp_path, name="evicting")
    code = worker.exit_code()
    assert code != 0
    assert "maxmemory-policy is volatile-lru" in worker.log() and "noeviction" in worker.log()
    assert client.dbsize() == 0
