"""Bounce things under load and compare input with output exactly (issue 5 scenarios 3, 5, 6)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
import redis

from streams import stack
from streams.producer import send_all
from streams.settings import Settings
from streams.simulate import generate
from streams.topics import ensure_topics
from tests.conftest import wait_for
from tests.support import Worker, checkpoint_offsets, final_sightings, verify_against_truth, wait_caught_up

pytestmark = pytest.mark.integration
SMALL = {"PLATESTREAM_BATCH_MAX_RECORDS": "200"}


def _exact(settings: Settings, traffic: object) -> dict[str, int]:
    acc = verify_against_truth(settings, traffic)  # type: ignore[arg-type]
    assert acc.wrong == []
    assert (acc.lost, acc.duplicated) == (0, 0)
    assert acc.stored + acc.merged + acc.dead_lettered == acc.produced
    assert len(final_sightings(settings)) == len(traffic.truth)  # type: ignore[attr-defined]
    return acc.row()


def test_rebalance_storm_three_workers_six_partitions(settings: Settings, tmp_path: Path) -> None:
    s = settings
    traffic = generate(seed=21, vehicles=2500, hours=12, malformed=0.01, late=0.03)
    ensure_topics(s, partitions=6)
    rng = random.Random(5)
    workers = [Worker(s, tmp_path, name=f"w{i}", **SMALL) for i in range(3)]
    # the load keeps coming (~6k reads/s for ~15 s) while workers are added and removed every few
    # seconds, by SIGTERM (graceful) or SIGKILL
    producer = threading.Thread(target=send_all, args=(s.kafka_bootstrap, s.topic_reads, traffic.messages, 6000))
    producer.start()
    bounced = 0
    while producer.is_alive() or bounced < 6:
        time.sleep(rng.uniform(1.5, 3.0))
        victim = workers.pop(rng.randrange(len(workers)))
        victim.kill(rng.choice([signal.SIGTERM, signal.SIGKILL]))
        victim.proc.wait(60)
        workers.append(Worker(s, tmp_path, name=f"w{bounced + 3}", **SMALL))
        bounced += 1
    producer.join()
    try:
        wait_caught_up(s, None, timeout=180)
    finally:
        for w in workers:
            w.stop()
    row = _exact(s, traffic)
    print(f"rebalance storm ({bounced} bounces): {json.dumps(row)}")


def test_zombie_worker_after_sigstop_does_not_overwrite_newer_state(settings: Settings, tmp_path: Path) -> None:
    s = settings
    traffic = generate(seed=22, vehicles=1500, hours=12, malformed=0.01, late=0.03)
    ensure_topics(s)
    send_all(s, s.topic_reads, traffic.messages)
    client = redis.Redis.from_url(s.redis_url)
    total = len(traffic.messages)
    zombie = Worker(s, tmp_path, name="zombie", **SMALL)
    wait_for(lambda: sum(checkpoint_offsets(s, client).values()) > 0.1 * total, 120, "first progress")
    os.killpg(zombie.proc.pid, signal.SIGSTOP)  # frozen mid-stream, past the session timeout
    heir = Worker(s, tmp_path, name="heir", **SMALL)
    try:
        frozen_at = sum(checkpoint_offsets(s, client).values())
        wait_for(lambda: sum(checkpoint_offsets(s, client).values()) > frozen_at, 120, "the heir's progress")
        os.killpg(zombie.proc.pid, signal.SIGCONT)  # wakes up with a stale batch in hand
        wait_caught_up(s, heir, timeout=180)
        time.sleep(3)  # give the zombie every chance to write what it still holds
    finally:
        zombie.stop()
        heir.stop()
    row = _exact(s, traffic)
    print(f"zombie: {json.dumps(row)}")


def _crash_and_restart(settings: Settings, local_stack: stack.StackInfo, tmp_path: Path, seed: int,
                       server: str) -> tuple[Worker, dict[str, int]]:
    """Process a stream; SIGKILL ``server`` ("redis" or "kafka") mid-stream; restart it on the same port and
    data; require the exact result."""
    s = settings
    traffic = generate(seed=seed, vehicles=1500, hours=12, malformed=0.01, late=0.03)
    ensure_topics(s)
    send_all(s, s.topic_reads, traffic.messages)
    client = redis.Redis.from_url(s.redis_url)
    total = len(traffic.messages)
    worker = Worker(s, tmp_path, name="worker", **SMALL)
    state = Path(local_stack.state_dir)
    try:
        wait_for(lambda: sum(checkpoint_offsets(s, client).values()) > 0.3 * total, 120, "progress")
        info = stack.read_info(state)
        assert info is not None
        if server == "redis":  # appendfsync everysec: the last second may be lost, and replayed from Kafka
            os.killpg(info.redis_pid, signal.SIGKILL)
            time.sleep(2.0)  # the worker's batches fail meanwhile; nothing may be committed past Redis
            info.redis_pid = stack.start_redis(state, info.redis_port)
        else:
            os.killpg(info.kafka_pid, signal.SIGKILL)
            time.sleep(3.0)
            info.kafka_pid = stack.start_kafka(state, info.kafka_port, info.controller_port)
        (state / "stack.json").write_text(json.dumps(dataclasses.asdict(info)))
        wait_caught_up(s, worker, timeout=240)
    finally:
        worker.stop()
    return worker, _exact(s, traffic)


def test_redis_crash_with_aof_loses_nothing(settings: Settings, local_stack: stack.StackInfo, tmp_path: Path) -> None:
    worker, row = _crash_and_restart(settings, local_stack, tmp_path, 23, "redis")
    assert "rewinding to the checkpoints" in worker.log()
    print(f"redis crash: {json.dumps(row)}")


def test_kafka_broker_restart_under_load(settings: Settings, local_stack: stack.StackInfo, tmp_path: Path) -> None:
    _, row = _crash_and_restart(settings, local_stack, tmp_path, 24, "kafka")
    print(f"broker restart: {json.dumps(row)}")
