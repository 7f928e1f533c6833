"""Bounce things under load, or damage them, and compare input with output exactly (the chaos table's
scenarios 2-8)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest
import redis

from streams import stack
from streams.connect import redis_client
from streams.producer import send_all
from streams.query import trail
from streams.settings import Settings
from streams.simulate import generate
from streams.topics import ensure_topics
from tests.conftest import wait_for
from tests.support import (
    Worker,
    checkpoint_offsets,
    final_sightings,
    process_all,
    read_topic,
    record_run,
    verify_against_truth,
    wait_caught_up,
)

pytestmark = pytest.mark.integration
# small batches, each written to Redis in several chunks (store.plan_batch), also while the worker catches up
SMALL = {"PLATESTREAM_BATCH_MAX_RECORDS": "200", "PLATESTREAM_REDIS_CHUNK_ARGS": "64",
         "PLATESTREAM_REDIS_CHUNK_WHEN": "always"}


def _exact(settings: Settings, traffic: object) -> dict[str, int]:
    """The exact comparison with ground truth; the row also counts changelog records that are replays."""
    acc = verify_against_truth(settings, traffic)  # type: ignore[arg-type]
    assert acc.wrong == []
    assert (acc.lost, acc.duplicated) == (0, 0)
    assert acc.stored + acc.merged + acc.dead_lettered == acc.produced
    replays: list[int] = []
    assert len(final_sightings(settings, replays)) == len(traffic.truth)  # type: ignore[attr-defined]
    return {**acc.row(), "changelog_replays": len(replays)}


def test_rebalance_storm_three_workers_six_partitions(settings: Settings, tmp_path: Path) -> None:
    s = settings
    traffic = generate(seed=21, vehicles=2500, hours=12, malformed=0.01, late=0.03)
    ensure_topics(s, partitions=6)
    rng = random.Random(5)
    workers = [Worker(s, tmp_path, name=f"w{i}", **SMALL) for i in range(3)]
    # the load keeps coming (~6k reads/s for ~15 s) while workers are added and removed every few
    # seconds, by SIGTERM (graceful) or SIGKILL
    producer = threading.Thread(target=send_all, args=(s, s.topic_reads, traffic.messages, 6000))
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
    record_run("5. rebalance storm: 3 workers, 6 partitions, SIGTERM/SIGKILL bounces under load", _exact(s, traffic),
               bounces=bounced)


def test_zombie_worker_after_sigstop_does_not_overwrite_newer_state(settings: Settings, tmp_path: Path) -> None:
    """The zombie freezes itself (fault injection) with a processed batch in hand, right before its Redis
    write; an heir takes its partitions and moves on; woken up, the zombie's write must be fenced."""
    s = settings
    traffic = generate(seed=22, vehicles=1500, hours=12, malformed=0.01, late=0.03)
    ensure_topics(s)
    send_all(s, s.topic_reads, traffic.messages)
    client = redis.Redis.from_url(s.redis_url)
    zombie = Worker(s, tmp_path, name="zombie", PLATESTREAM_CRASH_AFTER="sink.deduped:5:stop", **SMALL)
    wait_for(lambda: "fault injection: stopping" in zombie.log(), 120, "the zombie to freeze")
    frozen_at = checkpoint_offsets(s, client)
    heir = Worker(s, tmp_path, name="heir", **SMALL)
    try:
        # the heir has moved every partition's checkpoint past where the zombie froze
        wait_for(lambda: all(checkpoint_offsets(s, client).get(p, 0) > frozen_at.get(p, 0) for p in range(4)), 120,
                 "the heir's progress on every partition")
        os.killpg(zombie.proc.pid, signal.SIGCONT)  # wakes up and tries to write its stale batch
        wait_for(lambda: "checkpoint moved under us" in zombie.log(), 60, "the zombie to be fenced")
        wait_caught_up(s, heir, timeout=180)
    finally:
        zombie.stop()
        heir.stop()
    assert "fault injection: resumed after SIGSTOP" in zombie.log()
    record_run("6. SIGSTOP a worker with a batch in hand past the session timeout, heir takes over, SIGCONT: "
               "fenced", _exact(s, traffic))


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
    try:
        return worker, _exact(s, traffic)
    except AssertionError as e:  # the worker's own account of the crash, before pytest removes its log
        said = [line for line in worker.log().splitlines()
                if any(w in line for w in ("rewind", "unavailable", "starts at offset", "assigned", "fenced"))]
        raise AssertionError(f"{e}\nworker log:\n" + "\n".join(said[-40:])) from None


def test_redis_crash_with_aof_loses_nothing(settings: Settings, local_stack: stack.StackInfo, tmp_path: Path) -> None:
    worker, row = _crash_and_restart(settings, local_stack, tmp_path, 23, "redis")
    assert "rewinding to the checkpoints" in worker.log()
    record_run("3. Redis SIGKILL mid-stream, restart from AOF (everysec)", row)


def test_kafka_broker_restart_under_load(settings: Settings, local_stack: stack.StackInfo, tmp_path: Path) -> None:
    _, row = _crash_and_restart(settings, local_stack, tmp_path, 24, "kafka")
    # the idempotent producer retries across the restart: not even a replayed record downstream
    assert row["changelog_replays"] == 0
    record_run("4. Kafka broker SIGKILL mid-stream, restart", row)


def test_fault_injection_between_the_sinks(settings: Settings, tmp_path: Path) -> None:
    """Scenario 2 at process level: the worker dies right after Redis acked and before the offset commit
    (and, once, after the topics acked and before Redis; once between the chunks of a Redis write); each
    restart converges to the exact result."""
    s = settings
    traffic = generate(seed=25, vehicles=1500, hours=12, malformed=0.01, late=0.03)
    ensure_topics(s)
    send_all(s, s.topic_reads, traffic.messages)
    points = ["sink.redis:6", "sink.deduped:4", "sink.redis.first_chunk:3", "sink.redis:9", "sink.redis:2"]
    for i, point in enumerate(points):
        w = Worker(s, tmp_path, name=f"crash{i}", PLATESTREAM_CRASH_AFTER=point, **SMALL)
        assert w.proc.wait(120) == 137, w.log()[-2000:]
        assert f"fault injection: exiting right after {point.split(':')[0]} of batch" in w.log()
    final = Worker(s, tmp_path, name="final", **SMALL)
    try:
        wait_caught_up(s, final)
    finally:
        final.stop()
    record_run("2. crash right after the Redis write, before the commit (x3), after produce (x1) and between "
               "the chunks of a Redis write (x1)",
               _exact(s, traffic), crashes=len(points))


def test_hundred_thousand_poison_messages_through_kafka(settings: Settings, tmp_path: Path) -> None:
    """Scenario 7 end to end: poison and valid reads interleaved in Kafka; the worker never stops, every
    poison message is in the DLQ once with its reason and coordinates, every valid read is stored."""
    import orjson

    from tests.support import read_topic
    from tests.test_fuzz import VALID, adversarial

    s = dataclasses.replace(settings, max_message_bytes=4096)
    rng = random.Random(7)
    messages: list[tuple[bytes | None, bytes]] = []
    poison: set[int] = set()
    for i in range(100_000):
        poison.add(len(messages))
        messages.append((None, adversarial(rng, i, nest=1100, huge=5000)))  # sized for the broker, same kinds
        if i % 10 == 0:
            messages.append((None, orjson.dumps({**VALID, "read_id": f"ok-{i}", "ts": VALID["ts"] + i * 60_000})))
    process_all(s, tmp_path, messages, partitions=1, timeout=240)  # one partition: offsets name the messages
    dead = {}
    for r in read_topic(s, s.topic_dlq):
        rec = orjson.loads(r.value)
        assert rec["reason"] and rec["topic"] == s.topic_reads and rec["partition"] == 0
        assert rec["offset"] not in dead, "dead-lettered twice"
        dead[rec["offset"]] = rec["reason"]
    assert set(dead) == poison
    assert set(dead.values()) >= {"invalid_utf8", "invalid_json", "too_large", "not_an_object", "missing_field",
                                  "invalid_field"}
    stored = trail(redis_client(s), s, VALID["plate"], VALID["region"])
    assert sorted(r["read_id"] for r in stored) == sorted(f"ok-{i}" for i in range(0, 100_000, 10))
    record_run("7. 100,000 poison payloads (16 kinds) + 10,000 valid reads through Kafka and a worker",
               {"produced": len(messages), "stored": len(stored), "merged": 0, "dead_lettered": len(dead),
                "lost": len(poison - set(dead)) + 10_000 - len(stored), "duplicated": 0})


def test_a_record_batch_damaged_on_the_brokers_disk_is_dead_lettered_and_the_worker_goes_on(
        settings: Settings, local_stack: stack.StackInfo, tmp_path: Path) -> None:
    """Scenario 8: a byte of a read flipped in the broker's log segment (bit rot; the broker serves fetches from
    the file unchecked): the batch fails its CRC-32C. Every record of that batch is dead-lettered as
    ``corrupt_batch`` with its own offset (which one is damaged is unknown), the reads of the other batches are
    stored, and the worker goes on; a restarted worker starts after the batch and letters none of it again.
    Before, the worker stopped on it, and every restart (or every worker the partition moved to) stopped on it
    again."""
    from aiokafka.record.memory_records import MemoryRecords

    s = settings
    ensure_topics(s, 1)
    now = int(time.time() * 1000) - 3_600_000

    def read(i: int) -> tuple[bytes, bytes]:
        return b"cam-%d" % (i % 7), orjson.dumps({
            "read_id": f"r{i}", "camera_id": f"cam-{i % 7}", "agency": "hartford", "plate": f"CR{i:04d}",
            "region": "US-CT", "ts": now + i * 1000, "lat": 41.76, "lon": -72.67, "confidence": 0.9})

    for lo in (0, 100, 200):  # three sends: three (or more) record batches
        assert send_all(s, s.topic_reads, [read(i) for i in range(lo, lo + 100)]) == 100
    segment = Path(local_stack.state_dir) / "kafka" / "data" / f"{s.topic_reads}-0" / "00000000000000000000.log"
    data = bytearray(segment.read_bytes())
    at = data.index(b'"plate":"CR0150"') + len(b'"plate":"CR01')
    data[at] ^= 0x01  # CR0150 -> CR0140: a plausible read of another vehicle, under a CRC that no longer matches
    with open(segment, "r+b") as f:
        f.seek(at)
        f.write(bytes(data[at : at + 1]))
    # the record batch holding offset 150: its offsets are the letters expected
    records = MemoryRecords(bytes(segment.read_bytes()))
    damaged: list[int] = []
    while records.has_next():
        offsets = [r.offset for r in records.next_batch()]
        if 150 in offsets:
            damaged = offsets
    assert 150 in damaged and len(damaged) < 300

    client = redis.Redis.from_url(s.redis_url)
    worker = Worker(s, tmp_path)
    try:
        wait_caught_up(s, worker, timeout=120)
        metrics = worker.metrics()
    finally:
        assert worker.stop() == 0
    assert (metrics["consumed"], metrics["dead_lettered"], metrics["corrupt_batches"]) == (300, len(damaged), 1)
    letters = [orjson.loads(r.value) for r in read_topic(s, s.topic_dlq)]
    assert sorted(d["offset"] for d in letters) == damaged
    assert {(d["reason"], d["step"], d["topic"], d["partition"]) for d in letters} == {
        ("corrupt_batch", "fetch", s.topic_reads, 0)}
    assert f"offsets {damaged[0]}-{damaged[-1]}" in letters[0]["detail"]
    kept = {d["offset"]: orjson.loads(d["value"]) for d in letters}
    assert kept[150]["plate"] == "CR0140" and kept[150]["read_id"] == "r150"  # what the damaged bytes say
    assert all(kept[o] == orjson.loads(read(o)[1]) for o in damaged if o != 150)
    for i in range(300):
        assert len(trail(client, s, f"CR{i:04d}", "US-CT")) == (0 if i in damaged else 1), i
    assert "corrupt_batch" in worker.log() and f"offsets {damaged[0]}-{damaged[-1]}" in worker.log()

    # a restart goes on after the batch: nothing lettered again, new reads stored
    assert send_all(s, s.topic_reads, [read(i) for i in range(300, 310)]) == 10
    again = Worker(s, tmp_path, name="again")
    try:
        wait_caught_up(s, again, timeout=120)
        metrics = again.metrics()
    finally:
        assert again.stop() == 0
    assert (metrics["consumed"], metrics["dead_lettered"]) == (10, 0)
    assert len(read_topic(s, s.topic_dlq)) == len(damaged)
    assert all(len(trail(client, s, f"CR{i:04d}", "US-CT")) == 1 for i in range(300, 310))
    stored = sum(len(trail(client, s, f"CR{i:04d}", "US-CT")) for i in range(310))
    record_run("8. a record batch damaged on the broker's disk (a byte of its log segment flipped), restart",
               {"produced": 310, "stored": stored, "merged": 0, "dead_lettered": len(letters),
                "lost": 310 - stored - len(set(kept)), "duplicated": len(letters) - len(set(kept))})
