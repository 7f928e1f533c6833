"""JSON objects of one shape, serialized column by column: the bytes ``orjson.dumps`` gives for each row's dict.

Why: the worker publishes one JSON message per changed sighting, and building a 20-key dict per sighting to
serialize it was the largest single cost of a batch (about a quarter of the pipeline's time under cProfile).
Here each column is serialized by one ``orjson.dumps`` of a list (the same encoder, so numbers and strings come
out exactly as they would in a dict), split into its elements in one compiled pass, and every row's object is
assembled from a template's literal parts and its elements in another. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numba as nb
import numpy as np
import orjson
from numpy.typing import NDArray

from streams.kernels.bytecopy import copy_bytes

QUOTE, BACKSLASH, COMMA = 0x22, 0x5C, 0x2C
OPEN_ARRAY, CLOSE_ARRAY, OPEN_OBJECT, CLOSE_OBJECT = 0x5B, 0x5D, 0x7B, 0x7D


@nb.njit(cache=True)
def split_array(buf: NDArray[np.uint8], n: int, starts: NDArray[np.int64], ends: NDArray[np.int64]) -> int:
    """Bounds of the ``n`` elements of the JSON array ``buf`` (as ``orjson`` writes it: no whitespace) into
    ``starts``/``ends``; returns how many it found (``n`` unless ``buf`` is not an array of ``n``).

    Element by element: a string to its closing quote, a number or literal to the next comma, and only a nested
    array or object byte by byte with its depth (a depth-tracking pass over every byte was 1.7x slower)."""
    size = buf.shape[0]
    if size < 2 or buf[0] != OPEN_ARRAY or buf[size - 1] != CLOSE_ARRAY:
        return -1
    if n == 0:
        return 0 if size == 2 else -1
    last = size - 1
    i = 1
    for k in range(n):
        if i >= last:
            return -1
        starts[k] = i
        c = buf[i]
        if c == QUOTE:
            i += 1
            while True:
                if i >= last:
                    return -1
                c = buf[i]
                if c == QUOTE:
                    break
                i += 2 if c == BACKSLASH else 1
            i += 1
        elif c in (OPEN_ARRAY, OPEN_OBJECT):
            depth = 0
            in_string = False
            while i < last:
                c = buf[i]
                if in_string:
                    if c == BACKSLASH:
                        i += 1
                    elif c == QUOTE:
                        in_string = False
                elif c == QUOTE:
                    in_string = True
                elif c in (OPEN_ARRAY, OPEN_OBJECT):
                    depth += 1
                elif c in (CLOSE_ARRAY, CLOSE_OBJECT):
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            i += 1
        else:
            while i < last and buf[i] != COMMA:
                i += 1
        ends[k] = i
        if k + 1 < n:
            if i >= last or buf[i] != COMMA:
                return -1
            i += 1
    return n if i == last else -1


@nb.njit(cache=True)
def assemble(literals: NDArray[np.uint8], lit_bounds: NDArray[np.int64], values: NDArray[np.uint8],
             starts: NDArray[np.int64], ends: NDArray[np.int64]) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Row ``i`` is literal 0, value (i, 0), literal 1, value (i, 1), ..., literal k: (all rows' bytes, each
    row's end in them). ``starts``/``ends``: (rows, k) bounds into ``values``."""
    rows, k = starts.shape[0], starts.shape[1]
    if lit_bounds.shape[0] != k + 2 or lit_bounds[k + 1] > literals.shape[0]:
        raise ValueError("a literal before, between and after the values")
    for j in range(k + 1):
        if not 0 <= lit_bounds[j] <= lit_bounds[j + 1]:
            raise ValueError("a literal's bounds are outside the literals")
    lit_total = lit_bounds[k + 1] - lit_bounds[0]
    total = rows * lit_total
    for i in range(rows):
        for j in range(k):
            if not 0 <= starts[i, j] <= ends[i, j] <= values.shape[0]:
                raise ValueError("a value's bounds are outside the values")
            total += ends[i, j] - starts[i, j]
    out = np.empty(total, dtype=np.uint8)
    row_ends = np.empty(rows, dtype=np.int64)
    pos = 0
    for i in range(rows):  # bounds checked above: one memcpy per piece (2-3x a loop per byte)
        for j in range(k + 1):
            n = lit_bounds[j + 1] - lit_bounds[j]
            copy_bytes(out, pos, literals, lit_bounds[j], n)
            pos += n
            if j < k:
                n = ends[i, j] - starts[i, j]
                copy_bytes(out, pos, values, starts[i, j], n)
                pos += n
        row_ends[i] = pos
    return out, row_ends


class Template:
    """The shape of the objects: fixed (key, value) pairs and per-row columns, in key order."""

    def __init__(self, parts: Sequence[tuple[str, Any] | str]) -> None:
        """``parts``: ``(key, value)`` for a value every row has, ``key`` for a column (given per call), or
        ``(key, Template)`` for a nested object of that shape. A key may end with ``?``: an optional column,
        whose rows hold ``None`` where the key is absent (it must come last)."""
        literal = bytearray(b"{")
        self.literals: list[bytes] = []
        self.columns: list[str] = []
        self.optional: str | None = None
        first = True
        for part in parts:
            if self.optional is not None:
                raise ValueError("an optional column comes last")
            key, value = (part, None) if isinstance(part, str) else part
            if key.endswith("?"):
                self.optional = key[:-1]
                continue
            literal += (b"" if first else b",") + orjson.dumps(key) + b":"
            first = False
            if isinstance(value, Template):
                # a nested object: its literals and columns continue this one's
                if value.optional is not None:
                    raise ValueError("a nested object has no optional column")
                literal += value.literals[0]
                for lit, col in zip(value.literals[1:], value.columns, strict=True):
                    self.literals.append(bytes(literal))
                    self.columns.append(f"{key}.{col}")
                    literal = bytearray(lit)
            elif isinstance(part, str):
                self.literals.append(bytes(literal))
                self.columns.append(key)
                literal = bytearray()
            else:
                literal += orjson.dumps(value)
        self.literals.append(bytes(literal))
        if self.optional is not None:
            self.literals.append(b"")  # after the optional column's fragment (",key:value", or nothing)
        self.literals[-1] += b"}"
        self._lits = np.frombuffer(b"".join(self.literals), dtype=np.uint8)
        self._bounds = np.cumsum([0, *map(len, self.literals)], dtype=np.int64)
        # the same with a comma after each row: the elements of an array, assembled in place
        self._lits_comma = np.frombuffer(b"".join(self.literals) + b",", dtype=np.uint8)
        self._bounds_comma = np.append(self._bounds[:-1], self._bounds[-1] + 1)

    def dumps(self, columns: Sequence[Sequence[Any]], optional: Sequence[Any] | None = None) -> list[bytes]:
        """``orjson.dumps`` of each row's object: one sequence per column, in the order of ``self.columns``
        (and the optional column's values, ``None`` where absent)."""
        out, row_ends = self.dumps_joined(columns, optional)
        data, cuts = out.tobytes(), row_ends.tolist()
        return [data[i:j] for i, j in zip([0, *cuts][:-1], cuts, strict=True)]

    def dumps_joined(self, columns: Sequence[Sequence[Any]],
                     optional: Sequence[Any] | None = None) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
        """``dumps``'s objects back to back, and the running end of each (for ``records.Messages``)."""
        return self._assemble(columns, optional, self._lits, self._bounds)

    def dumps_array(self, columns: Sequence[Sequence[Any]], optional: Sequence[Any] | None = None) -> bytes:
        """``orjson.dumps`` of the list of the rows' objects (a query's answer, without a dict per row)."""
        out, _ = self._assemble(columns, optional, self._lits_comma, self._bounds_comma)
        return b"[" + out[:-1].tobytes() + b"]"  # (no rows: out is empty, out[:-1] too)

    def _assemble(self, columns: Sequence[Sequence[Any]], optional: Sequence[Any] | None, lits: NDArray[np.uint8],
                  bounds: NDArray[np.int64]) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
        """All rows' objects back to back (with ``lits``/``bounds``: the literals around the values), and where
        each ends."""
        if len(columns) != len(self.columns) or (optional is None) != (self.optional is None):
            raise ValueError(f"columns {self.columns}" + (f" and {self.optional}?" if self.optional else ""))
        n = len(columns[0]) if columns else 0
        bufs = [orjson.dumps(col if isinstance(col, list) else list(col)) for col in columns]
        k = len(self.literals) - 1  # value slots: the columns and the optional one
        starts = np.empty((k, n), dtype=np.int64)  # a row per column: each is split into a contiguous row
        ends = np.empty((k, n), dtype=np.int64)
        base = 0
        for j, raw in enumerate(bufs):
            if split_array(np.frombuffer(raw, dtype=np.uint8), n, starts[j], ends[j]) != n:
                raise ValueError(f"column {self.columns[j]} does not have {n} values")
            starts[j] += base
            ends[j] += base
            base += len(raw)
        if optional is not None:
            if len(optional) != n:
                raise ValueError(f"column {self.optional} does not have {n} values")
            key = b"," + orjson.dumps(self.optional) + b":"
            empty = key + b"{}"  # the common case: a dict without fields (one call saved per row)
            extra = [b"" if v is None else empty if type(v) is dict and not v else key + orjson.dumps(v)
                     for v in optional]
            bufs.append(b"".join(extra))
            lengths = np.fromiter(map(len, extra), dtype=np.int64, count=n)
            ends[-1] = base + np.cumsum(lengths)
            starts[-1] = ends[-1] - lengths
        return assemble(lits, bounds, np.frombuffer(b"".join(bufs), dtype=np.uint8), starts.T, ends.T)
