"""Trail lookups under ingest, alone: rows and columns, with and without chunked batch writes and real-time
priority for the lookup path.

    python -m benchmarks.trail [--runs 2] [--chunk-args 0,400,200:always] [--priority off,on] [--vehicles 30000]
                               [--cell-bucket-s 900,300]

The same measurement as ``make bench``'s trail figures (``e2e.trail_under_ingest``: a 1,000-sighting trail
looked up from another process while a worker ingests 50k reads/s), repeated for each
``PLATESTREAM_REDIS_CHUNK_ARGS[:PLATESTREAM_REDIS_CHUNK_WHEN]`` value and priority (``on``: Redis and the
lookup process at SCHED_FIFO during the measurement, needs CAP_SYS_NICE; ``slice``: normal scheduling with the
shortest EEVDF slice; ``weight``: that slice and their sessions' autogroup nice at -10, needs CAP_SYS_NICE) and
``PLATESTREAM_CELL_BUCKET_S`` (the area index's time bucket: how many entries a busy cell's sorted set holds),
runs taking turns so each configuration sees the same machine. Writes ``benchmarks/results/trail-<date>.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import e2e
from benchmarks.__main__ import machine, report_header, write_report
from streams.simulate import generate

SHOWN = ("trail_p50_ms", "trail_p99_ms", "trail_columns_p50_ms", "trail_columns_p99_ms", "trail_api_p50_ms",
         "trail_api_p99_ms", "trail_api_paced_idle_p99_ms", "trail_paced_idle_p50_ms",
         "trail_paced_idle_p99_ms", "trail_columns_paced_idle_p50_ms", "trail_columns_paced_idle_p99_ms",
         "trail_idle_p50_ms", "trail_columns_idle_p50_ms", "trail_slowest_on_core_share",
         "trail_slowest_runqueue_share", "trail_slowest_blocked_share", "trail_columns_slowest_on_core_share",
         "trail_columns_slowest_runqueue_share", "trail_columns_slowest_blocked_share",
         "trail_ingest_batch_script_ms_p99_at_most",
         "trail_redis_lookup_ms_avg", "trail_redis_lookup_ms_p99_at_most", "trail_redis_runqueue_wait_ms_avg",
         "trail_ingest_rate_achieved", "trail_ingest_stored_per_s", "trail_ingest_redis_batches_whole",
         "trail_ingest_redis_batches_chunked")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.trail", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--chunk-args", default="0,400",
                    help="comma-separated PLATESTREAM_REDIS_CHUNK_ARGS[:PLATESTREAM_REDIS_CHUNK_WHEN] values")
    ap.add_argument("--priority", default="off,on",
                    help="comma-separated of off, on (the lookup path at real-time priority), slice (at the "
                         "shortest EEVDF slice) and weight (that slice, sessions weighted ~9x)")
    ap.add_argument("--vehicles", type=int, default=30_000)
    ap.add_argument("--cell-bucket-s", default="", help="comma-separated PLATESTREAM_CELL_BUCKET_S values "
                    "(default: the settings' default only)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    buckets = [int(b) for b in args.cell_bucket_s.split(",")] if args.cell_bucket_s else [None]
    configs = [(v, p, b) for b in buckets for p in args.priority.split(",") for v in args.chunk_args.split(",")]
    if any(p not in e2e.PRIORITIES for _, p, _ in configs):
        ap.error(f"--priority: each of {', '.join(e2e.PRIORITIES)}")
    if any(p in ("on", "weight") for _, p, _ in configs) and not e2e.realtime_permitted():
        ap.error("--priority on and weight need CAP_SYS_NICE (run as root, or --priority off,slice)")
    command = "python -m benchmarks.trail " + " ".join(argv if argv is not None else sys.argv[1:])
    info = e2e.bench_stack()
    msgs = generate(seed=42, vehicles=args.vehicles, hours=24).messages[: 50_000 * 20]
    log_dir = e2e.log_dir(info.state_dir)
    runs: dict[tuple[str, str, int | None], list[dict[str, Any]]] = {c: [] for c in configs}
    t0 = time.monotonic()
    for i in range(args.runs):
        for v, prio, bucket in configs:
            e2e.log(f"run {i + 1}/{args.runs}: PLATESTREAM_REDIS_CHUNK_ARGS={v}, priority {prio}"
                    + ("" if bucket is None else f", PLATESTREAM_CELL_BUCKET_S={bucket}"))
            chunk_args, _, when = v.partition(":")
            r = e2e.trail_under_ingest(info, msgs, 50_000, log_dir, chunk_args=int(chunk_args), priority=prio,
                                       cell_bucket_s=bucket, chunk_when=when or None)
            runs[(v, prio, bucket)].append({k: r[k] for k in SHOWN})
    profile = e2e.profile_lookup(info)
    date = datetime.date.today().isoformat()
    results: dict[str, Any] = {"date": date, "command": command, "machine": machine(), "seconds": time.monotonic() - t0,
                               "runs": {f"chunk_args={v},priority={p}" + ("" if b is None else f",cell_bucket_s={b}"):
                                        rs for (v, p, b), rs in runs.items()}, "lookup_profile": profile}
    lines = [*report_header("Trail lookups under 50k reads/s ingest", results),
             "Median of the runs (ms); each run: ~1,900 lookups of a 1,000-sighting trail from another process (a "
             "session of its own), "
             "rows, columns and API answers taking turns, 5 ms apart. Priority on: Redis and the lookup process at "
             "SCHED_FIFO (20 and 10) during the measurement; slice: both at normal priority with the shortest EEVDF "
             "slice (0.1 ms, Linux 6.12+); weight: that slice and their sessions' autogroup nice at -10 (~9x the CPU "
             "share of a session at 0). The worker, the producer and the broker at normal priority. "
             "paced_idle: the same lookups, 5 ms apart, before ingest starts (the worker started, idle); idle: back "
             "to back. redis_lookup: Redis's own time per lookup (its `ZRANGEBYLEX`) during the measurement, average "
             "and the 99th percentile's histogram bucket (upper bound); columns are `query.trail_columns` (NumPy "
             "arrays), rows `query.trail` (a dict per sighting), api the API's answer (`query.governed_trail`: "
             "policy; the audit record appended in Redis and published to Kafka, acknowledged before the answer; "
             "then the reply's JSON; no HTTP).", "",
             "| chunk args | priority | cell bucket s | " + " | ".join(k.removeprefix("trail_") for k in SHOWN) + " |",
             "|---|---|---|" + "---|" * len(SHOWN)]
    for (v, p, b), rs in runs.items():
        lines.append(f"| {v} | {p} | {'default' if b is None else b} | "
                     + " | ".join(f"{statistics.median(r[k] for r in rs):.2f}" for k in SHOWN) + " |")
    lines += ["", "## Where a lookup's own time goes (cProfile of 300 lookups as rows, nothing else running; top by "
              "own time)", "", "cProfile slows every Python call down, so the shares of the Python lines are "
              "overstated against the reply's socket wait (`recv_into`).", "", "```", profile, "```"]
    e2e.log(f"report: {write_report(args.out, f'trail-{date}', results, lines)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
