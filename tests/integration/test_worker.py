"""End to end against the real Kafka and Redis: a simulated day of traffic through real worker processes."""

from __future__ import annotations

import collections
import dataclasses
import signal
import time
from pathlib import Path

import orjson
import pytest
import redis

from streams.producer import send_all
from streams.settings import Settings
from streams.simulate import generate
from streams.topics import ensure_topics
from tests.conftest import wait_for
from tests.support import (
    Worker,
    alert_metric_names,
    checkpoint_offsets,
    final_sightings,
    process_all,
    read_topic,
    record_run,
    set_topic_config,
    verify_against_truth,
    wait_caught_up,
)

pytestmark = pytest.mark.integration


def test_day_of_traffic_exactly_one_trail_entry_per_true_sighting(settings: Settings, tmp_path: Path) -> None:
    traffic = generate(seed=11, vehicles=1500, hours=24, malformed=0.01, late=0.03)
    worker = process_all(settings, tmp_path, traffic.messages)

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
    # faust's data directory lives under the state directory, not in the directory the worker ran from
    root = Path(__file__).resolve().parents[2]
    assert (settings.state_dir / "faust" / f"{settings.group}-app").is_dir()
    assert not (root / f"{settings.group}-app-data").exists()


def test_camera_traffic_in_every_kafka_codec_is_stored_exactly(settings: Settings, tmp_path: Path) -> None:
    """Producers compress as their client is configured (lz4 and snappy are common defaults): batches of
    each codec, mixed with plain ones, in every partition, end as exactly the true sightings."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    from streams import connect

    traffic = generate(seed=23, vehicles=400, hours=6, malformed=0.01)
    codecs = (None, "gzip", "snappy", "lz4", "zstd")

    async def produce() -> None:  # in order, each run of 300 reads through the next codec's producer
        producers = [AIOKafkaProducer(**connect.kafka(settings), acks="all", compression_type=c, linger_ms=5)
                     for c in codecs]
        for producer in producers:
            await producer.start()
        try:
            for k, lo in enumerate(range(0, len(traffic.messages), 300)):
                producer = producers[k % len(codecs)]
                await asyncio.gather(*[await producer.send(settings.topic_reads, value=v, key=key)
                                       for key, v in traffic.messages[lo : lo + 300]])
        finally:
            for producer in producers:
                await producer.stop()

    ensure_topics(settings)
    asyncio.run(produce())
    worker = Worker(settings, tmp_path)
    try:
        wait_caught_up(settings, worker)
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    acc = verify_against_truth(settings, traffic)
    assert acc.wrong == [] and (acc.lost, acc.duplicated) == (0, 0)
    assert acc.stored == len(traffic.truth) and acc.dead_lettered == traffic.malformed > 0


def test_a_dead_letter_too_big_for_the_dlq_topic_is_cut_to_fit_and_processing_goes_on(settings: Settings,
                                                                                     tmp_path: Path) -> None:
    """A 2 MB message of control characters is 12 MB as a dead letter's JSON text: more than a record batch and
    than the DLQ topic takes (Kafka's default 1 MB). It is dead-lettered with its first bytes, its size and its
    digest (the whole message stays in the reads topic at the offset the letter names); everything else is
    stored exactly."""
    import hashlib

    from streams.records import DLQ_RECORD_MAX_BYTES, DLQ_VALUE_PREFIX_BYTES

    traffic = generate(seed=24, vehicles=200, hours=3, malformed=0.01)
    ensure_topics(settings)
    # the local stack's brokers take 16 MB; a production DLQ topic takes Kafka's default
    set_topic_config(settings, settings.topic_dlq, max_message_bytes="1048588")
    poison = bytes(range(1, 32)) * (2_000_000 // 31)
    half = len(traffic.messages) // 2
    process_all(settings, tmp_path, [*traffic.messages[:half], (b"cam-x", poison), *traffic.messages[half:]])
    acc = verify_against_truth(settings, traffic)
    assert acc.wrong == [] and (acc.lost, acc.duplicated) == (0, 0) and acc.stored == len(traffic.truth)
    letters = [orjson.loads(r.value) for r in read_topic(settings, settings.topic_dlq)]
    [cut] = [d for d in letters if d.get("value_truncated")]
    assert len(letters) == traffic.malformed + 1
    assert (cut["reason"], cut["value_bytes"], cut["value_sha256"]) == (
        "too_large", len(poison), hashlib.sha256(poison).hexdigest())
    assert cut["value"].encode() == poison[:DLQ_VALUE_PREFIX_BYTES] and cut["value_encoding"] == "utf-8"
    assert max(len(r.value) for r in read_topic(settings, settings.topic_dlq)) <= DLQ_RECORD_MAX_BYTES


def test_a_worker_whose_dead_letters_the_brokers_refuse_for_a_while_catches_up_exactly_after(settings: Settings,
                                                                                           tmp_path: Path) -> None:
    """Half the traffic in, the DLQ topic takes no record (max.message.bytes 200) for a while and then does
    again: the worker rewinds meanwhile, then replaces its producer (the refused batches left gaps in its
    idempotent sequence to partitions it had written, which the brokers refuse every later batch for) and
    stores every read exactly, each malformed message dead-lettered once. ``/health`` answers 503 once the
    errors have kept coming for ``PLATESTREAM_HEALTH_STALL_S``, 200 after; ``/metrics`` counts them, as JSON and
    for Prometheus."""
    import typing
    import urllib.error
    import urllib.request
    from typing import Any

    from prometheus_client.parser import text_string_to_metric_families

    from streams.names import Step

    traffic = generate(seed=25, vehicles=300, hours=3, malformed=0.01)
    ensure_topics(settings)
    half = len(traffic.messages) // 2
    send_all(settings, settings.topic_reads, traffic.messages[:half])
    worker = Worker(settings, tmp_path, PLATESTREAM_HEALTH_STALL_S="2")
    try:
        wait_caught_up(settings, worker)
        written = len(read_topic(settings, settings.topic_dlq))
        assert written > 0
        set_topic_config(settings, settings.topic_dlq, max_message_bytes="200")
        send_all(settings, settings.topic_reads, traffic.messages[half:])

        def health() -> tuple[int, dict[str, Any]]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/health", timeout=5) as r:
                    return r.status, orjson.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, orjson.loads(e.read())

        def sink_errors() -> int:
            try:
                return int(worker.metrics().get("sink_errors", 0))
            except OSError:  # (its web server not up yet)
                return 0

        wait_for(lambda: sink_errors() >= 3, 60, "the refused dead letters")
        assert len(read_topic(settings, settings.topic_dlq)) == written
        wait_for(lambda: health()[0] == 503, 30, "/health to say the sinks have failed for 2 s")
        code, body = health()
        assert code == 503
        assert body["sinks_failing_for_s"] >= 2 and "MessageSizeTooLarge" in body["first_error"]
        set_topic_config(settings, settings.topic_dlq, max_message_bytes="1048588")
        wait_caught_up(settings, worker)
        assert worker.metrics()["producer_renewed"] >= 3
        # (at its next empty poll: every partition's reads have landed)
        wait_for(lambda: health() == (200, {"ok": True, "step_names": list(typing.get_args(Step))}), 1.5,
                 "/health to be 200 again, before the stall time would have ended the run of errors anyway")
        # the same counts in Prometheus's text format, as its scraper asks for them
        scrape = urllib.request.Request(f"http://127.0.0.1:{worker.port}/metrics", headers={
            "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"})
        with urllib.request.urlopen(scrape, timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = r.read().decode()
        prom = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
        json_form = worker.metrics()
        assert prom["platestream_consumed_total"] == json_form["consumed"] == len(traffic.messages)
        assert prom["platestream_sink_errors_total"] == json_form["sink_errors"] >= 3
        assert prom["platestream_healthy"] == 1 and prom["process_resident_memory_bytes"] > 0
        assert alert_metric_names("platestream-worker") <= set(prom)  # what deploy/prometheus/alerts.yml reads
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    acc = verify_against_truth(settings, traffic)
    assert acc.wrong == [] and (acc.lost, acc.duplicated) == (0, 0) and acc.stored == len(traffic.truth)
    assert acc.dead_lettered == traffic.malformed > 0


def test_a_worker_asked_for_json_logs_writes_only_json_lines(settings: Settings, tmp_path: Path) -> None:
    """``PLATESTREAM_LOG_FORMAT=json``: every line the worker writes, faust's included, is one JSON object; the
    start, the dead letters' count and the stop are there, and no plate is."""
    traffic = generate(seed=27, vehicles=100, hours=2, malformed=0.02)
    worker = process_all(settings, tmp_path, traffic.messages, PLATESTREAM_LOG_FORMAT="json")
    lines = [orjson.loads(line) for line in worker.log().splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "pid", "message"} <= set(line) for line in lines)
    messages = [line["message"] for line in lines]
    assert any(m.startswith("worker started") for m in messages)
    assert {line["logger"] for line in lines} >= {"platestream.worker"}
    assert not {t.plate for t in traffic.truth} & {w for m in messages for w in m.split()}


def test_sigkill_mid_stream_then_restart_trails_still_exact(settings: Settings, tmp_path: Path) -> None:
    traffic = generate(seed=12, vehicles=1500, hours=12, malformed=0.01, late=0.03)
    ensure_topics(settings)
    send_all(settings, settings.topic_reads, traffic.messages)
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
    replays: list[int] = []
    assert len(final_sightings(settings, replays)) == len(traffic.truth)
    record_run("1. SIGKILL the worker mid-batch, twice, restart", acc.row(), changelog_replays=len(replays))


def test_hotlist_alerts_through_the_worker(settings: Settings, tmp_path: Path) -> None:
    import orjson

    from streams import hotlist
    from tests.support import read_topic

    traffic = generate(seed=13, vehicles=400, hours=6, malformed=0.0, late=0.0)
    # the vehicle with the most passes at Hartford cameras is on Hartford's hotlist
    counts = collections.Counter(t.plate for t in traffic.truth if t.agency == "hartford-pd")
    wanted = counts.most_common(1)[0][0]
    region = traffic.plates[wanted]
    client = redis.Redis.from_url(settings.redis_url)
    hotlist.store(client, [hotlist.make_entry("hartford-pd", {"plate": wanted, "region": region,
                                                              "reason": "stolen"}, "test")])
    policy = Path(__file__).resolve().parents[2] / "deploy" / "policy.example.yaml"
    process_all(settings, tmp_path, traffic.messages, PLATESTREAM_POLICY=str(policy))
    alerts = [orjson.loads(r.value) for r in read_topic(settings, settings.topic_alerts)]
    # the example policy lets nobody else's cameras answer Hartford's hotlist without a grant
    expected = sorted((t.camera_id, t.ts) for t in traffic.truth if t.plate == wanted and t.agency == "hartford-pd")
    got = sorted({(a["camera_id"], a["sighting_id"]): a["ts"] for a in alerts}.items())
    assert len(got) == len(expected) == counts[wanted] > 0
    assert {a["hotlist_agency"] for a in alerts} == {"hartford-pd"}


def test_a_worker_keeps_kafkas_copies_within_the_policys_retention(settings: Settings, tmp_path: Path) -> None:
    """At start, and after the policy file changes, the data topics keep records no longer than the strictest
    agency's retention (``topics.apply_retention``): the reads topic holds plates in clear."""
    import yaml
    from kafka.admin import KafkaAdminClient

    from streams.topics import retention_configs

    def write_policy(non_hit_days: float) -> None:
        policy.write_text(yaml.safe_dump({"version": 1, "agencies": [
            {"id": "a", "name": "A", "state": "CT", "kind": "local",
             "retention": {"non_hit_days": non_hit_days, "hit_days": 30}}]}))

    def kept() -> dict[str, int]:
        topics = [settings.topic_reads, settings.topic_deduped, settings.topic_dlq]
        return {t: int(c["retention.ms"]["value"]) for t, c in retention_configs(admin, topics).items()}

    policy = tmp_path / "policy.yaml"
    write_policy(0.5)
    worker = Worker(settings, tmp_path, PLATESTREAM_POLICY=str(policy), PLATESTREAM_RETENTION_INTERVAL_S="1")
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        wait_for(lambda: "worker started" in worker.log(), 120, "the worker to start")
        wait_for(lambda: set(kept().values()) == {43_200_000}, 30, "12 hours on the data topics")
        write_policy(0.25)  # the file changes: the next sweep brings the topics down with it
        wait_for(lambda: set(kept().values()) == {21_600_000}, 60, "6 hours after the policy changed")
    finally:
        admin.close()
        assert worker.stop() == 0, worker.log()[-3000:]


def test_a_worker_refuses_replicas_the_brokers_cannot_give_before_faust_makes_a_topic(settings: Settings,
                                                                                        tmp_path: Path) -> None:
    """``PLATESTREAM_REPLICATION_FACTOR=2`` on one broker, the data topics already there: the worker exits with
    the broker's reason instead of running with faust's leader topic at one replica."""
    from kafka.admin import KafkaAdminClient

    from streams.topics import leader_topic

    ensure_topics(settings)
    worker = Worker(settings, tmp_path, name="rf2", PLATESTREAM_REPLICATION_FACTOR="2")
    code = worker.exit_code()
    assert code == 1, worker.log()[-3000:]
    assert "error: the worker's topics: InvalidReplicationFactorError" in worker.log()
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        assert leader_topic(settings) not in admin.list_topics()
    finally:
        admin.close()


def test_a_stop_that_overruns_its_deadline_still_exits(settings: Settings, tmp_path: Path) -> None:
    """PLATESTREAM_STOP_TIMEOUT_S bounds a stop even if a shutdown step hangs: here the deadline is shorter
    than any real shutdown (faust alone takes over a second), so it is the deadline that ends the process."""
    worker = Worker(settings, tmp_path, PLATESTREAM_STOP_TIMEOUT_S="0.1")
    wait_for(lambda: "worker started" in worker.log(), 120, "the worker to start")
    began = time.monotonic()
    assert worker.stop(timeout=30) == 70, worker.log()[-3000:]
    assert time.monotonic() - began < 15
    assert "still stopping 0.1s after the stop signal" in worker.log()


def test_a_worker_refuses_to_start_on_a_redis_of_another_layout(settings: Settings, tmp_path: Path) -> None:
    """Mixing two encodings would corrupt trails: the worker exits with the reason before it writes."""
    from streams.store import LAYOUT_VERSION, META_KEY

    client = redis.Redis.from_url(settings.redis_url)
    client.hset(META_KEY, "layout", LAYOUT_VERSION - 1)
    worker = Worker(settings, tmp_path, name="old-layout")
    code = worker.exit_code()
    assert code != 0
    assert f"layout {LAYOUT_VERSION - 1}, this version writes {LAYOUT_VERSION}" in worker.log()
    assert client.keys("ps:ck:*") == [] and client.keys("ps:t:*") == []


def test_a_worker_left_at_the_default_bucket_keeps_the_one_an_older_version_wrote(settings: Settings,
                                                                                   tmp_path: Path) -> None:
    """A Redis marked by a version that did not record the area index's bucket (900 s, its default then): a
    worker with ``PLATESTREAM_CELL_BUCKET_S`` unset (default 300 for a fresh Redis) records and writes 900, so
    older and newer entries of a cell and time stay in one key."""
    from streams.store import CELL_BUCKET, LAYOUT_VERSION, META_KEY

    assert not settings.cell_bucket_pinned
    client = redis.Redis.from_url(settings.redis_url)
    client.hset(META_KEY, "layout", LAYOUT_VERSION)
    t0 = 1_764_000_000_000  # a 900-second bucket's start; reads 4 minutes apart: 2 of those, 4 of 300 seconds
    reads = [{"read_id": f"r{i}", "camera_id": "cam-1", "agency": "hartford-pd", "plate": "ABC123",
              "region": "US-CT", "ts": t0 + i * 240_000, "lat": 41.7637, "lon": -72.6851, "confidence": 0.9}
             for i in range(5)]
    process_all(settings, tmp_path, [(None, orjson.dumps(r)) for r in reads], partitions=1)
    assert client.hget(META_KEY, CELL_BUCKET) == b"900"
    buckets = {int(k.decode().rstrip("}").rsplit(":", 1)[1]) for k in client.keys("ps:c:*")}
    assert buckets == {t0 // 900_000, t0 // 900_000 + 1}


def test_a_worker_on_a_redis_that_would_double_trail_memory_says_so(settings: Settings, tmp_path: Path) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    tuned = client.config_get("zset-max-listpack-value")["zset-max-listpack-value"]
    client.config_set("zset-max-listpack-value", "64")  # Redis's default
    worker = Worker(settings, tmp_path, name="default-redis")
    try:
        wait_for(lambda: "as skiplists" in worker.log(), 90, "the worker's warning")
    finally:
        client.config_set("zset-max-listpack-value", tuned)
        worker.stop()
    assert ("stores sorted sets of 512 members of 100 bytes as skiplists: trails will take about twice the memory"
            in worker.log())
    assert client.keys("ps:probe:*") == []


def test_reads_deleted_before_the_worker_got_them_are_reported(settings: Settings, tmp_path: Path) -> None:
    """A checkpoint waits at offset 0 but the topic no longer holds it (retention ran while no worker was
    up): the worker goes on from the earliest offset there is, and says which reads it never saw."""
    from kafka import KafkaAdminClient
    from kafka.structs import TopicPartition as KafkaPartition

    from streams.pipeline import META_OFFSET, META_WATERMARK
    from streams.store import checkpoint_key

    s = settings
    ensure_topics(s)
    send_all(s, s.topic_reads, generate(seed=3, vehicles=200, hours=1).messages[:800])
    client = redis.Redis.from_url(s.redis_url)
    for p in range(s.partitions):
        client.hset(checkpoint_key(s.group, s.topic_reads, p), mapping={META_OFFSET: 0, META_WATERMARK: -(2**62)})
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    try:
        admin.delete_records({KafkaPartition(s.topic_reads, p): 5 for p in range(s.partitions)})
    finally:
        admin.close()
    worker = Worker(s, tmp_path, name="after-retention")
    try:
        wait_caught_up(s, worker, timeout=120)
    finally:
        worker.stop()
    for p in range(s.partitions):
        assert f"partition={p}) starts at offset 5, its checkpoint at 0" in worker.log()


def test_a_redis_that_lost_a_partitions_data_is_refilled_from_the_start_of_the_topic(settings: Settings,
                                                                                      tmp_path: Path) -> None:
    """Redis is the source of truth for what is stored: a partition without a checkpoint (Redis lost it)
    restarts from the first read the topic holds, not from the group's committed offset past it."""
    s = settings
    traffic = generate(seed=5, vehicles=300, hours=2)
    ensure_topics(s)
    send_all(s, s.topic_reads, traffic.messages)
    first = Worker(s, tmp_path, name="first")
    try:
        wait_caught_up(s, first, timeout=120)
    finally:
        first.stop()
    client = redis.Redis.from_url(s.redis_url)
    client.flushdb()  # everything lost; Kafka still holds the group's committed offsets, at the end
    second = Worker(s, tmp_path, name="second")
    try:
        wait_caught_up(s, second, timeout=120)
    finally:
        second.stop()
    acc = verify_against_truth(s, traffic)
    assert acc.wrong == [] and acc.lost == 0 and acc.stored == len(traffic.truth)


def test_a_worker_writes_whole_batches_while_it_catches_up_and_chunks_once_it_keeps_up(settings: Settings,
                                                                                       tmp_path: Path) -> None:
    """Chunked Redis writes shorten the lookups' wait behind a batch but cost throughput, so by default
    (PLATESTREAM_REDIS_CHUNK_WHEN=4) only a worker within four polls of the log's end writes them: a backlog
    goes to Redis in whole batches, live traffic in chunks, and what is stored is exact either way."""
    s = dataclasses.replace(settings, batch_max_records=200, redis_chunk_args=16)  # every batch has > 16 arguments
    traffic = generate(seed=5, vehicles=300, hours=2)
    live = 400
    backlog, tail = traffic.messages[:-live], traffic.messages[-live:]
    ensure_topics(s)
    send_all(s, s.topic_reads, backlog)
    worker = Worker(s, tmp_path)
    try:
        wait_caught_up(s, worker, timeout=120)
        caught = worker.metrics()
        for lo in range(0, live, 50):  # the worker keeps up with these
            send_all(s, s.topic_reads, tail[lo : lo + 50])
            wait_caught_up(s, worker, timeout=60)
        done = worker.metrics()
    finally:
        worker.stop()
    # a poll takes at most 200 records, and every one that left more than four polls of the backlog unread went
    # whole; the ones that left fewer were chunked (at least four of them: each took at most 200 records)
    polls = s.chunk_within_polls
    assert polls == 4
    assert caught["redis_batches_whole"] >= (len(backlog) - (polls + 1) * 200) // 200
    assert caught["redis_batches_chunked"] >= polls
    assert done["redis_batches_whole"] == caught["redis_batches_whole"]
    assert done["redis_batches_chunked"] >= caught["redis_batches_chunked"] + live // 50
    acc = verify_against_truth(s, traffic)
    assert acc.wrong == [] and (acc.lost, acc.duplicated) == (0, 0) and acc.stored == len(traffic.truth)
    # the plate directory's values: sealed once per vehicle any stored sighting named (300 vehicles: the worker's
    # cache drops none), the vehicle's other sightings take the remembered value
    named = {m["vehicle"] for m in map(orjson.loads, (r.value for r in read_topic(s, s.topic_deduped)))
             if m["op"] == "upsert"}
    assert done["directory_seal_cache_misses"] == len(named) > 0
    assert done["directory_seal_cache_hits"] > done["directory_seal_cache_misses"]


def test_a_failed_retention_pass_is_counted_and_the_next_one_still_runs(settings: Settings, tmp_path: Path) -> None:
    """A pass that fails (here a layout migration marked unfinished, under which the sweeper refuses to work) is
    logged and counted (``retention_failures``), and the worker keeps sweeping: once the cause is gone, the next
    pass removes what expired meanwhile, and ``/metrics`` says when the group's last pass completed. (A failed
    pass ended the whole worker before.)"""
    import urllib.request

    import yaml
    from prometheus_client.parser import text_string_to_metric_families

    from streams.policy import DAY_MS
    from streams.query import trail
    from streams.store import META_KEY, MIGRATING
    from tests.governance import policy_doc, with_tokens
    from tests.support import store_reads

    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(with_tokens(policy_doc())))
    client = redis.Redis.from_url(settings.redis_url)
    worker = Worker(settings, tmp_path, PLATESTREAM_POLICY=str(policy), PLATESTREAM_RETENTION_INTERVAL_S="1")
    try:
        wait_for(lambda: "worker started" in worker.log(), 120, "the worker to start")
        client.hset(META_KEY, MIGRATING, "1")
        old = dataclasses.replace(settings, topic_reads=settings.topic_reads + ".old")  # a checkpoint of its own
        store_reads(old, client, [{"read_id": "old-1", "camera_id": "cam-h", "agency": "hartford-pd", "plate": "OLD1",
                                   "region": "US-CT", "ts": int(time.time() * 1000) - 10 * DAY_MS, "lat": 41.7,
                                   "lon": -72.7, "confidence": 0.9}])
        wait_for(lambda: worker.metrics().get("retention_failures", 0) >= 2, 60, "two failed passes")
        assert [r["read_id"] for r in trail(client, settings, "OLD1", "US-CT")] == ["old-1"]
        assert "retention pass failed" in worker.log() and "layout migration has not finished" in worker.log()
        client.hdel(META_KEY, MIGRATING)
        before = time.time()
        wait_for(lambda: worker.metrics().get("retention_removed", 0) == 1, 60, "the next pass to remove it")
        assert trail(client, settings, "OLD1", "US-CT") == []
        wait_for(lambda: worker.metrics().get("retention_swept_at_s", 0) >= int(before), 30, "the pass's time")
        assert worker.proc.poll() is None
        # what deploy/prometheus/alerts.yml reads of it, in the scrape
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics?format=prometheus", timeout=5) as r:
            prom = {s.name for f in text_string_to_metric_families(r.read().decode()) for s in f.samples}
        assert alert_metric_names("platestream-governance") <= prom
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]


def test_a_policy_edit_that_does_not_load_shows_in_the_workers_metrics(settings: Settings, tmp_path: Path) -> None:
    """A broken edit of the policy file leaves the previous policy in force (a worker must not open or close
    everything on a typo), so a retention or sharing rule the edit tightened is not applied: ``/metrics`` says
    so (``policy_file_invalid``, which deploy/prometheus/alerts.yml alerts on) until a valid file is back."""
    import yaml

    from tests.governance import policy_doc, with_tokens

    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(with_tokens(policy_doc())))
    worker = Worker(settings, tmp_path, PLATESTREAM_POLICY=str(policy))
    try:
        wait_for(lambda: "worker started" in worker.log(), 120, "the worker to start")
        wait_for(lambda: worker.metrics().get("policy_file_invalid") == 0, 30, "the metrics")
        policy.write_text("agencies: [not: valid")
        wait_for(lambda: worker.metrics()["policy_file_invalid"] == 1, 30, "the broken edit to show")
        assert "is invalid, keeping the previous policy" in worker.log()
        policy.write_text(yaml.safe_dump(with_tokens(policy_doc())))
        wait_for(lambda: worker.metrics()["policy_file_invalid"] == 0, 30, "the valid file to be back in force")
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
