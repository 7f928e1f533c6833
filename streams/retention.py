"""Retention that is enforced: remove every sighting older than its owning agency's limit.

The sweeper walks the trails (SCAN, so Redis stays responsive; after a complete pass only those the day
index names, ``store.cells_key``), finds sightings whose first capture time is older than ``now - limit``
of the agency that owns them, and removes them from the trail and from the area index, and vehicles whose
trail emptied from the plate directory. It takes the clock as a parameter so tests can move time. The
worker runs it on a faust timer (``PLATESTREAM_RETENTION_INTERVAL_S``); ``platestream retention sweep``
runs it once. Agencies without a declared limit keep their data; data of agencies the policy does not
know is kept and never shown.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

import numpy as np
import orjson
import redis
from numpy.typing import NDArray
from redis.cluster import RedisCluster

from streams.directory import collect
from streams.kernels.geohash import geo52_decode, geohash_strings
from streams.policy import DAY_MS, Policy
from streams.settings import Settings
from streams.store import (
    CELLS_INDEXED,
    META_KEY,
    TrailColumns,
    area_entries,
    area_member_parts,
    area_range,
    cell_key,
    cells_index,
    cells_key,
    read_trail_members,
    require_layout,
    source_names,
    trail_key,
    unpack_columns,
)

log = logging.getLogger(__name__)

NO_CUTOFF = int(np.iinfo(np.int64).min)  # an agency without a limit keeps its sightings


def past(oldest: Mapping[tuple[str, bool], int], agency: str, hit: bool, ts: int) -> bool:
    """Whether a sighting of ``agency`` first captured at ``ts`` is past its limit, given ``cutoffs``."""
    return ts < oldest.get((agency, hit), NO_CUTOFF)


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


def _past_columns(limit: Mapping[tuple[str, bool], int], cols: TrailColumns) -> NDArray[np.bool_]:
    """``past`` of each sighting of ``cols``: the cutoffs looked up per source, not per sighting."""
    agencies = [a for _, a in cols.sources]
    cut = np.array([[limit.get((a, False), NO_CUTOFF), limit.get((a, True), NO_CUTOFF)] for a in agencies],
                   dtype=np.int64).reshape(-1, 2)
    return cast(NDArray[np.bool_], cols.ts < cut[cols.source, cols.hit.astype(np.int64)])


def _area_entries_only_of(cols: TrailColumns, owner: NDArray[np.int64], gone: NDArray[np.bool_],
                          vids: list[bytes], settings: Settings) -> set[tuple[str, bytes]]:
    """The area index entries of the expired sightings (``gone``) that no kept one shares: two sightings of one
    vehicle (``owner``: its row in ``vids``) first seen in one cell at one millisecond share an entry 1 time in
    256 (``store.area_entry``), and a kept sighting's entry must stay (say two agencies' cameras over one road,
    with different limits)."""
    key = (owner.astype(np.int64) << 48) | cols.ts  # capture times are 48-bit
    rows = np.flatnonzero(np.isin(key, key[gone]))  # all that may share one
    lat, lon = geo52_decode(cols.geo52[rows])
    keys, members = area_entries(geohash_strings(lat, lon, settings.cell_precision),
                                 [vids[o] for o in owner[rows].tolist()], cols.sighting_id[rows], cols.ts[rows],
                                 settings.cell_bucket_ms)
    entries = list(zip(keys, members, strict=True))
    flags = gone[rows].tolist()
    return {e for e, g in zip(entries, flags, strict=True) if g} - {e for e, g in zip(entries, flags, strict=True)
                                                                    if not g}


SCAN_PAGE = 1000  # trails read per round trip
# The last complete pass: its time and the limits it applied. The next pass, with the same limits, reads each trail
# only where sightings aged past a limit since then (a window per distinct limit): a pass reading everything below
# the newest cutoff read, every minute, all the history the agencies with longer limits keep. A full pass when the
# limits change, when there is none recorded, or once the last full one is FULL_EVERY_MS old (anything a window
# could miss: a pass interrupted part-way, a sighting rewritten to an earlier first capture time).
SWEPT_KEY = "ps:retention:swept"
FULL_EVERY_MS = 86_400_000


def _limits_digest(durations: dict[tuple[str, bool], int]) -> str:
    return hashlib.sha256(orjson.dumps(sorted((a, h, d) for (a, h), d in durations.items()))).hexdigest()[:32]


def _windows(durations: Iterable[int], since_ms: int, now_ms: int) -> list[tuple[int, int]]:
    """[lo, hi) of first capture times that aged past a limit of ``durations`` between the two times, merged."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted((since_ms - d, now_ms - d) for d in set(durations)):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        elif lo < hi:
            out.append((lo, hi))
    return out


def _index_complete(client: redis.Redis) -> bool:
    """Whether the day index (``store.cells_key``) holds every stored sighting's cell: marked (``CELLS_INDEXED``),
    or nothing marked at all (no worker wrote this Redis before the index existed)."""
    layout, indexed = cast(list[bytes | None], client.hmget(META_KEY, ["layout", CELLS_INDEXED]))
    return indexed is not None or layout is None


def _keys_held(client: redis.Redis) -> int:
    """Keys in Redis: on a cluster, on all its primaries (``DBSIZE`` alone asks one node)."""
    if isinstance(client, RedisCluster):
        return int(client.dbsize(target_nodes=RedisCluster.PRIMARIES))
    return cast(int, client.dbsize())


def _indexed_trails(client: redis.Redis, windows: list[tuple[int, int]], bucket_ms: int) -> list[str] | None:
    """The trails with a sighting first captured in ``windows``: the cells of the windows' days (``cells_key``),
    then those cells' area entries in the windows. None when that takes more probes than Redis holds keys (a
    catch-up over a long gap, where SCAN reads less)."""
    days = sorted({d for lo, hi in windows for d in range(lo // DAY_MS, (hi - 1) // DAY_MS + 1)})
    with client.pipeline(transaction=False) as pipe:
        for d in days:
            pipe.smembers(cells_key(d))
        cells = dict(zip(days, cast(list[set[bytes]], pipe.execute()), strict=True))
    # each window's part in each day: [since, until] (counted before any probe is made: a long gap's would not fit)
    spans = [(d, max(lo, d * DAY_MS), min(hi, (d + 1) * DAY_MS) - 1)
             for lo, hi in windows for d in range(lo // DAY_MS, (hi - 1) // DAY_MS + 1)]
    if sum(len(cells[d]) * (until // bucket_ms - since // bucket_ms + 1) for d, since, until in spans) > \
            _keys_held(client):
        return None
    probes = ((cell_key(c.decode(), b), area_range(since, until, b, bucket_ms))
              for d, since, until in spans for c in sorted(cells[d])
              for b in range(since // bucket_ms, until // bucket_ms + 1))
    vehicles: set[bytes] = set()
    while page := list(itertools.islice(probes, SCAN_PAGE)):
        with client.pipeline(transaction=False) as pipe:
            for key, bounds in page:
                pipe.zrangebylex(key, *bounds)
            for members in cast(list[list[bytes]], pipe.execute()):
                vehicles.update(area_member_parts(m, bucket_ms)[1] for m in members)
    return [trail_key(v) for v in sorted(vehicles)]


def _index(cols: TrailColumns, precision: int) -> list[tuple[Any, ...]]:
    """The day index's ``SADD``s of the sightings of ``cols`` (``store.cells_index``, as a worker writes them)."""
    lat, lon = geo52_decode(cols.geo52)
    return cells_index((cols.ts // DAY_MS).tolist(), geohash_strings(lat, lon, precision))


def _tag(key: bytes | str) -> str:
    """A key's hash tag: the vehicle's hex of a trail key, the day of a day index key."""
    return (key.decode() if isinstance(key, bytes) else key).split("{", 1)[1].rstrip("}")


def _drop_old_days(client: redis.Redis, before_ms: int) -> None:
    """Delete the day index's sets of the days wholly before ``before_ms``: no window reads them again."""
    with client.pipeline(transaction=False) as pipe:
        for key in client.scan_iter(match="ps:cells:*", count=SCAN_PAGE):
            day = int(_tag(key))
            if (day + 1) * DAY_MS <= before_ms:
                pipe.unlink(key)
        pipe.execute()


def sweep(client: redis.Redis, settings: Settings, policy: Policy, now_ms: int, full: bool = False,
          held: Callable[[], bool] | None = None) -> Counter[str]:
    """One pass over the trails, then over the plate directory; returns sightings removed per agency.

    Only single-key commands, ordered so that an interruption anywhere is repaired by the next full pass (and
    so that it works the same on Redis Cluster): a sighting's area index entry goes first, then the
    trail entry, so no index entry outlives its sighting; vehicles whose trail emptied leave the plate
    directory last (``directory.collect``). Trails are read a SCAN page at a time, each page's in one round
    trip, and each page's removals in two (area entries, then trail entries): a round trip per trail took
    12.4 s for 95,000 trails with nothing to remove, in the worker's process every minute. After a complete
    pass with the same limits, only the windows that aged past a limit since are read (``SWEPT_KEY``), in the
    trails the day index leads to (0.06 s instead of 1.8 for those 95,000 trails a minute later);
    ``full``: everything below the newest cutoff, whatever was recorded. ``held``: asked before each page after
    the first; False (another sweeper holds the lease now) ends the pass there, recorded as not complete.
    """
    # (a migration rewrites members; this removes them by their bytes in this layout, area entries by their bucket)
    bucket = require_layout(client, settings.cell_bucket_ms, settings.cell_bucket_pinned)
    assert bucket is not None
    settings = settings.with_cell_bucket(bucket)
    limit = cutoffs(policy, now_ms)
    removed: Counter[str] = Counter()
    durations = {k: now_ms - cut for k, cut in limit.items()}
    digest = _limits_digest(durations)
    last = cast(dict[bytes, bytes], client.hgetall(SWEPT_KEY))
    at, last_full = (int(last[b"at"]), int(last[b"full"])) if b"at" in last and b"full" in last else (None, None)
    incremental = (not full and at is not None and last_full is not None and last.get(b"limits") == digest.encode()
                   and at <= now_ms and now_ms - last_full < FULL_EVERY_MS)
    windows = (_windows(durations.values(), cast(int, at), now_ms) if incremental
               else [(-(2**62), max(limit.values(), default=0))])
    # an incremental pass finds its trails from the day index (``_indexed_trails``) once that is complete; the
    # first full pass over a Redis written before the index reads whole trails and indexes them
    indexed = _index_complete(client)
    found = _indexed_trails(client, windows, settings.cell_bucket_ms) if incremental and indexed and windows else None
    keys: Iterator[bytes | str] = (iter(()) if not (limit and windows) else iter(found) if found is not None
                                   else client.scan_iter(match="ps:t:*", count=SCAN_PAGE))
    if not indexed and not incremental:
        windows = [(-(2**62), 2**62)]  # whole trails (``past`` picks what expired)
    touched: list[bytes] = []
    pages = 0
    while page := [k.decode() if isinstance(k, bytes) else k for k in itertools.islice(keys, SCAN_PAGE)]:
        pages += 1
        if pages > 1 and held is not None and not held():
            log.warning("retention pass stopped after %d pages: its lease is another sweeper's now", pages - 1)
            collect(client, vehicles=touched)
            return removed
        # the page's sightings as columns, each with its trail's row in the page (``owner``)
        per_window = [read_trail_members(client, page, lo, hi - 1) for lo, hi in windows]
        per_trail = [[m for window in per_window for m in window[i]] for i in range(len(page))]
        read = list(itertools.chain.from_iterable(per_trail))
        if not read:
            continue
        cols = unpack_columns(read, lambda codes: source_names(client, codes))
        owner = np.repeat(np.arange(len(page)), [len(f) for f in per_trail])
        index = [] if indexed else _index(cols, settings.cell_precision)
        gone = _past_columns(limit, cols)
        vids = [bytes.fromhex(_tag(key)) for key in page]
        areas = _area_entries_only_of(cols, owner, gone, vids, settings) if gone.any() else set()
        # one ZREM per trail and owner: its reply counts that owner's removals (the members as read: their bytes)
        rows = np.flatnonzero(gone)
        owned: dict[tuple[int, str], list[bytes]] = {}
        for row, trail, agency in zip(rows.tolist(), owner[rows].tolist(), cols.names(rows)[1], strict=True):
            owned.setdefault((trail, agency), []).append(read[row])
        touched.extend(vids[t] for t in dict.fromkeys(owner[rows].tolist()))
        if index:
            with client.pipeline(transaction=False) as pipe:
                for command in index:
                    pipe.execute_command(*command)
                pipe.execute()
        if areas:
            by_cell: dict[str, list[bytes]] = {}
            for cell, member in areas:
                by_cell.setdefault(cell, []).append(member)
            with client.pipeline(transaction=False) as pipe:
                for cell, members in by_cell.items():
                    pipe.zrem(cell, *members)
                pipe.execute()
        if owned:
            with client.pipeline(transaction=False) as pipe:
                for (trail, _), gone_members in owned.items():
                    pipe.zrem(page[trail], *gone_members)
                # a sighting the worker revised meanwhile is not removed now (it is still expired next pass)
                for (_, agency), count in zip(owned, pipe.execute(), strict=True):
                    removed[agency] += int(count)
    collect(client, vehicles=touched if incremental else None)
    if not incremental:
        if not indexed and limit:
            client.hset(META_KEY, CELLS_INDEXED, 1)
        if durations:
            _drop_old_days(client, now_ms - max(durations.values()))
    client.hset(SWEPT_KEY, mapping={"at": now_ms, "limits": digest,
                                    "full": cast(int, last_full) if incremental else now_ms})
    return removed


LEASE_KEY = "ps:retention:lease"


def leased_sweep(client: redis.Redis, settings: Settings, policy: Policy, now_ms: int, holder: str,
                 lease_ms: int) -> Counter[str] | None:
    """``sweep``, by one worker of many per ``lease_ms`` (their sweep interval): the first to take the lease
    sweeps, the others skip (None) - every worker scanning every trail each minute multiplied the cost by the
    workers. A holder that dies lets the lease lapse; one that holds it still renews it."""
    if not client.set(LEASE_KEY, holder, nx=True, px=lease_ms):
        if client.get(LEASE_KEY) != holder.encode():
            return None
        client.pexpire(LEASE_KEY, lease_ms)
    return sweep(client, settings, policy, now_ms, held=renewer(client, holder, lease_ms))


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


def renewer(client: redis.Redis, holder: str, lease_ms: int) -> Callable[[], bool]:
    """Renews ``holder``'s lease for another ``lease_ms`` if it still holds it, and says whether it does: a pass
    longer than the lease (a full one over millions of sightings) keeps it, so no other worker starts the same
    pass beside it."""
    script = client.register_script(_RENEW)
    return lambda: bool(script(keys=[LEASE_KEY], args=[holder, lease_ms]))
