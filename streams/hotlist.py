"""Hotlists: plates an agency is looking for, matched against every incoming read.

Entries come from CSV or JSON (plate, region, reason, priority, expires); a plate may contain wildcards
(``*`` any run, ``?`` one character), and ``region`` may be ``*``. Matching is OCR-confusion tolerant:
plate and entry are compared by confusion class (O/0, I/1, B/8, S/5, Z/2). Exact entries are matched
for a whole batch at once against the packed class codes; wildcard entries by one multi-line regex scan
per entry over the batch's class strings. A hit on a read owned by another agency is itself sharing, so
the worker only matches it when that agency's policy lets the hotlist's agency see its data for the
purpose ``hotlist_response``.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis
from numpy.typing import NDArray

from streams.kernels.plates import CONFUSABLE, pack_plates, plate_class, plates_matrix

HOTLIST_KEY = "ps:hotlist"  # hash: entry id -> JSON entry
_PATTERN = re.compile(r"[A-Z0-9*?]{1,16}")
_REGION = re.compile(r"\*|[A-Z]{2}-[A-Z0-9]{1,3}")


class HotlistError(ValueError):
    """An entry is malformed; the message names the line or index."""


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    agency: str
    plate: str  # normalized, may contain * and ?
    region: str  # ISO 3166-2 or "*"
    reason: str
    priority: int
    expires: int | None  # epoch ms

    @property
    def is_pattern(self) -> bool:
        return "*" in self.plate or "?" in self.plate

    def active(self, now_ms: int) -> bool:
        return self.expires is None or self.expires > now_ms


def _expires(value: Any) -> int | None:
    if value in (None, ""):
        return None
    if isinstance(value, int | float) or str(value).isdigit():
        return int(value)
    dt = datetime.fromisoformat(str(value))
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000)


def make_entry(agency: str, raw: dict[str, Any], where: str) -> Entry:
    plate = str(raw.get("plate", "")).upper().replace(" ", "").replace("-", "")
    region = str(raw.get("region") or "*").upper()
    if not _PATTERN.fullmatch(plate) or not plate.strip("*?"):
        raise HotlistError(f"{where}: plate {raw.get('plate')!r} must be 1-16 of A-Z, 0-9, * and ?")
    if not _REGION.fullmatch(region):
        raise HotlistError(f"{where}: region {region!r} must look like US-CT or be *")
    try:
        priority = int(raw.get("priority") or 3)
        expires = _expires(raw.get("expires"))
    except ValueError as e:
        raise HotlistError(f"{where}: {e}") from None
    reason = str(raw.get("reason") or "").strip()
    if not reason:
        raise HotlistError(f"{where}: a reason is required")
    eid = hashlib.sha256(f"{agency}|{plate}|{region}".encode()).hexdigest()[:16]
    return Entry(eid, agency, plate, region, reason, priority, expires)


def parse(path: str | Path, agency: str) -> list[Entry]:
    """Entries from a CSV (header: plate,region,reason,priority,expires) or a JSON list of objects."""
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        rows = orjson.loads(text)
        if not isinstance(rows, list):
            raise HotlistError(f"{path}: expected a JSON list of entries")
        return [make_entry(agency, r, f"{path}[{i}]") for i, r in enumerate(rows)]
    return [make_entry(agency, r, f"{path}:{i + 2}") for i, r in enumerate(csv.DictReader(io.StringIO(text)))]


def store(client: redis.Redis, entries: Iterable[Entry]) -> int:
    mapping = {e.id: orjson.dumps(asdict(e)) for e in entries}
    if mapping:
        client.hset(HOTLIST_KEY, mapping=mapping)  # type: ignore[arg-type]
    return len(mapping)


def load_all(client: redis.Redis) -> list[Entry]:
    return [Entry(**orjson.loads(v)) for v in client.hvals(HOTLIST_KEY)]


def class_regex(pattern: str) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(CONFUSABLE.get(c, c)) for c in pattern)
    return re.compile(f"^{body}$", re.MULTILINE)


class Matcher:
    """All active entries, indexed for batch matching. Immutable; rebuild to pick up changes."""

    def __init__(self, entries: Iterable[Entry], now_ms: int) -> None:
        self.entries = [e for e in entries if e.active(now_ms)]
        exact = [e for e in self.entries if not e.is_pattern]
        self.patterns = [(e, class_regex(e.plate)) for e in self.entries if e.is_pattern]
        _, codes = pack_plates(plates_matrix([e.plate.encode() for e in exact])) if exact else (None, None)
        self.by_code: dict[int, list[Entry]] = {}
        for e, c in zip(exact, codes.tolist() if codes is not None else [], strict=True):
            self.by_code.setdefault(c, []).append(e)
        self.codes = np.array(sorted(self.by_code), dtype=np.uint64)

    def __len__(self) -> int:
        return len(self.entries)

    def match(self, cls: NDArray[np.uint64], plates: list[bytes], regions: Sequence[str],
              allowed: Callable[[Entry, int], bool]) -> list[tuple[int, Entry]]:
        """(row, entry) for every read that hits an entry and that ``allowed(entry, row)`` permits."""
        out: list[tuple[int, Entry]] = []
        if self.codes.shape[0]:
            for row in np.flatnonzero(np.isin(cls, self.codes)).tolist():
                for e in self.by_code[int(cls[row])]:
                    if e.region in ("*", regions[row]) and allowed(e, row):
                        out.append((row, e))
        if self.patterns:
            classes = [plate_class(p.decode()) for p in plates]
            text = "\n".join(classes)
            starts = list(np.cumsum([0] + [len(c) + 1 for c in classes[:-1]]))
            for e, rx in self.patterns:
                for m in rx.finditer(text):
                    row = bisect.bisect_right(starts, m.start()) - 1
                    if e.region in ("*", regions[row]) and allowed(e, row):
                        out.append((row, e))
        return out
