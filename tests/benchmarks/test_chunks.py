"""The chunked-writes throughput report: medians against the first value, and how each run wrote its batches."""

from __future__ import annotations

from benchmarks.chunks import report


def test_each_value_is_judged_by_its_median_against_the_first() -> None:
    r = {"date": "d", "command": "c", "seconds": 1.0, "machine": {}, "messages": 10,
         "runs": {"0": [100.0, 120.0, 110.0], "400:always": [90.0, 99.0, 10.0]},
         "batches_whole_chunked": {"0": [(5, 0), (6, 0), (5, 0)], "400:always": [(0, 5), (1, 4), (0, 6)]}}
    lines = report(r)
    assert "| 0 | 100 / 120 / 110 | 110 | +0.0% | 5 / 0 ; 6 / 0 ; 5 / 0 |" in lines
    assert "| 400:always | 90 / 99 / 10 | 90 | -18.2% | 0 / 5 ; 1 / 4 ; 0 / 6 |" in lines
