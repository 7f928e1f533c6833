"""The layout model's day and its report (the Redis measurement itself runs in ``python -m benchmarks.layouts``)."""

from __future__ import annotations

from collections import Counter

from benchmarks.layouts import (
    AREA_TIME_LED,
    COMPACT,
    ENTRIES_PER_AREA_KEY,
    LAYOUT5,
    LAYOUT6,
    NO_IDS,
    NO_READ_ID,
    TODAY,
    model_day,
    report,
)
from streams.store import Sighting, area_entry


def test_layout6_fields_are_the_stores_member_and_area_entry_of_a_typical_pass() -> None:
    # the model's layout 6 is what store.py writes for a pass of 2.5 s with 4 reads and an 11-byte read id
    s = Sighting(1, 1_764_000_000_000, 1_764_000_002_500, 1_764_000_000_300, 1, 4, 0.9, "c", "a", "r-20261127")
    assert len(s.pack()) == sum(LAYOUT6.values()) == sum(LAYOUT5.values()) - 3
    assert len(area_entry("dr7abc", b"v" * 12, 1, s.ts, 3_600_000)[1]) == AREA_TIME_LED
    assert sum(TODAY.values()) - TODAY["read_id"] == 48  # layout 4's fixed part, as its report measured it
    assert (sum(NO_IDS.values()) < sum(NO_READ_ID.values()) < sum(COMPACT.values()) < sum(LAYOUT6.values())
            < sum(LAYOUT5.values()) < sum(TODAY.values()))


def test_model_day_has_every_vehicle_about_eleven_times_interleaved() -> None:
    order, cells = model_day(2000)
    per_vehicle = Counter(order)
    assert set(per_vehicle) == set(range(2000))
    assert 9 < len(order) / 2000 < 13
    assert max(cells) + 1 == len(order) // ENTRIES_PER_AREA_KEY
    assert order != sorted(order)  # vehicles interleave, as in the pipeline's batches
    assert model_day(2000) == (order, cells)  # the same day every run


def _results(today: float, real: float | None) -> dict:
    layouts = [{"index": "trail", "layout": "t", "entry_bytes": 59, "bytes_per_sighting": today - 30},
               {"index": "area", "layout": "a", "entry_bytes": 16, "bytes_per_sighting": 30.0}]
    return {"date": "d", "command": "c", "seconds": 1.0, "machine": {}, "sightings": 10, "vehicles": 1, "area_keys": 1,
            "fields": {"today": TODAY}, "plate_directory_bytes_per_sighting": None,
            "measured_today_bytes_per_sighting": real, "layouts": layouts,
            "combinations": [{"trail": "t", "area": "a", "bytes_per_sighting": today}]}


def test_report_judges_each_combination_against_64_bytes() -> None:
    assert "| t | a | 64.00 | met |" in report(_results(64.0, None))
    assert "| t | a | 64.01 | NOT met |" in report(_results(64.01, None))


def test_report_says_how_far_the_model_is_from_the_real_run() -> None:
    assert not any(line.startswith("Calibration") for line in report(_results(100.0, None)))
    [line] = [line for line in report(_results(100.0, 105.5)) if line.startswith("Calibration")]
    assert "100.00 bytes per sighting in this model and 105.50" in line and "(+5.50" in line
    # the combination named current is the one compared with the real run
    r = _results(100.0, 105.5)
    r["combinations"].append({"trail": "t5", "area": "a5", "bytes_per_sighting": 90.0})
    r["current"] = ["t5", "a5"]
    [line] = [line for line in report(r) if line.startswith("Calibration")]
    assert "90.00 bytes per sighting in this model and 105.50" in line and "(+15.50" in line
