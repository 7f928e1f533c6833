"""Retention that is enforced: remove every sighting older than its owning agency's limit.

The sweeper walks the trails (SCAN, so Redis stays responsive), finds sightings whose first capture
time is older than ``now - limit`` of the agency that owns them, and removes them from the trail and
from the area index, and vehicles whose trail emptied from the plate directory. It takes the clock as a
parameter so tests can move time. The worker runs it on a faust timer
(``PLATESTREAM_RETENTION_INTERVAL_S``); ``platestream retention sweep`` runs it once. Agencies without
a declared limit keep their data; data of agencies the policy does not know is kept and never shown.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import redis

from streams.directory import collect
from streams.kernels.geohash import geo52_decode, geohash_str
from streams.policy import Policy
from streams.settings import Settings
from streams.store import Sighting, area_entry, read_trail, require_layout

NO_CUTOFF = int(np.iinfo(np.int64).min)  # an agency without a limit keeps its sightings


def cutoffs(policy: Policy, now_ms: int) -> dict[tuple[str, bool], int]:
    """(agency, is hotlist hit) -> oldest capture time (ms) it may still keep. An agency without
    ``hit_days`` keeps hits as long as other sightings."""
    out = {}
    for a in policy.agencies.values():
        non_hit = a.retention_ms(hit=False)
        hit = a.retention_ms(hit=True) or non_hit
        if non_hit is not None:
            out[(a.id, False)] = now_ms - non_hit
        if hit is not None:
            out[(a.id, True)] = now_ms - hit
    return out


def _area_entries_only_of(older: list[Sighting], gone: list[bool], vid: bytes,
                          settings: Settings) -> set[tuple[str, bytes]]:
    """The area index entries of the expired sightings (``gone``) that no kept one shares: two sightings of one
    vehicle first seen in one cell at one millisecond share an entry 1 time in 256 (``store.area_entry``),
    and a kept sighting's entry must stay (say two agencies' cameras over one road, with different limits)."""
    same_ms = {s.ts for s, g in zip(older, gone, strict=True) if g}
    rows = [(s, g) for s, g in zip(older, gone, strict=True) if s.ts in same_ms]  # all that may share one
    lat, lon = geo52_decode(np.array([s.geo52 for s, _ in rows], dtype=np.uint64))
    cells = geohash_str(lat, lon, settings.cell_precision)
    entries = [(area_entry(cell.tobytes().decode(), vid, s.sighting_id, s.ts, settings.cell_bucket_ms), g)
               for (s, g), cell in zip(rows, cells, strict=True)]
    return {e for e, g in entries if g} - {e for e, g in entries if not g}


def sweep(client: redis.Redis, settings: Settings, policy: Policy, now_ms: int) -> Counter[str]:
    """One pass over every trail, then over the plate directory; returns sightings removed per agency.

    Only single-key commands, ordered so that an interruption anywhere is repaired by the next pass (and
    so that it works the same on Redis Cluster): a sighting's area index entry goes first, then the
    trail entry, so no index entry outlives its sighting; vehicles whose trail emptied leave the plate
    directory last (``directory.collect``).
    """
    # (a migration rewrites members; this removes them by their bytes in this layout, area entries by their bucket)
    bucket = require_layout(client, settings.cell_bucket_ms, settings.cell_bucket_pinned)
    assert bucket is not None
    settings = settings.with_cell_bucket(bucket)
    limit = cutoffs(policy, now_ms)
    removed: Counter[str] = Counter()
    newest_cutoff = max(limit.values(), default=0)
    for key in client.scan_iter(match="ps:t:*", count=1000) if limit else ():
        vid = bytes.fromhex(key.decode().split("{", 1)[1].rstrip("}"))
        older = read_trail(client, key, "-inf", newest_cutoff - 1)
        expiring = [(cut := limit.get((s.agency, s.hit))) is not None and s.ts < cut for s in older]
        expired = [s for s, g in zip(older, expiring, strict=True) if g]
        if not expired:
            continue
        with client.pipeline(transaction=False) as pipe:
            for entry in _area_entries_only_of(older, expiring, vid, settings):
                pipe.zrem(*entry)
            pipe.execute()
        with client.pipeline(transaction=False) as pipe:
            for s in expired:
                pipe.zrem(key, s.pack())
            # a sighting the worker revised meanwhile is not removed now (it is still expired next pass)
            for s, gone in zip(expired, pipe.execute(), strict=True):
                removed[s.agency] += int(gone)
    collect(client)
    return removed
