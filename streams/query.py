"""Trail lookup: the time-ordered sightings of one vehicle, read from its pseudonymous Redis trail."""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from streams.audit import AuditLog
from streams.hotlist import Entry
from streams.kernels.geohash import geo52_decode, geohash_strings
from streams.kernels.plates import CONFUSABLE
from streams.policy import Context, Policy, PolicyError, Role
from streams.records import Invalid, normalize_plate, validate_read
from streams.settings import Settings
from streams.sharing import granted_purposes
from streams.store import CELL_MEMBER, Sighting, cell_key, read_trail, trail_key, vehicle_id


class QueryError(ValueError):
    """A query argument is invalid (the message says which and why)."""


def _check_plate(plate: str, region: str) -> str:
    probe = {"read_id": "q", "camera_id": "q", "agency": "q", "plate": plate, "region": region, "ts": 0,
             "lat": 0, "lon": 0, "confidence": 1}
    try:
        validate_read(probe)
    except Invalid as e:
        raise QueryError(e.detail) from None
    return normalize_plate(plate)


def trail(client: redis.Redis, settings: Settings, plate: str, region: str, since: int | None = None,
          until: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Sightings of ``plate`` in ``region`` with first capture time in [since, until] (epoch ms), oldest first."""
    norm = _check_plate(plate, region)
    key = trail_key(vehicle_id(settings.hash_key, region, norm))
    found = read_trail(client, key, "-inf" if since is None else since, "+inf" if until is None else until, limit)
    # positions and geohashes of the whole trail in one kernel call each
    lat, lon = geo52_decode(np.fromiter((s.geo52 for s in found), dtype=np.uint64, count=len(found)))
    hashes = geohash_strings(lat, lon, settings.geohash_precision)
    return [{"ts": s.ts, "ts_last": s.ts_last, "plate": norm, "region": region, "camera_id": s.camera_id,
             "agency": s.agency, "lat": round(float(la), 6), "lon": round(float(lo), 6), "geohash": gh,
             "geo52": s.geo52, "confidence": round(s.confidence, 4), "reads": s.reads, "read_id": s.read_id,
             "sighting_id": f"{s.sighting_id:016x}", "hit": s.hit}
            for s, la, lo, gh in zip(found, lat.tolist(), lon.tolist(), hashes, strict=True)]


@dataclass(frozen=True, slots=True)
class GovernedResult:
    """Sightings the requester may see, the rules that withheld other agencies' data, the audit record."""

    rows: list[dict[str, Any]]
    refused: dict[str, str]
    audit_seq: int


def refusals(client: redis.Redis, policy: Policy, ctx: Context, now_ms: int | None = None) -> dict[str, str]:
    """For every agency in the policy, the rule that keeps its data from ``ctx`` (absent = allowed).

    Computed over all agencies, not only those holding sightings of the vehicle, so a refusal never
    reveals that another agency has seen it.
    """
    out = {}
    for owner in policy.agencies:
        grant = None if owner == ctx.agency.id else granted_purposes(client, owner, ctx.agency.id, now_ms)
        rule = policy.decide(ctx, owner, grant)
        if rule is not None:
            out[owner] = rule
    return out


def _governed(client: redis.Redis, settings: Settings, policy: Policy, ctx: Context, audit: AuditLog,
              action: str, plates: list[str], region: str, since: int | None, until: int | None,
              limit: int | None, extra_terms: dict[str, Any]) -> GovernedResult:
    refused = refusals(client, policy, ctx)
    rows = [r for p in plates for r in trail(client, settings, p, region, since, until)
            if r["agency"] in policy.agencies and r["agency"] not in refused]
    rows.sort(key=lambda r: r["ts"])
    if limit is not None:
        rows = rows[:limit]
    owners = Counter(r["agency"] for r in rows)
    decision = "allowed" if not refused else ("refused" if len(refused) == len(policy.agencies) else "partial")
    record = audit.append(
        action=action, agency=ctx.agency.id, user=ctx.user.id, purpose=ctx.purpose, case=ctx.case,
        terms={"vehicles": [vehicle_id(settings.hash_key, region, p).hex() for p in plates], "region": region,
               "since": since, "until": until, **extra_terms},
        decision=decision, rules=sorted(set(refused.values())), result_count=len(rows), owners=dict(owners))
    return GovernedResult(rows, refused, int(record["seq"]))


def governed_trail(client: redis.Redis, settings: Settings, policy: Policy, ctx: Context, audit: AuditLog,
                   plate: str, region: str, since: int | None = None, until: int | None = None,
                   limit: int | None = None) -> GovernedResult:
    """``trail`` for a named requester and purpose: policy-filtered and audited before anything returns."""
    norm = _check_plate(plate, region)
    return _governed(client, settings, policy, ctx, audit, "query.trail", [norm], region, since, until, limit, {})


def confusable_variants(plate: str, limit: int = 1024) -> list[str]:
    """Every plate an OCR engine could have confused with ``plate`` (O/0, I/1, B/8, S/5, Z/2)."""
    pairs = {**CONFUSABLE, **{v: k for k, v in CONFUSABLE.items()}}
    options = [(c, pairs[c]) if c in pairs else (c,) for c in plate]
    out = ["".join(p) for p in itertools.islice(itertools.product(*options), limit)]
    return out


def historical_hits(client: redis.Redis, settings: Settings, policy: Policy, ctx: Context, audit: AuditLog,
                    entry: Entry, since: int | None = None) -> GovernedResult:
    """Run a (new) hotlist entry against stored history: an audited, policy-filtered query.

    Stored trails are keyed by a keyed hash of region + plate, so only exact entries with a region can be
    looked up (every OCR variant of the plate is tried); wildcard entries match new reads only.
    """
    if entry.is_pattern or entry.region == "*":
        raise QueryError("historical hits need an exact plate and a region; wildcard entries match new reads only")
    _check_plate(entry.plate, entry.region)
    return _governed(client, settings, policy, ctx, audit, "hotlist.history", confusable_variants(entry.plate),
                     entry.region, since, None, None, {"entry_id": entry.id})


def checked_context(policy: Policy, audit: AuditLog, token: str | None, purpose: str | None, case: str | None,
                    action: str, terms: dict[str, Any], role: Role = "analyst") -> Context:
    """``policy.context``, with every refusal audited too (unauthenticated attempts included)."""
    try:
        return policy.context(token, purpose, case, role=role)
    except PolicyError as e:
        user = None
        with contextlib.suppress(PolicyError):
            user = policy.authenticate(token)
        audit.append(action=action, agency=user.agency if user else None, user=user.id if user else None,
                     purpose=str(purpose)[:64] if purpose else None, case=str(case)[:128] if case else None,
                     terms=terms, decision="refused", rules=[e.code], result_count=0)
        raise


def trail_terms(settings: Settings, plate: Any, region: Any) -> dict[str, Any]:
    """Audit terms of a trail query: the vehicle's pseudonym when the plate is valid, never the plate."""
    try:
        return {"vehicles": [vehicle_id(settings.hash_key, region, _check_plate(plate, region)).hex()],
                "region": region}
    except (QueryError, TypeError):
        return {"region": str(region)[:16], "invalid_plate": True}


EARTH_M = 6_371_008.8
MAX_AREA_KEYS = 20_000


def _haversine_m(lat1: np.ndarray, lon1: np.ndarray, lat2: float, lon2: float) -> np.ndarray:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return np.asarray(2 * EARTH_M * np.arcsin(np.sqrt(np.minimum(a, 1.0))))


def area_cells(lat: float, lon: float, radius_m: float, precision: int) -> list[str]:
    """Geohash cells of ``precision`` that cover the circle (its bounding box, cell by cell)."""
    dlat = np.degrees(radius_m / EARTH_M)
    dlon = dlat / max(np.cos(np.radians(lat)), 1e-6)
    bits = 5 * precision
    cell_h, cell_w = 180.0 / 2 ** (bits // 2), 360.0 / 2 ** (bits - bits // 2)
    lats = np.arange(max(lat - dlat, -90.0), min(lat + dlat, 90.0) + cell_h, cell_h / 2)
    lons = np.arange(lon - dlon, lon + dlon + cell_w, cell_w / 2)
    grid_lat, grid_lon = np.meshgrid(np.minimum(lats, min(lat + dlat, 90.0)), np.clip(lons, -180.0, 179.9999999))
    return sorted(set(geohash_strings(grid_lat.ravel(), grid_lon.ravel(), precision)))


def area_search(client: redis.Redis, settings: Settings, policy: Policy, ctx: Context, audit: AuditLog,
                lat: float, lon: float, radius_m: float, since: int, until: int) -> GovernedResult:
    """Which vehicles passed within ``radius_m`` of a point between ``since`` and ``until`` (epoch ms).

    Served from the area index; each hit is checked against its stored sighting (exact distance) and its
    owning agency's rules. Vehicles are named by their pseudonym: the plate is not stored, so an area
    search cannot reveal it. Refused (``area_too_large``) when it would touch more than 20,000 index keys.
    """
    if not (-90 <= lat <= 90 and -180 <= lon <= 180 and 0 < radius_m <= 50_000 and since <= until):
        raise QueryError("need -90<=lat<=90, -180<=lon<=180, 0<radius<=50000 m and since<=until")
    terms = {"lat": lat, "lon": lon, "radius_m": radius_m, "since": since, "until": until}
    cells = area_cells(lat, lon, radius_m, settings.cell_precision)
    buckets = range(since // settings.cell_bucket_ms, until // settings.cell_bucket_ms + 1)
    if len(cells) * len(buckets) > MAX_AREA_KEYS:
        raise QueryError(f"area_too_large: {len(cells)} cells x {len(buckets)} time buckets; narrow the search")
    refused = refusals(client, policy, ctx)
    with client.pipeline(transaction=False) as pipe:
        for c in cells:
            for b in buckets:
                pipe.zrangebyscore(cell_key(c, b), since, until, withscores=True)
        found = [hit for rows in pipe.execute() for hit in rows]
    # look each candidate up in its trail (same score), then keep the exact, permitted ones
    with client.pipeline(transaction=False) as pipe:
        for member, score in found:
            vid, _ = CELL_MEMBER.unpack(member)
            pipe.zrangebyscore(trail_key(vid), score, score, withscores=True)
        trails = pipe.execute()
    rows: list[dict[str, Any]] = []
    for (member, _), candidates in zip(found, trails, strict=True):
        vid, sid = CELL_MEMBER.unpack(member)
        for m, sc in candidates:
            s = Sighting.unpack(m, sc)
            if s.sighting_id == sid and s.agency in policy.agencies and s.agency not in refused:
                d = s.as_dict()
                d["vehicle"] = vid.hex()
                rows.append(d)
    if rows:
        dist = _haversine_m(np.array([r["lat"] for r in rows]), np.array([r["lon"] for r in rows]), lat, lon)
        rows = [dict(r, distance_m=round(float(x), 1)) for r, x in zip(rows, dist, strict=True) if x <= radius_m]
    rows.sort(key=lambda r: (r["ts"], r["vehicle"]))
    owners = Counter(r["agency"] for r in rows)
    decision = "allowed" if not refused else ("refused" if len(refused) == len(policy.agencies) else "partial")
    record = audit.append(action="query.area", agency=ctx.agency.id, user=ctx.user.id, purpose=ctx.purpose,
                          case=ctx.case, terms=terms, decision=decision, rules=sorted(set(refused.values())),
                          result_count=len(rows), owners=dict(owners))
    return GovernedResult(rows, refused, int(record["seq"]))
