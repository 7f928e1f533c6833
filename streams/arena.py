"""Many short strings in one buffer, referenced by (offset, length) columns of a NumPy pool.

Why: the dedup state keeps the best read's id of every open sighting. As a dict of ``str`` objects that
was ~220 bytes per open (camera, plate) key - int key, tuple, string object, dict slot - for ids of a
few characters. In an arena it is the UTF-8 bytes themselves plus 6 bytes of columns, and the columns
move with the pool when it compacts. Replaced strings become garbage until ``compact``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

OFFSET = np.uint32
LENGTH = np.uint16
_LIMIT = 2**32 - 1


class StringArena:
    """Append-only UTF-8 buffer; ``compact`` keeps only the strings still referenced."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def __len__(self) -> int:
        return len(self.buf)

    def append(self, values: Sequence[str]) -> tuple[NDArray[np.uint32], NDArray[np.uint16]]:
        """Store ``values``; returns their offsets and lengths (bytes). Strings must be < 64 KiB."""
        enc = [v.encode() for v in values]
        lens = np.fromiter(map(len, enc), dtype=np.int64, count=len(enc))
        total = int(lens.sum())
        if lens.shape[0] and int(lens.max()) > np.iinfo(LENGTH).max:
            raise ValueError("string longer than 65535 bytes")
        if len(self.buf) + total > _LIMIT:
            raise OverflowError("string arena over 4 GiB: compact it first")
        offs = len(self.buf) + np.cumsum(lens) - lens
        self.buf += b"".join(enc)
        return offs.astype(OFFSET), lens.astype(LENGTH)

    def get(self, offs: NDArray[np.uint32], lens: NDArray[np.uint16]) -> list[str]:
        buf = self.buf
        return [buf[o : o + n].decode() for o, n in zip(offs.tolist(), lens.tolist(), strict=True)]

    def compact(self, offs: NDArray[np.uint32], lens: NDArray[np.uint16]) -> NDArray[np.uint32]:
        """Keep only the strings at (``offs``, ``lens``), in that order; returns their new offsets."""
        buf = self.buf
        self.buf = bytearray(b"".join([buf[o : o + n] for o, n in zip(offs.tolist(), lens.tolist(), strict=True)]))
        n64 = lens.astype(np.int64)
        return (np.cumsum(n64) - n64).astype(OFFSET)
