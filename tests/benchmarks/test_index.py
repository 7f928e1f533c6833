"""The index of the full reports is computed from them, and the committed one agrees with the reports."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from benchmarks import index


def _report(folder: Path, stem: str, **figures: object) -> None:
    (folder / f"{stem}.json").write_text(json.dumps({"date": stem[:10], **figures}))


def test_the_committed_index_is_the_one_the_committed_reports_make() -> None:
    # the rows as a set: a day's reports are ordered by their commits' times, which a shallow clone may not have
    committed = sorted((index.RESULTS / "INDEX.md").read_text().splitlines())
    assert committed == sorted(index.render().splitlines()), "stale: run python -m benchmarks.index"


def test_each_row_counts_the_goals_its_report_meets_marks_them_and_the_newest_day_comes_first(tmp_path: Path) -> None:
    _report(tmp_path, "2026-01-01", e2e_reads_per_s=160_000.0, dedup_reads_per_s=29_999_999.0,
            trail_p99_ms=2.0, trail_priority_columns_p99_ms=1.5, redis_bytes_per_sighting=64.5,
            machine={"code": "not-a-commit", "speed": "python loop 15.8 M steps/s, memory copy 9.5 GB/s"})
    _report(tmp_path, "2026-01-02", e2e_reads_per_s=90_000.0, latency_p99_ms=250.0,
            e2e_cpu_machine_us_per_read=17.46)
    (tmp_path / "trail-2026-01-03.json").write_text("{}")  # a side report: not a full one
    (tmp_path / "notes.json").write_text("{}")
    lines = [line for line in index.render(tmp_path).splitlines() if line.startswith("| [")]
    assert lines == [
        "| [2026-01-02](2026-01-02.md) | `?` | — | — | 0 of 9 | 90,000 | — | 250.0 | — | — | — | — | 17.5 |",
        "| [2026-01-01](2026-01-01.md) | `not-a-commit` | — | 15.8 | 2 of 9 | 160,000 ✓ | 30.0 | — | 2.00 ✓ | 1.50 ✓ "
        "| 64.5 | — | — |",
    ]


def _commit(repo: Path, when: int) -> str:
    env = {**os.environ, "GIT_AUTHOR_DATE": f"{when} +0000", "GIT_COMMITTER_DATE": f"{when} +0000",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org"}
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "--allow-empty", "-m", str(when)], env=env, check=True)
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_a_days_reports_are_ordered_by_the_time_of_the_commit_they_ran(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    later = _commit(tmp_path, 1_800_000_000)
    earlier = _commit(tmp_path, 1_700_000_000)  # committed out of order
    while earlier < later:  # names that sort against the commits' order, so only the times can order the rows
        earlier = _commit(tmp_path, 1_700_000_000)
    assert index.commit_time(later, tmp_path) == 1_800_000_000
    assert index.commit_time(f"{earlier} + changes", tmp_path) == 1_700_000_000
    assert index.commit_time("?", tmp_path) == index.commit_time(None, tmp_path) == 0
    assert index.commit_time("abcdef0", tmp_path) == 0  # not in the repository
    for code in (earlier, later):
        _report(tmp_path, f"2026-01-01-{code}", machine={"code": code})
    _report(tmp_path, "2025-12-31", machine={"code": later})
    rows = [line.split("]")[0] for line in index.render(tmp_path).splitlines() if line.startswith("| [")]
    assert rows == [f"| [2026-01-01-{later}", f"| [2026-01-01-{earlier}", "| [2025-12-31"]
