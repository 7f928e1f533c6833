"""Retention that is enforced: remove every sighting older than its owning agency's limit.

The sweeper walks the trails (SCAN, so Redis stays responsive), finds sightings whose first capture
time is older than ``now - limit`` of the agency that owns them, and removes them from the trail and
from the area index (and a vehicle whose trail empties from the plate directory) in one script per
trail. It takes the clock as a parameter so tests can move time. The worker runs it on a faust timer
(``PLATESTREAM_RETENTION_INTERVAL_S``); ``platestream retention sweep`` runs it once. Agencies without
a declared limit keep their data; data of agencies the policy does not know is kept and never shown.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import redis

from streams.directory import directory_key
from streams.kernels.geohash import geo52_decode, geohash_str
from streams.policy import Policy
from streams.settings import Settings
from streams.store import CELL_MEMBER, Sighting, cell_key, read_trail

# One trail's expired sightings leave the trail and the area index together; when the trail is empty the
# vehicle's plate directory entry goes too. Atomic, so a worker writing a new sighting of the vehicle at
# the same moment either lands first (the trail is not empty) or after (it writes the entry again).
# KEYS: trail, directory, cell of each pair; ARGV: vehicle, then (trail member, cell member) pairs.
SWEEP_TRAIL = """
local removed = {}
for i = 2, #ARGV, 2 do
  removed[#removed + 1] = redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('ZREM', KEYS[2 + i / 2], ARGV[i + 1])
end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('HDEL', KEYS[2], ARGV[1]) end
return removed
"""


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


def sweep(client: redis.Redis, settings: Settings, policy: Policy, now_ms: int) -> Counter[str]:
    """One pass over every trail; returns how many sightings were removed per agency."""
    limit = cutoffs(policy, now_ms)
    removed: Counter[str] = Counter()
    if not limit:
        return removed
    newest_cutoff = max(limit.values())
    script = client.register_script(SWEEP_TRAIL)
    for key in client.scan_iter(match="ps:t:*", count=1000):
        vid = bytes.fromhex(key.decode().split("{", 1)[1].rstrip("}"))
        expired: list[tuple[bytes, Sighting]] = []
        for s in read_trail(client, key, "-inf", newest_cutoff - 1):
            cut = limit.get((s.agency, s.hit))
            if cut is not None and s.ts < cut:
                expired.append((s.pack(), s))
        if not expired:
            continue
        lat, lon = geo52_decode(np.array([s.geo52 for _, s in expired], dtype=np.uint64))
        cells = geohash_str(lat, lon, settings.cell_precision)
        keys = [key, directory_key(vid)]
        args: list[bytes] = [vid]
        for (member, s), cell in zip(expired, cells, strict=True):
            keys.append(cell_key(cell.tobytes().decode(), s.ts // settings.cell_bucket_ms))
            args += [member, CELL_MEMBER.pack(vid, s.sighting_id)]
        # a sighting the worker revised meanwhile is not removed now (it is still expired next pass)
        for (_, s), gone in zip(expired, script(keys=keys, args=args), strict=True):
            removed[s.agency] += int(gone)
    return removed
