"""What would move Redis bytes per sighting: other layouts measured on the real Redis, on a model of the stored day.

    python -m benchmarks.layouts [--vehicles 95000] [--out benchmarks/results]

The memory report takes the current layout apart (``benchmarks.memory``); this measures the layouts it could
become, before building one (layout 5's member and area entry were measured here first). A model day like the
memory report's (95,000 vehicles, ~11 sightings each, exponential; ~183 area entries per area key) is written one
sighting at a time in a random order, as the pipeline's batches interleave vehicles, into an empty Redis database
of the local stack; bytes are ``INFO memory`` used_memory after minus before, per sighting. Members and records
are random bytes of each layout's size (Redis does not compress).
Writes ``benchmarks/results/layouts-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from benchmarks import e2e
from benchmarks.__main__ import machine, report_header, write_report

GOAL = 64.0
DB = 14
ENTRIES_PER_AREA_KEY = 183  # measured: memory report 2026-11-26
BUCKET_MS = 3_600_000
# A trail entry's fields (bytes). "Today" is layout 4's member, measured as such in the report of 2026-11-27 (its
# fixed part, then the best read's id with its length byte: 11 on average in the simulated day); layout 5 wrote
# the same fields narrower (LAYOUT5), layout 6 the confidence in 2 bytes and the flags in the version's byte
# (LAYOUT6); then narrower encodings still; then less content.
TODAY = {"time": 6, "version": 1, "sighting_id": 8, "geo52": 8, "duration": 4, "best_offset": 4, "reads": 4,
         "confidence": 4, "flags": 1, "source": 8, "read_id": 11}
# varints for duration, best offset and reads (a pass lasts seconds, has a few reads), geo52 in 7 bytes
LAYOUT5 = {**TODAY, "geo52": 7, "duration": 2, "best_offset": 2, "reads": 1}
LAYOUT6 = {**LAYOUT5, "confidence": 2, "flags": 0}
# and a 2-byte source number assigned in Redis instead of the 8-byte hash of (camera, agency)
COMPACT = {**LAYOUT6, "source": 2}
NO_READ_ID = {k: v for k, v in COMPACT.items() if k != "read_id"}
# and no sighting id (a per-vehicle sequence number of 1 byte instead)
NO_IDS = {**NO_READ_ID, "sighting_id": 1}
# An area entry: vehicle (12) + low half of the sighting id (4), score = ms into the bucket (layout 4); or the time
# leading the member (3 bytes of ms into an hour) + vehicle + 1 byte of the sighting id, score 0 (ZRANGEBYLEX, as
# the trails do: layout 5)
AREA_TODAY, AREA_TIME_LED = 16, 16
LAYOUT5_TRAIL = "sorted set per vehicle, layout 5 member (varints, 7-byte geohash)"
LAYOUT6_TRAIL = "sorted set per vehicle, layout 6 member (2-byte confidence, flags in the version byte)"
LAYOUT5_AREA = "sorted set per cell and hour, layout 5 entry (time-led, score 0; layout 6's too)"

Write = Callable[[Any, int, bytes, int], None]
VEHICLES_PER_HASH = 12  # a blob layout's trails: hashes of ~12 vehicles each, one vehicle's trail a field's value


def variants(rng: random.Random, vehicles: int) -> list[tuple[str, str, int, Write]]:
    """(index, layout, entry bytes, write one sighting (pipeline, i, vehicle, area key))."""
    hashes = max(1, vehicles // VEHICLES_PER_HASH)

    def ts(i: int) -> bytes:
        return (1_764_000_000_000 + i * 80).to_bytes(6, "big")

    def zset_trail(size: int) -> Write:
        return lambda p, i, v, cell: p.zadd(b"ps:t:{" + v + b"}", {ts(i) + rng.randbytes(size - 6): 0})

    def hash_trail(size: int) -> Write:
        def write(p: Any, i: int, v: bytes, cell: int) -> None:
            h = b"ps:tb:{%d}" % (int.from_bytes(v[:4], "big") % hashes)
            p.eval(APPEND_FIELD, 1, h, v, ts(i) + rng.randbytes(size - 6))
        return write

    def area_today(p: Any, i: int, v: bytes, cell: int) -> None:
        p.zadd(b"ps:c:{%d:0}" % cell, {v + rng.randbytes(AREA_TODAY - 12): rng.randrange(BUCKET_MS)})

    def area_time_led(p: Any, i: int, v: bytes, cell: int) -> None:
        p.zadd(b"ps:c:{%d:0}" % cell, {rng.randrange(BUCKET_MS).to_bytes(3, "big") + v + rng.randbytes(1): 0})

    size = {name: sum(f.values()) for name, f in
            (("today", TODAY), ("layout5", LAYOUT5), ("layout6", LAYOUT6), ("compact", COMPACT),
             ("no_read_id", NO_READ_ID),
             ("no_ids", NO_IDS))}
    return [
        ("trail", "sorted set per vehicle, layout 4 member", size["today"], zset_trail(size["today"])),
        ("trail", LAYOUT5_TRAIL, size["layout5"], zset_trail(size["layout5"])),
        ("trail", LAYOUT6_TRAIL, size["layout6"], zset_trail(size["layout6"])),
        ("trail", "sorted set per vehicle, compact member", size["compact"], zset_trail(size["compact"])),
        ("trail", "sorted set per vehicle, compact member without the read id", size["no_read_id"],
         zset_trail(size["no_read_id"])),
        ("trail", "hash of vehicles -> packed records, compact", size["compact"], hash_trail(size["compact"])),
        ("trail", "hash of vehicles -> packed records, compact without the read id", size["no_read_id"],
         hash_trail(size["no_read_id"])),
        ("trail", "hash of vehicles -> packed records, without read id and sighting id", size["no_ids"],
         hash_trail(size["no_ids"])),
        ("area", "sorted set per cell and hour, layout 4 entry (ms score)", AREA_TODAY, area_today),
        ("area", LAYOUT5_AREA, AREA_TIME_LED, area_time_led),
    ]


# one vehicle's records in one field of a bucket hash: the Lua of a blob layout's write, without the sorting
APPEND_FIELD = "redis.call('HSET', KEYS[1], ARGV[1], (redis.call('HGET', KEYS[1], ARGV[1]) or '') .. ARGV[2])"
TUNING = {"zset-max-listpack-entries": "512", "zset-max-listpack-value": "128",
          "hash-max-listpack-entries": "512", "hash-max-listpack-value": "8192"}


def model_day(vehicles: int, seed: int = 1) -> tuple[list[int], list[int]]:
    """Each sighting's vehicle and area key, in write order."""
    rng = random.Random(seed)
    order = [v for v in range(vehicles) for _ in range(max(1, int(rng.expovariate(1 / 11))))]
    rng.shuffle(order)
    cells = max(1, len(order) // ENTRIES_PER_AREA_KEY)
    return order, [rng.randrange(cells) for _ in order]


def measure(client: redis.Redis, write: Write, vehicles: list[bytes], order: list[int], cells: list[int]) -> float:
    client.flushdb()
    before = int(client.info("memory")["used_memory"])
    with client.pipeline(transaction=False) as pipe:
        for i, (v, cell) in enumerate(zip(order, cells, strict=True)):
            write(pipe, i, vehicles[v], cell)
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()
    used = int(client.info("memory")["used_memory"]) - before
    client.flushdb()
    return used / len(order)


def memory_report(field: str) -> float | None:
    """``field`` of the latest memory report's Redis figures (measured on the pipeline's real output)."""
    reports = sorted((Path(__file__).parent / "results").glob("memory-*.json"))
    if not reports:
        return None
    found = json.loads(reports[-1].read_text()).get("redis", {}).get(field)
    return float(found) if found is not None else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.layouts", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vehicles", type=int, default=95_000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    command = " ".join(["python -m benchmarks.layouts", *(argv if argv is not None else sys.argv[1:])])
    info = e2e.bench_stack()
    client = redis.Redis(host="127.0.0.1", port=info.redis_port, db=DB)
    rng = random.Random(2)
    order, cells = model_day(args.vehicles)
    vehicles = [rng.randbytes(12) for _ in range(args.vehicles)]
    saved = {k: str(client.config_get(k)[k]) for k in TUNING}
    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []
    try:
        for k, v in TUNING.items():
            client.config_set(k, v)
        for index, layout, size, write in variants(rng, args.vehicles):
            e2e.log(f"{index}: {layout}")
            rows.append({"index": index, "layout": layout, "entry_bytes": size,
                         "bytes_per_sighting": measure(client, write, vehicles, order, cells)})
    finally:
        for k, old in saved.items():
            client.config_set(k, old)
    # the plate directory is the same in every layout
    directory = memory_report("redis_bytes_per_sighting_plate_directory")
    combos = [{"trail": t["layout"], "area": a["layout"],
               "bytes_per_sighting": t["bytes_per_sighting"] + a["bytes_per_sighting"] + (directory or 0.0)}
              for t in rows if t["index"] == "trail" for a in rows if a["index"] == "area"]
    date = datetime.date.today().isoformat()
    results = {"date": date, "command": command, "machine": machine(), "seconds": time.monotonic() - t0,
               "sightings": len(order), "vehicles": args.vehicles, "area_keys": max(cells) + 1,
               "fields": {"today": TODAY, "layout5": LAYOUT5, "layout6": LAYOUT6, "compact": COMPACT,
                          "no_read_id": NO_READ_ID, "no_ids": NO_IDS},
               "plate_directory_bytes_per_sighting": directory, "current": [LAYOUT6_TRAIL, LAYOUT5_AREA],
               "measured_today_bytes_per_sighting": memory_report("redis_bytes_per_sighting"),
               "layouts": rows, "combinations": combos}
    md = write_report(args.out, f"layouts-{date}", results, report(results))
    print(md.read_text())
    return 0


def report(r: dict[str, Any]) -> list[str]:
    fields = r["fields"]
    limits = ", ".join(f"{k} {v}" for k, v in TUNING.items())
    lines = [*report_header("Redis bytes per sighting of other layouts (a model day)", r),
             f"{r['sightings']:,} sightings of {r['vehicles']:,} vehicles (~11 each, exponential) in "
             f"{r['area_keys']:,} area keys, written one at a time in a random order into an empty database of the "
             f"local stack's Redis (listpack limits: {limits}); `INFO memory` used_memory after minus before. "
             "Entries are random bytes of each layout's size.", "",
             "Trail entry fields (bytes): " + "; ".join(
                 f"{name} {sum(f.values())} (" + ", ".join(f"{k} {v}" for k, v in f.items()) + ")"
                 for name, f in fields.items()), "",
             "| index | layout | entry bytes | bytes per sighting |", "|---|---|---:|---:|"]
    lines += [f"| {x['index']} | {x['layout']} | {x['entry_bytes']} | {x['bytes_per_sighting']:.2f} |"
              for x in r["layouts"]]
    d = r["plate_directory_bytes_per_sighting"]
    lines += ["", f"Trail + area index + plate directory ({'n/a' if d is None else f'{d:.2f}'} bytes per sighting, "
              f"from the latest memory report), against the goal of ≤ {GOAL:.0f}:", "",
              "| trail | area index | bytes per sighting | goal |", "|---|---|---:|---|"]
    lines += [f"| {c['trail']} | {c['area']} | {c['bytes_per_sighting']:.2f} | "
              f"{'met' if c['bytes_per_sighting'] <= GOAL else 'NOT met'} |" for c in r["combinations"]]
    # the layout the pipeline writes now (reports before layout 5 name none: the first combination was it)
    current = next((c for c in r["combinations"] if [c["trail"], c["area"]] == r.get("current")), r["combinations"][0])
    today, real = current["bytes_per_sighting"], r["measured_today_bytes_per_sighting"]
    if real is not None:
        lines += ["", f"Calibration: the current layout is {today:.2f} bytes per sighting in this model and {real:.2f} "
                  f"in the latest memory report's run of the pipeline ({real - today:+.2f}: the real day's area index "
                  "spreads over more keys, and checkpoints and counters are in it); expect the other layouts about as "
                  "far above their figure here."]
    return lines


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
