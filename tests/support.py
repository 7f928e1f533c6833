"""Helpers for integration tests: run real workers, read topics back, compare with ground truth."""

from __future__ import annotations

import collections
import dataclasses
import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
from kafka import KafkaConsumer, TopicPartition

from benchmarks.e2e import RunningWorker
from streams.connect import kafka, redis_client
from streams.directory import directory_key, open_entry
from streams.pipeline import META_OFFSET, BatchResult, PartitionPipeline
from streams.producer import send_all
from streams.query import trail
from streams.records import Raw
from streams.settings import Settings
from streams.simulate import Traffic, generate
from streams.stack import free_port
from streams.store import (
    Sighting,
    apply_batch_sync,
    apply_cluster_sync,
    checkpoint_key,
    pack_string,
    sighting_ids,
    source_code,
    vehicle_id,
)
from streams.topics import end_offsets, ensure_topics
from tests.conftest import settings_env, wait_for

# the least environment Settings.from_env takes (addresses nothing listens on): for tests of settings alone
BASE_ENV = {"PLATESTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:9092", "PLATESTREAM_REDIS_URL": "redis://127.0.0.1:6379/0",
            "PLATESTREAM_STATE_DIR": "/nonexistent"}


class Worker:
    """A real ``platestream worker`` subprocess with its own log file."""

    def __init__(self, s: Settings, log_dir: Path, name: str = "worker", **env: str) -> None:
        self.log_path = log_dir / f"{name}.log"
        self.port = free_port()
        e = settings_env(s, PLATESTREAM_WEB_PORT=str(self.port), **env)
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--loglevel", "info"],
                                     env=e, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=Path(__file__).resolve().parents[1])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 40) -> int:
        self.kill(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"worker did not stop on SIGTERM; log: {self.log_path}") from None
        finally:
            self._log.close()

    def exit_code(self, timeout: float = 120) -> int:
        """The exit code of a worker expected to end by itself (refusing to start, say); killed if it does not."""
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> dict[str, Any]:
        """The worker's ``/metrics`` (its web server is up once it consumes)."""
        return RunningWorker(self.proc, self.port).metrics()


def checkpoint_offsets(s: Settings, client: redis.Redis, partitions: int = 64) -> dict[int, int]:
    """Next offset per partition according to Redis (partitions without a checkpoint are absent)."""
    out = {}
    for p in range(partitions):
        v = client.hget(checkpoint_key(s.group, s.topic_reads, p), META_OFFSET)
        if v is not None:
            out[p] = int(v)
    return out


def wait_caught_up(s: Settings, worker: Worker | None, timeout: float = 180) -> None:
    ends = end_offsets(s, s.topic_reads)
    client = redis_client(s)

    def done() -> bool:
        if worker is not None and worker.proc.poll() is not None:
            raise AssertionError(f"worker exited with {worker.proc.returncode}:\n{worker.log()[-4000:]}")
        got = checkpoint_offsets(s, client)
        return all(got.get(p, 0) >= e for p, e in ends.items() if e > 0)

    wait_for(done, timeout, "the worker to process every partition")


def read_topic(s: Settings, topic: str) -> list[Any]:
    """Every record of ``topic`` (all partitions, from the beginning)."""
    ends = end_offsets(s, topic)
    total = sum(ends.values())
    c = KafkaConsumer(**kafka(s), auto_offset_reset="earliest",
                      enable_auto_commit=False, consumer_timeout_ms=10_000)
    c.assign([TopicPartition(topic, p) for p in ends])
    c.seek_to_beginning()
    out = []
    for rec in c:
        out.append(rec)
        if len(out) >= total:
            break
    c.close()
    assert len(out) == total, f"read {len(out)} of {total} records from {topic}"
    return out


@dataclass
class Accounting:
    produced: int
    stored: int = 0
    merged: int = 0
    dead_lettered: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong: list[str] = field(default_factory=list)

    def row(self) -> dict[str, int]:
        return {"produced": self.produced, "stored": self.stored, "merged": self.merged,
                "dead_lettered": self.dead_lettered, "lost": self.lost, "duplicated": self.duplicated}


def verify_against_truth(s: Settings, traffic: Traffic) -> Accounting:
    """Compare Redis trails, the deduped changelog and the DLQ with the simulator's ground truth."""
    client = redis_client(s)
    acc = Accounting(produced=len(traffic.messages))
    by_vehicle: dict[tuple[str, str], list[Any]] = collections.defaultdict(list)
    for t in traffic.truth:
        by_vehicle[(t.plate, t.region)].append(t)
    for (plate, region), truths in by_vehicle.items():
        rows = trail(client, s, plate, region)
        got = collections.Counter((r["camera_id"], r["ts"], r["ts_last"], r["reads"], r["read_id"]) for r in rows)
        exp = collections.Counter((t.camera_id, t.ts, t.ts_last, t.reads, t.best_read_id) for t in truths)
        acc.stored += len(rows)
        acc.merged += sum(r["reads"] for r in rows) - len(rows)
        acc.lost += sum((exp - got).values())
        acc.duplicated += sum((got - exp).values())
        if got != exp and len(acc.wrong) < 5:
            acc.wrong.append(f"{plate}/{region}: missing {sorted(exp - got)} unexpected {sorted(got - exp)}")
        # a stored vehicle can be found by partial-plate search: its directory entry names it
        if rows:
            vid = vehicle_id(s.hash_key, region, rows[0]["plate"])
            sealed = client.hget(directory_key(vid), vid)
            named = None if sealed is None else open_entry((s.hash_key,), vid, sealed)
            if named != (region, rows[0]["plate"]) and len(acc.wrong) < 5:
                acc.wrong.append(f"{plate}/{region}: directory entry {named}")
    # every message of the input is a stored read, a merged read or a dead letter
    dlq = read_topic(s, s.topic_dlq)
    coords = {(orjson.loads(r.value)["partition"], orjson.loads(r.value)["offset"]) for r in dlq}
    acc.dead_lettered = len(coords)
    for r in dlq:
        rec = orjson.loads(r.value)
        headers = dict(r.headers)
        assert rec["reason"] and rec["topic"] == s.topic_reads, rec
        assert headers["ps.reason"].decode() == rec["reason"]
        assert int(headers["ps.offset"]) == rec["offset"] and int(headers["ps.partition"]) == rec["partition"]
    return acc


def final_sightings(s: Settings, replays: list[int] | None = None) -> dict[str, dict[str, Any]]:
    """The deduped changelog folded by sighting id (highest revision wins; deletes remove). ``replays``
    (if given) receives how many records repeat an earlier (sighting id, revision, op): replays of a
    batch after a crash, identical by construction (asserted)."""
    latest: dict[str, dict[str, Any]] = {}
    seen: set[tuple[str, int, str]] = set()
    for r in read_topic(s, s.topic_deduped):
        msg = orjson.loads(r.value)
        ident = (msg["sighting_id"], msg["revision"], msg["op"])
        if replays is not None and ident in seen:
            replays.append(1)
        seen.add(ident)
        cur = latest.get(msg["sighting_id"])
        if cur is None or msg["revision"] >= cur["revision"]:
            if cur is not None and msg["revision"] == cur["revision"]:
                assert {k: v for k, v in msg.items() if k != "extra"} == {
                    k: v for k, v in cur.items() if k != "extra"}, "same revision, different content"
            latest[msg["sighting_id"]] = msg
    return {k: v for k, v in latest.items() if v["op"] == "upsert"}


def recent_ms(days_ago: int = 2) -> int:
    """Midnight UTC ``days_ago`` days before now. Governed queries hide what is past its owner's retention (the
    governance policy's Hartford keeps 7 days), so reads they must find are recent; midnight keeps the hour and
    area-bucket borders a fixed time had."""
    return (time.time_ns() // 1_000_000 // 86_400_000 - days_ago) * 86_400_000


def store_reads(s: Settings, client: redis.Redis, reads: list[dict[str, Any]]) -> None:
    """Process plate_read documents through a real PartitionPipeline and apply the batch to Redis."""
    pipe = PartitionPipeline(s, s.topic_reads, 0)
    raws = [Raw(s.topic_reads, 0, i, None, None, orjson.dumps(r)) for i, r in enumerate(reads)]
    result = pipe.process_raw(raws)
    if s.redis_cluster:
        assert apply_cluster_sync(client, pipe.ck_key, None, result.next_offset, result.redis)
    else:
        assert apply_batch_sync(client, pipe.ck_key, None, result.redis)


def area_clash(s: Settings) -> Settings:
    """``s`` with a reads topic where the sightings opened at offsets 0 and 1 of partition 0 have ids with
    the same low byte: two sightings of one vehicle first seen in one cell at one millisecond then share an
    area index entry (``store.area_entry``), which happens 1 time in 256 by chance."""
    for n in range(100_000):
        topic = f"{s.topic_reads}.clash{n}"
        first, second = sighting_ids(topic, 0, [0, 1])
        if first & 0xFF == second & 0xFF:
            return dataclasses.replace(s, topic_reads=topic)
    raise AssertionError("no clash in 100,000 topics (expected one in 256)")


def dump_redis(client: redis.Redis, skip: tuple[bytes, ...] = ()) -> dict[bytes, object]:
    """Every key and its content (sorted sets, hashes and sets), for exact comparisons; ``skip`` = key prefixes."""
    out: dict[bytes, object] = {}
    for key in client.scan_iter(count=1000):
        if key.startswith(skip):
            continue
        kind = client.type(key)
        if kind == b"zset":
            out[key] = sorted(client.zrange(key, 0, -1, withscores=True))
        elif kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"set":
            out[key] = sorted(client.smembers(key))  # type: ignore[arg-type]
        else:
            raise AssertionError(f"unexpected key type {kind!r} for {key!r}")
    return out


def write_in_batches(s: Settings, raws: list[Raw], rng: random.Random,
                     write: Callable[[PartitionPipeline, int | None, BatchResult], bool]) -> None:
    """``raws`` through one pipeline in batches of 1-200 reads (drawn from ``rng``), each batch written by
    ``write(pipeline, the checkpoint offset it starts from, result)``: the reference state of a writer."""
    pipe = PartitionPipeline(s, s.topic_reads, 0)
    pos = 0
    while pos < len(raws):
        n = rng.randint(1, 200)
        expected = pipe.next_offset
        assert write(pipe, expected, pipe.process_raw(raws[pos : pos + n]))
        pos += n


def pipeline_raws(s: Settings, seed: int) -> list[Raw]:
    """A small simulated partition (malformed, late and OCR-confused reads included) as consumer records."""
    traffic = generate(seed=seed, vehicles=300, sites=8, hours=2, malformed=0.02, late=0.1, start_ts=1_764_000_000_000)
    return [Raw(s.topic_reads, 0, i, None, k, v) for i, (k, v) in enumerate(traffic.messages)]


def record_run(scenario: str, row: dict[str, int], **extra: object) -> None:
    """Append one chaos run's accounting to the file named by ``CHAOS_REPORT`` (``make chaos`` sets it), and
    print it (``pytest -s`` shows it)."""
    line = orjson.dumps({"scenario": scenario, **row, **extra}).decode()
    print(line)
    path = os.environ.get("CHAOS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def set_topic_config(s: Settings, topic: str, **configs: str) -> None:
    """Change a topic's configs (``max_message_bytes="4096"`` for ``max.message.bytes``), checked as applied."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    try:
        done = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                   {k.replace("_", "."): v for k, v in configs.items()})])
        assert done == {"topic": {topic: "OK"}}, done
    finally:
        admin.close()


def process_all(s: Settings, log_dir: Path, messages: list[tuple[bytes | None, bytes]], partitions: int | None = None,
                timeout: float = 180, **env: str) -> Worker:
    """Produce ``messages`` to the reads topic, run one worker until it has stored all of them, stop it
    cleanly (exit 0); returns it, for its log."""
    ensure_topics(s, partitions)
    assert send_all(s, s.topic_reads, messages) == len(messages)
    worker = Worker(s, log_dir, **env)
    try:
        wait_caught_up(s, worker, timeout)
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    return worker


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(out) + bytes((value,))


def pack_v5(s: Sighting) -> bytes:
    """A trail member as layout 5 wrote it (git 6231a0d, ``Sighting.pack``)."""
    head = struct.pack("<6sBBQ7sf8s", s.ts.to_bytes(6, "big"), 5, int(s.hit), s.sighting_id,
                       s.geo52.to_bytes(7, "little"), s.confidence, source_code(s.camera_id, s.agency))
    return (head + _varint(s.ts_last - s.ts) + _varint(s.best_ts - s.ts) + _varint(s.reads)
            + pack_string(s.read_id))


def check_layout(redis_url: str, cell_bucket_ms: int | None = None, pinned: bool = True) -> int | None:
    """``store.ensure_layout`` as a worker runs it at start (raises ``LayoutError``); returns its bucket."""
    import asyncio

    import redis.asyncio as aioredis

    from streams.store import ensure_layout

    async def run() -> int | None:
        client = aioredis.from_url(redis_url)
        try:
            return await ensure_layout(client, cell_bucket_ms=cell_bucket_ms, pinned=pinned)
        finally:
            await client.aclose()

    return asyncio.run(run())


def alert_metric_names(group: str | None = None) -> set[str]:
    """The ``platestream_*`` metrics the rules of ``deploy/prometheus/alerts.yml`` read (of ``group`` only, if
    given), each expression parsed as PromQL (``promql_parser``: a syntax error raises)."""
    import promql_parser
    import yaml

    doc = yaml.safe_load((Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "alerts.yml").read_text())
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name and node.name.startswith("platestream_"):
            names.add(node.name)

    for g in doc["groups"]:
        if group is None or g["name"] == group:
            for rule in g["rules"]:
                promql_parser.walk(promql_parser.parse(rule["expr"]), visit)
    return names
