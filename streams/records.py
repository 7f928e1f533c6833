"""Decode and validate plate_read v1 messages in batches; bad input becomes data, never an exception.

``validate_read`` is the code form of ``schemas/plate_read.v1.json`` (the tests check they agree on
generated inputs). The hot path never calls a JSON Schema validator: it decodes with orjson and checks
each field with plain comparisons, then ``decode_batch`` turns the valid reads into NumPy columns.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson
from numpy.typing import NDArray

from streams.names import SCHEMA_DLQ, STEP_DECODE, STEP_VALIDATE

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


@dataclass(slots=True)
class DeadLetter:
    raw: RecordLike
    reason: str
    step: str
    field: str | None
    detail: str

    def to_record(self) -> dict[str, Any]:
        value = self.raw.value or b""
        try:
            text, enc = value.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, enc = base64.b64encode(value).decode("ascii"), "base64"
        key = self.raw.key.decode("utf-8", "replace") if self.raw.key is not None else None
        rec: dict[str, Any] = {
            "schema": SCHEMA_DLQ, "reason": self.reason, "detail": self.detail, "step": self.step,
            "topic": self.raw.topic, "partition": self.raw.partition, "offset": self.raw.offset,
            "timestamp": self.raw.timestamp, "key": key, "value": text, "value_encoding": enc,
        }
        if self.field is not None:
            rec["field"] = self.field
        return rec


@dataclass(slots=True)
class ReadBatch:
    """Valid reads of one batch as columns (arrival order), plus the documents for outputs."""

    offset: NDArray[np.int64]
    ts: NDArray[np.int64]
    lat: NDArray[np.float64]
    lon: NDArray[np.float64]
    conf: NDArray[np.float32]
    plates: list[bytes]
    camera: list[str]
    docs: list[dict[str, Any]]
    dead: list[DeadLetter] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.docs)


def _fast_valid(docs: list[Any]) -> NDArray[np.bool_]:
    """Column-at-a-time check of the common case; ``True`` rows are valid (``validate_read`` agrees).

    ``False`` rows are not necessarily invalid: they go through ``validate_read``, which gives the reason.
    Tests check that every row this accepts, ``validate_read`` accepts too.
    """
    n = len(docs)
    ok = np.fromiter((type(d) is dict for d in docs), dtype=np.bool_, count=n)
    if not ok.all():
        docs = [d if type(d) is dict else {} for d in docs]
    for name in ("read_id", "camera_id", "agency"):
        col = [d.get(name) for d in docs]
        if set(map(type, col)) == {str}:
            lens = np.fromiter(map(len, col), dtype=np.int64, count=n)
            ok &= (lens >= 1) & (lens <= 64)
            if "\n" in "".join(col):
                ok &= np.fromiter(("\n" not in v for v in col), dtype=np.bool_, count=n)
        else:
            ok &= np.fromiter((type(v) is str and 1 <= len(v) <= 64 and "\n" not in v for v in col),
                              dtype=np.bool_, count=n)
    for name, pattern, most in (("plate", _PLATE_RAW, 16), ("region", _REGION, 16)):
        col = [d.get(name) for d in docs]
        ok &= np.fromiter((type(v) is str and len(v) <= most and pattern.fullmatch(v) is not None for v in col),
                          dtype=np.bool_, count=n)
    ts = [d.get("ts") for d in docs]
    if set(map(type, ts)) == {int}:
        try:
            arr = np.array(ts, dtype=np.int64)
            ok &= (arr >= 0) & (arr <= TS_MAX)
        except OverflowError:
            ok &= np.fromiter((0 <= v <= TS_MAX for v in ts), dtype=np.bool_, count=n)
    else:
        ok &= np.fromiter((type(v) is int and 0 <= v <= TS_MAX for v in ts), dtype=np.bool_, count=n)
    for name, lo, hi in (("lat", -90.0, 90.0), ("lon", -180.0, 180.0), ("confidence", 0.0, 1.0)):
        col = [d.get(name) for d in docs]
        types = set(map(type, col))
        if types <= {float, int}:
            arr = np.array(col, dtype=np.float64)
            ok &= (arr >= lo) & (arr <= hi)  # NaN and infinities fail both
        else:
            ok &= np.fromiter(((type(v) is float or type(v) is int) and lo <= v <= hi for v in col),
                              dtype=np.bool_, count=n)
    for name, lo, hi in (("heading", 0.0, 360.0), ("lane", 0, 64)):
        col = [d.get(name, 0) for d in docs]  # absent = a valid value
        allowed = (float, int) if name == "heading" else (int,)  # lane 5.0 takes the reference path
        ok &= np.fromiter((type(v) in allowed and lo <= v <= hi for v in col), dtype=np.bool_, count=n)
    ok &= np.fromiter((_vehicle_ok(d.get("vehicle", _NO_VEHICLE)) for d in docs), dtype=np.bool_, count=n)
    ok &= np.fromiter((type(u) is str and len(u) <= 2048 for u in (d.get("image_uri", "") for d in docs)),
                      dtype=np.bool_, count=n)
    return ok


_NO_VEHICLE: dict[str, Any] = {}
_VEHICLE_KEYS = ("make", "model", "color", "type")


def _vehicle_ok(v: Any) -> bool:
    if type(v) is not dict:
        return False
    return all(type(v[k]) is str and len(v[k]) <= 64 for k in _VEHICLE_KEYS if k in v)


def decode_batch(records: Sequence[RecordLike], max_bytes: int) -> ReadBatch:
    """orjson-decode and validate ``records``; invalid ones become ``DeadLetter``s, none is dropped."""
    loaded: list[Any] = []
    kept: list[RecordLike] = []
    dead: list[DeadLetter] = []
    loads = orjson.loads
    for r in records:
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
        kept.append(r)
    fast = _fast_valid(loaded) if loaded else np.zeros(0, dtype=np.bool_)
    if not fast.all():
        for j in np.flatnonzero(~fast).tolist():
            try:
                validate_read(loaded[j])
                fast[j] = True  # the reference validator is the judge
            except Invalid as e:
                dead.append(DeadLetter(kept[j], e.reason, STEP_VALIDATE, e.field, e.detail))
        if dead:
            dead.sort(key=lambda d: d.raw.offset)
        docs = [d for d, good in zip(loaded, fast.tolist(), strict=True) if good]
        offsets = [r.offset for r, good in zip(kept, fast.tolist(), strict=True) if good]
    else:
        docs = loaded
        offsets = [r.offset for r in kept]
    plates = [d["plate"].translate(_NORMALIZE).upper().encode("ascii") for d in docs]
    return ReadBatch(
        offset=np.array(offsets, dtype=np.int64),
        ts=np.array([int(d["ts"]) for d in docs], dtype=np.int64),
        lat=np.array([d["lat"] for d in docs], dtype=np.float64),
        lon=np.array([d["lon"] for d in docs], dtype=np.float64),
        conf=np.array([d["confidence"] for d in docs], dtype=np.float32),
        plates=plates,
        camera=[d["camera_id"] for d in docs],
        docs=docs,
        dead=dead,
    )


def extras(doc: dict[str, Any]) -> dict[str, Any]:
    """Optional and unknown fields of a read, passed downstream with its sighting."""
    return {k: v for k, v in doc.items() if k not in CORE}
