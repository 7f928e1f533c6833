"""Plate packing: equal plates <-> equal codes; classes equal <-> OCR-confusable (brute-force reference)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.kernels.plates import pack_plates, plate_class, plates_matrix, unpack_plate, unpack_plates

plates = st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=10)


@settings(max_examples=1000, deadline=None)  # the first example may compile the kernel
@given(st.lists(plates, min_size=1, max_size=30))
def test_codes_match_reference(ps: list[str]) -> None:
    code, cls = pack_plates(plates_matrix([p.encode() for p in ps]))
    for i, p in enumerate(ps):
        assert unpack_plate(int(code[i])) == p
        assert unpack_plate(int(cls[i])) == plate_class(p)
        for j, q in enumerate(ps):
            assert (code[i] == code[j]) == (p == q)
            assert (cls[i] == cls[j]) == (plate_class(p) == plate_class(q))


@settings(max_examples=300, deadline=None)
@given(st.lists(plates, max_size=50))
def test_bulk_unpack_is_the_text_packed(ps: list[str]) -> None:
    code, _ = pack_plates(plates_matrix([p.encode() for p in ps]))
    assert unpack_plates(code) == ps
    assert unpack_plates(code[::-1].copy()) == ps[::-1]


def test_bulk_unpack_of_nothing() -> None:
    assert unpack_plates(np.zeros(0, dtype=np.uint64)) == []


def test_confusions() -> None:
    assert plate_class("B0SZI") == plate_class("80521") == "80521"
    assert plate_class("AB1") != plate_class("AB7")
