"""The processor: a faust-streaming app whose hot path moves whole batches.

faust owns the application: worker lifecycle and signals, logging, the web server (``/metrics``,
``/health``). The hot path is a faust service that polls ``plates.reads`` with aiokafka's ``getmany`` and
hands each partition's batch to ``PartitionPipeline`` - one orjson decode, NumPy columns and Numba kernels
per batch instead of faust's per-event stream machinery, which on this machine tops out around 17k
events/s (see README, "Why not stream.take").

Per batch, in this order (crash anywhere and a restart converges to the same Redis state):
1. ``sink.dlq`` and ``sink.deduped``: produce whole record batches and wait for the broker's acks
   (at-least-once).
2. ``sink.redis``: one atomic MULTI/EXEC per poll with every sighting change and each partition's
   checkpoint (its open dedup sessions and next offset), fenced on the checkpoints' offsets (WATCH) so a
   zombie worker that lost its partitions cannot overwrite newer state (effectively-once). A worker that
   keeps up writes each batch as short chunks (a transaction each) instead, all-or-nothing on restart
   (``store.plan_batch``), so lookups do not wait behind a whole batch; one that catches up writes whole
   batches, at full throughput.
3. Kafka offset commit (only after Redis acknowledged; Redis's checkpoint is authoritative on restart).

Two batches overlap: while Redis runs batch N's write (sent from a thread), the event loop's thread
decodes and deduplicates batch N+1; N+1's records leave the worker only after N is in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
import typing
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import faust
import mode
import numpy as np
import orjson
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from kafka.errors import KafkaError as AdminError  # kafka-python's (topic administration)
from numpy.typing import NDArray
from redis.exceptions import RedisError

from streams import connect, fetch, names
from streams.directory import shared_sealer
from streams.hotlist import HOTLIST_KEY, Entry
from streams.metrics import CONTENT_TYPE, exposition, wants_prometheus
from streams.pipeline import (
    NO_HOTLIST,
    BatchResult,
    Decoded,
    HotContext,
    PartitionPipeline,
    build_hot_context,
    warm_up,
)
from streams.policy import PolicyStore
from streams.produce import records_batches
from streams.records import NO_MESSAGES, Polled
from streams.settings import Settings
from streams.sharing import GRANTS_KEY
from streams.store import (
    COMPACT_PROBE,
    BatchWrite,
    apply_batches,
    apply_batches_cluster,
    check_eviction,
    compact_trails,
    ensure_layout,
    plan_batch,
    replay_pending,
)
from streams.topics import app_id, apply_retention, ensure_topics

log = logging.getLogger("platestream.worker")
# A batch script that has not answered after this long counts as failed: the worker rewinds to the Redis
# checkpoint (which says whether it ran) instead of waiting forever. Redis stalls shorter than this only
# delay the batch (lag grows).
REDIS_WRITE_TIMEOUT_S = 120.0
# The Redis thread sends a chunked batch's chunks one after another (store.apply_batches) and needs the GIL
# for a moment between two; with CPython's default 5 ms switch interval it waited that long for the batch
# computation to let go, and Redis ran out of chunks. Only for polls written in chunks: set for good, a worker
# writing whole batches measured 1-8% slower (benchmarks/HISTORY.md, round 22)
SWITCH_INTERVAL_S = 0.0002
DEFAULT_SWITCH_INTERVAL_S = sys.getswitchinterval()
GC_YOUNG_THRESHOLD = 50_000
PRODUCE_BATCH_BYTES = 1 << 20  # the producer's record batches, ours (``streams.produce``) and aiokafka's
SENDER_TURNS = 4  # event-loop iterations from send_batch to the produce request on the wire (see handle)
# How the worker's consumer fetches (also ``benchmarks.fetch``'s): large fetches, committed reads only
FETCH_SETTINGS: dict[str, Any] = {"max_partition_fetch_bytes": 8 << 20, "fetch_max_bytes": 64 << 20,
                                  "isolation_level": "read_committed"}


def settle_gc() -> None:
    """Each batch allocates hundreds of thousands of short-lived containers (decoded documents, rows); with
    CPython's default thresholds that is a collection every 700 allocations, and the frequent full collections
    walk every long-lived object (imports, dedup state strings). Objects alive now are frozen out of
    collection, and young collections run every ``GC_YOUNG_THRESHOLD`` allocations."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, runner: BatchRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.runner.lock:  # let the batch in flight finish first
            try:
                await self.runner._land()
            except (RedisError, OSError, KafkaError) as e:  # the next owner replays it from the checkpoint
                log.warning("batch in flight not finished at revocation (%s)", type(e).__name__)
            for tp in revoked:
                self.runner.pipelines.pop(tp, None)
            log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.runner.lock:
            await self.runner.load(assigned)
            log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))


class LatencyWindow:
    """Produce-time -> stored-in-Redis latency of the most recent reads (ring buffer of ms values)."""

    def __init__(self, size: int = 1 << 20) -> None:
        self.buf = np.zeros(size, dtype=np.float64)
        self.n = 0

    def add(self, produced_ms: np.ndarray, now_ms: float) -> None:
        lat = now_ms - produced_ms
        size = self.buf.shape[0]
        for lo in range(0, lat.shape[0], size):
            part = lat[lo : lo + size]
            idx = (self.n + np.arange(part.shape[0])) % size
            self.buf[idx] = part
            self.n += part.shape[0]

    def percentiles(self) -> dict[str, float]:
        have = self.buf[: min(self.n, self.buf.shape[0])]
        if not have.shape[0]:
            return {}
        p50, p99, p999 = np.percentile(have, [50, 99, 99.9])
        return {"latency_ms_p50": round(float(p50), 2), "latency_ms_p99": round(float(p99), 2),
                "latency_ms_p999": round(float(p999), 2), "latency_samples": int(have.shape[0])}

    def reset(self) -> None:
        self.n = 0


_Work = tuple[TopicPartition, PartitionPipeline, int | None, BatchResult]


@dataclass
class _Flight:
    """A processed batch whose records are produced (acks pending); Redis and the commit come next."""

    work: list[_Work]
    acks: asyncio.Future[list[Any]]
    produced_ms: dict[TopicPartition, NDArray[np.float64]]  # the records' produce times (latency); not
    # the records themselves, so only one batch's records are held at a time
    writes: list[BatchWrite] | None = None  # each partition's Redis scripts, packed while the broker works


class BatchRunner:
    """Poll -> process -> produce -> Redis transaction -> commit, one batch at a time (backpressure)."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.lock = asyncio.Lock()
        self.pipelines: dict[TopicPartition, PartitionPipeline] = {}
        self._lags: dict[TopicPartition, int] = {}  # each partition's lag when last known (``lag``)
        # the counters deploy/prometheus/alerts.yml reads are there from the start, at 0 (a series that appears
        # only with its first event leaves rate() and increase() nothing to compare that event with)
        self.metrics: Counter[str] = Counter(corrupt_batches=0, consumed=0, dead_lettered=0, sink_errors=0)
        self.started = time.monotonic()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.redis: aioredis.Redis | None = None
        self._partitions: dict[str, int] = {}
        self.latency = LatencyWindow()
        self.policies = PolicyStore(settings.policy_path) if settings.policy_path else None
        self._hot: HotContext | None = None
        self._hot_at = 0.0
        self._flight: _Flight | None = None
        self._committing: asyncio.Future[None] | None = None  # the Kafka offset commit in flight
        # a run of sink errors (``health``): its first error's time (monotonic) and text, and its last one's time
        self.failing: tuple[float, str] | None = None
        self.failed_last = 0.0
        self.redis_sync: redis.Redis | None = None
        self._redis_thread = ThreadPoolExecutor(1, thread_name_prefix="sink.redis")

    async def start(self) -> None:
        s = self.s
        self.redis = connect.redis_async(s)
        await self.redis.ping()
        if await check_eviction(self.redis) is None:  # (refuses an evicting Redis before anything is written)
            log.info("could not read Redis's maxmemory-policy (INFO refused); it must be noeviction (README: Redis "
                     "settings)")
        bucket = await ensure_layout(self.redis, scan=not s.redis_cluster, cell_bucket_ms=s.cell_bucket_ms,
                                     pinned=s.cell_bucket_pinned)  # before any write
        assert bucket is not None
        if bucket != s.cell_bucket_ms:
            log.info("area index time bucket %d s, as recorded in Redis", bucket // 1000)
        # the partitions' pipelines (made on assignment, after this) write area entries in Redis's bucket
        self.s = s = s.with_cell_bucket(bucket)
        compact = await compact_trails(self.redis)
        if compact is None:
            log.info("could not check Redis's sorted-set encoding settings (probe refused); see README: Redis settings")
        else:
            self.metrics["redis_compact_trails"] = int(compact)
            if not compact:
                log.warning("Redis stores sorted sets of %d members of %d bytes as skiplists: trails will take about "
                            "twice the memory per sighting; set zset-max-listpack-value 128 and "
                            "zset-max-listpack-entries 512 (README: Redis settings)", *COMPACT_PROBE)
        if not s.redis_cluster:  # the batch writes (see _write_redis); bounded, so a hung Redis cannot hang exit
            self.redis_sync = connect.redis_client(s, socket_timeout=REDIS_WRITE_TIMEOUT_S)
        self.producer = self._new_producer()
        await self.producer.start()
        fetch.install()
        self.consumer = AIOKafkaConsumer(
            **connect.kafka(s), group_id=s.group, enable_auto_commit=False,
            auto_offset_reset="earliest", **FETCH_SETTINGS,
            value_deserializer=fetch.raw_records,  # records without a ConsumerRecord each (streams.fetch)
            session_timeout_ms=10_000, heartbeat_interval_ms=3_000,
        )
        await self.consumer.start()
        settle_gc()
        self.consumer.subscribe([s.topic_reads], listener=_Rebalance(self))

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether batches land: not when sink errors (Redis or the brokers down, or refusing a batch) have
        kept coming for ``health_stall_s`` — a run of them ends once none came for that long, or every
        partition's reads have landed. Lag grows meanwhile and nothing is lost, but an operator should know;
        the body says for how long and the run's first error."""
        now = time.monotonic()
        if self.failing is None or now - self.failed_last >= self.s.health_stall_s:
            return True, {"ok": True}
        since, error = self.failing
        failing_s = round(now - since, 1)
        ok = failing_s < self.s.health_stall_s
        return ok, {"ok": ok, "sinks_failing_for_s": failing_s, "first_error": error}

    def _new_producer(self) -> AIOKafkaProducer:
        # linger 0: the worker hands over whole record batches (``_produce``), and aiokafka lets even a
        # complete batch linger, which each batch's ack wait (before its Redis write) paid in full
        return AIOKafkaProducer(**connect.kafka(self.s), acks="all", enable_idempotence=True, linger_ms=0,
                                max_batch_size=PRODUCE_BATCH_BYTES, max_request_size=8 << 20)

    async def _renew_producer(self, should_stop: Any) -> None:
        """A producer whose batch the brokers refused is replaced: its idempotent sequence has a gap the brokers
        never fill, so every later batch of it fails (OutOfOrderSequenceNumber) and the worker would rewind
        forever. The new one has a producer id of its own; the old one's unsent batches are dropped (the rewind
        produces them again)."""
        old, self.producer = self.producer, None
        if old is not None:
            with contextlib.suppress(Exception):  # (its pending batches fail: nothing waits for them now)
                await asyncio.wait_for(old.stop(), timeout=10)
        delay = 0.2
        while not should_stop():
            producer = self._new_producer()
            try:
                await producer.start()
            except (KafkaError, OSError) as e:
                with contextlib.suppress(Exception):
                    await producer.stop()
                log.warning("kafka producer not started (%s); retrying in %.1fs", type(e).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.producer = producer
            self.metrics["producer_renewed"] += 1
            return

    async def stop(self) -> None:
        await self._committed()
        for closer in (self.consumer, self.producer):
            if closer is not None:
                await closer.stop()
        if self.redis is not None:
            await self.redis.aclose()
        if self.redis_sync is not None:
            self.redis_sync.close()
        self._redis_thread.shutdown(wait=False)

    async def load(self, assigned: list[TopicPartition]) -> None:
        """Restore each newly assigned partition's dedup state and position from its Redis checkpoint."""
        assert self.redis is not None and self.consumer is not None
        for tp in assigned:
            pipe = PartitionPipeline(self.s, tp.topic, tp.partition)
            # finish the last batch first: its other chunks, or its other nodes' part (see store.py)
            self.metrics["pending_replayed"] += await replay_pending(self.redis, pipe.ck_key)
            pipe.restore(await self.redis.hgetall(pipe.ck_key))  # type: ignore[arg-type]
            self.pipelines[tp] = pipe
            if pipe.next_offset is not None:
                self.consumer.seek(tp, pipe.next_offset)
            else:
                # Nothing of this partition is in Redis (a fresh start, or Redis lost it: an AOF that had not
                # written its last batches when Redis was killed). Not the consumer's current or committed
                # position: those can be past reads Redis no longer holds. From the first read there is.
                await self.consumer.seek_to_beginning(tp)
            self.metrics["partitions_loaded"] += 1

    async def run(self, should_stop: Any) -> None:
        assert self.consumer is not None
        while not should_stop():
            # with a batch in flight, take only what is already fetched: its Redis write must not wait
            polled = await self.consumer.getmany(
                timeout_ms=0 if self._flight is not None else self.s.batch_timeout_ms,
                max_records=self.s.batch_max_records)
            # (columns already, from ``streams.fetch``; ``ConsumerRecord``s only if aiokafka changed under it)
            batches = {tp: Polled.of(tp.topic, tp.partition, msgs) for tp, msgs in polled.items()}
            if not batches and self._flight is None:
                if self.failing is not None and self._all_landed():
                    self.failing = None  # every partition's reads have landed since: the run of errors is over
                continue
            try:
                await self.handle(batches)
            except (RedisError, OSError, KafkaError) as e:
                await self._sink_failed(e, should_stop)
        try:  # stopping: the batch in flight finishes its sinks and commits
            async with self.lock:
                await self._land()
        except (RedisError, OSError, KafkaError) as e:
            log.warning("batch in flight not finished at stop (%s); a restart replays it", type(e).__name__)

    async def _sink_failed(self, e: Exception, should_stop: Any) -> None:
        # Nothing of this batch was committed. Rewind every partition to its Redis checkpoint once the
        # sinks answer again, and go on: lag grows, nothing is lost.
        log.error("batch failed in a sink (%s: %s); rewinding to the checkpoints", type(e).__name__, e)
        self.metrics["sink_errors"] += 1
        now = time.monotonic()
        if self.failing is None or now - self.failed_last >= self.s.health_stall_s:
            self.failing = (now, f"{type(e).__name__}: {e}"[:500])
        self.failed_last = now
        self._flight = None
        if isinstance(e, KafkaError):
            await self._renew_producer(should_stop)
        await self._rewind(should_stop)

    async def _rewind(self, should_stop: Any) -> None:
        delay = 0.2
        async with self.lock:
            tps = list(self.pipelines)  # what we own now; reloaded together once Redis answers
            self.pipelines.clear()  # nothing is processed from stale in-memory state meanwhile
        while not should_stop():
            try:
                async with self.lock:
                    owned = [tp for tp in tps if tp in self.consumer.assignment()] if self.consumer else []
                    await self.load(owned)
                return
            except (RedisError, OSError) as e:
                log.warning("redis still unavailable (%s); retrying in %.1fs", type(e).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def handle(self, batches: dict[TopicPartition, Polled]) -> None:
        """One step of the two-stage pipeline: once the broker has acked batch N (in flight: produced,
        acks pending), N's Redis script goes out, and *while Redis runs it* N+1 is decoded and processed;
        then N commits and N+1's records are produced and become the batch in flight. (Decoding N+1 before
        sending N to Redis, while the acks arrive, left Redis a fifth less time to finish N before the
        event loop waited for it.)

        Nothing of N+1 leaves the worker before N is in Redis: N+1 was computed from dedup state that
        includes N, so if N fails, N+1 is discarded (rewind), and a partition fenced or revoked meanwhile
        drops its part of N+1. At most two batches are held: memory stays bounded, lag grows instead.
        """
        assert self.consumer is not None and self.producer is not None and self.redis is not None
        t0 = time.perf_counter()
        hot = await self.hot_context() if batches else NO_HOTLIST
        async with self.lock:
            flight, self._flight = self._flight, None
            writing = None
            if flight is not None:
                await flight.acks
                self._fault_point(names.STEP_SINK_DEDUPED)
                writing = asyncio.ensure_future(self._write_redis(flight))
                await asyncio.sleep(0)  # let the script go out before the CPU is busy with N+1
            t1 = time.perf_counter()
            work = [(tp, pipe, expected, pipe.process(batch, nxt, consumed, hot))
                    for tp, pipe, expected, (batch, nxt, consumed) in self._decode(batches)]
            t2 = time.perf_counter()
            if flight is not None and writing is not None:
                await self._commit(flight, await writing)
                work = [w for w in work if self.pipelines.get(w[0]) is w[1]]  # fenced or revoked: dropped
            t3 = time.perf_counter()
            if work:
                produced_ms = {tp: batches[tp].timestamps.astype(np.float64) for tp, _, _, _ in work}
                acks = await self._produce([(tp.partition, r) for tp, _, _, r in work])
                for _, _, _, r in work:  # copied into record batches: free them while they are in flight
                    r.deduped, r.dlq = NO_MESSAGES, []
                self._flight = _Flight(work, acks, produced_ms)
                # a few turns of the event loop: aiokafka's sender wakes, drains the batches and writes the
                # request, so the broker works on it while the next batch is decoded
                for _ in range(SENDER_TURNS):
                    await asyncio.sleep(0)
                if not self.s.redis_cluster:  # (the cluster path splits them by node first)
                    chunk_args = self._chunk_args()
                    sys.setswitchinterval(SWITCH_INTERVAL_S if chunk_args else DEFAULT_SWITCH_INTERVAL_S)
                    self._flight.writes = [plan_batch(pipe.ck_key, expected, r.next_offset, r.redis, chunk_args)
                                           for _, pipe, expected, r in work]
                    chunked = sum(1 for w in self._flight.writes if w.rest)
                    self.metrics["redis_batches_chunked"] += chunked
                    self.metrics["redis_batches_whole"] += len(work) - chunked
                    for _, _, _, r in work:
                        r.redis = []
        self.metrics["stage_us.wait.sink.deduped"] += int((t1 - t0) * 1e6)
        self.metrics["stage_us.process"] += int((t2 - t1) * 1e6)
        self.metrics["stage_us.wait.sink.redis"] += int((t3 - t2) * 1e6)
        self.metrics["batches"] += 1
        self.metrics["batch_seconds_total_us"] += int((time.perf_counter() - t0) * 1e6)

    def _ends(self) -> Iterator[tuple[int | None, int | None]]:
        """(log end as last fetched, next offset to process) of every partition this worker processes."""
        consumer = self.consumer
        assert consumer is not None
        return ((consumer.highwater(tp), pipe.next_offset) for tp, pipe in self.pipelines.items())

    def lag(self) -> int:
        """Records of this worker's assigned partitions after its position, as of each one's last fetch. A
        partition being rewound (its state reloading from Redis, its position unknown for a moment) counts
        with its lag when last known: while a sink refuses batches, that is most of the time."""
        if self.consumer is None:
            return 0
        for tp, (end, at) in zip(list(self.pipelines), list(self._ends()), strict=True):
            if end is not None and at is not None:
                self._lags[tp] = max(end - at, 0)
        assigned = self.consumer.assignment()
        for tp in [tp for tp in self._lags if tp not in assigned]:
            del self._lags[tp]
        return sum(self._lags.values())

    def _chunk_args(self) -> int:
        """``chunk_args_for`` the batches just processed."""
        return chunk_args_for(self.s, self._ends())

    def _all_landed(self) -> bool:
        """Whether every read fetched so far has landed (its batch processed, written and committed)."""
        return bool(self.pipelines) and caught_up(self._ends(), 0)

    def _decode(self, batches: dict[TopicPartition, Polled]) -> list[tuple[TopicPartition, PartitionPipeline,
                                                                         int | None, Decoded]]:
        """Each partition's new records, decoded (``PartitionPipeline.decode``; no state changes yet)."""
        out: list[tuple[TopicPartition, PartitionPipeline, int | None, Decoded]] = []
        for tp, msgs in batches.items():
            pipe = self.pipelines.get(tp)
            if pipe is None:
                continue  # revoked while this poll was in flight
            expected = pipe.next_offset
            first = int(msgs.offsets[0])
            if expected is not None and first > expected:
                # Offsets the log does not hold (a transaction's commit marker: one; an aborted transaction:
                # more) are skipped legitimately; anything else here would be reads never processed. Counted,
                # and logged past one offset, so a chaos run that loses data says where.
                self.metrics["offset_gaps"] += 1
                if first > expected + 1:
                    log.warning("poll of %s starts at offset %d, its checkpoint at %d", tp, first, expected)
            raws = msgs if expected is None or first >= expected else msgs[
                int(np.searchsorted(msgs.offsets, expected)):]  # offsets ascend within a partition
            self.metrics["skipped_already_stored"] += len(msgs) - len(raws)
            if not len(raws):
                continue
            damaged = raws.corrupt
            if damaged is not None and int(raws.offsets[0]) == damaged.first:  # (once, if polled in parts)
                self.metrics["corrupt_batches"] += 1
                log.error("%s (reason corrupt_batch)", damaged.detail)
            out.append((tp, pipe, expected, pipe.decode(raws)))
        return out

    async def _land(self) -> None:
        """Finish the batch in flight, if any: acks, Redis, commit (rebalance and stop call this)."""
        flight, self._flight = self._flight, None
        if flight is not None:
            await flight.acks
            self._fault_point(names.STEP_SINK_DEDUPED)
            await self._commit(flight, await self._write_redis(flight))
        await self._committed()

    async def _committed(self) -> None:
        """Wait for the offset commit in flight, if any."""
        committing, self._committing = self._committing, None
        if committing is not None:
            await committing

    async def _commit_offsets(self, commits: dict[TopicPartition, int]) -> None:
        assert self.consumer is not None
        try:
            await self.consumer.commit(commits)
        except Exception as e:  # a rebalance may interrupt; Redis's checkpoint has the position
            log.warning("offset commit failed (%s); the Redis checkpoint keeps the position", type(e).__name__)

    async def _commit(self, flight: _Flight, fenced: set[TopicPartition]) -> None:
        """Redis acknowledged ``flight``: record latency, commit the Kafka offsets, count."""
        self._fault_point(names.STEP_SINK_REDIS)
        now_ms = time.time() * 1000.0
        for tp, produced_ms in flight.produced_ms.items():
            if tp not in fenced:
                self.latency.add(produced_ms, now_ms)
        commits = {tp: r.next_offset for tp, _, _, r in flight.work if tp not in fenced}
        # The commit's round trip to the group coordinator overlaps the next batch: Redis already holds
        # this batch and its checkpoint (the position a new owner resumes from), and commits stay in order
        # (the previous one is awaited first; rebalance and stop wait for the last one in ``_land``).
        await self._committed()
        self._committing = asyncio.ensure_future(self._commit_offsets(commits))
        for _, _, _, r in flight.work:
            self.metrics["consumed"] += r.consumed
            self.metrics["valid"] += r.valid
            self.metrics["dead_lettered"] += r.dead
            self.metrics["late"] += r.late
            self.metrics["sightings_new"] += r.sightings_new
            self.metrics["sightings_retracted"] += r.sightings_retracted
            self.metrics["sightings_expired_on_arrival"] += r.sightings_expired
            self.metrics["sightings_withheld_hit_only"] += r.sightings_withheld
            self.metrics["alerts"] += len(r.alerts)

    def _fault_point(self, step: str) -> None:
        """Chaos testing (``PLATESTREAM_CRASH_AFTER``): right after ``step`` of the n-th batch, die like SIGKILL
        or freeze like SIGSTOP (a zombie that resumes, with its batch in hand, when sent SIGCONT)."""
        if self.s.crash_after is None or self.s.crash_after[0] != step:
            return
        self.metrics[f"fault_point.{step}"] += 1
        _, n, action = self.s.crash_after
        if self.metrics[f"fault_point.{step}"] == n:
            log.warning("fault injection: %s right after %s of batch %d", "exiting" if action == "exit" else
                        "stopping", step, n)
            _flush_logs()
            if action == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)
                log.warning("fault injection: resumed after SIGSTOP")
                return
            os._exit(137)

    async def _produce(self, work: list[tuple[int, BatchResult]]) -> asyncio.Future[list[Any]]:
        """Send dead letters and sightings in whole record batches; returns the future of every ack.

        A result from input partition p goes to partition p mod N of each output topic, so all
        revisions of a sighting (one camera, one input partition) stay in order in one partition.
        """
        assert self.producer is not None
        producer = self.producer
        pending = []
        for topic, pick in ((self.s.topic_deduped, lambda r: r.deduped), (self.s.topic_alerts, lambda r: r.alerts)):
            n_out = await self._partition_count(topic)
            for partition, r in work:  # built whole (``streams.produce``): no builder call per message
                for batch in records_batches(pick(r), PRODUCE_BATCH_BYTES):
                    pending.append(await producer.send_batch(batch, topic, partition=partition % n_out))
        topic = self.s.topic_dlq
        n_out = await self._partition_count(topic)
        for partition, r in work:  # dead letters carry headers: aiokafka's builder
            if not r.dlq:
                continue
            batch = producer.create_batch()
            for key, value, headers in r.dlq:
                if batch.append(timestamp=None, key=key, value=value, headers=headers or []) is None:
                    pending.append(await producer.send_batch(batch, topic, partition=partition % n_out))
                    batch = producer.create_batch()
                    if batch.append(timestamp=None, key=key, value=value, headers=headers or []) is None:
                        raise ValueError(f"a {len(value)}-byte message does not fit in a record batch")
            pending.append(await producer.send_batch(batch, topic, partition=partition % n_out))
        return asyncio.gather(*pending)

    async def hot_context(self) -> HotContext:
        """Hotlists, policy and grants as the pipeline needs them; rebuilt at most every 5 seconds."""
        now = time.monotonic()
        if self._hot is not None and now - self._hot_at < 5.0:
            return self._hot
        assert self.redis is not None
        if self.policies is None:
            self._hot = NO_HOTLIST
        else:
            raw = cast(dict[bytes, bytes], await self.redis.hgetall(HOTLIST_KEY))
            entries = [Entry(**orjson.loads(v)) for v in raw.values()]
            raw_grants = cast(dict[bytes, bytes], await self.redis.hgetall(GRANTS_KEY))
            grants = {k.decode(): orjson.loads(v) for k, v in raw_grants.items()}
            self._hot = build_hot_context(self.policies.get(), entries, grants, int(time.time() * 1000))
        self._hot_at = now
        return self._hot

    async def _partition_count(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            assert self.producer is not None
            n = self._partitions[topic] = len(await self.producer.partitions_for(topic))
        return n

    async def _write_redis(self, flight: _Flight) -> set[TopicPartition]:
        """The flight's atomic, fenced write (``store.apply_batches``); returns partitions found owned by someone
        else."""
        assert self.redis is not None
        work = flight.work
        if self.s.redis_cluster:
            applied = await apply_batches_cluster(
                self.redis, [(pipe.ck_key, expected, r.next_offset, r.redis) for _, pipe, expected, r in work])
        else:
            assert self.redis_sync is not None and flight.writes is not None  # packed in handle
            applied = await asyncio.get_running_loop().run_in_executor(
                self._redis_thread, apply_batches, self.redis_sync, flight.writes,
                functools.partial(self._fault_point, names.FAULT_REDIS_FIRST_CHUNK))
        fenced = {tp for (tp, *_), ok in zip(work, applied, strict=True) if not ok}
        for tp in fenced:  # a newer owner moved the checkpoint: our state is stale, reload it
            log.warning("partition %s: checkpoint moved under us (another worker owns it); reloading", tp)
            self.metrics["fenced"] += 1
            self.pipelines.pop(tp, None)
            await self.load([tp])
        return fenced


def chunk_args_for(s: Settings, ends: Iterable[tuple[int | None, int | None]]) -> int:
    """``PLATESTREAM_REDIS_CHUNK_ARGS`` for batches that leave a worker's partitions at these (log end, next
    offset), or 0 (one script each) if they are to be written whole: chunks go only to a worker at most
    ``Settings.chunk_within_polls`` polls behind (``caught_up``; ``ends`` is not read otherwise)."""
    args, polls = s.redis_chunk_args, s.chunk_within_polls
    if not args or polls is None:
        return args
    return args if caught_up(ends, s.batch_max_records * polls) else 0


def caught_up(ends: Iterable[tuple[int | None, int | None]], max_records: int) -> bool:
    """Whether a worker whose partitions are at these (log end as of the last fetch, next offset to process)
    is at most ``max_records`` behind on all of them together; a partition not fetched or not
    processed yet (None) is not known to be.

    Chunked writes shorten how long a lookup waits behind a batch but cost the worker throughput (README); a
    worker that keeps up has throughput to spare, one that catches up has none, so only the first chunks."""
    lag = 0
    for highwater, next_offset in ends:
        if highwater is None or next_offset is None:
            return False
        lag += max(highwater - next_offset, 0)
    return lag <= max_records


def _rss_bytes() -> int:
    """Resident set size of this process (Linux), for /metrics and the soak test."""
    try:
        for line in open("/proc/self/status"):  # noqa: SIM115
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Worker(faust.Worker):
    """faust's worker with a deadline on stopping: ``PLATESTREAM_STOP_TIMEOUT_S`` after the stop signal the
    process exits even if a shutdown step hangs (seen once in CI: faust's own consumer thread, after the
    process had been frozen past its session timeout, never finished stopping). Nothing is lost by it:
    the Redis checkpoints hold the position and a replay is idempotent."""

    def __init__(self, app: faust.App, settings: Settings, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.stop_timeout_s = settings.stop_timeout_s

    async def stop(self) -> None:
        _exit_after(self.stop_timeout_s)
        await super().stop()


EXIT_STOP_TIMEOUT = 70  # EX_SOFTWARE: the worker was asked to stop and did not finish in time


def _flush_logs() -> None:
    """Before the process ends or freezes without Python's shutdown: the last lines must be in the log."""
    for h in logging.getLogger().handlers:
        h.flush()


def _exit_after(seconds: float) -> None:
    def force() -> None:
        log.error("still stopping %.1fs after the stop signal; exiting now (the Redis checkpoints keep the "
                  "position: a restart replays the batch in flight, idempotently)", seconds)
        _flush_logs()
        os._exit(EXIT_STOP_TIMEOUT)

    timer = threading.Timer(seconds, force)
    timer.daemon = True  # a stop that finishes in time exits without waiting for it
    timer.start()


def make_app(settings: Settings) -> faust.App:
    """The faust application: lifecycle, web (/metrics, /health) and the batch service."""
    # Kernels compiled before the web server and the consumer exist: on a fresh install that takes
    # seconds, during which an event loop that already answered /metrics or heartbeats would go silent.
    warm_up(settings)
    # before faust starts, so its leader topic gets the replicas the setting asks for (ensure_topics)
    ensure_topics(settings, app=True)
    datadir = settings.state_dir / "faust" / app_id(settings)  # not litter in the working directory
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id(settings), broker=f"kafka://{settings.kafka_bootstrap.split(',')[0]}",
        web_port=settings.web_port, web_host=settings.web_host, topic_partitions=settings.partitions,
        store="memory://", autodiscover=False, producer_acks=-1,
        datadir=str(datadir),
        broker_credentials=connect.faust_credentials(settings),
        # faust's own group carries no data here; a short session lets a restarted worker start in seconds
        broker_session_timeout=10.0, broker_heartbeat_interval=3.0,
    )
    runner = BatchRunner(settings)
    kafka_retention_applied: list[Any] = []  # the policy whose limits the topics last got (apply_retention)

    def follow_retention(policy: Any) -> None:
        """Kafka's copies kept no longer than ``policy`` allows (``apply_retention``), once per policy; a failure
        (no ALTER_CONFIGS right, say) is said loudly and retried at the next sweep."""
        if kafka_retention_applied[:1] == [policy]:
            return
        try:
            apply_retention(settings, policy)
            kafka_retention_applied[:] = [policy]
        except (AdminError, OSError) as e:
            log.error("Kafka topics' retention not set to the policy's (%s); retrying at the next sweep", e)

    @app.service
    class ReadsService(mode.Service):
        _stopping = False
        _loop_task: asyncio.Task[None] | None = None

        async def on_start(self) -> None:
            if runner.policies is not None:  # (and after each reload: the retention sweep)
                # off the event loop: a broker that does not answer for its configs takes up to 30 s to give up
                await asyncio.get_running_loop().run_in_executor(None, follow_retention, runner.policies.get())
            await runner.start()
            log.info("worker started: %s", settings.redacted())

        async def on_started(self) -> None:
            self._loop_task = asyncio.ensure_future(self._run())

        async def _run(self) -> None:
            try:
                await runner.run(lambda: self._stopping)
            except Exception as e:  # a bug, not bad input: stop the worker loudly, commit nothing more
                log.exception("batch loop crashed; stopping the worker")
                await self.crash(e)

        async def on_stop(self) -> None:
            # graceful: let the batch in flight finish its sinks and commit, then close the clients
            self._stopping = True
            if self._loop_task is not None:
                try:
                    await asyncio.wait_for(self._loop_task, timeout=30)
                except (TimeoutError, asyncio.CancelledError):
                    log.warning("batch loop did not stop within 30s; cancelling (replay is idempotent)")
            await runner.stop()

    if runner.policies is not None:
        from streams.retention import SWEPT_KEY, leased_sweep

        holder = f"{socket.gethostname()}:{os.getpid()}:{id(runner):x}"

        policies = runner.policies  # reloaded when the file changes
        runner.metrics.update(retention_failures=0, retention_removed=0)  # (there from the start: alerts.yml)

        @app.timer(interval=float(settings.retention_interval_s))
        async def retention() -> None:
            """Enforce each owning agency's retention (a blocking SCAN pass, so off the event loop)."""

            def run() -> tuple[int, int | None]:
                policy = policies.get()
                client = connect.redis_client(settings)
                try:
                    # one worker of the group sweeps per interval (the lease); the others only follow the policy
                    # into Kafka's settings
                    done = leased_sweep(client, settings, policy, int(time.time() * 1000), holder,
                                        settings.retention_interval_s * 1000)
                    removed = sum(done.values()) if done is not None else 0
                    at = client.hget(SWEPT_KEY, "at")  # the group's last complete pass, whoever made it
                finally:
                    client.close()
                follow_retention(policy)  # a reloaded policy: the topics follow it
                return removed, None if at is None else int(at) // 1000

            try:
                removed, swept_at = await asyncio.get_running_loop().run_in_executor(None, run)
            except Exception as e:  # Redis away, a migration under way: the next tick tries again (a failed pass
                # ended the worker before; queries hide what is past its limit meanwhile)
                runner.metrics["retention_failures"] += 1
                log.error("retention pass failed (%s: %s); the next one in %d s", type(e).__name__, e,
                          settings.retention_interval_s)
                return
            runner.metrics["retention_removed"] += removed
            if swept_at is not None:
                runner.metrics["retention_swept_at_s"] = swept_at
    else:
        log.warning("no PLATESTREAM_POLICY: retention is not enforced and every query is refused")

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        m: dict[str, Any] = dict(runner.metrics)
        m["uptime_s"] = round(time.monotonic() - runner.started, 3)
        m["partitions"] = sorted(tp.partition for tp in runner.pipelines)
        # dedup state held in memory: open sessions (bounded by window + lateness) and pool slots
        m["dedup_open_sessions"] = sum(int(p.state.pool["alive"][: p.state.n_used].sum())
                                       for p in runner.pipelines.values())
        m["dedup_pool_slots"] = sum(p.state.n_used for p in runner.pipelines.values())
        m["dedup_state_bytes"] = sum(p.state_bytes() for p in runner.pipelines.values())
        sealer = shared_sealer(settings.hash_key)
        m["directory_seal_cache_hits"], m["directory_seal_cache_misses"] = sealer.hits, sealer.misses
        m["rss_bytes"] = _rss_bytes()
        m["lag_records"] = runner.lag()
        m.update(runner.latency.percentiles())
        healthy, state = runner.health()
        m["healthy"], m["sinks_failing_for_s"] = int(healthy), state.get("sinks_failing_for_s", 0.0)
        if runner.policies is not None:
            runner.policies.get()  # (checks the file: at most a stat a second)
            m["policy_file_invalid"] = int(runner.policies.invalid is not None)
        if request.query.get("reset_latency"):
            runner.latency.reset()
        if wants_prometheus(request.headers.get("Accept", ""), request.query.get("format")):
            return web.bytes(exposition(m), headers={"Content-Type": CONTENT_TYPE})
        return web.json(m)

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        ok, body = runner.health()
        return web.json({**body, "step_names": list(typing.get_args(names.Step))}, status=200 if ok else 503)

    app.platestream_runner = runner  # type: ignore[attr-defined]
    return app
