"""Plate kernels: pack normalized plate text into a uint64 and map OCR-confusable characters to a class.

A normalized plate is 1-10 characters of [A-Z0-9]. Each character takes 6 bits (0 = padding), so a plate
fits in 60 bits and equal plates have equal integers. The *class* maps O->0, I->1, B->8, S->5, Z->2 before
packing: two plates are OCR-confusable exactly when their classes are equal, which makes confusability an
equivalence relation the dedup kernel can hash.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numpy.typing import NDArray

MAX_PLATE = 10
CONFUSABLE = {"O": "0", "I": "1", "B": "8", "S": "5", "Z": "2"}

# byte -> 6-bit code (0 = padding/invalid); digits 1..10, letters 11..36
_CODE = np.zeros(256, dtype=np.uint8)
_CLASS_CODE = np.zeros(256, dtype=np.uint8)
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
for _i, _ch in enumerate(_ALPHABET):
    _CODE[ord(_ch)] = _i + 1
for _i, _ch in enumerate(_ALPHABET):
    _CLASS_CODE[ord(_ch)] = _CODE[ord(CONFUSABLE.get(_ch, _ch))]
_DECODE = np.frombuffer(b"\0" + _ALPHABET.encode(), dtype=np.uint8).copy()  # 6-bit code -> byte


@nb.njit(cache=True)
def pack_plates(mat: NDArray[np.uint8]) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """Rows of normalized ASCII plates (NUL padded to 10) -> (plate code, confusion-class code)."""
    n = mat.shape[0]
    plate = np.empty(n, dtype=np.uint64)
    cls = np.empty(n, dtype=np.uint64)
    for i in range(n):
        p = np.uint64(0)
        c = np.uint64(0)
        for j in range(MAX_PLATE):
            b = mat[i, j]
            p = (p << np.uint64(6)) | np.uint64(_CODE[b])
            c = (c << np.uint64(6)) | np.uint64(_CLASS_CODE[b])
        plate[i] = p
        cls[i] = c
    return plate, cls


@nb.njit(cache=True)
def _unpack_matrix(codes: NDArray[np.uint64]) -> NDArray[np.uint8]:
    out = np.zeros((codes.shape[0], MAX_PLATE), dtype=np.uint8)
    for i in range(codes.shape[0]):
        k = 0
        for j in range(MAX_PLATE):
            v = (codes[i] >> np.uint64(6 * (MAX_PLATE - 1 - j))) & np.uint64(63)
            if v:
                out[i, k] = _DECODE[v]
                k += 1
    return out


def unpack_plates(codes: NDArray[np.uint64]) -> list[str]:
    """``unpack_plate`` of many codes at once (the pipeline's best plates: the text need not be kept)."""
    if not codes.shape[0]:
        return []
    return [b.decode() for b in _unpack_matrix(codes).view(f"S{MAX_PLATE}").ravel().tolist()]


def unpack_plate(code: int) -> str:
    """Inverse of ``pack_plates`` for one plate (outputs only, not the hot path)."""
    return unpack_plates(np.array([code], dtype=np.uint64))[0]


def plate_class(plate: str) -> str:
    """Confusion class of a normalized plate as text (reference implementation, used by tests and queries)."""
    return "".join(CONFUSABLE.get(ch, ch) for ch in plate)


def plates_matrix(plates: list[bytes]) -> NDArray[np.uint8]:
    """Normalized ASCII plates -> (n, 10) NUL-padded byte matrix for ``pack_plates``."""
    buf = b"".join(p.ljust(MAX_PLATE, b"\0") for p in plates)
    return np.frombuffer(buf, dtype=np.uint8).reshape(len(plates), MAX_PLATE)
