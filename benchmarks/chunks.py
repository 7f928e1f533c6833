"""What chunked Redis writes cost in throughput: the worker on one pre-filled topic, ``PLATESTREAM_REDIS_CHUNK_ARGS``
values taking turns.

    python -m benchmarks.chunks [--chunk-args 0,400,400:always] [--rounds 3] [--vehicles 50000]

Chunked writes (README: trail lookups under ingest) cap how long a lookup waits behind a batch's Redis write;
this is their price in reads/s. A value is ``PLATESTREAM_REDIS_CHUNK_ARGS[:PLATESTREAM_REDIS_CHUNK_WHEN]``
(by default a worker catching up, as on this pre-filled topic, writes its batches whole until it is four polls
from the end: ``PLATESTREAM_REDIS_CHUNK_WHEN``). Runs alternate as in ``benchmarks.ab`` (whole runs swing with the
machine), each from offset 0 of the same topic into the same emptied Redis db, each checked for the exact sighting
count. Writes ``benchmarks/results/chunks-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import e2e
from benchmarks.__main__ import machine, report_header, write_report
from streams.simulate import generate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.chunks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunk-args", default="0,400,400:always",
                    help="comma-separated ARGS[:WHEN] values; the first is the baseline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vehicles", type=int, default=50_000, help="simulated vehicles (~34 messages each)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    values = args.chunk_args.split(",")
    command = " ".join(["python -m benchmarks.chunks", *(argv if argv is not None else sys.argv[1:])])
    info = e2e.bench_stack()
    traffic = generate(seed=42, vehicles=args.vehicles, hours=24)
    s = e2e.prefilled(info, traffic.messages, db=11)
    log_dir = e2e.log_dir(info.state_dir)
    runs: dict[str, list[float]] = {v: [] for v in values}
    written: dict[str, list[tuple[int, int]]] = {v: [] for v in values}  # (partition batches whole, chunked)
    t0 = time.monotonic()
    for i in range(args.rounds):
        for v in values:
            chunk_args, _, when = v.partition(":")
            e2e.log(f"round {i + 1}/{args.rounds}: PLATESTREAM_REDIS_CHUNK_ARGS={v}")
            run = dataclasses.replace(s, redis_chunk_args=int(chunk_args), redis_chunk_when=when or s.redis_chunk_when)
            r = e2e.exact_run(run, traffic, log_dir, name=f"chunks {v.replace(':', '-')}")
            runs[v].append(r["e2e_reads_per_s"])
            m = r["worker_metrics"]
            written[v].append((int(m.get("redis_batches_whole", 0)), int(m.get("redis_batches_chunked", 0))))
    date = datetime.date.today().isoformat()
    results = {"date": date, "command": command, "machine": machine(), "seconds": time.monotonic() - t0,
               "messages": len(traffic.messages), "runs": runs, "batches_whole_chunked": written}
    md = write_report(args.out, f"chunks-{date}", results, report(results))
    print(md.read_text())
    return 0


def report(r: dict[str, Any]) -> list[str]:
    medians = {v: statistics.median(rs) for v, rs in r["runs"].items()}
    base = medians[next(iter(medians))]
    lines = [*report_header("Throughput with chunked Redis writes", r),
             f"One worker on a pre-filled topic of {r['messages']:,} messages, from offset 0 each run; the values take "
             "turns. 0: one script per partition's batch; `:always`: every batch chunked, else as "
             "PLATESTREAM_REDIS_CHUNK_WHEN says (by default those of a worker within four polls of the log's end). "
             "Partition batches: written whole / in chunks, each run.", "",
             "| PLATESTREAM_REDIS_CHUNK_ARGS | reads/s (each run) | median | vs the first | partition batches |",
             "|---:|---|---:|---:|---|"]
    written = r.get("batches_whole_chunked", {})
    lines += [f"| {v} | {' / '.join(f'{x:,.0f}' for x in rs)} | {medians[v]:,.0f} | {medians[v] / base - 1:+.1%} | "
              + " ; ".join(f"{w} / {c}" for w, c in written.get(v, [])) + " |"
              for v, rs in r["runs"].items()]
    return lines


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
