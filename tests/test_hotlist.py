"""Hotlist parsing and matching: equal to a brute-force oracle (fnmatch over confusion classes)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.hotlist import Entry, HotlistError, Matcher, make_entry, parse
from streams.kernels.plates import pack_plates, plate_class, plates_matrix

ALPHA = "AB0O18SZ25X"


def _entry(plate: str, region: str = "*", agency: str = "a", expires: int | None = None) -> Entry:
    return make_entry(agency, {"plate": plate, "region": region, "reason": "test", "expires": expires}, "t")


def _match(m: Matcher, plates: list[str], regions: list[str]) -> set[tuple[int, str]]:
    _, cls = pack_plates(plates_matrix([p.encode() for p in plates]))
    return {(row, e.id) for row, e in m.match(cls, [p.encode() for p in plates], regions, lambda e, r: True)}


def oracle(entries: list[Entry], plates: list[str], regions: list[str]) -> set[tuple[int, str]]:
    out = set()
    for row, (p, reg) in enumerate(zip(plates, regions, strict=True)):
        for e in entries:
            pat = "".join(c if c in "*?" else plate_class(c) for c in e.plate)
            if fnmatch.fnmatchcase(plate_class(p), pat) and e.region in ("*", reg):
                out.add((row, e.id))
    return out


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.text(ALPHA + "*?", min_size=1, max_size=6).filter(lambda s: s.strip("*?")),
                          st.sampled_from(["*", "US-CT", "US-NY"])), max_size=6, unique_by=lambda t: t),
       st.lists(st.tuples(st.text(ALPHA, min_size=1, max_size=6), st.sampled_from(["US-CT", "US-NY"])),
                min_size=1, max_size=30))
def test_matcher_equals_brute_force(entries: list[tuple[str, str]], reads: list[tuple[str, str]]) -> None:
    es = [_entry(p, r) for p, r in entries]
    plates, regions = [p for p, _ in reads], [r for _, r in reads]
    assert _match(Matcher(es, 0), plates, regions) == oracle(es, plates, regions)


def test_ocr_confusions_wildcards_regions_and_expiry() -> None:
    es = [_entry("7ABC1O3", "US-CT"), _entry("XY?12*"), _entry("OLD1", expires=1000)]
    m = Matcher(es, now_ms=2000)
    assert len(m) == 2  # the expired entry is not matched
    got = _match(m, ["7A8C103", "7ABC103", "XYZ1299", "XY12", "OLD1"], ["US-CT", "US-NY", "US-NY", "US-CT", "US-CT"])
    assert got == {(0, es[0].id), (2, es[1].id)}


def test_parse_csv_and_json(tmp_path: Path) -> None:
    (tmp_path / "h.csv").write_text("plate,region,reason,priority,expires\n7ab-c123,US-CT,stolen,1,2030-01-01\n"
                                    "XY*,*,amber alert,,\n")
    es = parse(tmp_path / "h.csv", "hartford-pd")
    assert [(e.plate, e.region, e.priority, e.expires is not None) for e in es] == [
        ("7ABC123", "US-CT", 1, True), ("XY*", "*", 3, False)]
    (tmp_path / "h.json").write_text('[{"plate": "Q1", "reason": "r"}]')
    assert parse(tmp_path / "h.json", "x")[0].plate == "Q1"
    (tmp_path / "bad.csv").write_text("plate,region,reason\n!!,US-CT,x\n")
    with pytest.raises(HotlistError, match=r"bad\.csv:2"):
        parse(tmp_path / "bad.csv", "x")
    with pytest.raises(HotlistError, match="reason"):
        make_entry("a", {"plate": "AB1"}, "t")
    with pytest.raises(HotlistError, match="plate"):
        make_entry("a", {"plate": "***", "reason": "r"}, "t")


def test_no_entries_no_work() -> None:
    m = Matcher([], 0)
    assert m.match(np.zeros(3, np.uint64), [b"A", b"B", b"C"], ["US-CT"] * 3, lambda e, r: True) == []
