"""The committed full reports side by side: ``benchmarks/results/INDEX.md``, made from their JSON.

Whole ``make bench`` runs move by ~10% with the hour on this kind of machine, so one report says little on its
own; the index puts every report's headline figures next to the machine's speed that hour (a pure-Python loop
on code that is not platestream's) and the commit it ran. It is computed from the reports, never typed: ``make
bench`` rewrites it after each report, and a test fails when the committed index and the reports disagree (a
report renamed or added without it).

    .venv/bin/python -m benchmarks.index        # rewrite benchmarks/results/INDEX.md
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.__main__ import GOALS, fmt, verdict

RESULTS = Path(__file__).resolve().parent / "results"
# a full report's name: the day, and for a day's earlier reports the commit they ran
FULL_REPORT = re.compile(r"^\d{4}-\d{2}-\d{2}(-[0-9a-f]{7,})?\.json$")
TITLE = "# The full benchmark reports, newest first"


def commit_time(code: str | None, root: Path) -> int:
    """When ``code``'s commit was made (seconds), 0 when unknown: orders a day's reports, whose names do not."""
    commit = (code or "").split(" ")[0]
    if not re.fullmatch(r"[0-9a-f]{7,40}", commit):
        return 0
    try:
        out = subprocess.run(["git", "-C", str(root), "show", "-s", "--format=%ct", commit], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return 0
    return int(out) if out.isdigit() else 0


def speed(machine: dict[str, Any]) -> str:
    """The report's Python loop in M steps/s ("—" for reports from before it was measured)."""
    found = re.search(r"python loop ([\d.]+) M", str(machine.get("speed") or ""))
    return found.group(1) if found else "—"


def cpu(machine: dict[str, Any]) -> str:
    """The processor's name without its trademarks ("—" where the report did not record it)."""
    name = re.sub(r"\((R|TM)\)|\bProcessor\b|\bCPU\b", "", str(machine.get("cpu") or "")).strip()
    return re.sub(r"\s+", " ", name) or "—"


def number(v: Any, digits: int = 0, scale: float = 1.0) -> str:
    return "—" if v is None else f"{v / scale:,.{digits}f}"


def met(name: str, value: Any) -> str:
    """``value`` with a mark when it meets the goal ``name``."""
    return "" if value is None else " ✓" if verdict(name, value) == "met" else ""


def row(path: Path, results: dict[str, Any]) -> str:
    machine = results.get("machine") or {}
    goals = sum(verdict(name, results.get(name)) == "met" for name in GOALS)
    trail, columns = results.get("trail_p99_ms"), results.get("trail_priority_columns_p99_ms")
    cells = [
        f"[{path.stem}]({path.with_suffix('.md').name})", f"`{machine.get('code') or '?'}`", cpu(machine),
        speed(machine),
        f"{goals} of {len(GOALS)}",
        number(results.get("e2e_reads_per_s")) + met("e2e_reads_per_s", results.get("e2e_reads_per_s")),
        number(results.get("dedup_reads_per_s"), 1, 1e6) + met("dedup_reads_per_s", results.get("dedup_reads_per_s")),
        number(results.get("latency_p99_ms"), 1) + met("latency_p99_ms", results.get("latency_p99_ms")),
        number(trail, 2) + met("trail_p99_ms", trail), number(columns, 2) + met("trail_p99_ms", columns),
        number(results.get("redis_bytes_per_sighting"), 1), number(results.get("dedup_state_bytes_per_key"), 1),
        number(results.get("e2e_cpu_machine_us_per_read"), 1),
    ]
    return "| " + " | ".join(cells) + " |"


def render(folder: Path = RESULTS) -> str:
    """The index of the full reports in ``folder``, newest first (by day, then by the time of the commit run)."""
    reports = []
    for path in folder.iterdir():
        if FULL_REPORT.match(path.name):
            results = json.loads(path.read_text())
            order = (str(results.get("date") or path.stem[:10]),
                     commit_time((results.get("machine") or {}).get("code"), folder), path.name)
            reports.append((order, path, results))
    reports.sort(key=lambda r: r[0], reverse=True)
    lines = [TITLE, "",
             "Made by `python -m benchmarks.index` from the reports' JSON (`make bench` rewrites it). A ✓ marks a "
             "figure that meets its goal; \"goals met\" counts the nine goals in each report's own figures (the trail "
             "goal as rows by default). The machine's speed is a pure-Python loop on code that is not platestream's: "
             "whole reports move with it, so compare reports of similar speed, and judge changes by alternating runs "
             "(`make bench-ab`, benchmarks/HISTORY.md).", "",
             "| report | code | processor | Python loop (M steps/s) | goals met | e2e (reads/s) | dedup (M reads/s) "
             "| latency p99 (ms) | trail p99, rows by default (ms) | trail p99, columns set up for lookups (ms) "
             "| Redis bytes per sighting | dedup state bytes per key | machine CPU per read (µs) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [row(path, results) for _, path, results in reports]
    goals = "; ".join(f"`{name}` {op} {fmt(float(goal))}" for name, (op, goal, _) in GOALS.items())
    lines += ["", f"The goals (issue 3): {goals}. Each figure is as its report judged it: before adc722c a report "
              "took the trail's other forms (columns, the API's answer, set up for lookups) from its median run by "
              "rows, since then each form is the median of its own runs (every run is in the JSON as `*_runs`)."]
    return "\n".join(lines) + "\n"


def write(folder: Path = RESULTS) -> Path:
    out = folder / "INDEX.md"
    out.write_text(render(folder))
    return out


if __name__ == "__main__":
    print(write(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS))
