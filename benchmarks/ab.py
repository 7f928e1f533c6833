"""A/B of two versions of the worker on one pre-filled topic, alternating: did a change make it faster?

    python -m benchmarks.ab <git-ref> [--rounds 3] [--vehicles 50000] [--compression lz4]
                                                                            (or: make bench-ab REF=<git-ref>)

Whole runs on this 2-core machine swing by ~10% together (the untouched kernels included), so two
``make bench`` reports made at different times cannot show a 5% change. Here ``<git-ref>`` (checked out in
a temporary ``git worktree``) and the working tree take turns on the same topic and the same Redis in one
session, and both runs of a round see the same machine. The two versions must share the Redis layout
(the sightings are counted with the working tree's decoder).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from benchmarks import e2e
from streams.simulate import generate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ref", help="git ref of the version to compare the working tree with (e.g. HEAD~3)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each version, alternating")
    ap.add_argument("--vehicles", type=int, default=50_000, help="simulated vehicles (~34 messages each)")
    ap.add_argument("--compression", choices=("gzip", "snappy", "lz4", "zstd"), default=None,
                    help="produce the topic in batches of this codec (default: uncompressed)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="platestream-ab-") as tmp:
        ref_root = Path(tmp) / "ref"
        subprocess.run(["git", "-C", str(e2e.ROOT), "worktree", "add", "--detach", str(ref_root), args.ref],
                       check=True, capture_output=True)
        try:
            runs = _rounds(args, ref_root)
        finally:
            subprocess.run(["git", "-C", str(e2e.ROOT), "worktree", "remove", "--force", str(ref_root)],
                           check=False, capture_output=True)
    print(f"{'version':12s} {'reads/s (each run)':40s} {'median':>9s} {'process us/msg':>15s}")
    for name, rows in runs.items():
        rates = [r for r, _ in rows]
        proc = statistics.median(p for _, p in rows)
        print(f"{name:12s} {' / '.join(f'{r:,.0f}' for r in rates):40s} {statistics.median(rates):9,.0f} {proc:15.2f}")
    ref, cur = (statistics.median(r for r, _ in runs[k]) for k in (args.ref, "working tree"))
    print(f"working tree vs {args.ref}: {cur / ref - 1:+.1%} (median reads/s)")
    return 0


def _rounds(args: argparse.Namespace, ref_root: Path) -> dict[str, list[tuple[float, float]]]:
    info = e2e.bench_stack()
    traffic = generate(seed=42, vehicles=args.vehicles, hours=24)
    s = e2e.prefilled(info, traffic.messages, db=11, compression=args.compression)
    log_dir = e2e.log_dir(info.state_dir)
    # Numba caches compiled kernels per source path, so the ref's fresh worktree would compile them in its
    # first timed run: one short untimed run of each version first
    warm = generate(seed=43, vehicles=600, hours=1)
    warm_s = e2e.isolated_settings(info, db=11)
    e2e.produce(warm_s, warm.messages)
    for name, root in ((args.ref, ref_root), ("working tree", e2e.ROOT)):
        e2e.log(f"warm-up: {name}")
        warm_run = dataclasses.replace(warm_s, group=f"{e2e.BENCH}-warm-{uuid.uuid4().hex[:6]}")
        e2e.throughput(warm_run, len(warm.messages), log_dir, root, inspect=False)
    runs: dict[str, list[tuple[float, float]]] = {args.ref: [], "working tree": []}
    for i in range(args.rounds):
        for name, root in ((args.ref, ref_root), ("working tree", e2e.ROOT)):
            e2e.log(f"round {i + 1}/{args.rounds}: {name}")
            r = e2e.exact_run(s, traffic, log_dir, root, name=f"ab {name}")
            m = r["worker_metrics"]
            process_us = m.get("stage_us.process", float("nan")) / max(m["consumed"], 1)  # nan: ref predates it
            runs[name].append((r["e2e_reads_per_s"], process_us))
    return runs


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
