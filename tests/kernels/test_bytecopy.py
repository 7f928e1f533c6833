"""``copy_bytes``: the bytes slice assignment copies, for every length and position, and only for byte vectors."""

from __future__ import annotations

import numba as nb
import numpy as np
import pytest
from numba.core import errors

from streams.kernels.bytecopy import copy_bytes


@nb.njit
def _copy(dst, at, src, start, n):  # type: ignore[no-untyped-def]
    copy_bytes(dst, at, src, start, n)


def test_copies_exactly_the_slice_and_nothing_around_it() -> None:
    rng = np.random.default_rng(5)
    src = rng.integers(0, 256, 300).astype(np.uint8)
    for _ in range(500):
        n = int(rng.integers(0, 70))
        start, at = int(rng.integers(0, 300 - n + 1)), int(rng.integers(0, 100 - n + 1))
        dst = rng.integers(0, 256, 100).astype(np.uint8)
        want = dst.copy()
        want[at : at + n] = src[start : start + n]
        _copy(dst, at, src, start, n)
        assert dst.tobytes() == want.tobytes(), (n, start, at)


def test_only_contiguous_byte_vectors() -> None:
    with pytest.raises(errors.TypingError, match="C-contiguous 1-d uint8"):
        _copy(np.zeros(8, np.int64), 0, np.zeros(8, np.int64), 0, 1)
    with pytest.raises(errors.TypingError, match="C-contiguous 1-d uint8"):
        _copy(np.zeros(8, np.uint8), 0, np.zeros(16, np.uint8)[::2], 0, 1)
