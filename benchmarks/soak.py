"""``make soak`` / ``python -m benchmarks.soak``: a steady rate through one worker for a long time.

Simulated traffic is replayed in a loop (each loop shifted forward in event time, with fresh read ids, so
every read is new) at a fixed rate into a real worker on the local stack. Every few seconds the worker's
RSS and dedup state (from its ``/metrics``) and the consumer group's lag (end offsets minus committed
offsets) are sampled. The report says whether memory stayed flat and lag bounded, with the curve:
``benchmarks/results/soak-<date>.{json,md,png}``.

Criteria (stated before the run): *flat* = the median RSS of the last third of the run is within 5% of
the median of the middle third, and no sample of the last third is more than 10% above the median of the
second sixth (the first sixth is warm-up: JIT, buffers, pools; a leak that grows in steps, as one that waits
for the cycle collector does, passed the first test alone with 227 -> 794 MiB); *bounded* = lag never
exceeds 10 seconds of traffic and drains to zero after the producer stops; *accounted* = the worker consumed
every message produced, dead-lettered exactly the pool's malformed ones and made exactly one sighting per
true pass, once per loop.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from benchmarks import e2e
from benchmarks.__main__ import machine
from streams import stack
from streams.settings import Settings
from streams.simulate import generate
from streams.topics import end_offsets, ensure_topics


def loop_messages(pool: list[tuple[bytes, Any]], loop: int, span_ms: int) -> list[tuple[bytes, bytes]]:
    """Loop ``loop`` of the pool: event times shifted by ``loop * span_ms``, read ids made unique."""
    out = []
    for key, doc in pool:
        if isinstance(doc, dict):
            d = dict(doc, ts=doc["ts"] + loop * span_ms, read_id=f"{doc['read_id']}~{loop}")
            out.append((key, orjson.dumps(d)))
        else:
            out.append((key, doc))  # malformed input stays malformed: it goes to the DLQ every loop
    return out


def _pool(seed: int, vehicles: int, hours: float) -> tuple[list[tuple[bytes, Any]], int, int, int]:
    """The messages of one loop, the event time a loop spans, how many of its messages are malformed and how
    many true sightings (passes) it holds."""
    traffic = generate(seed=seed, vehicles=vehicles, hours=hours, malformed=0.005, late=0.02)
    pool: list[tuple[bytes, Any]] = []
    for key, value in traffic.messages:
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            doc = None
        ok = isinstance(doc, dict) and isinstance(doc.get("ts"), int) and isinstance(doc.get("read_id"), str)
        pool.append((key or b"", doc if ok else value))
    # a loop starts an hour (more than the dedup window and the allowed lateness) after the one before ends:
    # trips run past ``hours``, and loops that overlapped would make the next loop's first hours late reads
    times = [doc["ts"] for _, doc in pool if isinstance(doc, dict)]
    return pool, max(times) - min(times) + 3_600_000, traffic.malformed, len(traffic.truth)


def clock_ahead_ms(duration_s: float, rate: float, loop_len: int, span_ms: int) -> int:
    """How far ahead of its send time the last loop's capture times are: each loop is ``span_ms`` later in
    event time, sent a few seconds after the one before, so the worker's check for camera clocks ahead
    (``PLATESTREAM_MAX_CLOCK_AHEAD_S``) must allow that much, or the later loops are dead-lettered."""
    loops = int(duration_s * rate / loop_len) + 2
    ahead = loops * span_ms + 3_600_000
    if ahead > 366 * 86_400_000:
        raise ValueError(f"a soak of {duration_s:.0f} s at {rate:,.0f} reads/s runs {ahead / 86_400_000:.0f} days "
                         "ahead in event time; at most 366 (PLATESTREAM_MAX_CLOCK_AHEAD_S)")
    return ahead


def _lag(admin: KafkaAdminClient, s: Settings) -> int:
    """Messages in the reads topic not yet committed by the worker's group."""
    ends = end_offsets(s, s.topic_reads)
    for attempt in range(20):  # the group coordinator may still be loading (a retriable broker answer)
        try:
            committed = admin.list_group_offsets({s.group: None}).get(s.group, {})
            break
        except KafkaError as e:
            if not e.retriable or attempt == 19:
                raise
            time.sleep(0.1)
    done = {tp.partition: meta.offset for tp, meta in committed.items() if tp.topic == s.topic_reads}
    return sum(max(0, end - max(done.get(p, 0), 0)) for p, end in ends.items())


def run(duration_s: float, rate: float, sample_s: float = 5.0, info: stack.StackInfo | None = None,
        events: Sequence[tuple[float, Callable[[], None]]] = ()) -> dict[str, Any]:
    """Run the soak; returns samples and the verdicts (see the module docstring for the criteria).

    ``info``: a running stack (default: start or reuse the local one); ``events``: (seconds, action) to
    disturb the run, e.g. pause Redis to see backpressure.
    """
    info = info or e2e.bench_stack()
    log_dir = e2e.log_dir(info.state_dir)
    pool, span_ms, malformed, passes = _pool(seed=5, vehicles=3000, hours=2)
    s = dataclasses.replace(e2e.isolated_settings(info, db=9),
                            max_clock_ahead_ms=clock_ahead_ms(duration_s, rate, len(pool), span_ms))
    ensure_topics(s)
    worker = e2e.start_worker(s, log_dir / "soak-worker.log")
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, client_id="platestream-soak")
    produced = [0]
    stop = threading.Event()

    def producer() -> None:
        loop = 0
        while not stop.is_set():  # one loop of the pool per call (about 10 s of traffic at 10k/s)
            msgs = loop_messages(pool, loop, span_ms)
            asyncio.run(e2e._produce(s.kafka_bootstrap, s.topic_reads, msgs, rate, s.partitions))
            produced[0] += len(msgs)
            loop += 1

    thread = threading.Thread(target=producer, daemon=True)
    samples: list[dict[str, Any]] = []
    e2e.log(f"soak: {duration_s:.0f} s at {rate:,.0f} reads/s into {s.topic_reads}")
    t0 = time.monotonic()
    thread.start()
    todo = sorted(events, key=lambda e: e[0])
    try:
        while (elapsed := time.monotonic() - t0) < duration_s:
            time.sleep(sample_s - (elapsed % sample_s))
            while todo and todo[0][0] <= time.monotonic() - t0:
                todo.pop(0)[1]()
            m = worker.metrics()
            samples.append({"t": round(time.monotonic() - t0, 1), "rss_mb": round(m["rss_bytes"] / 2**20, 1),
                            "lag": _lag(admin, s), "produced": produced[0],
                            "open_sessions": m["dedup_open_sessions"], "pool_slots": m["dedup_pool_slots"],
                            "dedup_state_mb": round(m["dedup_state_bytes"] / 2**20, 2)})
            if len(samples) % max(1, int(60 / sample_s)) == 0:
                e2e.log(f"  {samples[-1]}")
        stop.set()
        thread.join(30)
        drain_deadline = time.monotonic() + 120
        while (lag := _lag(admin, s)) > 0 and time.monotonic() < drain_deadline:
            time.sleep(1)
        final = worker.metrics()
    finally:
        stop.set()
        worker.stop()
        admin.close()
    third = max(1, len(samples) // 3)
    mid = statistics.median(x["rss_mb"] for x in samples[third : 2 * third]) if len(samples) >= 3 else 0.0
    last = statistics.median(x["rss_mb"] for x in samples[2 * third :]) if len(samples) >= 3 else 0.0
    sixth = max(1, len(samples) // 6)
    early = statistics.median(x["rss_mb"] for x in samples[sixth : 2 * sixth]) if len(samples) >= 6 else 0.0
    last_max = max((x["rss_mb"] for x in samples[2 * third :]), default=0.0)
    max_lag = max((x["lag"] for x in samples), default=0)
    loops = produced[0] // len(pool)  # (the producer counts whole loops only)
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": machine(), "duration_s": duration_s,
        "rate": rate, "sample_s": sample_s, "produced": produced[0],
        "achieved_rate": round(produced[0] / duration_s, 1), "samples": samples,
        "rss_mid_third_mb": mid, "rss_last_third_mb": last, "rss_second_sixth_mb": early,
        "rss_last_third_max_mb": last_max,
        "rss_growth_after_warm_up_pct": round(100 * (last_max - early) / early, 2) if early else None,
        "rss_change_pct": round(100 * (last - mid) / mid, 2) if mid else None,
        "max_lag": max_lag, "max_lag_s_of_traffic": round(max_lag / rate, 2), "lag_after_drain": lag,
        "dedup_open_sessions_max": max((x["open_sessions"] for x in samples), default=0),
        "dedup_state_mb_max": max((x["dedup_state_mb"] for x in samples), default=0.0),
        "worker_errors": {k: v for k, v in final.items() if "error" in k},
        # every message is accounted for: consumed, and dead-lettered only if the simulator made it malformed
        "loops": loops, "consumed": final["consumed"], "dead_lettered": final["dead_lettered"],
        "dead_lettered_expected": loops * malformed, "sightings_new": final["sightings_new"],
        "sightings_expected": loops * passes, "late": final["late"],
    }
    result["input_accounted"] = (result["consumed"] == produced[0]
                                 and result["dead_lettered"] == result["dead_lettered_expected"]
                                 and result["sightings_new"] == result["sightings_expected"])
    result["memory_flat"] = mid > 0 and abs(last - mid) <= 0.05 * mid and early > 0 and last_max <= 1.10 * early
    result["lag_bounded"] = max_lag <= 10 * rate and lag == 0
    return result


def chart(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    t = [x["t"] / 60 for x in result["samples"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(t, [x["rss_mb"] for x in result["samples"]], color="#2a7")
    a.set_xlabel("minutes")
    a.set_ylabel("worker RSS (MiB)")
    a.set_ylim(bottom=0)
    a.set_title(f"Worker memory at {result['rate']:,.0f} reads/s")
    b.plot(t, [x["lag"] for x in result["samples"]], color="#c44")
    b.set_xlabel("minutes")
    b.set_ylabel("consumer lag (messages)")
    b.set_title("Consumer lag")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def markdown(r: dict[str, Any], command: str, png: str | None) -> str:
    m = r["machine"]
    lines = [
        f"# platestream soak, {r['date']}", "",
        f"Command: `{command}`  ", f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory')}; "
        f"Python {m.get('python')}; broker, Redis and worker on the same machine.", "",
        "| figure | value |", "|---|---|",
        f"| duration | {r['duration_s']:.0f} s |", f"| target rate | {r['rate']:,.0f} reads/s |",
        f"| produced | {r['produced']:,} ({r['achieved_rate']:,.0f}/s) |",
        f"| worker RSS, median of middle third | {r['rss_mid_third_mb']} MiB |",
        f"| worker RSS, median of last third | {r['rss_last_third_mb']} MiB ({r['rss_change_pct']}%) |",
        f"| worker RSS, median of the second sixth (after warm-up) | {r['rss_second_sixth_mb']} MiB |",
        f"| worker RSS, highest of last third | {r['rss_last_third_max_mb']} MiB "
        f"({r['rss_growth_after_warm_up_pct']}% over the second sixth) |",
        f"| memory flat (last third within 5% of the middle one, and within 10% of the second sixth) | "
        f"{'yes' if r['memory_flat'] else 'NO'} |",
        f"| max consumer lag | {r['max_lag']:,} messages ({r['max_lag_s_of_traffic']} s of traffic) |",
        f"| lag after the producer stopped | {r['lag_after_drain']} |",
        f"| lag bounded (<= 10 s of traffic, drains to 0) | {'yes' if r['lag_bounded'] else 'NO'} |",
        f"| open dedup sessions, max | {r['dedup_open_sessions_max']:,} |",
        f"| dedup state, max | {r['dedup_state_mb_max']} MB |",
        f"| consumed by the worker | {r['consumed']:,} of {r['produced']:,} ({r['loops']} loops of the pool) |",
        f"| dead-lettered | {r['dead_lettered']:,} (the pool's malformed messages: {r['dead_lettered_expected']:,}) |",
        f"| new sightings | {r['sightings_new']:,} (the pool's passes: {r['sightings_expected']:,}; late reads: "
        f"{r['late']:,}) |",
        f"| input accounted (all consumed, only malformed dead-lettered, one sighting per pass) | "
        f"{'yes' if r['input_accounted'] else 'NO'} |",
        "",
    ]
    if png:
        lines += [f"![RSS and lag]({png})", ""]
    lines += [f"Samples (every {r['sample_s']:.0f} s): see the JSON file.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--rate", type=float, default=10_000.0, help="reads/s")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    command = "make soak" if not argv else "python -m benchmarks.soak " + " ".join(argv)
    result = run(args.minutes * 60, args.rate)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"soak-{result['date']}"
    base.with_suffix(".json").write_text(json.dumps(result, indent=2))
    png = base.with_suffix(".png")
    has_png = chart(result, png)
    base.with_suffix(".md").write_text(markdown(result, command, png.name if has_png else None))
    e2e.log(f"report: {base}.md  memory flat: {result['memory_flat']}  lag bounded: {result['lag_bounded']}  "
            f"input accounted: {result['input_accounted']}")
    return 0 if result["memory_flat"] and result["lag_bounded"] and result["input_accounted"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
