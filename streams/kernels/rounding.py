"""Python's ``round(x, digits)`` for a whole column at once.

Output records carry coordinates and confidences rounded to a few decimals; calling ``round`` per value
was a measurable share of the per-sighting output loop. ``rint(x * 10**d) / 10**d`` gives the same double
as ``round`` whenever the scaled value is not within floating-point error of a half: the quotient of two
exact doubles is correctly rounded, i.e. the double nearest the decimal ``k / 10**d``, which is what
``round`` returns for the same ``k``. The few values near a half are rounded by ``round`` itself.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

# |x| * 10**digits below 2**52 keeps the absolute error of the product under this margin
_NEAR_HALF = 1e-3


def rounded(values: NDArray[np.floating], digits: int) -> list[float]:
    """``[round(float(v), digits) for v in values]``, bit for bit, without a Python call per value."""
    x = np.asarray(values, dtype=np.float64)
    scale = 10.0**digits
    with np.errstate(over="ignore", invalid="ignore"):  # infinities and NaN take the fallback below
        y = x * scale
        out: list[float] = (np.rint(y) / scale).tolist()
        # values near a half (ties, or products too close to call), too large to scale exactly, not finite
        frac = np.abs(y - np.trunc(y))
        odd = ~(np.abs(y) < 2.0**52) | (np.abs(frac - 0.5) < _NEAR_HALF)
    if odd.any():
        xs = x.tolist()
        for i in np.flatnonzero(odd).tolist():
            out[i] = round(xs[i], digits)
    return out
