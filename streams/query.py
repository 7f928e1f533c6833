"""Governed queries: vehicle trail, partial-plate search, area search and historical hotlist hits."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import re
from collections import Counter
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson
import redis
import shapely
from numpy.typing import NDArray

from streams.audit import AuditLog
from streams.directory import entries
from streams.hotlist import Entry, class_regex
from streams.kernels.geohash import geo52_decode, geohash_strings, geohash_text, split_geohashes
from streams.kernels.jsonrows import Template
from streams.kernels.members import distinct_values
from streams.kernels.plates import CONFUSABLE, plate_class
from streams.kernels.rounding import rounded_array
from streams.migrate import current_members
from streams.policy import Context, Policy, PolicyError, Role
from streams.records import Invalid, normalize_plate, validate_read
from streams.retention import NO_CUTOFF, cutoffs, past
from streams.settings import Settings
from streams.sharing import granted_purposes_of
from streams.store import (
    CELL_BUCKET,
    META_KEY,
    MemberVersionError,
    Sighting,
    SourceNames,
    TrailColumns,
    area_member_parts,
    area_range,
    cell_bucket_in,
    cell_key,
    member_sources,
    read_trail_members,
    sighting_hex,
    source_names,
    time_range,
    trail_key,
    unpack_columns,
    vehicle_id,
)


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


T = TypeVar("T")


def _latest(found: Iterable[T], sighting: Callable[[T], Sighting]) -> list[T]:
    """One item per sighting id, the one holding its latest revision: during a key rotation a sighting
    still open in the dedup state is written under the new key while its older revision stays under the
    old one (in the old trail and the area index)."""
    best: dict[int, tuple[T, Sighting]] = {}
    for item in found:
        s = sighting(item)
        cur = best.get(s.sighting_id)
        if cur is None or (s.ts_last, s.reads) > (cur[1].ts_last, cur[1].reads):
            best[s.sighting_id] = (item, s)
    return [item for item, _ in best.values()]


@dataclass(frozen=True, slots=True, eq=False)  # arrays (see TrailColumns)
class Trail:
    """A vehicle's sightings column by column (``trail_columns``), oldest first, as NumPy arrays: what
    ``trail`` returns as rows, without a Python object per sighting (for callers that work on columns, and a
    third of the rows' lookup time)."""

    plate: str
    region: str
    cols: TrailColumns
    lat: NDArray[np.float64]  # rounded to 6 decimals, like the rows
    lon: NDArray[np.float64]
    geohash_text: NDArray[np.uint8]  # ASCII, each geohash followed by a space (``geohash_text``)
    confidence: NDArray[np.float64]  # rounded to 4 decimals

    def __len__(self) -> int:
        return len(self.cols)

    @property
    def geohash(self) -> list[str]:
        """Each sighting's geohash (``Settings.geohash_precision`` characters)."""
        return split_geohashes(self.geohash_text)

    def kept(self, agencies: Container[str], oldest: Mapping[tuple[str, bool], int] | None = None
             ) -> NDArray[np.int64]:
        """Indexes of the sightings of ``agencies``; with ``oldest`` (``retention.cutoffs``), of those their owner
        may still keep: a governed query answers as if the retention sweep had just run, so a sweep that lags, or
        a worker that is not running one, shows nobody what retention has already taken."""
        c = self.cols
        if not len(c):
            return np.empty(0, np.int64)
        ok = np.array([agency in agencies for _, agency in c.sources], dtype=np.bool_)[c.source]
        if oldest:
            cut = np.array([[oldest.get((agency, hit), NO_CUTOFF) for hit in (False, True)] for _, agency in c.sources],
                           dtype=np.int64)
            ok &= c.ts >= cut[c.source, c.hit.astype(np.intp)]
        return np.flatnonzero(ok)

    def columns(self, keep: NDArray[np.int64] | None = None) -> list[list[Any]]:
        """The rows' values column by column, in ``ROW_KEYS`` order; with ``keep``, of those sightings only (a
        governed query converts nothing it would throw away)."""
        c, n = self.cols, len(self.cols)
        geohash, read_id = self.geohash, c.read_id
        if keep is not None:
            at = keep.tolist()
            geohash, read_id, n = list(map(geohash.__getitem__, at)), list(map(read_id.__getitem__, at)), len(at)

        def col(values: NDArray[Any]) -> list[Any]:
            return (values if keep is None else values[keep]).tolist()

        cameras, agencies_of = c.names(keep)
        return [col(c.ts), col(c.ts_last), [self.plate] * n, [self.region] * n, cameras, agencies_of, col(self.lat),
                col(self.lon), geohash, col(c.geo52), col(self.confidence), col(c.reads), read_id,
                sighting_hex(c.sighting_id if keep is None else c.sighting_id[keep]), col(c.hit)]

    def rows(self, agencies: Container[str] | None = None) -> list[dict[str, Any]]:
        """One dict per sighting (``columns``); with ``agencies``, of theirs only."""
        return rows_of(self.columns(None if agencies is None else self.kept(agencies)))


# The keys of a trail's rows, in order: what ``rows_of`` builds and ``ROW_TEMPLATE`` serializes
ROW_KEYS = ("ts", "ts_last", "plate", "region", "camera_id", "agency", "lat", "lon", "geohash", "geo52", "confidence",
            "reads", "read_id", "sighting_id", "hit")
ROW_TEMPLATE = Template(list(ROW_KEYS))


def rows_of(columns: Sequence[list[Any]]) -> list[dict[str, Any]]:
    """Trail rows from their columns (``Trail.columns``)."""
    return [{"ts": ts, "ts_last": ts_last, "plate": plate, "region": region, "camera_id": camera, "agency": agency,
             "lat": la, "lon": lo, "geohash": gh, "geo52": geo, "confidence": conf, "reads": reads, "read_id": rid,
             "sighting_id": sid, "hit": hit}
            for ts, ts_last, plate, region, camera, agency, la, lo, gh, geo, conf, reads, rid, sid, hit
            in zip(*columns, strict=True)]


def trail_columns(client: redis.Redis, settings: Settings, plate: str, region: str, since: int | None = None,
                  until: int | None = None, limit: int | None = None) -> Trail:
    """Sightings of ``plate`` in ``region`` with first capture time in [since, until] (epoch ms), oldest first.

    Reads the trail under every lookup key (the current hash key, and the previous one during a rotation),
    and shows each sighting once, in its latest revision.
    """
    return trails(client, settings, [(region, plate)], since, until, limit)[0]


def trails(client: redis.Redis, settings: Settings, vehicles: Sequence[tuple[str, str]], since: int | None = None,
           until: int | None = None, limit: int | None = None) -> list[Trail]:
    """``trail_columns`` of each (region, plate) of ``vehicles``, read in one round trip: a plate search or a
    hotlist entry's OCR variants look up hundreds of vehicles."""
    norms = [(region, _check_plate(plate, region)) for region, plate in vehicles]
    lo, hi = "-inf" if since is None else since, "+inf" if until is None else until
    per_key = read_trail_members(client, [trail_key(vehicle_id(k, region, norm)) for region, norm in norms
                                          for k in settings.lookup_keys], lo, hi, limit)
    # each distinct source asked for once (one vehicle: its distinct codes, found while decoding)
    names: SourceNames = (source_names(client, member_sources([m for members in per_key for m in members]))
                          if len(norms) > 1 else lambda codes: source_names(client, codes))
    n = len(settings.lookup_keys)
    return [_trail(settings, norm, region, per_key[i * n : (i + 1) * n], names, limit)
            for i, (region, norm) in enumerate(norms)]


def _trail(settings: Settings, norm: str, region: str, per_key: list[list[bytes]], names: SourceNames,
           limit: int | None) -> Trail:
    if len(per_key) == 1:
        cols = _unpack(per_key[0], names)
        if distinct_values(cols.sighting_id)[0].shape[0] != len(cols):  # a batch caught between chunks (store.py)
            cols = TrailColumns.of(_in_order(_latest(cols.sightings(), lambda s: s)))
    else:
        found = [s for members in per_key for s in _unpack(members, names).sightings()]
        cols = TrailColumns.of(_in_order(_latest(found, lambda s: s))[:limit])
    # positions, geohashes and roundings of the whole trail in one call each; no object per sighting
    lat, lon = geo52_decode(cols.geo52)
    return Trail(norm, region, cols, rounded_array(lat, 6), rounded_array(lon, 6),
                 geohash_text(lat, lon, settings.geohash_precision), rounded_array(cols.confidence, 4))


def _unpack(members: list[bytes], names: SourceNames) -> TrailColumns:
    """A trail's members decoded; those of a trail ``platestream store migrate`` has not rewritten yet (layout 5)
    read as it will rewrite them, so lookups work all through an upgrade."""
    try:
        return unpack_columns(members, names)
    except MemberVersionError:
        return unpack_columns(current_members(members), names)


def _unpack_one(member: bytes, names: Mapping[bytes, tuple[str, str]]) -> Sighting:
    """``_unpack`` of one member."""
    try:
        return Sighting.unpack(member, names)
    except MemberVersionError:
        return Sighting.unpack(current_members([member])[0], names)


def _in_order(sightings: list[Sighting]) -> list[Sighting]:
    return sorted(sightings, key=lambda s: (s.ts, s.sighting_id))


def trail(client: redis.Redis, settings: Settings, plate: str, region: str, since: int | None = None,
          until: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """``trail_columns`` as one dict per sighting."""
    return trail_columns(client, settings, plate, region, since, until, limit).rows()


@dataclass(frozen=True, slots=True)
class GovernedResult:
    """Sightings the requester may see, the rules that withheld other agencies' data, the audit record.

    A trail query's sightings are held column by column (``columns``, in ``ROW_KEYS`` order): ``rows`` makes
    their dicts on first use, and ``sightings_json`` (the API's answer) serializes them without any."""

    refused: dict[str, str]
    audit_seq: int
    columns: list[list[Any]] | None = None
    _rows: list[dict[str, Any]] | None = None

    @classmethod
    def of_rows(cls, rows: list[dict[str, Any]], refused: dict[str, str], audit_seq: int) -> GovernedResult:
        return cls(refused, audit_seq, None, rows)

    @property
    def rows(self) -> list[dict[str, Any]]:
        rows = self._rows
        if rows is None:
            assert self.columns is not None
            rows = rows_of(self.columns)
            object.__setattr__(self, "_rows", rows)
        return rows

    def __len__(self) -> int:
        """The number of sightings (without making their rows)."""
        return len(self.rows) if self.columns is None else len(self.columns[0])

    def sightings_json(self) -> bytes:
        """``orjson.dumps(self.rows)``."""
        return orjson.dumps(self.rows) if self.columns is None else ROW_TEMPLATE.dumps_array(self.columns)


def refusals(client: redis.Redis, policy: Policy, ctx: Context, now_ms: int | None = None) -> dict[str, str]:
    """For every agency in the policy, the rule that keeps its data from ``ctx`` (absent = allowed).

    Computed over all agencies, not only those holding sightings of the vehicle, so a refusal never
    reveals that another agency has seen it.
    """
    out = {}
    grants = granted_purposes_of(client, [a for a in policy.agencies if a != ctx.agency.id], ctx.agency.id, now_ms)
    for owner in policy.agencies:
        rule = policy.decide(ctx, owner, grants.get(owner))
        if rule is not None:
            out[owner] = rule
    return out


def _decision(refused: dict[str, str], policy: Policy) -> str:
    return "allowed" if not refused else ("refused" if len(refused) == len(policy.agencies) else "partial")


def _governed(client: redis.Redis, settings: Settings, policy: Policy, ctx: Context, audit: AuditLog,
              action: str, vehicles: list[tuple[str, str]], since: int | None, until: int | None,
              limit: int | None, terms: dict[str, Any]) -> GovernedResult:
    """Trails of (region, plate) ``vehicles``, cut to what ``ctx`` may see, audited before returning."""
    if limit is not None and limit < 1:
        raise QueryError(f"limit must be at least 1, not {limit}")
    now = audit.clock()  # the time the audit record gives the query
    refused = refusals(client, policy, ctx, now)
    allowed = set(policy.agencies).difference(refused)
    oldest = cutoffs(policy, now)
    picks = [(t, t.kept(allowed, oldest)) for t in trails(client, settings, vehicles, since, until)]
    parts = [t.columns(keep) for t, keep in picks]
    columns = (parts[0] if len(parts) == 1
               else [list(itertools.chain.from_iterable(p[j] for p in parts)) for j in range(len(ROW_KEYS))])
    # in (ts, sighting id) order across the vehicles (one trail is in it already unless a flag byte reordered
    # sightings of one millisecond): a stable sort, as of the rows (hex ids sort as the numbers)
    if columns[0]:
        order = np.lexsort((np.concatenate([t.cols.sighting_id[keep] for t, keep in picks]),
                            np.concatenate([t.cols.ts[keep] for t, keep in picks])))
        if (order[1:] < order[:-1]).any():
            columns = [list(map(c.__getitem__, order.tolist())) for c in columns]
    if limit is not None:
        columns = [c[:limit] for c in columns]
    owners = Counter(columns[ROW_KEYS.index("agency")])
    seen = set(zip(columns[ROW_KEYS.index("region")], columns[ROW_KEYS.index("plate")], strict=True))
    record = audit.append(
        action=action, agency=ctx.agency.id, user=ctx.user.id, purpose=ctx.purpose, case=ctx.case,
        terms={"since": since, "until": until, **terms,
               "vehicles_returned": sorted(vehicle_id(settings.hash_key, r, p).hex() for r, p in seen)},
        decision=_decision(refused, policy), rules=sorted(set(refused.values())), result_count=len(columns[0]),
        owners=dict(owners))
    return GovernedResult(refused, int(record["seq"]), columns)


def governed_trail(client: redis.Redis, settings: Settings, policy: Policy, ctx: Context, audit: AuditLog,
                   plate: str, region: str, since: int | None = None, until: int | None = None,
                   limit: int | None = None) -> GovernedResult:
    """``trail`` for a named requester and purpose: policy-filtered and audited before anything returns."""
    norm = _check_plate(plate, region)
    return _governed(client, settings, policy, ctx, audit, "query.trail", [(region, norm)], since, until, limit,
                     trail_terms(settings, norm, region))


def confusable_variants(plate: str, limit: int = 1024) -> list[str]:
    """Every plate an OCR engine could have confused with ``plate`` (O/0, I/1, B/8, S/5, Z/2)."""
    pairs = {**CONFUSABLE, **{v: k for k, v in CONFUSABLE.items()}}
    options = [(c, pairs[c]) if c in pairs else (c,) for c in plate]
    out = ["".join(p) for p in itertools.islice(itertools.product(*options), limit)]
    return out


MIN_PATTERN_CHARS = 3
MAX_PATTERN_PLATES = 500
_PATTERN = re.compile(r"[A-Z0-9*?]{1,16}")
_REGION = re.compile(r"[A-Z]{2}-[A-Z0-9]{1,3}")


def pattern_terms(settings: Settings, pattern: Any, region: Any) -> dict[str, Any]:
    """Audit terms of a plate search (also of a refused one, so any input is accepted): the pattern's
    shape and a keyed digest, never its characters."""
    pattern = str(pattern).upper()
    digest = hmac.new(settings.hash_key, f"pattern|{pattern}".encode(), hashlib.sha256).hexdigest()[:24]
    shape = "".join(c if c in "*?" else "#" for c in pattern[:16])
    return {"pattern_shape": shape, "pattern_digest": digest, "region": str(region)[:16] if region else None}


def matching_plates(client: redis.Redis, settings: Settings, pattern: str,
                    region: str | None) -> list[tuple[str, str]]:
    """(region, plate) of every stored vehicle whose plate matches ``pattern`` by OCR-confusion class.

    ``*`` matches any run of characters, ``?`` one character; ``region`` None matches every region.
    Decrypts the whole plate directory; raises ``pattern_too_broad`` past 500 plates.
    """
    rx = class_regex(pattern)
    found = sorted({(r, p) for _, r, p in entries(client, settings.lookup_keys)
                    if (region is None or r == region) and rx.match(plate_class(p))})
    if len(found) > MAX_PATTERN_PLATES:
        raise QueryError(f"pattern_too_broad: more than {MAX_PATTERN_PLATES} plates match; add characters "
                         "or a region")
    return found


def check_pattern(pattern: Any, region: Any) -> tuple[str, str | None]:
    """Normalized pattern and region of a plate search, or ``QueryError`` saying what is wrong."""
    pat = str(pattern or "").upper().replace(" ", "").replace("-", "")
    if not _PATTERN.fullmatch(pat):
        raise QueryError("pattern must be 1-16 of A-Z, 0-9, * (any run) and ? (one character)")
    if sum(c not in "*?" for c in pat) < MIN_PATTERN_CHARS:
        raise QueryError(f"pattern_too_broad: a pattern needs at least {MIN_PATTERN_CHARS} known characters")
    if region in (None, "", "*"):
        return pat, None
    if not isinstance(region, str) or not _REGION.fullmatch(region):
        raise QueryError("region must look like US-CT (or be omitted for every region)")
    return pat, region


def plate_search(client: redis.Redis, settings: Settings, policy: Policy, ctx: Context, audit: AuditLog,
                 pattern: str, region: str | None = None, since: int | None = None, until: int | None = None,
                 limit: int | None = None) -> GovernedResult:
    """Partial / wildcard plate search (``7AB*``, ``?ABC12?``), OCR-confusion tolerant, over stored history.

    Candidates come from the encrypted plate directory; each is then a governed trail: only sightings the
    requester may see are returned (with the plate), and the query is audited with the pattern's shape
    and digest. A plate whose sightings are all withheld does not appear, so a search never reveals that
    another agency has seen a vehicle.
    """
    terms = pattern_terms(settings, pattern, region)
    try:
        pat, reg = check_pattern(pattern, region)
        plates = matching_plates(client, settings, pat, reg)
    except QueryError as e:  # refused queries are audited too
        rule = "pattern_too_broad" if str(e).startswith("pattern_too_broad") else "invalid_query"
        audit.append(action="query.plate_search", agency=ctx.agency.id, user=ctx.user.id, purpose=ctx.purpose,
                     case=ctx.case, terms=terms, decision="refused", rules=[rule], result_count=0)
        raise
    return _governed(client, settings, policy, ctx, audit, "query.plate_search", plates, since, until, limit, terms)


def historical_hits(client: redis.Redis, settings: Settings, policy: Policy, ctx: Context, audit: AuditLog,
                    entry: Entry, since: int | None = None) -> GovernedResult:
    """Run a (new) hotlist entry against stored history: an audited, policy-filtered query.

    Exact entries with a region look up every OCR variant of the plate directly; wildcard entries and
    entries for every region go through the encrypted plate directory.
    """
    if entry.is_pattern or entry.region == "*":
        pat, reg = check_pattern(entry.plate, entry.region)
        vehicles = matching_plates(client, settings, pat, reg)
        terms = {**pattern_terms(settings, pat, reg), "entry_id": entry.id}
    else:
        _check_plate(entry.plate, entry.region)
        vehicles = [(entry.region, p) for p in confusable_variants(entry.plate)]
        terms = {**trail_terms(settings, entry.plate, entry.region), "entry_id": entry.id}
    return _governed(client, settings, policy, ctx, audit, "hotlist.history", vehicles, since, None, None, terms)


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
# cells x time one area query may cover, in cell-hours: 80,000 keys of quarter-hour buckets, 240,000 of 5-minute
# ones (each an empty-or-small sorted set, pipelined), e.g. a 2 km radius over 10 days (~11,500), whichever
# bucket the Redis holds
MAX_AREA_CELL_HOURS = 20_000


def _haversine_m(lat1: np.ndarray, lon1: np.ndarray, lat2: float, lon2: float) -> np.ndarray:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return np.asarray(2 * EARTH_M * np.arcsin(np.sqrt(np.minimum(a, 1.0))))


def bbox_cells(lat_lo: float, lat_hi: float, lon_lo: float, lon_hi: float, precision: int) -> list[str]:
    """Geohash cells of ``precision`` that cover a latitude/longitude box, cell by cell."""
    bits = 5 * precision
    cell_h, cell_w = 180.0 / 2 ** (bits // 2), 360.0 / 2 ** (bits - bits // 2)
    lat_lo, lat_hi = max(lat_lo, -90.0), min(lat_hi, 90.0)
    lats = np.arange(lat_lo, lat_hi + cell_h, cell_h / 2)
    lons = np.arange(lon_lo, lon_hi + cell_w, cell_w / 2)
    grid_lat, grid_lon = np.meshgrid(np.minimum(lats, lat_hi), np.clip(lons, -180.0, 179.9999999))
    return sorted(set(geohash_strings(grid_lat.ravel(), grid_lon.ravel(), precision)))


def area_cells(lat: float, lon: float, radius_m: float, precision: int) -> list[str]:
    """Geohash cells of ``precision`` that cover the circle (its bounding box)."""
    dlat = np.degrees(radius_m / EARTH_M)
    dlon = dlat / max(np.cos(np.radians(lat)), 1e-6)
    return bbox_cells(lat - dlat, lat + dlat, lon - dlon, lon + dlon, precision)


def _area(client: redis.Redis, settings: Settings, policy: Policy, ctx: Context, audit: AuditLog,
          cells: list[str], since: int, until: int, exact: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
          terms: dict[str, Any]) -> GovernedResult:
    """Sightings indexed in ``cells`` between ``since`` and ``until``, checked against their trail entry,
    the owners' rules and the ``exact`` geometry; audited."""
    # the bucket the entries were written with (else: silently nothing found)
    layout, recorded = client.hmget(META_KEY, ["layout", CELL_BUCKET])
    size = cell_bucket_in(layout, recorded, settings.cell_bucket_ms, settings.cell_bucket_pinned)
    buckets = range(since // size, until // size + 1)
    if len(cells) * len(buckets) * size > MAX_AREA_CELL_HOURS * 3_600_000:
        raise QueryError(f"area_too_large: {len(cells)} cells x {len(buckets)} time buckets of {size // 1000} s "
                         f"(more than {MAX_AREA_CELL_HOURS:,} cell-hours); narrow the search")
    now = audit.clock()  # the time the audit record gives the query
    refused = refusals(client, policy, ctx, now)
    oldest = cutoffs(policy, now)
    with client.pipeline(transaction=False) as pipe:
        keys = [(c, b) for c in cells for b in buckets]
        for c, b in keys:  # members lead with the time into the bucket
            pipe.zrangebylex(cell_key(c, b), *area_range(since, until, b, size))
        found = [(vid, tag, b * size + offset) for (_, b), members in zip(keys, pipe.execute(), strict=True)
                 for offset, vid, tag in (area_member_parts(m, size) for m in members)]
    # look each candidate up in its trail (same first capture time), then keep the exact, permitted ones
    with client.pipeline(transaction=False) as pipe:
        for vid, _, ts in found:
            pipe.zrangebylex(trail_key(vid), *time_range(ts, ts))
        trails = pipe.execute()
    names = source_names(client, member_sources([m for candidates in trails for m in candidates]))
    hits: list[tuple[bytes, Sighting]] = []
    for (vid, tag, _), candidates in zip(found, trails, strict=True):
        for m in candidates:
            sight = _unpack_one(m, names)
            if (sight.sighting_id & 0xFF == tag and sight.agency in policy.agencies
                    and sight.agency not in refused and not past(oldest, sight.agency, sight.hit, sight.ts)):
                hits.append((vid, sight))
    # during a key rotation one sighting can sit under both pseudonyms: keep its latest revision
    rows = [{**sight.as_dict(), "vehicle": vid.hex()} for vid, sight in _latest(hits, lambda h: h[1])]
    rows = exact(rows) if rows else []
    rows.sort(key=lambda r: (r["ts"], r["vehicle"]))
    owners = Counter(r["agency"] for r in rows)
    record = audit.append(action="query.area", agency=ctx.agency.id, user=ctx.user.id, purpose=ctx.purpose,
                          case=ctx.case, terms=terms, decision=_decision(refused, policy),
                          rules=sorted(set(refused.values())), result_count=len(rows), owners=dict(owners))
    return GovernedResult.of_rows(rows, refused, int(record["seq"]))


def area_search(client: redis.Redis, settings: Settings, policy: Policy, ctx: Context, audit: AuditLog,
                lat: float, lon: float, radius_m: float, since: int, until: int) -> GovernedResult:
    """Which vehicles passed within ``radius_m`` of a point between ``since`` and ``until`` (epoch ms).

    Served from the area index; each hit is checked against its stored sighting (exact distance) and its
    owning agency's rules. Vehicles are named by their pseudonym: the plate is not stored, so an area
    search cannot reveal it. Refused (``area_too_large``) past ``MAX_AREA_CELL_HOURS`` cells x hours.
    """
    if not (-90 <= lat <= 90 and -180 <= lon <= 180 and 0 < radius_m <= 50_000 and since <= until):
        raise QueryError("need -90<=lat<=90, -180<=lon<=180, 0<radius<=50000 m and since<=until")

    def within(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        dist = _haversine_m(np.array([r["lat"] for r in rows]), np.array([r["lon"] for r in rows]), lat, lon)
        return [dict(r, distance_m=round(float(x), 1)) for r, x in zip(rows, dist, strict=True) if x <= radius_m]

    return _area(client, settings, policy, ctx, audit, area_cells(lat, lon, radius_m, settings.cell_precision),
                 since, until, within, {"lat": lat, "lon": lon, "radius_m": radius_m, "since": since, "until": until})


def polygon_search(client: redis.Redis, settings: Settings, policy: Policy, ctx: Context, audit: AuditLog,
                   polygon: Sequence[tuple[float, float]], since: int, until: int) -> GovernedResult:
    """``area_search`` for a polygon of (lat, lon) vertices (a street, a block, a neighbourhood): sightings
    inside it or on its edge. The polygon must be simple (no self-intersection), at most 1 degree across."""
    try:
        pts = [(float(la), float(lo)) for la, lo in polygon]
    except (TypeError, ValueError):
        raise QueryError("polygon must be a list of [lat, lon] pairs") from None
    if not 3 <= len(pts) <= 1000 or not all(-90 <= la <= 90 and -180 <= lo <= 180 for la, lo in pts) or since > until:
        raise QueryError("polygon needs 3-1000 [lat, lon] vertices with -90<=lat<=90, -180<=lon<=180; since<=until")
    shape = shapely.Polygon([(lo, la) for la, lo in pts])  # x = lon, y = lat
    if not shape.is_valid or shape.area == 0:
        raise QueryError(f"polygon is not a simple polygon ({shapely.is_valid_reason(shape)})")
    lon_lo, lat_lo, lon_hi, lat_hi = shape.bounds
    if lat_hi - lat_lo > 1 or lon_hi - lon_lo > 1:
        raise QueryError("area_too_large: the polygon spans more than 1 degree; narrow the search")

    def inside(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        mask = shapely.intersects_xy(shape, np.array([r["lon"] for r in rows]), np.array([r["lat"] for r in rows]))
        return [r for r, m in zip(rows, mask.tolist(), strict=True) if m]

    return _area(client, settings, policy, ctx, audit,
                 bbox_cells(lat_lo, lat_hi, lon_lo, lon_hi, settings.cell_precision), since, until, inside,
                 {"polygon": [list(p) for p in pts], "since": since, "until": until})
