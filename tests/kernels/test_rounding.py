"""``rounded`` against Python's own ``round``, bit for bit."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.kernels.rounding import rounded, rounded_array


def _same(a: list[float], b: list[float]) -> bool:
    return all((math.isnan(x) and math.isnan(y)) or x.hex() == y.hex() for x, y in zip(a, b, strict=True))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=50), st.integers(0, 9))
def test_matches_round_on_any_double(values: list[float], digits: int) -> None:
    got = rounded(np.array(values, dtype=np.float64), digits)
    assert _same(got, [round(v, digits) if math.isfinite(v) else v for v in values])


def test_matches_round_on_coordinates_and_confidences() -> None:
    rng = np.random.default_rng(3)
    lat = rng.uniform(-90, 90, 200_000)
    conf = rng.uniform(0, 1, 200_000).astype(np.float32)
    assert _same(rounded(lat, 7), [round(v, 7) for v in lat.tolist()])
    assert _same(rounded(conf, 6), [round(v, 6) for v in conf.tolist()])


def test_ties_go_where_round_sends_them() -> None:
    # exact binary halves: round() rounds half to even on the exact decimal value
    values = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 0.125, 0.375, 2.675, 1.0000005, 0.0000005], dtype=np.float64)
    for digits in (0, 2, 6):
        assert _same(rounded(values, digits), [round(v, digits) for v in values.tolist()])


def test_array_form_leaves_its_input_alone() -> None:
    values = np.array([0.125, 2.675, 41.70000049], dtype=np.float64)
    before = values.copy()
    got = rounded_array(values, 2)
    assert got.dtype == np.float64 and got is not values and np.array_equal(values, before)
    assert _same(got.tolist(), [round(v, 2) for v in before.tolist()])
