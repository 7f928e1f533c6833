"""Where a batch's Redis write time goes: the Lua script against a plain transaction.

    python -m benchmarks.writes [--messages 600000] [--rounds 2]

The pipeline's real batches (one partition, 20,000 reads each, simulated traffic) are applied to a fresh
redis-server four ways, taking turns:

- ``script``: one fenced Lua script per batch, its commands in a msgpack blob (``store.apply_scripts``: what
  the worker did before round 28);
- ``unpack``: the same blobs, only unpacked by a script (``cmsgpack.unpack``), nothing run: the script's parsing;
- ``multi``: what the worker does (``store.apply_batches``; a whole batch here): the same blob transcoded to RESP
  (``kernels.resp``, in the writer thread) and run as ``WATCH`` / ``MULTI`` / ``EXEC``, fenced by ``WATCH``
  on the checkpoint: no Lua;
- ``multi-no-aof``: the same on a Redis without its append-only file (every other mode has the local stack's
  ``appendonly yes``, ``appendfsync everysec``): what durability costs Redis.

Per mode: redis-server's CPU time (``/proc``; its AOF rewrites, forked children, apart), Redis's own time in
the batch command (``commandstats`` of ``EVALSHA`` or ``EXEC``: what a lookup waits behind; a transaction's
queued commands are parsed before ``EXEC``, between other clients' commands), the client's packing time (the
worker's event-loop thread) and, for the transactions, the transcoding (the writer thread, GIL released). Every
mode but ``unpack`` must leave the same data (``DEBUG DIGEST``). Writes ``benchmarks/results/writes-<date>.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import redis

from benchmarks.__main__ import machine, report_header, write_report
from benchmarks.cpu import children_seconds, process_seconds
from streams import stack
from streams.kernels.resp import resp_commands
from streams.pipeline import Command, PartitionPipeline
from streams.records import Raw
from streams.settings import Settings
from streams.simulate import generate
from streams.store import apply_batches, apply_scripts, pack_commands, plan_batch

MODES = ("script", "unpack", "multi", "multi-no-aof")
Batch = tuple[list[Command], int]  # a batch's commands and the offset after it
UNPACK_ONLY = "local a = cmsgpack.unpack(ARGV[1]) return #a"


def batches(messages: int, batch: int = 20_000, vehicles: int = 20_000) -> tuple[str, list[Batch]]:
    """(checkpoint key, the pipeline's batches) of the first ``messages`` of the simulated traffic, one partition."""
    s = Settings.from_env(env={}, kafka_bootstrap="unused:1", redis_url="redis://unused:1/0",
                          hash_key=b"benchmark-key-0123456789")
    traffic = generate(seed=42, vehicles=vehicles, hours=6)
    raws = [Raw("t", 0, i, None, k, v) for i, (k, v) in enumerate(traffic.messages[:messages])]
    pipe = PartitionPipeline(s, "t", 0)
    out = []
    for lo in range(0, len(raws), batch):
        r = pipe.process_raw(raws[lo : lo + batch])
        out.append((r.redis, r.next_offset))
    return pipe.ck_key, out


def run_mode(mode: str, ck_key: str, work: list[Batch]) -> tuple[dict[str, float], bytes]:
    """Apply ``work`` to a fresh redis-server the ``mode`` way; (figures, ``DEBUG DIGEST`` of what it stored)."""
    state = Path(tempfile.mkdtemp(prefix=f"writes-{mode}-"))
    port = stack.free_port()
    no_aof = ["--appendonly", "no"] if mode == "multi-no-aof" else []
    pid = stack.start_redis(state, port, extra=["--enable-debug-command", "local", *no_aof])
    client = redis.Redis(port=port)
    packing = transcoding = 0.0
    try:
        cpu0, children0, t0 = process_seconds(pid, children=False), children_seconds(pid), time.perf_counter()
        expected: int | None = None
        if mode == "unpack":
            script = client.register_script(UNPACK_ONLY)
            for commands, _ in work:
                t = time.perf_counter()
                blob = pack_commands(commands)
                packing += time.perf_counter() - t
                script(keys=[ck_key], args=[blob])
        else:
            apply = apply_scripts if mode == "script" else apply_batches
            for commands, nxt in work:
                t = time.perf_counter()
                write = plan_batch(ck_key, expected, nxt, commands)
                packing += time.perf_counter() - t
                if mode != "script":  # what the writer thread adds (GIL released), timed apart from the write
                    t = time.perf_counter()
                    resp_commands(write.first)
                    transcoding += time.perf_counter() - t
                if apply(client, [write]) != [True]:
                    raise RuntimeError(f"the batch was fenced ({mode})")
                expected = nxt
        wall, cpu = time.perf_counter() - t0, process_seconds(pid, children=False) - cpu0
        # an AOF rewrite the writes made due starts in Redis's cron (10 times a second), and its child's CPU counts
        # once Redis has reaped it: a few ticks, then until none is scheduled or running, then a few ticks more
        time.sleep(0.5)
        while any(client.info("persistence").get(k) for k in ("aof_rewrite_in_progress", "aof_rewrite_scheduled")):
            time.sleep(0.05)
        time.sleep(0.3)
        children = children_seconds(pid) - children0
        stats = client.info("commandstats")
        batch_cmd = stats.get("cmdstat_exec" if mode.startswith("multi") else "cmdstat_evalsha", {})
        figures = {"server_cpu_s": cpu, "server_children_cpu_s": children,
                   "batch_command_s": int(batch_cmd.get("usec", 0)) / 1e6,
                   "batch_command_ms_avg": float(batch_cmd.get("usec_per_call", 0.0)) / 1000,
                   "client_packing_s": packing, "writer_transcoding_s": transcoding, "wall_s": wall}
        return figures, cast(bytes, client.execute_command("DEBUG", "DIGEST"))
    finally:
        client.close()
        stack.stop_pid(pid)
        shutil.rmtree(state, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.writes", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=600_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    command = " ".join(["python -m benchmarks.writes", *(argv if argv is not None else sys.argv[1:])])
    t0 = time.monotonic()
    ck_key, work = batches(args.messages)
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for i in range(args.rounds):
        stored: dict[str, bytes] = {}
        for mode in MODES:
            print(f"[writes] round {i + 1}/{args.rounds}: {mode}", file=sys.stderr, flush=True)
            figures, stored[mode] = run_mode(mode, ck_key, work)
            runs[mode].append(figures)
        if not stored["script"] == stored["multi"] == stored["multi-no-aof"]:
            raise RuntimeError("the transactions stored other data than the scripts")
    date = datetime.date.today().isoformat()
    results = {"date": date, "command": command, "machine": machine(), "seconds": time.monotonic() - t0,
               "messages": args.messages, "batches": len(work), "commands": sum(len(c) for c, _ in work),
               "arguments": sum(len(cmd) for c, _ in work for cmd in c), "runs": runs}
    md = write_report(args.out, f"writes-{date}", results, report(results))
    print(md.read_text())
    return 0


def report(r: dict[str, Any]) -> list[str]:
    def med(mode: str, key: str) -> float:
        return statistics.median(run[key] for run in r["runs"][mode])

    per_read = 1e6 / r["messages"]
    lines = [*report_header("Where a batch's Redis write time goes", r),
             f"The pipeline's {r['batches']} batches of {r['messages']:,} simulated messages ({r['commands']:,} "
             f"commands, {r['arguments']:,} arguments), applied to a fresh redis-server each run; the modes take "
             "turns. Medians of the runs, in µs per message; `vs script` is the ratio to the script's median. "
             "batch command: Redis's own time in the batch's `EVALSHA` (script, unpack) or `EXEC` (multi), which "
             "a lookup waits behind. AOF rewrites: the CPU of the children Redis forked to rewrite its append-only "
             "file, apart from server CPU.", "",
             "| mode | server CPU | vs script | AOF rewrites | batch command | vs script | client packing | "
             "writer transcoding | runs (server CPU) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for mode in r["runs"]:
        cpu, cmd = med(mode, "server_cpu_s"), med(mode, "batch_command_s")
        children = statistics.median(run.get("server_children_cpu_s", 0.0) for run in r["runs"][mode])
        lines.append(f"| {mode} | {cpu * per_read:.2f} | {cpu / med('script', 'server_cpu_s'):.2f} | "
                     f"{children * per_read:.2f} | {cmd * per_read:.2f} | "
                     f"{cmd / med('script', 'batch_command_s'):.2f} | "
                     f"{med(mode, 'client_packing_s') * per_read:.2f} | "
                     f"{med(mode, 'writer_transcoding_s') * per_read:.2f} | "
                     + " / ".join(f"{run['server_cpu_s'] * per_read:.2f}" for run in r["runs"][mode]) + " |")
    return lines


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
