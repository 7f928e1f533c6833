"""The index of the full reports is computed from them, and the committed one agrees with the reports."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import index


def _report(folder: Path, stem: str, **figures: object) -> None:
    (folder / f"{stem}.json").write_text(json.dumps({"date": stem[:10], **figures}))


def test_the_committed_index_is_the_one_the_committed_reports_make() -> None:
    committed = (index.RESULTS / "INDEX.md").read_text()
    assert committed == index.render(), "benchmarks/results/INDEX.md is stale: run python -m benchmarks.index"


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


def test_a_days_reports_are_ordered_by_the_time_of_the_commit_they_ran() -> None:
    # two commits of this repository, the second made after the first
    first, second = "adc722c", "c1e88ee"
    assert 0 < index.commit_time(first, index.RESULTS) < index.commit_time(second, index.RESULTS)
    assert index.commit_time(f"{first} + changes", index.RESULTS) == index.commit_time(first, index.RESULTS)
    assert index.commit_time("?", index.RESULTS) == 0
    assert index.commit_time(None, index.RESULTS) == 0
