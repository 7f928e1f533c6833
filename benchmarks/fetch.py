"""What polling costs per message: aiokafka's own records against ``streams.fetch``'s, on one pre-filled topic.

    python -m benchmarks.fetch [--rounds 5] [--vehicles 30000] [--compression lz4]

Each run is a fresh consumer (the worker's fetch settings, ``read_committed``) reading the whole topic from
offset 0 with ``getmany(max_records=20000)`` and wrapping each partition's poll in ``records.Polled``, as the
worker does, and nothing else: the worker's fetch path alone. The two paths take turns (whole runs swing with
the machine), the garbage collector set as in the worker. Each run must return exactly the topic's messages.
With ``--compression`` the topic is produced in batches of that codec (as producers that compress write it).
Writes ``benchmarks/results/fetch-<date>.json`` and ``.md`` (``fetch-<codec>-<date>.*`` with a codec).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from benchmarks import e2e
from benchmarks.__main__ import machine, report_header, write_report
from streams import connect, fetch
from streams.records import Polled
from streams.settings import Settings
from streams.simulate import generate
from streams.worker import FETCH_SETTINGS, settle_gc

PATHS = ("aiokafka", "platestream")


async def consume(s: Settings, total: int, path: str, stall_s: float = 30.0) -> tuple[float, float]:
    """Wall and CPU seconds to poll ``total`` messages from the first one on (start-up and the first poll,
    which waits for the group, excluded); fails if ``stall_s`` pass without a message before that."""
    raw = {"value_deserializer": fetch.raw_records} if path == "platestream" else {}
    consumer = AIOKafkaConsumer(
        s.topic_reads, **connect.kafka(s), group_id=f"{e2e.BENCH}-fetch-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False, auto_offset_reset="earliest", **FETCH_SETTINGS, **raw)
    await consumer.start()
    try:
        first = await consumer.getmany(timeout_ms=30_000, max_records=1)
        n = sum(map(len, first.values()))
        wall, cpu = time.perf_counter(), time.process_time()
        last = time.monotonic()
        while n < total:
            for tp, records in (await consumer.getmany(timeout_ms=1000, max_records=20_000)).items():
                n += len(Polled.of(tp.topic, tp.partition, records))
                last = time.monotonic()
            if time.monotonic() - last > stall_s:
                break
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if n != total:
            raise RuntimeError(f"{path}: polled {n} messages of {total}")
        return wall, cpu
    finally:
        await consumer.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fetch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--vehicles", type=int, default=30_000, help="simulated vehicles (~34 messages each)")
    ap.add_argument("--compression", choices=("gzip", "snappy", "lz4", "zstd"), default=None,
                    help="produce the topic in batches of this codec (default: uncompressed)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    command = " ".join(["python -m benchmarks.fetch", *(argv if argv is not None else sys.argv[1:])])
    info = e2e.bench_stack()
    traffic = generate(seed=42, vehicles=args.vehicles, hours=24)
    total = len(traffic.messages)
    s = e2e.prefilled(info, traffic.messages, db=12, compression=args.compression)
    del traffic
    fetch.install()
    settle_gc()
    runs: dict[str, list[tuple[float, float]]] = {p: [] for p in PATHS}
    t0 = time.monotonic()
    for i in range(args.rounds):
        for path in PATHS if i % 2 == 0 else PATHS[::-1]:
            wall, cpu = asyncio.run(consume(s, total, path))
            runs[path].append((wall, cpu))
            e2e.log(f"round {i + 1}/{args.rounds} {path}: {cpu / total * 1e6:.3f} us CPU per message")
    date = datetime.date.today().isoformat()
    results = {"date": date, "command": command, "machine": machine(), "seconds": time.monotonic() - t0,
               "messages": total, "compression": args.compression or "none", "runs_wall_cpu_s": runs,
               "cpu_us_per_message": {p: statistics.median(c for _, c in rs) / total * 1e6 for p, rs in runs.items()}}
    name = f"fetch-{args.compression}-{date}" if args.compression else f"fetch-{date}"
    md = write_report(args.out, name, results, report(results))
    print(md.read_text())
    return 0


def report(r: dict[str, Any]) -> list[str]:
    total = r["messages"]
    med = r["cpu_us_per_message"]
    runs = r["runs_wall_cpu_s"]
    lines = [*report_header("What polling costs per message", r),
             f"A fresh consumer reads a pre-filled topic of {total:,} messages (4 partitions; record batches "
             f"compressed with: {r.get('compression', 'none')}) from offset 0 with "
             "`getmany(max_records=20000)` and wraps each partition's poll in `records.Polled`, as the worker "
             "does; the paths take turns. aiokafka: its own `ConsumerRecord`s, one at a time; platestream: "
             "`streams.fetch` (the poll as columns over the fetched bytes, a record batch parsed in place or, "
             "compressed, in its decompressed bytes).", "",
             "| path | CPU µs per message (each run) | median | wall µs per message (median) |",
             "|---|---|---:|---:|"]
    for p, rs in runs.items():
        lines.append(f"| {p} | {' / '.join(f'{c / total * 1e6:.3f}' for _, c in rs)} | {med[p]:.3f} | "
                     f"{statistics.median(w for w, _ in rs) / total * 1e6:.3f} |")
    ratios = [a[1] / b[1] for a, b in zip(runs["aiokafka"], runs["platestream"], strict=True)]
    lines += ["", f"aiokafka / platestream, CPU per message, per round: {' / '.join(f'{x:.2f}' for x in ratios)} "
              f"(median {statistics.median(ratios):.2f})."]
    return lines


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
