"""Memory: the worker's dedup state per active (camera, plate) key (tracemalloc), and where Redis's bytes per
sorted-set entry go (listpack anatomy)."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import redis

from streams.directory import shared_sealer
from streams.pipeline import PartitionPipeline
from streams.records import Raw
from streams.settings import Settings
from streams.simulate import generate

BATCH = 20_000  # reads per batch of the measured pipeline


def warm_up(s: Settings, raws: list[Raw], batches: int = 3) -> None:
    """Load the Numba kernels of the batch path and of the compaction (one per pool dtype), and fill one-time
    caches, so that memory traced afterwards is dedup state, not code (and does not depend on whether something
    else in the process ran them already, or on Numba's on-disk cache: a kernel compiled inside the measurement
    counted ~17 bytes per key). A few whole batches of the same traffic, so that the paths of later batches
    (sessions revised across batches, whose old trail members are rebuilt) are compiled too."""
    warm = PartitionPipeline(s, "warm-up", 0)
    for lo in range(0, min(len(raws), batches * BATCH), BATCH):
        warm.process_raw(raws[lo : lo + BATCH])
    warm.state.compact(warm.state.pool["alive"])  # the alive column, as reserve/reclaim pass it
    del warm
    gc.collect()


def dedup_state_bytes_per_key(vehicles: int = 20_000) -> dict[str, Any]:
    s = Settings.from_env(env={}, kafka_bootstrap="unused:1", redis_url="redis://unused:1/0",
                          hash_key=b"benchmark-key-0123456789")
    traffic = generate(seed=9, vehicles=vehicles, hours=1.0)  # dense hour: many keys active at once
    raws = [Raw("t", 0, i, None, k, v) for i, (k, v) in enumerate(traffic.messages)]
    warm_up(s, raws)
    # the plate directory's cache of recent vehicles' values is bounded by a constant, not by keys: not dedup
    # state, reported apart (from empty, so that what it holds is all traced)
    shared_sealer.cache_clear()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    pipe = PartitionPipeline(s, "t", 0)
    sealer = shared_sealer(s.hash_key)
    peak: dict[str, Any] = {"keys": 0}  # the state where it held the most active keys
    for lo in range(0, len(raws), BATCH):
        result = pipe.process_raw(raws[lo : lo + BATCH])
        del result
        gc.collect()
        sealed = sealer.nbytes()
        used = tracemalloc.get_traced_memory()[0] - base - sealed
        st = pipe.state
        live = st.pool["alive"][: st.n_used].astype(bool)
        keys = len(set(zip(st.pool["cam"][: st.n_used][live].tolist(), st.pool["cls"][: st.n_used][live].tolist(),
                           strict=True)))
        if keys > peak["keys"]:
            slot = sum(a.itemsize for a in st.pool.values()) + sum(
                a.itemsize for a in (st.nxt, st.row))
            parts = {
                # one slot per session (pool columns and chain links): the live ones and the evicted ones not
                # yet compacted away; then the free slots (room for about as many new sessions as the last
                # batch created, and what growth by half left over)
                "session_slots": st.n_used * slot,
                "free_slots": (st.capacity - st.n_used) * slot,
                "hash_table": st.table.nbytes,
                # the largest number of sessions a batch touched so far (snapshot rows), reused
                "batch_scratch": sum(a.nbytes for a in (st.touched, st.snap, st.snap_conf, st.best_row,
                                                        st.merged_into)),
                "read_id_arena": len(pipe.read_ids.buf),
            }
            assert sum(parts.values()) == pipe.state_bytes()  # the worker's dedup_state_bytes: the same arrays
            parts["python_objects"] = used - sum(parts.values())
            peak = {"keys": keys, "sessions": int(live.sum()), "used": used, "parts": parts,
                    "slots": st.capacity, "slot_bytes": slot, "sealed": sealed}
    tracemalloc.stop()
    # where the traffic winds down (the simulated hour's last reads): what the state still holds - compaction
    # gives a peak's memory back, so the state follows the window's contents, not the busiest batch so far
    end = {"dedup_state_bytes_total_at_end": used, "dedup_state_active_keys_at_end": keys}
    keys = peak["keys"]
    out = {"dedup_state_bytes_per_key": peak["used"] / max(keys, 1), "dedup_state_active_keys": keys,
           "dedup_state_active_sessions": peak["sessions"], "dedup_state_bytes_total": peak["used"],
           "dedup_state_pool_slots_per_key": peak["slots"] / max(keys, 1),
           "dedup_state_pool_bytes_per_slot": peak["slot_bytes"],
           "directory_seal_cache_bytes_at_peak": peak["sealed"]}
    out.update({f"dedup_state_{k}_bytes_per_key": v / max(keys, 1) for k, v in peak["parts"].items()})
    out.update(end)
    return out


def redis_bytes_per_sighting(vehicles: int, cell_bucket_s: int | None = None) -> dict[str, Any]:
    """The full report's Redis figure on its own: the same simulated day (seed 42) pre-filled into the local
    stack, one worker run over it, ``INFO memory`` per stored sighting and where the bytes go (``cell_bucket_s``:
    the worker's ``PLATESTREAM_CELL_BUCKET_S``, if not the default)."""
    import dataclasses
    import uuid

    from benchmarks import e2e

    info = e2e.bench_stack()
    msgs = generate(seed=42, vehicles=vehicles, hours=24).messages
    s = e2e.prefilled(info, msgs, db=10)
    e2e.log("worker run")
    if cell_bucket_s is not None:
        s = s.with_cell_bucket(cell_bucket_s * 1000)
    r = e2e.throughput(dataclasses.replace(s, group=f"{s.group}-{uuid.uuid4().hex[:6]}"), len(msgs),
                       e2e.log_dir(info.state_dir))
    return {k: v for k, v in r.items() if k.startswith(("redis_", "e2e_sightings", "e2e_messages"))}


def _lp_backlen(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2**21 else 4 if n < 2**28 else 5


def listpack_entry_bytes(value: bytes | int) -> tuple[int, int]:
    """(payload, framing) bytes of one listpack entry: an integer is all framing (its encoding), a string is
    its bytes plus a length header; both end with a back-length."""
    if isinstance(value, int):
        size = next((n for lo, hi, n in ((0, 127, 1), (-4096, 4095, 2), (-(2**15), 2**15 - 1, 3),
                                        (-(2**23), 2**23 - 1, 4), (-(2**31), 2**31 - 1, 5)) if lo <= value <= hi), 9)
        return 0, size + _lp_backlen(size)
    n = len(value)
    head = 1 if n < 64 else 2 if n < 4096 else 5
    return n, head + _lp_backlen(head + n)


def sorted_set_anatomy(client: redis.Redis, keys: list[bytes], sample: int = 2000) -> dict[str, float]:
    """Per entry of the listpack-encoded sorted sets among ``keys`` (a sample of them): member bytes,
    their listpack framing, the score's encoding, and the rest of MEMORY USAGE (key name, key object, the
    keyspace's dict entry, listpack header, allocator rounding)."""
    picked = keys[:: max(1, len(keys) // sample)]
    with client.pipeline(transaction=False) as pipe:
        for k in picked:
            pipe.object("encoding", k)
            pipe.memory_usage(k, samples=0)
            pipe.zrange(k, 0, -1, withscores=True)
        replies = pipe.execute()
    entries = member = framing = score = usage = listpack_keys = 0
    for i in range(len(picked)):
        encoding, used, rows = replies[3 * i : 3 * i + 3]
        if encoding not in (b"listpack", b"ziplist"):
            continue
        listpack_keys += 1
        usage += int(used)
        for m, sc in rows:
            payload, frame = listpack_entry_bytes(m)
            # Redis writes a score as text (an integral one as an integer) and the listpack encodes it
            value = int(sc) if float(sc).is_integer() else f"{sc:.17g}".encode()
            entries += 1
            member += payload
            framing += frame
            score += sum(listpack_entry_bytes(value))
    n = max(entries, 1)
    return {"member": member / n, "member_framing": framing / n, "score": score / n,
            "key_and_allocation": (usage - member - framing - score) / n,
            "entries_per_key": entries / max(listpack_keys, 1),
            "listpack_key_share": listpack_keys / max(len(picked), 1)}


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.memory``: the dedup state figure at two traffic sizes, with its breakdown, the
    dedup kernel's speed in the same run, and Redis bytes per sighting over the full report's simulated day
    -> ``results/memory-<date>.{json,md}``. Bytes do not depend on the machine's speed of the day, so this
    runs apart from the full report when only a layout changed."""
    import argparse
    import sys
    import time
    from datetime import UTC, datetime
    from pathlib import Path

    from benchmarks import kernels
    from benchmarks.__main__ import code_version, fmt, machine, memory_anatomy, report_header, verdict, write_report

    ap = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=main.__doc__)
    ap.add_argument("--vehicles", default="20000,40000", help="comma-separated simulated vehicle counts")
    ap.add_argument("--redis-vehicles", type=int, default=95_000,
                    help="simulated vehicles of the Redis part (the full report's day; 0: skip it)")
    ap.add_argument("--cell-bucket-s", type=int, default=None,
                    help="the Redis part's PLATESTREAM_CELL_BUCKET_S (default: the settings' default)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    command = " ".join(["python -m benchmarks.memory", *(argv if argv is not None else sys.argv[1:])])
    t0 = time.monotonic()
    results: dict[str, Any] = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "command": command,
                               "machine": {**machine(), "code": code_version()}}
    results.update(kernels.dedup_reads_per_s())
    sizes = [int(v) for v in args.vehicles.split(",")]
    results["sizes"] = {str(v): dedup_state_bytes_per_key(vehicles=v) for v in sizes}
    if args.redis_vehicles:
        results["redis"] = redis_bytes_per_sighting(args.redis_vehicles, args.cell_bucket_s)
    results["seconds"] = time.monotonic() - t0
    title = "Dedup state per active (camera, plate) key" + (" and Redis bytes per sighting" * ("redis" in results))
    lines = [*report_header(title, results),
             "Each size: one partition's pipeline on a simulated dense hour (`streams.simulate`, seed 9), 20,000 "
             "reads per batch, traced with `tracemalloc`; the figure is at the batch where the most keys were "
             "active.", "",
             "| vehicles | active keys at the peak | bytes per key | goal | bytes at the peak | bytes where traffic "
             "winds down |", "|---:|---:|---:|---|---:|---:|"]
    for v, r in results["sizes"].items():
        lines.append(f"| {int(v):,} | {fmt(r['dedup_state_active_keys'])} | {fmt(r['dedup_state_bytes_per_key'])} | "
                     f"<= 64 — {verdict('dedup_state_bytes_per_key', r['dedup_state_bytes_per_key'])} | "
                     f"{fmt(r['dedup_state_bytes_total'])} | {fmt(r['dedup_state_bytes_total_at_end'])} |")
    lines += ["", f"Dedup kernel in the same run (with eviction and compaction, one core): "
              f"{results['dedup_reads_per_s'] / 1e6:.1f} M reads/s (goal >= 30 M)."]
    for v, r in results["sizes"].items():
        lines += [line.replace("## Where", f"## {int(v):,} vehicles: where") for line in memory_anatomy(r)]
    if "redis" in results:
        r = results["redis"]
        lines += ["", "## Redis bytes per stored sighting", "",
                  f"{args.redis_vehicles:,} simulated vehicles over a day (seed 42, the full report's traffic): "
                  f"{fmt(r['e2e_messages'])} messages pre-filled into the local stack, one worker run, "
                  f"{fmt(r['e2e_sightings'])} sightings stored; `INFO memory` used_memory after minus before, "
                  "checkpoints excluded.", "",
                  "| figure | value |", "|---|---:|",
                  f"| redis_bytes_per_sighting | {fmt(r['redis_bytes_per_sighting'])} (goal <= 64 — "
                  f"{verdict('redis_bytes_per_sighting', r['redis_bytes_per_sighting'])}) |",
                  *(f"| {k} | {fmt(v)} |" for k, v in r.items() if k.startswith("redis_bytes_per_sighting_")),
                  *memory_anatomy({k: v for k, v in r.items() if k.startswith("redis_entry_")})]
    write_report(args.out, f"memory-{results['date']}", results, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
