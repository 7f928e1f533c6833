"""``make chaos`` / ``python -m benchmarks.chaos``: the crash-injection runs, with their accounting table.

Runs the chaos scenarios of the test suite (the same code ``make test`` runs: SIGKILL restarts, fault
injection between the sinks via ``PLATESTREAM_CRASH_AFTER``, Redis and broker crashes, a rebalance storm,
a SIGSTOP zombie, poison input through Kafka, a record batch damaged on the broker's disk, Redis Cluster, a
secured stack) against real servers started by the fixtures. Each run compares output with the simulator's
ground truth (or its own input) exactly and records
produced / stored / merged / dead-lettered / lost / duplicated; the table goes to
``benchmarks/results/chaos-<date>.{json,md}``. A failing scenario fails the command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.__main__ import machine

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = [
    "tests/integration/test_worker.py::test_sigkill_mid_stream_then_restart_trails_still_exact",
    "tests/integration/test_chaos.py",
    "tests/integration/test_cluster.py::test_worker_on_redis_cluster_exact_through_a_sigkill",
    "tests/integration/test_security.py",
]
COLUMNS = ("produced", "stored", "merged", "dead_lettered", "lost", "duplicated", "changelog_replays")


def markdown(rows: list[dict[str, object]], command: str, ok: bool, seconds: float) -> str:
    m = machine()
    out = [f"# platestream chaos runs, {datetime.now(UTC):%Y-%m-%d}", "",
           f"Command: `{command}` ({seconds:.0f} s, {'all passed' if ok else 'FAILURES - see the output'})  ",
           f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory')}; Kafka, Redis and workers on it.",
           "", "Every run is compared with the simulator's ground truth: each true pass must be exactly one "
           "trail entry (and one live sighting downstream), every other message a merged read or a dead letter. "
           "`changelog_replays`: records of `plates.reads.deduped` that repeat an earlier (sighting id, revision) "
           "with identical content - the at-least-once replay of a batch after a crash, which consumers drop "
           "by revision (not counted where the scenario does not read the changelog).",
           "", "| scenario | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for r in sorted(rows, key=lambda r: int(str(r["scenario"]).split(".")[0])):
        out.append(f"| {r['scenario']} | " + " | ".join(f"{r.get(c, '')!s}" if not isinstance(r.get(c), int)
                                                           else f"{r[c]:,}" for c in COLUMNS) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    command = "make chaos" if not argv else "python -m benchmarks.chaos " + " ".join(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "runs.jsonl"
        env = {**os.environ, "CHAOS_REPORT": str(report)}
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SCENARIOS],
                              cwd=ROOT, env=env)
        seconds = time.monotonic() - t0
        rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"chaos-{datetime.now(UTC):%Y-%m-%d}"
    base.with_suffix(".json").write_text(json.dumps({"command": command, "passed": done.returncode == 0,
                                                     "seconds": round(seconds), "runs": rows}, indent=2))
    base.with_suffix(".md").write_text(markdown(rows, command, done.returncode == 0, seconds))
    print(f"{len(rows)} runs -> {base}.md", file=sys.stderr)
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
