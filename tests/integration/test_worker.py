"""End to end against the real Kafka and Redis: a simulated day of traffic through real worker processes."""

from __future__ import annotations

import collections
import signal
from pathlib import Path

import pytest
import redis

from streams.producer import send_all
from streams.settings import Settings
from streams.simulate import generate
from streams.topics import ensure_topics
from tests.conftest import wait_for
from tests.support import Worker, checkpoint_offsets, final_sightings, verify_against_truth, wait_caught_up

pytestmark = pytest.mark.integration


def test_day_of_traffic_exactly_one_trail_entry_per_true_sighting(settings: Settings, tmp_path: Path) -> None:
    traffic = generate(seed=11, vehicles=1500, hours=24, malformed=0.01, late=0.03)
    ensure_topics(settings)
    assert send_all(settings.kafka_bootstrap, settings.topic_reads, traffic.messages) == len(traffic.messages)
    worker = Worker(settings, tmp_path)
    try:
        wait_caught_up(settings, worker)
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]

    acc = verify_against_truth(settings, traffic)
    assert acc.wrong == []
    assert (acc.lost, acc.duplicated) == (0, 0)
    assert acc.stored == len(traffic.truth)
    assert acc.dead_lettered == traffic.malformed > 0
    assert acc.stored + acc.merged + acc.dead_lettered == acc.produced

    # the downstream changelog agrees: one live sighting per true pass, with the right plate text
    final = final_sightings(settings)
    assert len(final) == len(traffic.truth)
    want = collections.Counter((t.plate, t.region, t.camera_id, t.ts, t.reads, t.best_read_id) for t in traffic.truth)
    got = collections.Counter((m["plate"], m["region"], m["camera_id"], m["ts"], m["reads"], m["read_id"])
                              for m in final.values())
    assert got == want
    # no raw plate is a Redis key or inside a stored value
    client = redis.Redis.from_url(settings.redis_url)
    some = [t.plate.encode() for t in traffic.truth[:200]]
    for key in client.scan_iter(count=1000):
        assert not any(p in key for p in some)
    assert "INFO" in worker.log() and not any(t.plate in worker.log() for t in traffic.truth[:500])


def test_sigkill_mid_stream_then_restart_trails_still_exact(settings: Settings, tmp_path: Path) -> None:
    traffic = generate(seed=12, vehicles=1500, hours=12, malformed=0.01, late=0.03)
    ensure_topics(settings)
    send_all(settings.kafka_bootstrap, settings.topic_reads, traffic.messages)
    total = len(traffic.messages)
    client = redis.Redis.from_url(settings.redis_url)
    small = {"PLATESTREAM_BATCH_MAX_RECORDS": "500"}  # many small batches: the kill lands mid-stream

    for kills, fraction in enumerate((0.2, 0.6)):
        worker = Worker(settings, tmp_path, name=f"worker{kills}", **small)
        wait_for(lambda f=fraction: sum(checkpoint_offsets(settings, client).values()) >= f * total, 120,
                 f"{fraction:.0%} progress")
        worker.kill(signal.SIGKILL)
        worker.proc.wait()
        assert sum(checkpoint_offsets(settings, client).values()) < total, "kill came too late to test anything"
    worker = Worker(settings, tmp_path, name="worker-final", **small)
    try:
        wait_caught_up(settings, worker)
    finally:
        worker.stop()

    acc = verify_against_truth(settings, traffic)
    assert acc.wrong == []
    assert (acc.lost, acc.duplicated) == (0, 0)
    assert acc.stored + acc.merged + acc.dead_lettered == acc.produced
    assert len(final_sightings(settings)) == len(traffic.truth)
