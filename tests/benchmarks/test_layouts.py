"""The layout model's day and its report (the Redis measurement itself runs in ``python -m benchmarks.layouts``)."""

from __future__ import annotations

from collections import Counter

from benchmarks.layouts import COMPACT, ENTRIES_PER_AREA_KEY, NO_IDS, NO_READ_ID, TODAY, model_day, report
from streams.store import MEMBER_FIXED


def test_todays_fields_are_the_stores_member() -> None:
    # the model's "today" is the member store.py writes: its fixed part, then the read id
    assert sum(TODAY.values()) - TODAY["read_id"] == MEMBER_FIXED.itemsize
    assert sum(NO_IDS.values()) < sum(NO_READ_ID.values()) < sum(COMPACT.values()) < sum(TODAY.values())


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
