"""End-to-end measurements on the real local stack: platestream worker vs baselines, same broker, same data."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import redis
from aiokafka import AIOKafkaProducer
from numpy.typing import NDArray

from benchmarks import cpu
from benchmarks.memory import sorted_set_anatomy
from streams import stack
from streams.access import LoopAuditPublisher
from streams.api import governed_response
from streams.audit import AuditLog
from streams.pipeline import META_OFFSET
from streams.policy import Policy, token_hash
from streams.query import GovernedResult, governed_trail, trail, trail_columns
from streams.settings import ENV_VARS, Settings
from streams.simulate import Traffic
from streams.store import checkpoint_key, read_trail, trail_key, vehicle_id
from streams.topics import delete_run_topics, ensure_topics

ROOT = Path(__file__).resolve().parents[1]


def state_dir() -> Path:
    """Where the local stack lives (``PLATESTREAM_STATE_DIR``, as for the CLI)."""
    return Path(os.environ.get("PLATESTREAM_STATE_DIR", ".platestream"))


# Every topic a benchmark makes is named bench.<tag>.* (``isolated_settings``), every consumer group bench-*
# (faust adds a <group>-app-__assignor-__leader topic per group, Quix Streams changelog__quix-...--<topic>--...)
BENCH = "bench"


def bench_stack(state: Path | None = None) -> stack.StackInfo:
    """The local stack (started, or reused), without the topics earlier benchmark runs left in it."""
    info = stack.up(state or state_dir())
    old = delete_run_topics(info.kafka_bootstrap, BENCH)
    if old:
        log(f"deleted {len(old)} topics earlier benchmark runs left in the local stack")
    return info


def log_dir(state: Path | str) -> Path:
    """The harnesses' worker logs, under the stack's state directory."""
    out = Path(state) / "bench-logs"
    out.mkdir(parents=True, exist_ok=True)
    return out


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def isolated_settings(info: stack.StackInfo, db: int, partitions: int = 4) -> Settings:
    tag = uuid.uuid4().hex[:6]
    return Settings.from_env(
        env={}, kafka_bootstrap=info.kafka_bootstrap, redis_url=info.redis_url.rsplit("/", 1)[0] + f"/{db}",
        state_dir=Path(info.state_dir), topic_reads=f"bench.{tag}.reads", topic_deduped=f"bench.{tag}.deduped",
        topic_dlq=f"bench.{tag}.dlq", topic_alerts=f"bench.{tag}.alerts", topic_audit=f"bench.{tag}.audit",
        group=f"{BENCH}-{tag}",
        partitions=partitions, hash_key=b"benchmark-key-0123456789",
    )


async def _produce(bootstrap: str, topic: str, messages: Sequence[tuple[bytes, bytes]], rate: float = 0.0,
                   partitions: int = 4, compression: str | None = None) -> None:
    """Fast pre-fill (or paced load) with aiokafka record batches (compressed with ``compression``, a Kafka codec,
    if given); key -> partition like the default."""
    from kafka.partitioner.default import murmur2

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=1 << 20,
                                max_request_size=8 << 20, compression_type=compression)
    await producer.start()
    try:
        chunk = 2000 if rate else 50_000
        t0 = time.monotonic()
        last = t0
        for lo in range(0, len(messages), chunk):
            by_part: dict[int, list[tuple[bytes, bytes]]] = {}
            for key, value in messages[lo : lo + chunk]:
                p = (murmur2(key) & 0x7FFFFFFF) % partitions
                by_part.setdefault(p, []).append((key, value))
            futures = []
            for p, items in by_part.items():
                batch = producer.create_batch()
                for key, value in items:
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        futures.append(await producer.send_batch(batch, topic, partition=p))
                        batch = producer.create_batch()
                        batch.append(key=key, value=value, timestamp=None)
                futures.append(await producer.send_batch(batch, topic, partition=p))
            await asyncio.gather(*futures)
            if rate:
                ahead = (lo + chunk) / rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            elif time.monotonic() - last > 2:
                last = time.monotonic()
                log(f"  pre-filled {lo + chunk:,}/{len(messages):,}")
    finally:
        await producer.stop()


def prefilled(info: stack.StackInfo, messages: Sequence[tuple[bytes, bytes]], db: int,
              compression: str | None = None) -> Settings:
    """Settings of their own (``isolated_settings``) whose reads topic holds ``messages``: the benchmarks'
    pre-filled topic, produced as fast as the broker takes it."""
    s = isolated_settings(info, db=db)
    log(f"pre-filling {len(messages):,} messages" + (f" ({compression})" if compression else ""))
    produce(s, messages, compression=compression)
    return s


def produce(s: Settings, messages: Sequence[tuple[bytes, bytes]], rate: float = 0.0,
            compression: str | None = None) -> None:
    ensure_topics(s)
    asyncio.run(_produce(s.kafka_bootstrap, s.topic_reads, messages, rate, s.partitions, compression))


def worker_env(s: Settings, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLATESTREAM_")}
    env.update(s.to_env(PLATESTREAM_WEB_PORT=str(port)))
    return env


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class RunningWorker:
    proc: subprocess.Popen[bytes]
    port: int

    def metrics(self, reset_latency: bool = False) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/metrics" + ("?reset_latency=1" if reset_latency else "")
        with urllib.request.urlopen(url, timeout=5) as resp:
            return dict(json.loads(resp.read()))

    def stop(self) -> None:
        stop_process(self.proc)


def start_worker(s: Settings, log_path: Path, root: Path = ROOT) -> RunningWorker:
    """The worker of the checkout at ``root`` (``python -m`` imports ``streams`` from its working directory)."""
    port = stack.free_port()
    env = worker_env(s, port)
    if root != ROOT:
        # an older version refuses settings it does not know, and may refuse today's default of one it knows
        # (PLATESTREAM_REDIS_CHUNK_WHEN=4 before round 30): it runs with its own defaults
        known = (root / "streams" / "settings.py").read_text()
        env = {k: v for k, v in env.items()
               if not k.startswith("PLATESTREAM_") or (f'"{k}"' in known and v != ENV_VARS.get(k, (None, ""))[0])}
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--loglevel", "warning"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root,
                                start_new_session=True)
    w = RunningWorker(proc, port)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited; see {log_path}")
        try:
            w.metrics()
            return w
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("worker web server did not come up")


def processed(s: Settings, client: redis.Redis) -> int:
    offs = [client.hget(checkpoint_key(s.group, s.topic_reads, p), META_OFFSET) for p in range(s.partitions)]
    return sum(int(o) for o in offs if o is not None)


def run_group(name: str) -> str:
    """A fresh consumer group (and faust app id) for a run called ``name``: the app names Kafka topics after it,
    so whatever is not a topic-name character (a ref such as ``HEAD~1``) becomes ``-``."""
    return f"{BENCH}-{re.sub(r'[^A-Za-z0-9._-]', '-', name)}-{uuid.uuid4().hex[:6]}"


def exact_run(s: Settings, traffic: Traffic, log_dir: Path, root: Path = ROOT, name: str = "run") -> dict[str, Any]:
    """``throughput`` of one run on the pre-filled topic from offset 0 (a fresh consumer group), refused unless it
    stored exactly the simulator's passes: for runs that take turns (``make bench-ab``, ``benchmarks.chunks``)."""
    run = dataclasses.replace(s, group=run_group(name))
    r = throughput(run, len(traffic.messages), log_dir, root, inspect=False)
    if r["e2e_sightings"] != len(traffic.truth):
        raise RuntimeError(f"{name}: {r['e2e_sightings']} sightings, truth has {len(traffic.truth)}")
    return r


def throughput(s: Settings, total: int, log_dir: Path, root: Path = ROOT, inspect: bool = True,
               others: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Worker on a pre-filled topic: reads/s from its first committed batch to its last, plus memory, and the
    CPU the worker and the ``others`` processes (name -> pid) spent over the same span (``benchmarks.cpu``).

    ``inspect=False`` counts sightings without decoding them and skips the memory breakdown: for comparing
    with a version whose Redis layout this code does not read (``make bench-ab``).
    """
    client = redis.Redis.from_url(s.redis_url)
    client.flushdb()
    mem0 = int(client.info("memory")["used_memory"])
    worker = start_worker(s, log_dir / "bench-worker.log", root)
    first: tuple[float, int] | None = None
    pids = {"worker": worker.proc.pid, **(others or {})}
    cpu_from = cpu_to = None
    done = 0
    last_t = time.monotonic()
    curve: list[tuple[float, int]] = []
    try:
        while done < total:
            if worker.proc.poll() is not None:
                raise RuntimeError("worker exited during the run")
            now_done = processed(s, client)
            now = time.monotonic()
            if now_done and first is None:
                first = (now, now_done)
                cpu_from = cpu.snapshot(pids)
                client.config_resetstat()  # Redis's command times over the same span (``command_time``)
            if now_done != done:
                last_t = now
                curve.append((now, now_done))
            done = now_done
            time.sleep(0.02)
        cpu_to = cpu.snapshot(pids)
        commands = client.info("commandstats")
        metrics = worker.metrics()
    finally:
        worker.stop()
    assert first is not None and cpu_from is not None and cpu_to is not None
    span = max(last_t - first[0], 1e-3)
    spent = {**cpu.usage(cpu_from, cpu_to, total - first[1]), **command_time(commands, total - first[1])}
    used = int(client.info("memory")["used_memory"])
    ck = sum(int(client.memory_usage(checkpoint_key(s.group, s.topic_reads, p)) or 0)
             for p in range(s.partitions))
    trails = list(client.scan_iter(match="ps:t:*", count=10_000))
    with client.pipeline(transaction=False) as pipe:
        for key in trails:
            pipe.zcard(key)
        sightings = sum(pipe.execute())
    if not inspect:
        return {"e2e_reads_per_s": (total - first[1]) / span, "e2e_sightings": sightings, "worker_metrics": metrics,
                **spent}
    reads = sum(sg.reads for key in trails for sg in read_trail(client, key))
    keys = {"trails": trails, **{kind: list(client.scan_iter(match=pattern, count=10_000))
                                 for kind, pattern in (("area_index", "ps:c:*"), ("plate_directory", "ps:pd:*"))}}
    by_kind = {f"redis_bytes_per_sighting_{kind}": _kind_bytes(client, of_kind) / max(sightings, 1)
               for kind, of_kind in keys.items()}
    anatomy = {f"redis_entry_{kind}_{part}": v for kind in ("trails", "area_index")
               for part, v in sorted_set_anatomy(client, keys[kind]).items()}
    return {
        "e2e_reads_per_s": (total - first[1]) / span, "e2e_messages": total, "e2e_seconds": span,
        "e2e_sightings": sightings, "e2e_reads_stored_or_merged": reads,
        "redis_bytes_per_sighting": (used - mem0 - ck) / max(sightings, 1),
        "redis_checkpoint_bytes": ck,
        **by_kind,
        **anatomy,
        "redis_vehicles": len(trails),
        "worker_metrics": metrics,
        **spent,
        "progress_curve": [(round(t - first[0], 3), n) for t, n in curve],
    }


def command_time(stats: dict[str, Any], reads: int) -> dict[str, float]:
    """Redis's own time per read in each command (``INFO commandstats``): what of its CPU the commands take, the
    rest being reading, parsing, replying and the AOF. A transaction's commands count in ``EXEC`` and again
    each under its own name. A subcommand (Redis names it ``config|resetstat``) gets ``_`` for ``|``; the
    benchmark's own ``CONFIG`` (the reset) is left out."""
    out = {f"e2e_redis_us_per_read_{name.removeprefix('cmdstat_').replace('|', '_')}": int(v.get("usec", 0))
           / max(reads, 1)
           for name, v in stats.items() if name.startswith("cmdstat_") and not name.startswith("cmdstat_config")}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _kind_bytes(client: redis.Redis, keys: list[bytes], sample: int = 3000) -> float:
    """MEMORY USAGE of ``keys``: a sample of ``sample`` of them, scaled to all."""
    if not keys:
        return 0.0
    picked = keys[:: max(1, len(keys) // sample)]
    pipe = client.pipeline(transaction=False)
    for k in picked:
        pipe.memory_usage(k, samples=0)
    return sum(int(x or 0) for x in pipe.execute()) * len(keys) / len(picked)


def naive_faust(info: stack.StackInfo, messages: Sequence[tuple[bytes, bytes]], log_dir: Path) -> dict[str, Any]:
    """Same broker, same kind of data: the per-event faust agent's reads/s."""
    s = isolated_settings(info, db=13)
    produce(s, messages)
    client = redis.Redis.from_url(s.redis_url)
    client.flushdb()
    env = {**os.environ, "NAIVE_APP_ID": f"naive-{uuid.uuid4().hex[:6]}", "NAIVE_BOOTSTRAP": s.kafka_bootstrap,
           "NAIVE_DATADIR": str(log_dir / "naive-faust-data"),
           "NAIVE_TOPIC": s.topic_reads, "NAIVE_REDIS_URL": s.redis_url, "NAIVE_WEB_PORT": str(stack.free_port())}
    with open(log_dir / "bench-naive-faust.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "faust", "-A", "benchmarks.naive_faust", "worker", "-l", "warn"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    total = len(messages)
    try:
        rate = poll_rate(proc, lambda: int(client.get("naive:done") or 0)
                         + int(client.get("naive:dead") or 0), total, 600, "naive faust worker")
    finally:
        stop_process(proc)
    return {"naive_faust_reads_per_s": rate, "naive_faust_messages": total}


def poll_rate(proc: subprocess.Popen[bytes], count: Callable[[], int], target: int, timeout: float,
              what: str) -> float:
    """Items/s of a baseline process by polling its counter: from the first counted batch to the last."""
    first: tuple[float, int] | None = None
    done = 0
    last_t = time.monotonic()
    deadline = time.monotonic() + timeout
    while done < target and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited")
        now_done = count()
        now = time.monotonic()
        if now_done and first is None:
            first = (now, now_done)
        if now_done != done:
            last_t = now
        done = now_done
        time.sleep(0.05)
    assert first is not None and done >= target, f"{what} processed {done} of {target}"
    return (target - first[1]) / max(last_t - first[0], 1e-3)


def latency_at_rate(info: stack.StackInfo, messages: Sequence[tuple[bytes, bytes]], rate: float,
                    log_dir: Path) -> dict[str, Any]:
    """Produce at a steady rate (producer timestamps = capture-time stamps); worker reports produce->Redis."""
    s = isolated_settings(info, db=12)
    ensure_topics(s)
    redis.Redis.from_url(s.redis_url).flushdb()
    worker = start_worker(s, log_dir / "bench-latency-worker.log")
    try:
        warm = int(rate * 3)
        produce(s, messages[:warm], rate=rate)
        worker.metrics(reset_latency=True)
        t = time.monotonic()
        produce(s, messages[warm:], rate=rate)
        achieved = (len(messages) - warm) / (time.monotonic() - t)
        time.sleep(1.0)
        m = worker.metrics()
    finally:
        worker.stop()
    return {"latency_rate_target": rate, "latency_rate_achieved": achieved,
            "latency_p50_ms": m.get("latency_ms_p50"), "latency_p99_ms": m.get("latency_ms_p99"),
            "latency_p999_ms": m.get("latency_ms_p999"), "latency_samples": m.get("latency_samples")}


# Real-time priorities of the lookup path in ``trail_under_ingest(priority="on")``: Redis above the lookup
# process, both above every normal process (the worker, the producer, the broker). Children forked by either
# (Redis's background saves) go back to normal scheduling
REDIS_RT_PRIORITY, LOOKUP_RT_PRIORITY = 20, 10
PRIORITIES = ("off", "on", "slice", "weight")  # of the lookup path in ``trail_under_ingest``


def each_thread(tids: Iterable[int], apply: Callable[[int], None]) -> list[int]:
    """``apply`` to each thread; one that exited since it was listed is skipped (``ProcessLookupError``: a
    process's threads come and go while it is being set). Returns the threads it was applied to."""
    done = []
    for tid in tids:
        try:
            apply(tid)
        except ProcessLookupError:
            continue
        done.append(tid)
    return done


def threads(pid: int) -> list[int]:
    return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]


def set_realtime(pid: int, priority: int) -> None:
    """SCHED_FIFO at ``priority`` (0: back to normal scheduling) for every thread ``pid`` has now (threads and
    children it starts later get normal scheduling: SCHED_RESET_ON_FORK).

    Raises ``PermissionError`` without CAP_SYS_NICE (root, or ``setcap cap_sys_nice``)."""
    policy = (os.SCHED_FIFO | os.SCHED_RESET_ON_FORK) if priority else os.SCHED_OTHER
    each_thread(threads(pid), lambda tid: os.sched_setscheduler(tid, policy, os.sched_param(priority)))


# The shortest slice Linux's EEVDF scheduler grants a normal (SCHED_OTHER) task (``trail_under_ingest(priority=
# "slice")``): a waking task with a shorter slice has an earlier deadline and may preempt a running one with the
# default slice (1.4 ms on the 2-core VMs here), without real-time priority
SHORT_SLICE_NS = 100_000
_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}  # the system call's number


class _SchedAttr(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("policy", ctypes.c_uint32), ("flags", ctypes.c_uint64),
                ("nice", ctypes.c_int32), ("priority", ctypes.c_uint32), ("runtime", ctypes.c_uint64),
                ("deadline", ctypes.c_uint64), ("period", ctypes.c_uint64), ("util_min", ctypes.c_uint32),
                ("util_max", ctypes.c_uint32)]


def set_slice(pid: int, ns: int) -> None:
    """Normal scheduling with an EEVDF slice of ``ns`` (0: the default) for every thread of ``pid``.

    Linux 6.12 and later; raises ``OSError`` where the kernel or the architecture has no such setting."""
    each_thread(threads(pid), lambda tid: set_thread_slice(tid, ns))


def set_thread_slice(tid: int, ns: int) -> None:
    """``set_slice`` of one thread (``ProcessLookupError`` if it has exited)."""
    call = _SCHED_SETATTR.get(platform.machine())
    if call is None:
        raise OSError(errno.ENOSYS, f"sched_setattr: unknown on {platform.machine()}")
    attr = _SchedAttr(size=ctypes.sizeof(_SchedAttr), policy=os.SCHED_OTHER, runtime=ns)
    if _LIBC.syscall(call, tid, ctypes.byref(attr), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sched_setattr({tid}): {os.strerror(err)}")  # (ESRCH makes a ProcessLookupError)


_LIBC = ctypes.CDLL(None, use_errno=True)


# Nice of the autogroups of Redis and the lookup process in ``trail_under_ingest(priority="weight")``: Linux
# shares the CPU between sessions (autogroups) first, so a process's own nice counts only against its session's
# other processes; -10 weighs each session ~9x one at 0 (the worker's, the producer's, the broker's)
AUTOGROUP_NICE = -10


def set_autogroup_nice(pid: int, nice: int) -> None:
    """The nice of ``pid``'s autogroup (its session's share of the CPU against other sessions); a negative one
    needs CAP_SYS_NICE."""
    Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def realtime_permitted() -> bool:
    """Whether this process may raise a process to a real-time priority (tried on itself, then undone)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except PermissionError:
        return False
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return True


def trail_under_ingest(info: stack.StackInfo, messages: Sequence[tuple[bytes, bytes]], rate: float,
                       log_dir: Path, chunk_args: int | None = None, priority: str = "off",
                       cell_bucket_s: int | None = None, chunk_when: str | None = None) -> dict[str, Any]:
    """p99 of looking up a 1,000-sighting trail while the worker ingests at ``rate`` (``chunk_args``: the
    worker's ``PLATESTREAM_REDIS_CHUNK_ARGS``, ``chunk_when`` its ``PLATESTREAM_REDIS_CHUNK_WHEN``,
    ``cell_bucket_s`` its ``PLATESTREAM_CELL_BUCKET_S``, if not the defaults).

    ``priority``: ``on``, Redis and the lookup process run at real-time priority during the measurement (what a
    box shared by ingest and lookups needs for a short tail: under normal scheduling a lookup waits behind the
    worker, the producer and the broker for a core, and Redis does too); ``slice``, they keep normal scheduling
    with the shortest EEVDF slice (``SHORT_SLICE_NS``), which needs no privilege; ``weight``, that slice and
    their sessions weighted ~9x the others' (``AUTOGROUP_NICE``); ``off``, none of these."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority: one of {PRIORITIES}, not {priority!r}")
    s = isolated_settings(info, db=11)
    if chunk_args is not None:
        s = dataclasses.replace(s, redis_chunk_args=chunk_args)
    if chunk_when is not None:
        s = dataclasses.replace(s, redis_chunk_when=chunk_when)
    if cell_bucket_s is not None:
        s = s.with_cell_bucket(cell_bucket_s * 1000)
    ensure_topics(s)
    client = redis.Redis.from_url(s.redis_url)
    client.flushdb()
    # one vehicle passing one camera every minute for 1,000 minutes: 1,000 sightings
    base = 1_764_000_000_000
    heavy = [(b"cam-heavy", orjson.dumps({"read_id": f"h{i}", "camera_id": "cam-heavy", "agency": "bench",
                                          "plate": "HEAVY1", "region": "US-CT", "ts": base + i * 60_000,
                                          "lat": 41.7, "lon": -72.7, "confidence": 0.9})) for i in range(1000)]
    worker = start_worker(s, log_dir / "bench-trail-worker.log")
    samples: list[float] = []
    stop = threading.Event()
    try:
        produce(s, heavy)
        deadline = time.monotonic() + 60
        while len(trail(client, s, "HEAVY1", "US-CT")) < 1000 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(trail(client, s, "HEAVY1", "US-CT")) == 1000

        # where a lookup's time goes with nothing else running: the whole query vs Redis's reply alone
        key = trail_key(vehicle_id(s.hash_key, "US-CT", "HEAVY1"))
        idle = _timed(lambda: trail(client, s, "HEAVY1", "US-CT"), 200)
        idle_cols = _timed(lambda: trail_columns(client, s, "HEAVY1", "US-CT"), 200)
        raw = _timed(lambda: client.execute_command("ZRANGEBYLEX", key, "-", "+"), 200)
        # and paced as under ingest (a pause between lookups) before ingest starts (the worker idle): on this VM a
        # lookup after a few ms of pause costs far more than one right after another (the CPU's caches and
        # predictors have gone cold), which is most of the gap between ``idle`` and the figure under ingest
        with _lookups(client, s) as lookups:
            paced = _paced(lookups, 300, threading.Event())
        client.config_resetstat()  # (also empties the per-command latency histograms read below)
        scripts0 = _batch_stats(client)

        # the querying client is its own process (and session: _query_loop), as an analyst's would be (no GIL
        # shared with the load)
        ctx = multiprocessing.get_context("spawn")
        results: Any = ctx.Queue()
        flag, ready = ctx.Event(), ctx.Event()
        proc = ctx.Process(target=_query_loop, args=(s, flag, ready, results))
        proc.start()
        assert proc.pid is not None
        if not ready.wait(120):
            proc.kill()  # (a non-daemon child left running would hold the benchmark's exit)
            raise RuntimeError("the lookup process did not warm up in 120 s")
        # set now, on every thread it has (a thread started later would not have real-time priority:
        # SCHED_RESET_ON_FORK), and after its setsid (its own autogroup)
        if priority == "on":
            set_realtime(info.redis_pid, REDIS_RT_PRIORITY)
            set_realtime(proc.pid, LOOKUP_RT_PRIORITY)
        if priority in ("slice", "weight"):
            for pid in (info.redis_pid, proc.pid):
                set_slice(pid, SHORT_SLICE_NS)
                if priority == "weight":
                    set_autogroup_nice(pid, AUTOGROUP_NICE)
        before = processed(s, client)
        redis_stat = os.open(f"/proc/{info.redis_pid}/task/{info.redis_pid}/schedstat", os.O_RDONLY)  # main thread
        redis0 = _schedstat(redis_stat)
        t0 = time.monotonic()
        produce(s, messages, rate=rate)
        achieved = len(messages) / (time.monotonic() - t0)
        flag.set()
        redis1 = _schedstat(redis_stat)
        os.close(redis_stat)
        (samples, col_samples, api_samples), (cpu, col_cpu, api_cpu) = results.get(timeout=60)
        proc.join(30)
        scripts1 = _batch_stats(client)
        script_hist = _merged(*(_histogram(client, c) for c in BATCH_COMMANDS))
        lookup_hist = _histogram(client, "zrangebylex")
        lookup_stats = client.info("commandstats").get("cmdstat_zrangebylex", {})
        # the worker kept up: everything produced was in Redis soon after the producer finished
        deadline = time.monotonic() + 30
        while processed(s, client) < before + len(messages) and time.monotonic() < deadline:
            time.sleep(0.01)
        consumed = (processed(s, client) - before) / (time.monotonic() - t0)
        written = worker.metrics()
    finally:
        stop.set()
        if priority == "on":
            set_realtime(info.redis_pid, 0)
        elif priority in ("slice", "weight"):
            set_slice(info.redis_pid, 0)
            set_autogroup_nice(info.redis_pid, 0)
        worker.stop()
    arr, cols, api = np.array(samples), np.array(col_samples), np.array(api_samples)
    calls = int(scripts1.get("calls", 0)) - int(scripts0.get("calls", 0))
    usec = int(scripts1.get("usec", 0)) - int(scripts0.get("usec", 0))
    return {"trail_p50_ms": float(np.percentile(arr, 50)), "trail_p99_ms": float(np.percentile(arr, 99)),
            "trail_p90_ms": float(np.percentile(arr, 90)), "trail_max_ms": float(arr.max()),
            # the same lookups as columns (query.trail_columns): no dict per sighting
            "trail_columns_p50_ms": float(np.percentile(cols, 50)),
            "trail_columns_p90_ms": float(np.percentile(cols, 90)),
            "trail_columns_p99_ms": float(np.percentile(cols, 99)), "trail_columns_max_ms": float(cols.max()),
            # and as the API's answer: governed (policy, audit record) and serialized to the reply's JSON
            "trail_api_p50_ms": float(np.percentile(api, 50)), "trail_api_p90_ms": float(np.percentile(api, 90)),
            "trail_api_p99_ms": float(np.percentile(api, 99)), "trail_api_max_ms": float(api.max()),
            # where the slowest 1% of the lookups spent their time: the lookup process on a core, waiting on the
            # run queue for one (schedstat), or blocked on Redis's reply (the rest: Redis busy, or waiting for a core)
            **_slowest("trail", arr, cpu), **_slowest("trail_columns", cols, col_cpu),
            **_slowest("trail_api", api, api_cpu),
            # Redis's main thread: how long, on average, it waited for a core each time it became runnable
            "trail_redis_runqueue_wait_ms_avg": (redis1[1] - redis0[1]) / 1e6 / max(redis1[2] - redis0[2], 1),
            "trail_columns_idle_p50_ms": float(np.median(idle_cols)),
            # the same pacing as under ingest, before ingest starts
            **{f"trail_{kind}paced_idle_p{q}_ms": float(np.percentile(times, q))
               for kind, times in zip(("", "columns_", "api_"), paced[0], strict=True) for q in (50, 99)},
            # how long Redis was busy with one batch write (script or transaction: BATCH_COMMANDS): the 99th
            # percentile's histogram bucket (upper bound, ms). A lookup waits at most this long behind one; the
            # rest of its tail is CPU
            # contention between the lookup, the worker, the producer, Redis and the broker on two cores
            "trail_ingest_batch_script_ms_p99_at_most": _bucket_at(script_hist, 0.99),
            # Redis's own time for a lookup's ZRANGEBYLEX under ingest (the rest of a lookup is the round trip,
            # waiting behind scripts and the client's decoding)
            "trail_redis_lookup_ms_avg": float(lookup_stats.get("usec_per_call", float("nan"))) / 1000,
            "trail_redis_lookup_ms_p99_at_most": _bucket_at(lookup_hist, 0.99),
            "trail_queries": len(samples) + len(col_samples) + len(api_samples), "trail_ingest_rate_target": rate,
            "trail_ingest_rate_achieved": achieved, "trail_ingest_stored_per_s": consumed,
            "trail_priority": priority,
            "trail_idle_p50_ms": float(np.median(idle)), "trail_idle_redis_reply_p50_ms": float(np.median(raw)),
            "trail_ingest_batch_scripts": calls, "trail_ingest_batch_script_ms_avg": usec / max(calls, 1) / 1000,
            # partition batches the worker wrote whole and in chunks (PLATESTREAM_REDIS_CHUNK_WHEN), whole run
            "trail_ingest_redis_batches_whole": int(written.get("redis_batches_whole", 0)),
            "trail_ingest_redis_batches_chunked": int(written.get("redis_batches_chunked", 0))}


def _slowest(prefix: str, times: NDArray[np.float64], cpu: list[tuple[float, float]],
             share: float = 0.01) -> dict[str, float]:
    """Of the slowest ``share`` of the lookups, the part of their time on a core, waiting for one, and blocked."""
    slowest = np.argsort(times)[-max(1, int(len(times) * share)) :]
    total = float(times[slowest].sum())
    run, wait = (float(x) for x in np.asarray(cpu)[slowest].sum(axis=0))
    return {f"{prefix}_slowest_on_core_share": run / total, f"{prefix}_slowest_runqueue_share": wait / total,
            f"{prefix}_slowest_blocked_share": 1 - (run + wait) / total}


# What a batch's Redis write runs as: a transaction (whole batches and chunks), or a script (Redis Cluster, replays)
BATCH_COMMANDS = ("evalsha", "exec")


def _batch_stats(client: redis.Redis) -> dict[str, int]:
    """Calls and microseconds of the batch writes' commands so far (``INFO commandstats``)."""
    stats = client.info("commandstats")
    return {k: sum(int(stats.get(f"cmdstat_{c}", {}).get(k, 0)) for c in BATCH_COMMANDS) for k in ("calls", "usec")}


def _merged(*hists: dict[int, int]) -> dict[int, int]:
    """Cumulative histograms (``_histogram``) of several commands as one: at each bucket, the sum of each
    one's count at its last bucket up to there (0 before its first)."""
    keys = sorted(set().union(*hists))
    return {k: sum(max((v for b, v in h.items() if b <= k), default=0) for h in hists) for k in keys}


def _histogram(client: redis.Redis, command: str) -> dict[int, int]:
    """``LATENCY HISTOGRAM <command>``: cumulative calls per power-of-two bucket (upper bound in us)."""
    reply = cast(dict[bytes, Any], client.execute_command("LATENCY", "HISTOGRAM", command))
    hist = reply.get(command.encode(), {}).get(b"histogram_usec", {})
    return {int(k): int(v) for k, v in hist.items()}


def _bucket_at(hist: dict[int, int], share: float) -> float:
    """Upper bound (ms) of the first bucket whose cumulative count reaches ``share`` of all calls."""
    if not hist:
        return float("nan")
    total = max(hist.values())
    return next(k for k, v in sorted(hist.items()) if v >= share * total) / 1000


def _timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        result = fn()
        out.append((time.perf_counter() - t) * 1000)
        del result  # the call's time, not its result's freeing (as in ``_paced``)
    return out


LOOKUP_PAUSE_S = 0.005  # between two lookups of ``trail_under_ingest`` (about 150 lookups/s)


# The analyst of the ``api`` lookups: the heavy trail's agency, one user
_BENCH_TOKEN = "benchmark-analyst-token"
_BENCH_POLICY = {"version": 1, "agencies": [{"id": "bench", "name": "Benchmark", "state": "CT", "kind": "local"}],
                 "users": [{"id": "analyst", "agency": "bench", "roles": ["analyst"],
                            "token_sha256": token_hash(_BENCH_TOKEN)}]}


@contextlib.contextmanager
def _lookups(c: redis.Redis, s: Settings) -> Iterator[tuple[Callable[[], Sized], ...]]:
    """Rows (``query.trail``), columns (``query.trail_columns``) and the API's answer: the governed trail (policy
    checked; the query's audit record appended in Redis and published to Kafka, acknowledged before anything
    returns, as the API does) and its JSON reply as the API serves it (no HTTP)."""
    policy = Policy.from_dict(_BENCH_POLICY)
    ctx = policy.context(_BENCH_TOKEN, "criminal_investigation", "benchmark")
    with _api_publisher(s) as publisher:
        audit = AuditLog(c, b"benchmark-audit-key-0123", publisher)

        def api() -> GovernedResult:
            result = governed_trail(c, s, policy, ctx, audit, "HEAVY1", "US-CT")
            governed_response(result)
            return result

        yield (lambda: trail(c, s, "HEAVY1", "US-CT"), lambda: trail_columns(c, s, "HEAVY1", "US-CT"), api)


@contextlib.contextmanager
def _api_publisher(s: Settings) -> Iterator[LoopAuditPublisher]:
    """The API server's audit publisher, on an event loop in a thread of its own, as aiohttp's loop is to the
    request threads."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="audit-loop", daemon=True)
    thread.start()
    publisher = LoopAuditPublisher(s)
    try:
        asyncio.run_coroutine_threadsafe(publisher.start(), loop).result(timeout=60)
        yield publisher
    finally:
        publisher.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


Paced = tuple[list[list[float]], list[list[tuple[float, float]]]]


def _paced(lookups: tuple[Callable[[], Sized], ...], rounds: int | None, flag: Any) -> Paced:
    """Times of each kind of ``lookups`` taking turns, ``LOOKUP_PAUSE_S`` apart, for ``rounds`` rounds or
    until ``flag`` is set; and per lookup, how long of it this thread ran on a core and how long it waited on
    the run queue for one (the kernel's schedstat), all in ms. The rest of a lookup's time it was blocked: on
    Redis's reply."""
    samples: Paced = ([[] for _ in lookups], [[] for _ in lookups])
    stat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    try:
        while not flag.is_set() and (rounds is None or len(samples[0][0]) < rounds):
            for lookup, out, cpu in zip(lookups, *samples, strict=True):
                run0, wait0, _ = _schedstat(stat)
                t = time.perf_counter()
                found = lookup()
                out.append((time.perf_counter() - t) * 1000)
                run1, wait1, _ = _schedstat(stat)
                cpu.append(((run1 - run0) / 1e6, (wait1 - wait0) / 1e6))
                assert len(found) == 1000
                # dropped here, not when the next lookup's result replaces it: that lookup's time included freeing
                # this one (1,000 row dicts, cold, before each columns lookup: p50 1.1-1.25 -> 0.83-0.94 ms paced)
                del found
                time.sleep(LOOKUP_PAUSE_S)
    finally:
        os.close(stat)
    return samples


def _schedstat(fd: int) -> tuple[int, int, int]:
    """(time on a core ns, time runnable but waiting for one ns, times it got a core) of the thread whose /proc
    schedstat ``fd`` is."""
    run, wait, slices = os.pread(fd, 64, 0).split()
    return int(run), int(wait), int(slices)


def _query_loop(s: Settings, flag: Any, ready: Any, results: Any) -> None:
    # a session of its own, as an analyst's API server is a service of its own: not in the benchmark driver's
    # scheduling group (Linux autogroup), whose producer stands in for the cameras (columns p99 under 50k reads/s
    # by default 7.7-8.9 -> 6.3-7.3 ms in three alternating rounds; no change with real-time priority)
    os.setsid()
    with _lookups(redis.Redis.from_url(s.redis_url), s) as lookups:
        for _ in range(20):  # warm-up, not measured
            for lookup in lookups:
                lookup()
        ready.set()  # every thread started (the audit publisher's loop): the driver sets priorities now
        results.put(_paced(lookups, None, flag))  # rows, columns, API: taking turns, under the same load


def on_prefilled(info: stack.StackInfo, prefilled: Settings, db: int, group: str) -> Settings:
    """Settings of a fresh consumer group on the pre-filled topic, with its own output topics and an empty
    Redis db: a profiled worker starts from offset 0 and finds nothing of the timed runs."""
    s = dataclasses.replace(isolated_settings(info, db=db), topic_reads=prefilled.topic_reads,
                            group=f"{BENCH}-{group}-{uuid.uuid4().hex[:6]}")
    ensure_topics(s)
    redis.Redis.from_url(s.redis_url).flushdb()
    return s


def sample_worker(info: stack.StackInfo, prefilled: Settings, seconds: float, log_dir: Path) -> dict[str, Any]:
    """py-spy samples of a real worker process on the pre-filled topic (fresh group and Redis db).

    cProfile (``profile_worker``) counts calls but slows every Python call down, which inflates the
    per-sighting Python code against C and Numba; sampling the worker in place, as it runs in the timed
    runs (its own process, broker and Redis busy beside it), shows the shares as they are.
    """
    # the [bench] extra's py-spy (beside this interpreter) first, so the report's sampler is the pinned one
    venv_spy = Path(sys.executable).with_name("py-spy")
    spy = str(venv_spy) if venv_spy.exists() else shutil.which("py-spy")
    if spy is None:
        return {"error": "py-spy is not installed (it is in the [bench] extra)"}
    s = on_prefilled(info, prefilled, db=7, group="sample")
    client = redis.Redis.from_url(s.redis_url)
    worker = start_worker(s, log_dir / "bench-worker-sampled.log")
    out = log_dir / "py-spy.txt"
    try:
        deadline = time.monotonic() + 120
        while not processed(s, client):  # sample batches, not start-up
            if time.monotonic() > deadline or worker.proc.poll() is not None:
                return {"error": "the sampled worker did not commit a batch"}
            time.sleep(0.05)
        try:
            run = subprocess.run([spy, "record", "--pid", str(worker.proc.pid), "--duration", str(int(seconds)),
                                  "--rate", "100", "--nonblocking", "--format", "raw", "--output", str(out)],
                                 capture_output=True, text=True, timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            return {"error": f"py-spy did not finish within {seconds + 60:.0f} s"}
    finally:
        worker.stop()
    if run.returncode != 0 or not out.exists():
        return {"error": f"py-spy failed (exit {run.returncode}): {run.stderr.strip()[-300:]}"}
    return summarize_samples(out.read_text())


# frames on every stack of a thread (event loop, interpreter start-up, thread start): not informative
_PLUMBING = ("(<frozen ", "(asyncio/", "(mode/", "(threading.py)", "(concurrent/futures/")


def summarize_samples(raw: str, top: int = 22) -> dict[str, Any]:
    """py-spy's collapsed stacks ("frame;frame;... count") -> shares of all samples: by function including
    what it calls (event-loop and thread plumbing left out), and by line where the time is spent."""
    total = 0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in raw.splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack_text.split(";")]
        own[frames[-1][1]] += n
        for name in {f[0] for f in frames if not any(m in f[0] for m in _PLUMBING)}:
            inclusive[name] += n

    def share(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / max(total, 1), 1)) for k, v in c.most_common(top)]

    return {"samples": total, "inclusive_pct": share(inclusive), "own_pct": share(own)}


def _frame(frame: str) -> tuple[str, str]:
    """A py-spy frame ``func (path/to/file.py:12)`` as (``func (file.py)``, ``func (file.py:12)``), paths made
    short."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, line = where.rpartition(":")
    short = path.replace(str(ROOT) + "/", "").replace(sys.prefix + "/", "")
    short = short.split("site-packages/")[-1]
    return f"{name} ({short})", f"{name} ({short}:{line})"


def profile_worker(info: stack.StackInfo, prefilled: Settings, limit: int) -> str:
    """cProfile of the worker's batch loop (in-process, fresh group and Redis db) over ``limit`` messages."""
    import cProfile

    from streams.pipeline import warm_up
    from streams.worker import BatchRunner

    s = on_prefilled(info, prefilled, db=8, group="profile")

    async def run() -> None:
        runner = BatchRunner(s)
        await runner.start()  # outside the profile: connecting, and settling the GC once (a 0.5 s collection)
        prof.enable()
        try:
            await asyncio.wait_for(runner.run(lambda: runner.metrics["consumed"] >= limit), 600)
        finally:
            prof.disable()
            await runner.stop()

    warm_up(s)  # as make_app does: no kernel compilation in the profile
    prof = cProfile.Profile()
    asyncio.run(run())
    return _top(prof, 22)


def profile_lookup(info: stack.StackInfo, lookups: int = 300) -> str:
    """cProfile of ``lookups`` trail lookups (rows) of the 1,000-sighting trail ``trail_under_ingest`` left
    in its Redis db, nothing else running: where a lookup's own time goes."""
    import cProfile

    s = isolated_settings(info, db=11)
    client = redis.Redis.from_url(s.redis_url)
    assert len(trail(client, s, "HEAVY1", "US-CT")) == 1000
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(lookups):
        trail(client, s, "HEAVY1", "US-CT")
    prof.disable()
    return _top(prof, 16)


def _top(prof: Any, rows: int) -> str:
    """The ``rows`` functions of a cProfile with the most own time, paths relative to the repository."""
    import io
    import pstats

    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(rows)
    text = out.getvalue()
    return text[text.find("ncalls"):].replace(str(ROOT) + "/", "").replace(sys.prefix + "/", "")
