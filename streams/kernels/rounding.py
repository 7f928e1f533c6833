"""Python's ``round(x, digits)`` for a whole column at once.

Output records carry coordinates and confidences rounded to a few decimals; calling ``round`` per value
was a measurable share of the per-sighting output loop. ``rint(x * 10**d) / 10**d`` gives the same double
as ``round`` whenever the scaled value is not within floating-point error of a half: the quotient of two
exact doubles is correctly rounded, i.e. the double nearest the decimal ``k / 10**d``, which is what
``round`` returns for the same ``k``. The few values near a half are rounded by ``round`` itself.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numpy.typing import NDArray

# |x| * 10**digits below 2**52 keeps the absolute error of the product under this margin
_NEAR_HALF = 1e-3


@nb.njit(cache=True)
def _rint_scaled(x: NDArray[np.float64], scale: float) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """``rint(x * scale) / scale`` of each value, and the indices of the values it cannot vouch for: near a
    half (ties, or products too close to call), too large to scale exactly, not finite."""
    n = x.shape[0]
    out = np.empty(n, dtype=np.float64)
    odd = np.empty(n, dtype=np.int64)
    m = 0
    for i in range(n):
        y = x[i] * scale
        if not abs(y) < 2.0**52:
            out[i] = x[i]
            odd[m] = i
            m += 1
            continue
        out[i] = np.rint(y) / scale
        if abs(abs(y - np.trunc(y)) - 0.5) < _NEAR_HALF:
            odd[m] = i
            m += 1
    return out, odd[:m]


def rounded_array(values: NDArray[np.floating], digits: int) -> NDArray[np.float64]:
    """``round(float(v), digits)`` of each value, bit for bit, as an array."""
    x = np.asarray(values, dtype=np.float64)
    out, odd = _rint_scaled(x, 10.0**digits)
    for i in odd.tolist():
        out[i] = round(float(x[i]), digits)
    return out


def rounded(values: NDArray[np.floating], digits: int) -> list[float]:
    """``[round(float(v), digits) for v in values]``, bit for bit, without a Python call per value."""
    result: list[float] = rounded_array(values, digits).tolist()
    return result
