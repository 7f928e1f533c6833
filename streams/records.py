"""Decode and validate plate_read v1 messages in batches; bad input becomes data, never an exception.

``validate_read`` is the code form of ``schemas/plate_read.v1.json`` (the tests check they agree on
generated inputs). The hot path never calls a JSON Schema validator: it decodes with orjson and checks
each field with plain comparisons, then ``decode_batch`` turns the valid reads into NumPy columns.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
import operator
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, overload

import numpy as np
import orjson
from numpy.typing import NDArray

from streams.kernels.plates import MAX_PLATE
from streams.kernels.scan import EXTRA, N_STRINGS, OPTIONAL, SLOW, intern_spans, scan_reads
from streams.names import SCHEMA_DLQ, STEP_DECODE, STEP_FETCH, STEP_VALIDATE

CORRUPT_BATCH = "corrupt_batch"  # a dead letter's reason: its record batch was damaged (``Corrupt``)
REQUIRED = ("read_id", "camera_id", "agency", "plate", "region", "ts", "lat", "lon", "confidence")
CORE = frozenset(REQUIRED)
TS_MAX = 4_102_444_800_000  # 2100-01-01
_PLATE_RAW = re.compile(r"[ \-]*(?:[A-Za-z0-9][ \-]*){1,10}")
_REGION = re.compile(r"[A-Z]{2}-[A-Z0-9]{1,3}")
_NORMALIZE = str.maketrans("", "", " -")


class Invalid(Exception):
    """A field broke the schema; ``reason`` is a stable code, ``field`` the JSON field."""

    def __init__(self, reason: str, fld: str | None, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.field = fld
        self.detail = detail


def _text(doc: dict[str, Any], name: str, lo: int, hi: int) -> str:
    v = doc[name]
    if type(v) is not str:
        raise Invalid("invalid_field", name, f"{name} must be a string")
    if not lo <= len(v) <= hi or "\n" in v:
        raise Invalid("invalid_field", name, f"{name} must be {lo}-{hi} characters without newlines")
    return v


def _number(doc: dict[str, Any], name: str, lo: float, hi: float) -> float:
    v = doc[name]
    if type(v) is not float and type(v) is not int:
        raise Invalid("invalid_field", name, f"{name} must be a number")
    if not (lo <= v <= hi) or (type(v) is float and not math.isfinite(v)):
        raise Invalid("invalid_field", name, f"{name} must be a number in [{lo}, {hi}]")
    return float(v)


def _integer(doc: dict[str, Any], name: str, lo: int, hi: int) -> int:
    v = doc[name]
    if type(v) is float and math.isfinite(v) and v.is_integer():  # JSON Schema: 5.0 is an integer
        v = int(v)
    if type(v) is not int:
        raise Invalid("invalid_field", name, f"{name} must be an integer")
    if not lo <= v <= hi:
        raise Invalid("invalid_field", name, f"{name} must be an integer in [{lo}, {hi}]")
    return v


def normalize_plate(raw: str) -> str:
    """Upper case, spaces and dashes removed (the schema guarantees the result is 1-10 of [A-Z0-9])."""
    return raw.translate(_NORMALIZE).upper()


def validate_read(doc: Any) -> str:
    """Raise ``Invalid`` unless ``doc`` satisfies plate_read v1; return the normalized plate."""
    if type(doc) is not dict:
        raise Invalid("not_an_object", None, "message must be a JSON object")
    for name in REQUIRED:
        if name not in doc:
            raise Invalid("missing_field", name, f"required field {name} is missing")
    _text(doc, "read_id", 1, 64)
    _text(doc, "camera_id", 1, 64)
    _text(doc, "agency", 1, 64)
    plate = _text(doc, "plate", 1, 16)
    if not _PLATE_RAW.fullmatch(plate):
        raise Invalid("invalid_field", "plate", "plate must normalize to 1-10 of [A-Z0-9] (spaces, dashes ok)")
    region = doc["region"]
    if type(region) is not str or not _REGION.fullmatch(region):
        raise Invalid("invalid_field", "region", "region must look like US-CT (ISO 3166-2)")
    _integer(doc, "ts", 0, TS_MAX)
    _number(doc, "lat", -90.0, 90.0)
    _number(doc, "lon", -180.0, 180.0)
    _number(doc, "confidence", 0.0, 1.0)
    if "heading" in doc:
        _number(doc, "heading", 0.0, 360.0)
    if "lane" in doc:
        _integer(doc, "lane", 0, 64)
    if "vehicle" in doc:
        veh = doc["vehicle"]
        if type(veh) is not dict:
            raise Invalid("invalid_field", "vehicle", "vehicle must be an object")
        for k in ("make", "model", "color", "type"):
            if k in veh and (type(veh[k]) is not str or len(veh[k]) > 64):
                raise Invalid("invalid_field", "vehicle", f"vehicle.{k} must be a string of at most 64")
    if "image_uri" in doc and (type(doc["image_uri"]) is not str or len(doc["image_uri"]) > 2048):
        raise Invalid("invalid_field", "image_uri", "image_uri must be a string of at most 2048")
    return normalize_plate(plate)


class RecordLike(Protocol):
    """What the pipeline reads of a consumed Kafka record (aiokafka's ConsumerRecord fits as is)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int | None: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Raw:
    """A plain ``RecordLike`` (tests, files, benchmarks)."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None


NO_TIMESTAMP = -1  # Kafka's "no timestamp" (a ``Raw``'s None)


@dataclass(frozen=True, slots=True)
class Corrupt:
    """A record batch that failed a check when it was fetched (``streams.fetch``): its CRC-32C, or its records'
    framing. Its records are dead-lettered as read (``corrupt_batch``), never processed: which of them hold the
    damaged bytes is unknown."""

    detail: str
    first: int  # the batch's first offset this consumer takes (past its fetch position)
    end: int  # the offset after the batch
    whole: bool  # its records could not be told apart: one record, at ``first``, holds the batch's bytes


class Polled(Sequence[Raw]):
    """One partition's poll as columns: the fetched bytes, and per record its offset, timestamp and where its key
    and value lie in those bytes ((start, stop) rows; -1, -1 for a null).

    ``streams.fetch`` makes these straight from a fetch response's record batches, without a record object or a
    ``bytes`` per record, and the columnar decode scans the values where they are. A record is materialized as a
    ``Raw`` only when it is indexed (dead letters, the record-at-a-time paths). A poll with ``corrupt`` holds
    records of one damaged record batch only."""

    __slots__ = ("corrupt", "data", "key_spans", "offsets", "partition", "timestamps", "topic", "value_spans")

    def __init__(self, topic: str, partition: int, data: bytes, offsets: NDArray[np.int64],
                 timestamps: NDArray[np.int64], key_spans: NDArray[np.int64], value_spans: NDArray[np.int64],
                 corrupt: Corrupt | None = None) -> None:
        self.topic, self.partition, self.data = topic, partition, data
        self.offsets, self.timestamps, self.key_spans, self.value_spans = offsets, timestamps, key_spans, value_spans
        self.corrupt = corrupt

    @property
    def next_offset(self) -> int:
        """The offset after this poll's records (after the whole batch, for a damaged one read as one record)."""
        c = self.corrupt
        return c.end if c is not None and c.whole else int(self.offsets[-1]) + 1

    @classmethod
    def of(cls, topic: str, partition: int, records: Sequence[Any]) -> Polled:
        """Columns of records with ``offset``, ``timestamp``, ``key`` and ``value`` (``Raw``s, aiokafka's
        ``ConsumerRecord``s), their keys and values copied into one buffer (a ``Polled`` is returned as is)."""
        if isinstance(records, Polled):
            return records
        n = len(records)
        # each record's key then its value, as in a record batch: a slice of records is a slice of the bytes
        data, spans = _packed([v for r in records for v in (r.key, r.value)])
        ts = np.fromiter((NO_TIMESTAMP if r.timestamp is None else r.timestamp for r in records), dtype=np.int64,
                         count=n)
        return cls(topic, partition, data, np.fromiter((r.offset for r in records), dtype=np.int64, count=n), ts,
                   spans[0::2], spans[1::2])

    @classmethod
    def concat(cls, parts: Sequence[Polled]) -> Polled:
        """One poll of several (same topic and partition, in order): the arrays joined, and the bytes too
        unless every part already lies in the same buffer (the usual case: one fetch response)."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        if any(p.corrupt is not first.corrupt for p in parts):
            raise ValueError("a damaged record batch's records are polled apart from any other's")
        data = first.data
        key_spans, value_spans = [p.key_spans for p in parts], [p.value_spans for p in parts]
        if any(p.data is not data for p in parts):
            pieces: list[bytes | memoryview] = []
            base = 0
            key_spans, value_spans = [], []
            for p in parts:
                lo, hi = p.window()
                pieces.append(memoryview(p.data)[lo:hi])
                for spans, into in ((p.key_spans, key_spans), (p.value_spans, value_spans)):
                    moved = spans.copy()
                    moved[spans >= 0] += base - lo
                    into.append(moved)
                base += hi - lo
            data = b"".join(pieces)
        return cls(first.topic, first.partition, data, np.concatenate([p.offsets for p in parts]),
                   np.concatenate([p.timestamps for p in parts]), np.concatenate(key_spans),
                   np.concatenate(value_spans), first.corrupt)

    def window(self) -> tuple[int, int]:
        """The bytes of ``data`` that hold this poll's keys and values (start, stop)."""
        spans = np.concatenate([self.key_spans, self.value_spans]).ravel()
        present = spans[spans >= 0]
        return (int(present.min()), int(present.max())) if present.shape[0] else (0, 0)

    def value(self, i: int) -> bytes | None:
        return self._piece(self.value_spans, i)

    def key(self, i: int) -> bytes | None:
        return self._piece(self.key_spans, i)

    def _piece(self, spans: NDArray[np.int64], i: int) -> bytes | None:
        start, stop = spans[i].tolist()
        return None if start < 0 else self.data[start:stop]

    @property
    def values(self) -> list[bytes | None]:
        return list(map(self.value, range(len(self))))

    @property
    def keys(self) -> list[bytes | None]:
        return list(map(self.key, range(len(self))))

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    @overload
    def __getitem__(self, i: int) -> Raw: ...
    @overload
    def __getitem__(self, i: slice) -> Polled: ...
    def __getitem__(self, i: int | slice) -> Raw | Polled:
        if isinstance(i, slice):
            return Polled(self.topic, self.partition, self.data, self.offsets[i], self.timestamps[i],
                          self.key_spans[i], self.value_spans[i], self.corrupt)
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        ts = int(self.timestamps[i])
        return Raw(self.topic, self.partition, int(self.offsets[i]), None if ts == NO_TIMESTAMP else ts, self.key(i),
                   self.value(i))


class Messages(Sequence[tuple[bytes, bytes]]):
    """Outgoing (key, value) messages as two byte columns: the keys back to back, the values back to back, and the
    running end of each (no null key or value).

    The worker's sighting messages are assembled in one buffer (``Template.dumps_joined``) and copied into record
    batches from there (``streams.produce``): no ``bytes`` per message to cut out, measure and join again
    (~0.4-0.6 us a sighting). Indexing gives a ``(key, value)`` pair, so tests read them as a list of pairs."""

    __slots__ = ("key_ends", "keys", "value_ends", "values")

    def __init__(self, keys: NDArray[np.uint8], key_ends: NDArray[np.int64], values: NDArray[np.uint8],
                 value_ends: NDArray[np.int64]) -> None:
        if key_ends.shape != value_ends.shape:
            raise ValueError("a key and a value per message")
        for data in (keys, values):
            data.flags.writeable = False  # nothing writes them, and the kernels reading them see one array type
        self.keys, self.key_ends, self.values, self.value_ends = keys, key_ends, values, value_ends

    @classmethod
    def of(cls, items: Sequence[tuple[bytes, bytes]]) -> Messages:
        """Messages of (key, value) pairs (a ``Messages`` is returned as is)."""
        if isinstance(items, Messages):
            return items
        keys = [k for k, _ in items]
        values = [v for _, v in items]
        return cls(_bytes_array(keys), _running_ends(keys), _bytes_array(values), _running_ends(values))

    @classmethod
    def concat(cls, parts: Sequence[Messages]) -> Messages:
        """``parts`` one after another."""
        parts = [p for p in parts if len(p)]
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return NO_MESSAGES

        def joined(ends: list[NDArray[np.int64]]) -> NDArray[np.int64]:
            shift = np.cumsum([0] + [int(e[-1]) for e in ends[:-1]])
            return np.concatenate([e + s for e, s in zip(ends, shift.tolist(), strict=True)])

        return cls(np.concatenate([p.keys[: p.key_ends[-1]] for p in parts]), joined([p.key_ends for p in parts]),
                   np.concatenate([p.values[: p.value_ends[-1]] for p in parts]),
                   joined([p.value_ends for p in parts]))

    def sizes(self) -> NDArray[np.int64]:
        """Each message's key and value bytes together."""
        return np.diff(self.key_ends, prepend=0) + np.diff(self.value_ends, prepend=0)

    def __len__(self) -> int:
        return int(self.key_ends.shape[0])

    @overload
    def __getitem__(self, i: int) -> tuple[bytes, bytes]: ...
    @overload
    def __getitem__(self, i: slice) -> Messages: ...
    def __getitem__(self, i: int | slice) -> tuple[bytes, bytes] | Messages:
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            if step != 1:
                raise ValueError("messages are sliced in order")
            if hi <= lo:
                return NO_MESSAGES
            k0 = int(self.key_ends[lo - 1]) if lo else 0
            v0 = int(self.value_ends[lo - 1]) if lo else 0
            return Messages(self.keys[k0 : self.key_ends[hi - 1]], self.key_ends[lo:hi] - k0,
                            self.values[v0 : self.value_ends[hi - 1]], self.value_ends[lo:hi] - v0)
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        k0 = int(self.key_ends[i - 1]) if i else 0
        v0 = int(self.value_ends[i - 1]) if i else 0
        return self.keys[k0 : self.key_ends[i]].tobytes(), self.values[v0 : self.value_ends[i]].tobytes()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # (mutable arrays)

    def __repr__(self) -> str:
        return f"Messages({list(self)!r})"


def _bytes_array(items: list[bytes]) -> NDArray[np.uint8]:
    return np.frombuffer(b"".join(items), dtype=np.uint8)


def _running_ends(items: list[bytes]) -> NDArray[np.int64]:
    return np.cumsum(np.fromiter(map(len, items), dtype=np.int64, count=len(items)))


NO_MESSAGES = Messages(np.empty(0, np.uint8), np.empty(0, np.int64), np.empty(0, np.uint8), np.empty(0, np.int64))


def _packed(items: list[bytes | None]) -> tuple[bytes, NDArray[np.int64]]:
    """``items`` back to back, and each one's (start, stop) in them (-1, -1 for a None)."""
    present = [b"" if v is None else v for v in items]
    lens = np.fromiter(map(len, present), dtype=np.int64, count=len(items))
    ends = np.cumsum(lens)
    spans = np.stack([ends - lens, ends], axis=1)
    spans[np.fromiter((v is None for v in items), dtype=np.bool_, count=len(items))] = -1
    return b"".join(present), spans


# A dead letter's record stays under Kafka's default max.message.bytes (1,048,588) with its headers and batch: a
# bigger one could never be written, and the partition would stop at it. Past that it keeps the message's first
# bytes (as JSON text at most 6 bytes each), its size and digest; the reads topic holds the whole message
DLQ_RECORD_MAX_BYTES = 1_000_000
DLQ_VALUE_PREFIX_BYTES = 131_072


@dataclass(slots=True)
class DeadLetter:
    raw: RecordLike
    reason: str
    step: str
    field: str | None
    detail: str

    def to_record(self, cut: bool = False) -> dict[str, Any]:
        """The dead letter's record (schema ``dlq.v1``); ``cut``: with the first ``DLQ_VALUE_PREFIX_BYTES`` of
        the message only, plus its size and SHA-256 (``dlq_value``)."""
        value = self.raw.value or b""
        key = self.raw.key.decode("utf-8", "replace") if self.raw.key is not None else None
        rec: dict[str, Any] = {
            "schema": SCHEMA_DLQ, "reason": self.reason, "detail": self.detail, "step": self.step,
            "topic": self.raw.topic, "partition": self.raw.partition, "offset": self.raw.offset,
            "timestamp": self.raw.timestamp, "key": key, **dlq_value(value, cut),
        }
        if self.field is not None:
            rec["field"] = self.field
        return rec

    def dumps(self) -> bytes:
        """``to_record`` as JSON, cut when whole it would pass ``DLQ_RECORD_MAX_BYTES``."""
        whole = orjson.dumps(self.to_record())
        return whole if len(whole) <= DLQ_RECORD_MAX_BYTES else orjson.dumps(self.to_record(cut=True))


def dlq_value(value: bytes, cut: bool) -> dict[str, Any]:
    """A dead letter's ``value`` fields: the message as text if it is UTF-8, else base64; ``cut``, its first
    ``DLQ_VALUE_PREFIX_BYTES`` only (a character split by the cut left out), with ``value_truncated``,
    ``value_bytes`` and ``value_sha256`` of the whole."""
    part = value[:DLQ_VALUE_PREFIX_BYTES] if cut else value
    try:
        text, enc = part.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as e:
        if cut and e.start >= len(part) - 3 and e.reason == "unexpected end of data":  # (only the cut character)
            text, enc = part[: e.start].decode("utf-8"), "utf-8"
        else:
            text, enc = base64.b64encode(part).decode("ascii"), "base64"
    if not cut:
        return {"value": text, "value_encoding": enc}
    return {"value": text, "value_encoding": enc, "value_truncated": True, "value_bytes": len(value),
            "value_sha256": hashlib.sha256(value).hexdigest()}


class _Column(Sequence[str]):
    """A batch's column of strings kept in a compact form; rows become strings when asked for (``take``)."""

    __slots__ = ()

    def __len__(self) -> int:
        raise NotImplementedError

    def _one(self, row: int) -> str:
        raise NotImplementedError

    def take(self, rows: Sequence[int] | NDArray[np.intp]) -> list[str]:
        """The values of ``rows``."""
        raise NotImplementedError

    @overload
    def __getitem__(self, row: int) -> str: ...
    @overload
    def __getitem__(self, row: slice) -> list[str]: ...
    def __getitem__(self, row: int | slice) -> str | list[str]:
        if isinstance(row, slice):
            return self.take(range(*row.indices(len(self))))
        return self._one(row)

    def tolist(self) -> list[str]:
        return self.take(np.arange(len(self)))

    def __iter__(self) -> Iterator[str]:
        return iter(self.tolist())


class Coded(_Column):
    """A column of strings that repeat (cameras, agencies, regions): each row's code into its distinct values.

    The columnar decode makes one string per distinct value; a list with a reference per row cost ~20 ns a row
    per column, and most rows are only counted or turned into numbers, which the codes do for all at once.
    """

    __slots__ = ("codes", "values")

    def __init__(self, codes: NDArray[np.int32], values: list[str]) -> None:
        self.codes = codes
        self.values = values  # distinct

    @classmethod
    def of(cls, items: Sequence[str]) -> Coded:
        index: dict[str, int] = {}
        codes = np.fromiter((index.setdefault(v, len(index)) for v in items), dtype=np.int32, count=len(items))
        return cls(codes, list(index))

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def _one(self, row: int) -> str:
        return self.values[self.codes[row]]

    def take(self, rows: Sequence[int] | NDArray[np.intp]) -> list[str]:
        return list(map(self.values.__getitem__, self.codes[np.asarray(rows, dtype=np.intp)].tolist()))


class Spans(_Column):
    """A column of strings that do not repeat (read ids), left in the batch's text until asked for: only the
    best read of each sighting is ever needed, and a string per row cost ~95 ns a row."""

    __slots__ = ("starts", "stops", "text")

    def __init__(self, text: str, starts: NDArray[np.int64], stops: NDArray[np.int64]) -> None:
        self.text, self.starts, self.stops = text, starts, stops

    @classmethod
    def of(cls, items: Sequence[str]) -> Spans:
        lens = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
        stops = np.cumsum(lens)
        return cls("".join(items), stops - lens, stops)

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def _one(self, row: int) -> str:
        return self.text[self.starts[row] : self.stops[row]]

    def take(self, rows: Sequence[int] | NDArray[np.intp]) -> list[str]:
        idx = np.asarray(rows, dtype=np.intp)
        t = self.text
        return [t[i:j] for i, j in zip(self.starts[idx].tolist(), self.stops[idx].tolist(), strict=True)]


class Documents(Sequence[dict[str, Any]]):
    """A batch's documents, parsed on access: the columnar decode never builds most of them.

    Rows with unknown fields (and rows the reference path decoded) hold their parsed document; the
    others are parsed from their message when asked for (hotlist alerts, tests). Rows with optional fields
    keep where those are in the batch's bytes: a sighting's extras parse only that text. The spans are one
    array (a dict of them cost ~45 ns a row, and only the best reads' are read).
    """

    __slots__ = ("_loaded", "_optional", "_pos", "_raw", "_value_of")

    def __init__(self, value_of: Callable[[int], bytes | None], pos: list[int], loaded: dict[int, dict[str, Any]],
                 optional: NDArray[np.int64] | None = None, raw: bytes | memoryview = b"") -> None:
        self._value_of = value_of  # a message's value by its index in the poll
        self._pos = pos
        self._loaded = loaded
        # per row, the span of its optional fields in ``raw`` (empty: not adjacent; -1: the row has none)
        self._optional = optional
        self._raw = raw

    @classmethod
    def of(cls, docs: list[dict[str, Any]]) -> Documents:
        return cls(().__getitem__, list(range(len(docs))), dict(enumerate(docs)))

    def __len__(self) -> int:
        return len(self._pos)

    @overload
    def __getitem__(self, row: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, row: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, row: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(len(self)))]
        if row < 0:
            row += len(self)
        if not 0 <= row < len(self):
            raise IndexError(row)
        doc = self._loaded.get(row)
        if doc is None:
            doc = orjson.loads(self._value_of(self._pos[row]))  # type: ignore[arg-type]
        return cast(dict[str, Any], doc)

    def extras_of(self, rows: list[int]) -> list[dict[str, Any] | None]:
        """Optional and unknown fields of each of ``rows`` (None for a row of -1, i.e. not in this batch).

        The rows whose optional fields are adjacent in their message are parsed together, one JSON array of all
        their fields (a parse per row was ~0.7 us a row, about 0.25 us of the worker's time per read)."""
        loaded, optional = self._loaded, self._optional
        out: list[dict[str, Any] | None] = [None if r < 0 else {} for r in rows]
        if rows and optional is not None and len(optional):
            idx = np.asarray(rows, dtype=np.intp)
            spans = optional[idx]  # a row of -1 takes the last row's span: skipped as a row of -1 below
            have = (idx >= 0) & (spans[:, 0] >= 0)
            adjacent = np.flatnonzero(have & (spans[:, 0] < spans[:, 1]))
            if adjacent.shape[0]:
                raw = self._raw
                pieces = [raw[a:b] for a, b in spans[adjacent].tolist()]
                for k, fields in zip(adjacent.tolist(), orjson.loads(b"[{" + b"},{".join(pieces) + b"}]"),
                                     strict=True):
                    out[k] = fields
            for k in np.flatnonzero(have & (spans[:, 0] == spans[:, 1])).tolist():  # not adjacent: the document
                out[k] = extras(self[rows[k]])
        if loaded:
            for k, r in enumerate(rows):
                doc = loaded.get(r) if r >= 0 else None
                if doc is not None and len(doc) > len(REQUIRED):
                    out[k] = extras(doc)
        return out


@dataclass(slots=True)
class ReadBatch:
    """Valid reads of one batch as columns (arrival order), plus the documents for outputs."""

    offset: NDArray[np.int64]
    ts: NDArray[np.int64]
    lat: NDArray[np.float64]
    lon: NDArray[np.float64]
    conf: NDArray[np.float32]
    plates: list[bytes]
    camera: Coded
    docs: Documents
    read_id: Spans
    region: Coded
    agency: Coded
    dead: list[DeadLetter] = field(default_factory=list)
    plate_matrix: NDArray[np.uint8] | None = None  # ``plates`` as ``plates_matrix`` rows, when the scan made them

    def __len__(self) -> int:
        return len(self.docs)


_VEHICLE_KEYS = ("make", "model", "color", "type")


def _vehicle_ok(v: Any) -> bool:
    if type(v) is not dict:
        return False
    return all(type(v[k]) is str and len(v[k]) <= 64 for k in _VEHICLE_KEYS if k in v)


_CORE_GET = operator.itemgetter(*REQUIRED)


@dataclass(slots=True)
class _Columns:
    """The core fields of every document of a batch, column by column (stand-in values in the rows of
    documents that are not objects or lack a core field; those rows are invalid anyway)."""

    read_id: tuple[Any, ...]
    camera: tuple[Any, ...]
    agency: tuple[Any, ...]
    plate: tuple[Any, ...]
    region: tuple[Any, ...]
    ts: NDArray[np.int64]
    lat: NDArray[np.float64]
    lon: NDArray[np.float64]
    conf: NDArray[np.float64]

    def take(self, rows: list[int], idx: NDArray[np.intp]) -> _Columns:
        get = operator.itemgetter(*rows) if rows else None

        def pick(col: tuple[Any, ...]) -> tuple[Any, ...]:
            if get is None:
                return ()
            return get(col) if len(rows) > 1 else (get(col),)

        return _Columns(pick(self.read_id), pick(self.camera), pick(self.agency), pick(self.plate),
                        pick(self.region), self.ts[idx], self.lat[idx], self.lon[idx], self.conf[idx])


def _by_value(col: tuple[Any, ...], check: Any) -> NDArray[np.bool_] | bool:
    """``check`` once per distinct value (cameras, agencies, regions and plates repeat within a batch)."""
    try:
        distinct = set(col)
    except TypeError:  # an unhashable value (list, object): row by row
        return np.fromiter(map(check, col), dtype=np.bool_, count=len(col))
    bad = {v for v in distinct if not check(v)}
    if not bad:
        return True
    # only str values pass ``check`` and no str equals a non-str, so equal-hash collisions cannot hide a bad row
    return np.fromiter((v not in bad for v in col), dtype=np.bool_, count=len(col))


def _id_ok(v: Any) -> bool:
    return type(v) is str and 1 <= len(v) <= 64 and "\n" not in v


def _plate_ok(v: Any) -> bool:
    return type(v) is str and len(v) <= 16 and _PLATE_RAW.fullmatch(v) is not None


def _region_ok(v: Any) -> bool:
    return type(v) is str and len(v) <= 16 and _REGION.fullmatch(v) is not None


_ABSENT = object()
_NO_FIELDS: dict[str, Any] = {}
_STAND_IN_ROW = ("-", "-", "-", "0", "XX-0", 0, 0.0, 0.0, 0.0)  # REQUIRED's order; stands in for unshaped docs


def _optional_ok(d: dict[str, Any]) -> bool:
    h = d.get("heading", 0)
    if not ((type(h) is int or type(h) is float) and 0 <= h <= 360):
        return False
    lane = d.get("lane", 0)
    if not (type(lane) is int and 0 <= lane <= 64):  # lane 5.0 takes the reference path
        return False
    v = d.get("vehicle", _ABSENT)
    if v is not _ABSENT and not _vehicle_ok(v):
        return False
    u = d.get("image_uri", "")
    return type(u) is str and len(u) <= 2048


def _numbers(col: tuple[Any, ...], lo: float, hi: float) -> tuple[NDArray[np.bool_] | bool, NDArray[np.float64]]:
    if set(map(type, col)) <= {float, int}:
        arr = np.array(col, dtype=np.float64)
        return (arr >= lo) & (arr <= hi), arr  # NaN and infinities fail both
    ok = np.fromiter(((type(v) is float or type(v) is int) and lo <= v <= hi for v in col), dtype=np.bool_,
                     count=len(col))
    return ok, np.array([v if good else 0.0 for v, good in zip(col, ok.tolist(), strict=True)], dtype=np.float64)


def _fast_valid(docs: list[Any]) -> tuple[NDArray[np.bool_], _Columns]:
    """Column-at-a-time check of the common case, and the columns; ``True`` rows are valid.

    ``False`` rows are not necessarily invalid: they go through ``validate_read``, which gives the reason
    (tests check that every row this accepts, ``validate_read`` accepts too). One C-level pass extracts
    the core fields, distinct values (cameras, agencies, regions, plates repeat) are checked once, and
    ``decode_batch`` reuses the columns.
    """
    n = len(docs)
    ok = np.ones(n, dtype=np.bool_)
    rows: list[tuple[Any, ...]] = []
    unshaped = False
    while True:  # list.extend keeps what it took before an exception: restart after each unshaped document
        try:
            rows.extend(map(_CORE_GET, itertools.islice(docs, len(rows), None)))
            break
        except (KeyError, TypeError, IndexError):  # not an object, or a core field missing: a stand-in row
            ok[len(rows)] = False
            rows.append(_STAND_IN_ROW)
            unshaped = True
    read_id, camera, agency, plate, region, ts_col, lat_col, lon_col, conf_col = zip(*rows, strict=True)
    if set(map(type, read_id)) == {str}:
        lens = np.fromiter(map(len, read_id), dtype=np.int64, count=n)
        ok &= (lens >= 1) & (lens <= 64)
        if "\n" in "".join(read_id):
            ok &= np.fromiter(("\n" not in v for v in read_id), dtype=np.bool_, count=n)
    else:
        ok &= np.fromiter(map(_id_ok, read_id), dtype=np.bool_, count=n)
    ok &= _by_value(camera, _id_ok)
    ok &= _by_value(agency, _id_ok)
    ok &= _by_value(plate, _plate_ok)
    ok &= _by_value(region, _region_ok)
    if set(map(type, ts_col)) == {int}:
        try:
            ts = np.array(ts_col, dtype=np.int64)
            ok &= (ts >= 0) & (ts <= TS_MAX)
        except OverflowError:
            good = np.fromiter((0 <= v <= TS_MAX for v in ts_col), dtype=np.bool_, count=n)
            ok &= good
            ts = np.array([v if g else 0 for v, g in zip(ts_col, good.tolist(), strict=True)], dtype=np.int64)
    else:
        good = np.fromiter((type(v) is int and 0 <= v <= TS_MAX for v in ts_col), dtype=np.bool_, count=n)
        ok &= good
        ts = np.array([v if g else 0 for v, g in zip(ts_col, good.tolist(), strict=True)], dtype=np.int64)
    lat_ok, lat = _numbers(lat_col, -90.0, 90.0)
    lon_ok, lon = _numbers(lon_col, -180.0, 180.0)
    conf_ok, conf = _numbers(conf_col, 0.0, 1.0)
    ok &= lat_ok
    ok &= lon_ok
    ok &= conf_ok
    shaped = [d if type(d) is dict else _NO_FIELDS for d in docs] if unshaped else docs
    n_fields = np.fromiter(map(len, shaped), dtype=np.int64, count=n)
    for i in np.flatnonzero((n_fields > len(REQUIRED)) & ok).tolist():  # only these can hold optional fields
        if not _optional_ok(docs[i]):
            ok[i] = False
    return ok, _Columns(read_id, camera, agency, plate, region, ts, lat, lon, conf)


def decode_batch(records: Sequence[RecordLike], max_bytes: int, max_ahead_ms: int | None = None,
                 now_ms: int | None = None) -> ReadBatch:
    """Decode and validate ``records``; invalid ones become ``DeadLetter``s, none is dropped.

    Columnar first (``kernels.scan``: the core fields of plain messages straight from the bytes, checked
    and the plates normalized there); every message the scan does not accept goes through the reference
    path (orjson and the validator), which is also the one that names the reason. Tests check both give
    the same batch.

    ``max_ahead_ms``: a read whose capture time is more than this after its message's Kafka timestamp is
    invalid (field ``ts``); a message without a timestamp is not judged. The Kafka timestamp, so that a replay
    decides the same; with ``now_ms`` (this process's clock), the earlier of the two: a producer that stamps
    each message with its read's capture time (event time) would otherwise let a camera clock years ahead pass.
    A replay decides the same wherever the Kafka timestamp was the earlier; a read refused by the clock may pass a
    replay made once its time has come.
    """
    n = len(records)
    if n == 0:
        return _decode_reference(records, max_bytes, max_ahead_ms, now_ms)[0]
    if isinstance(records, Polled) and records.corrupt is not None:
        batch = _decode_reference([], max_bytes)[0]
        batch.dead = [DeadLetter(r, CORRUPT_BATCH, STEP_FETCH, None, records.corrupt.detail) for r in records]
        return batch
    polled = Polled.of("", -1, records)  # (a list's records keep their own topic: the slow rows index ``records``)
    # the values are scanned where they lie in the poll's bytes: a null as an empty value, which the scan leaves
    # to the reference path
    lo, hi = polled.window()
    value_spans = polled.value_spans
    null = value_spans[:, 0] < 0
    starts = np.where(null, 0, value_spans[:, 0] - lo)
    ends = np.where(null, 0, value_spans[:, 1] - lo)
    lens = ends - starts
    raw = memoryview(polled.data)[lo:hi]
    buf = np.frombuffer(raw, dtype=np.uint8)
    value_of = polled.value
    status, spans, ts, nums, plate_matrix = scan_reads(buf, starts, ends)
    lat, lon, conf = nums[:, 0], nums[:, 1], nums[:, 2]
    ok = ((status != SLOW) & (lens <= max_bytes) & (ts >= 0) & (ts <= TS_MAX) & (lat >= -90.0) & (lat <= 90.0)
          & (lon >= -180.0) & (lon <= 180.0) & (conf >= 0.0) & (conf <= 1.0))
    if max_ahead_ms is not None:  # (the reference path names the reason)
        stamps = polled.timestamps if now_ms is None else np.minimum(polled.timestamps, now_ms)  # (-1 stays)
        ok &= ~((stamps >= 0) & (ts > stamps + max_ahead_ms))
    parsed: dict[int, dict[str, Any]] = {}
    for i in np.flatnonzero(ok & (status == EXTRA)).tolist():
        # unknown fields: orjson parses the whole message (and judges the skipped values; the scan checked
        # the optional fields already)
        try:
            doc = orjson.loads(value_of(i))  # type: ignore[arg-type]
        except orjson.JSONDecodeError:
            doc = None
        if type(doc) is dict and _optional_ok(doc):
            parsed[i] = doc
        else:
            ok[i] = False
    rows = np.flatnonzero(ok)
    pos = rows.tolist()
    text = str(raw, "latin-1")  # one character per byte: spans index it directly (scanned strings are ASCII)
    columns: list[Coded] = []
    for k in (1, 2, 4):  # camera, agency, region: one string object per distinct value
        codes, first = intern_spans(buf, spans[rows, 2 * k], spans[rows, 2 * k + 1])
        starts, stops = spans[rows[first], 2 * k].tolist(), spans[rows[first], 2 * k + 1].tolist()
        columns.append(Coded(codes, [text[i:j] for i, j in zip(starts, stops, strict=True)]))
    camera, agency, region = columns
    read_id = Spans(text, spans[rows, 0], spans[rows, 1])
    plate_matrix = plate_matrix[rows]
    loaded = {j: parsed[i] for j, i in enumerate(pos) if i in parsed} if parsed else {}
    optional = spans[rows, 2 * N_STRINGS : 2 * N_STRINGS + 2]
    optional[status[rows] != OPTIONAL] = -1
    offsets = polled.offsets[rows]
    fast = ReadBatch(offset=offsets, ts=ts[rows], lat=lat[rows],
                     lon=lon[rows], conf=conf[rows].astype(np.float32),
                     plates=plate_matrix.view(f"S{MAX_PLATE}").ravel().tolist(), camera=camera,
                     docs=Documents(value_of, pos, loaded, optional, raw), read_id=read_id, region=region,
                     agency=agency, plate_matrix=plate_matrix)
    if rows.shape[0] == n:
        return fast
    slow_rows = np.flatnonzero(~ok)
    slow, slow_kept = _decode_reference([records[i] for i in slow_rows.tolist()], max_bytes, max_ahead_ms, now_ms)
    if not len(slow):  # the usual case: the rest is dead letters
        fast.dead = slow.dead
        return fast
    return _merge(fast, rows, slow, slow_rows[slow_kept], value_of)


def _merge(a: ReadBatch, a_pos: NDArray[np.intp], b: ReadBatch, b_pos: NDArray[np.intp],
           value_of: Callable[[int], bytes | None]) -> ReadBatch:
    """Two batches of one poll's reads as one, rows in input order (``*_pos``: each row's input index)."""
    pos = np.concatenate([a_pos, b_pos])
    order = np.argsort(pos, kind="stable")
    take = order.tolist()
    new_row = np.empty(len(take), dtype=np.int64)
    new_row[order] = np.arange(len(take))
    loaded = {int(new_row[r]): d for r, d in a.docs._loaded.items()}
    loaded.update((int(new_row[len(a) + r]), d) for r, d in b.docs._loaded.items())
    optional = None
    if a.docs._optional is not None:
        optional = np.full((len(take), 2), -1, dtype=np.int64)
        optional[new_row[: len(a)]] = a.docs._optional

    def cat(x: Sequence[Any], y: Sequence[Any]) -> list[Any]:
        both = [*x, *y]
        return [both[i] for i in take]

    def arr(x: NDArray[Any], y: NDArray[Any]) -> NDArray[Any]:
        return np.concatenate([x, y])[order]

    return ReadBatch(
        offset=arr(a.offset, b.offset), ts=arr(a.ts, b.ts), lat=arr(a.lat, b.lat), lon=arr(a.lon, b.lon),
        conf=arr(a.conf, b.conf), plates=cat(a.plates, b.plates), camera=Coded.of(cat(a.camera, b.camera)),
        docs=Documents(value_of, pos[order].tolist(), loaded, optional, a.docs._raw), dead=b.dead,
        read_id=Spans.of(cat(a.read_id, b.read_id)), region=Coded.of(cat(a.region, b.region)),
        agency=Coded.of(cat(a.agency, b.agency)))


def _decode_reference(records: Sequence[RecordLike], max_bytes: int,
                      max_ahead_ms: int | None = None, now_ms: int | None = None) -> tuple[ReadBatch, list[int]]:
    """orjson-decode and validate ``records``: the batch, and each valid row's index in ``records``."""
    loaded: list[Any] = []
    kept: list[int] = []
    dead: list[DeadLetter] = []
    loads = orjson.loads
    for i, r in enumerate(records):
        v = r.value
        if v is None or len(v) > max_bytes:
            size = "null" if v is None else f"{len(v)} bytes"
            dead.append(DeadLetter(r, "too_large" if v else "invalid_json", STEP_DECODE, None,
                                   f"message is {size}; limit {max_bytes}"))
            continue
        try:
            loaded.append(loads(v))
        except orjson.JSONDecodeError as e:
            reason = "invalid_utf8" if "utf-8" in str(e).lower() else "invalid_json"
            dead.append(DeadLetter(r, reason, STEP_DECODE, None, str(e)[:200]))
            continue
        kept.append(i)
    fast, cols = _fast_valid(loaded) if loaded else (np.zeros(0, dtype=np.bool_), None)
    rescued = False
    if not fast.all():
        for j in np.flatnonzero(~fast).tolist():
            try:
                validate_read(loaded[j])
                fast[j] = rescued = True  # the reference validator is the judge
            except Invalid as e:
                dead.append(DeadLetter(records[kept[j]], e.reason, STEP_VALIDATE, e.field, e.detail))
    if max_ahead_ms is not None:
        for j in np.flatnonzero(fast).tolist():
            r = records[kept[j]]
            if r.timestamp is None or r.timestamp < 0:
                continue
            stamp = r.timestamp if now_ms is None else min(r.timestamp, now_ms)
            if int(loaded[j]["ts"]) > stamp + max_ahead_ms:
                fast[j] = False
                dead.append(DeadLetter(r, "invalid_field", STEP_VALIDATE, "ts", ahead_detail(
                    int(loaded[j]["ts"]) - stamp, max_ahead_ms)))
    if dead:
        dead.sort(key=lambda d: d.raw.offset)
    good = fast.tolist()
    docs = [d for d, g in zip(loaded, good, strict=True) if g]
    pos = [i for i, g in zip(kept, good, strict=True) if g]
    offsets = np.array([records[i].offset for i in pos], dtype=np.int64)
    if cols is not None and not rescued:  # the usual batch: reuse the validated columns
        if not fast.all():
            idx = np.flatnonzero(fast)
            cols = cols.take(idx.tolist(), idx)
        norm = {p: p.translate(_NORMALIZE).upper().encode("ascii") for p in set(cols.plate)}
        return ReadBatch(
            offset=offsets, ts=cols.ts, lat=cols.lat, lon=cols.lon,
            conf=cols.conf.astype(np.float32), plates=list(map(norm.__getitem__, cols.plate)),
            camera=Coded.of(cols.camera), docs=Documents.of(docs), dead=dead, read_id=Spans.of(cols.read_id),
            region=Coded.of(cols.region), agency=Coded.of(cols.agency)), pos
    # a value only the reference validator accepts (ts 5.0, lane 3.0): build the columns from the documents
    plates = [d["plate"].translate(_NORMALIZE).upper().encode("ascii") for d in docs]
    return ReadBatch(
        offset=offsets,
        ts=np.array([int(d["ts"]) for d in docs], dtype=np.int64),
        lat=np.array([d["lat"] for d in docs], dtype=np.float64),
        lon=np.array([d["lon"] for d in docs], dtype=np.float64),
        conf=np.array([d["confidence"] for d in docs], dtype=np.float32),
        plates=plates,
        camera=Coded.of([d["camera_id"] for d in docs]),
        docs=Documents.of(docs),
        dead=dead,
        read_id=Spans.of([d["read_id"] for d in docs]),
        region=Coded.of([d["region"] for d in docs]),
        agency=Coded.of([d["agency"] for d in docs]),
    ), pos


def ahead_detail(ahead_ms: int, limit_ms: int) -> str:
    return (f"ts is {ahead_ms / 1000:,.0f} s ahead of the message's Kafka timestamp, or of the worker's clock if "
            f"earlier (at most {limit_ms // 1000:,} s, "
            "PLATESTREAM_MAX_CLOCK_AHEAD_S): the camera's clock is wrong. Kept, it would hold this partition's "
            "dedup watermark in the future and its sighting past retention")


def extras(doc: dict[str, Any]) -> dict[str, Any]:
    """Optional and unknown fields of a read, passed downstream with its sighting."""
    return {k: v for k, v in doc.items() if k not in CORE}
