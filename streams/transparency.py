"""Transparency reports: what an agency collected, how it was searched, and who received its data.

Per period (day or month): reads collected by the agency's cameras and hotlist hits (counted by the
worker, exactly once), queries made by the agency's users by purpose and decision, and for every other
agency how many of this agency's sightings it received (from the audit log). Aggregates only: the
report names no vehicle, case or user, so it can be published.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any, cast

import redis

from streams.audit import AuditLog
from streams.store import stats_key


def _period(date: str, by: str) -> str:
    return date[:7] if by == "month" else date


def report(client: redis.Redis, audit: AuditLog, agency: str, by: str = "month") -> dict[str, Any]:
    periods: dict[str, dict[str, Any]] = defaultdict(lambda: {
        "reads_collected": 0, "hotlist_hits": 0, "queries_by_purpose": defaultdict(int),
        "queries_refused": 0, "sightings_received_by_agency": defaultdict(int)})
    for field, value in cast(dict[bytes, bytes], client.hgetall(stats_key(agency))).items():
        kind, date = field.decode().split(":", 1)
        periods[_period(date, by)]["reads_collected" if kind == "reads" else "hotlist_hits"] += int(value)
    for rec in audit.records():
        if not str(rec.get("action", "")).startswith(("query.", "hotlist.history")):
            continue
        date = datetime.fromtimestamp(rec["time"] / 1000, UTC).strftime("%Y-%m-%d")
        p = periods[_period(date, by)]
        if rec.get("agency") == agency:
            p["queries_by_purpose"][str(rec.get("purpose"))] += 1
            p["queries_refused"] += rec.get("decision") == "refused"
        owners = rec.get("owners") or {}
        if agency in owners and rec.get("agency") != agency:
            p["sightings_received_by_agency"][str(rec.get("agency"))] += int(owners[agency])
    return {"agency": agency, "by": by,
            "periods": {k: {**v, "queries_by_purpose": dict(v["queries_by_purpose"]),
                            "sightings_received_by_agency": dict(v["sightings_received_by_agency"])}
                        for k, v in sorted(periods.items())}}


def markdown(rep: dict[str, Any]) -> str:
    lines = [f"# Transparency report: {rep['agency']}", "",
             "| period | reads collected | hotlist hits | queries (by purpose) | refused | sightings received by |",
             "|---|---|---|---|---|---|"]
    for period, p in rep["periods"].items():
        purposes = ", ".join(f"{k}: {v}" for k, v in sorted(p["queries_by_purpose"].items())) or "—"
        received = ", ".join(f"{k}: {v}" for k, v in sorted(p["sightings_received_by_agency"].items())) or "none"
        lines.append(f"| {period} | {p['reads_collected']:,} | {p['hotlist_hits']:,} | {purposes} | "
                     f"{p['queries_refused']} | {received} |")
    return "\n".join(lines) + "\n"
