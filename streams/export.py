"""Export of governed query results as JSON lines or CSV, shared by the CLI and the HTTP API.

CSV has one fixed header for every query kind (columns a kind does not have are left empty), so
exports of trails, plate searches and area searches can be concatenated and loaded into one table.
"""

from __future__ import annotations

import csv
import io
from typing import Any, TextIO

import orjson

COLUMNS = ("ts", "ts_last", "plate", "region", "vehicle", "camera_id", "agency", "lat", "lon", "geohash",
           "distance_m", "confidence", "reads", "read_id", "sighting_id", "hit")
FORMATS = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


def write_rows(rows: list[dict[str, Any]], fmt: str, out: TextIO) -> None:
    """Rows as JSON lines (``jsonl``, also ``json``) or CSV with the fixed header."""
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        for r in rows:
            out.write(orjson.dumps(r).decode() + "\n")
    out.flush()


def render(rows: list[dict[str, Any]], fmt: str) -> tuple[str, str]:
    """(body, content type) of an export in ``fmt`` (one of ``FORMATS``)."""
    buf = io.StringIO()
    write_rows(rows, fmt, buf)
    return buf.getvalue(), FORMATS[fmt]
