"""One partition's processing: a decoded batch in; Redis commands, sighting and dead-letter messages out.

``PartitionPipeline.process`` does no I/O, so the same code runs in the worker, in tests and in
benchmarks. Steps (stable names in ``streams.names``): decode -> validate -> normalize -> geohash ->
dedup -> sink.deduped / sink.dlq -> sink.redis.
"""

from __future__ import annotations

import struct
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain, repeat
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from streams import names
from streams.arena import LENGTH, OFFSET, StringArena
from streams.directory import Sealer, shared_sealer
from streams.hotlist import Entry, Matcher
from streams.kernels.dedup import POOL_FIELDS, SNAP_FIELDS, DedupArrays, expired, run_batch
from streams.kernels.geohash import geo52, geo52_decode, geohash_strings
from streams.kernels.jsonrows import Template
from streams.kernels.plates import pack_plates, plates_matrix, unpack_plates
from streams.kernels.recordbatch import BATCH_HEADER, build_records, parse_records
from streams.kernels.resp import resp_commands
from streams.kernels.rounding import rounded
from streams.policy import DAY_MS, Context, Policy, User
from streams.records import (
    NO_MESSAGES,
    Coded,
    DeadLetter,
    Messages,
    Polled,
    Raw,
    ReadBatch,
    RecordLike,
    decode_batch,
)
from streams.retention import NO_CUTOFF, cutoffs, past
from streams.settings import Settings
from streams.sharing import grant_purposes
from streams.store import (
    PENDING,
    PENDING_KEY,
    SOURCES_KEY,
    area_entries,
    cells_index,
    checkpoint_key,
    member_heads,
    pack_commands,
    pack_string,
    pack_string_many,
    pack_strings,
    sighting_hex,
    sighting_ids,
    source_code,
    stats_key,
    trail_key,
    trail_key_hex,
    unpack_strings,
)

Command = tuple[Any, ...]
Decoded = tuple[ReadBatch, int, int]  # PartitionPipeline.decode: batch, next offset, records consumed
_CK_FIELDS = [k for k in POOL_FIELDS if k != "cam"]
_STRUCT_CODE: dict[type, str] = {np.int32: "i", np.uint64: "Q", np.int64: "q", np.float32: "f", np.uint8: "B"}
_CK = struct.Struct("<" + "".join(_STRUCT_CODE[POOL_FIELDS[k]] for k in _CK_FIELDS))
_CK_DTYPE = np.dtype([(k, np.dtype(POOL_FIELDS[k]).newbyteorder("<")) for k in _CK_FIELDS])
assert _CK_DTYPE.itemsize == _CK.size
# the best read's id (in ``PartitionPipeline.read_ids``), region and agency (in ``texts``) of each session
# (16-bit codes: a partition sees a few hundred regions and agencies; past 65,536 they widen, see _set_best)
BEST_FIELDS: dict[str, type] = {"rid_off": OFFSET, "rid_len": LENGTH, "region": np.uint16, "agency": np.uint16}
_SNAP_WRITTEN = SNAP_FIELDS.index("written")
META_OFFSET = b"offset"
META_WATERMARK = b"watermark"


@dataclass(slots=True)
class BatchResult:
    """What one batch of one partition produced; the sinks apply it in order dlq/deduped, redis, commit."""

    redis: list[Command] = field(default_factory=list)
    deduped: Messages = field(default_factory=lambda: NO_MESSAGES)  # retractions, then upserts
    alerts: list[tuple[bytes, bytes]] = field(default_factory=list)
    dlq: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = field(default_factory=list)
    next_offset: int = 0
    consumed: int = 0
    valid: int = 0
    dead: int = 0
    late: int = 0
    sightings_new: int = 0
    sightings_retracted: int = 0
    sightings_expired: int = 0  # sightings not written: past their owner's retention when they arrived
    sightings_withheld: int = 0  # sightings not written: no hotlist hit, of an agency that keeps hits only


def dlq_message(d: DeadLetter) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    headers = [(names.H_REASON, d.reason.encode()), (names.H_STEP, d.step.encode()),
               (names.H_TOPIC, d.raw.topic.encode()), (names.H_PARTITION, str(d.raw.partition).encode()),
               (names.H_OFFSET, str(d.raw.offset).encode())]
    return d.raw.key, d.dumps(), headers


@dataclass(frozen=True)
class HotContext:
    """What the pipeline needs to know about hotlists and the policy for one batch."""

    matcher: Matcher
    allowed: Callable[[str, str], bool]  # (hotlist agency, owning agency) -> may it match?
    hit_only: frozenset[str] = frozenset()  # owning agencies that store hits only
    # (owning agency, is a hit) -> the oldest first capture time it may keep (``retention.cutoffs``) as of when
    # the context was made: a sighting already older is never written
    oldest: Mapping[tuple[str, bool], int] = field(default_factory=dict)


def _date(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")


def reads_per_agency_day(agency: Coded, ts: NDArray[np.int64]) -> Counter[tuple[str, int]]:
    """Reads per (agency, UTC day number). A batch almost always falls within one day: then the agencies' codes
    alone are counted (not pairs with a day each: 1.6 -> 0.4 ms for 8,500 reads; codes, not strings, 0.15)."""
    days = ts // DAY_MS
    if days.shape[0] and days.min() == days.max():
        day = int(days[0])
        counts = np.bincount(agency.codes, minlength=len(agency.values)).tolist()
        return Counter({(a, day): n for a, n in zip(agency.values, counts, strict=True) if n})  # values: distinct
    return Counter(zip(agency.tolist(), days.tolist(), strict=True))


NO_HOTLIST = HotContext(Matcher([], 0), lambda hot_agency, owner: False)


def build_hot_context(policy: Policy, entries: list[Entry], grants: dict[str, dict[str, Any]],
                      now_ms: int) -> HotContext:
    """Which hotlist agency may match which owner's reads: the owner's policy, purpose hotlist_response,
    plus an approved grant when they differ - exactly as if the hotlist's agency had queried."""
    allowed: set[tuple[str, str]] = set()
    for h, agency in policy.agencies.items():
        ctx = Context(User(f"hotlist:{h}", h, frozenset({"analyst"}), ""), agency, "hotlist_response", "hotlist")
        for owner in policy.agencies:
            if policy.decide(ctx, owner, grant_purposes(grants.get(f"{owner}|{h}"), now_ms)) is None:
                allowed.add((h, owner))
    hit_only = frozenset(a.id for a in policy.agencies.values() if a.hit_only)
    return HotContext(Matcher(entries, now_ms), lambda h, o: (h, o) in allowed, hit_only, cutoffs(policy, now_ms))


class PartitionPipeline:
    """Dedup state and output building for one input partition (owned by exactly one worker)."""

    def __init__(self, settings: Settings, topic: str, partition: int) -> None:
        self.s = settings
        self.topic = topic
        self.partition = partition
        self.ck_key = checkpoint_key(settings.group, topic, partition)
        self.state = DedupArrays(extra_fields=BEST_FIELDS)
        self.cam_index: dict[str, int] = {}
        self.cam_names: list[str] = []
        # each session's best read: its id in this arena, its region and agency as indexes into ``texts``
        # (its plate is the pool's best_plate); ~20 bytes per open session instead of ~220 as Python objects
        self.read_ids = StringArena()
        self.text_index: dict[str, int] = {}
        self.texts: list[str] = []  # regions and agencies: a few distinct values
        self.arena_slack = 1 << 16  # bytes of replaced ids tolerated beyond the live ones before compacting
        self._old: dict[int, tuple[str, bytes, str, bytes]] = {}
        self._sources: dict[int, bytes] = {}  # camera index << 32 | agency index -> source code, registered
        self._packed: dict[str, bytes] = {}  # pack_string of cameras, agencies and regions (they repeat)
        self._seal = shared_sealer(settings.hash_key)
        self.next_offset: int | None = None
        self._messages = sighting_template(topic, partition)

    # -- restore -------------------------------------------------------------------------------------
    def restore(self, checkpoint: dict[bytes, bytes]) -> None:
        """Rebuild the dedup state from the Redis checkpoint hash (empty dict = fresh partition)."""
        self.__init__(self.s, self.topic, self.partition)  # type: ignore[misc]
        if META_OFFSET in checkpoint:
            self.next_offset = int(checkpoint[META_OFFSET])
            self.state.watermark = int(checkpoint[META_WATERMARK])
        rows = [v for k, v in checkpoint.items() if k not in (META_OFFSET, META_WATERMARK, PENDING, PENDING_KEY)]
        st = self.state
        st.reserve(len(rows))
        bests: list[tuple[str, str, str]] = []
        cameras = []
        for i, value in enumerate(rows):
            fixed = _CK.unpack_from(value)
            for name, v in zip(_CK_FIELDS, fixed, strict=True):
                st.pool[name][i] = v
            camera, read_id, region, agency = unpack_strings(value, _CK.size, 4)  # then the plate: best_plate
            cameras.append(camera)
            bests.append((read_id, region, agency))
        st.n_used = len(rows)
        st.pool["cam"][: len(rows)] = _indexes(self.cam_index, self.cam_names, cameras)
        if bests:
            self._set_best(np.arange(len(rows)), *zip(*bests, strict=True))
        st.rebuild_table()

    def _cams(self, cameras: Coded) -> np.ndarray:
        return _indexes(self.cam_index, self.cam_names, cameras.values)[cameras.codes]

    def _set_best(self, sessions: np.ndarray, read_ids: Sequence[str], regions: Sequence[str],
                  agencies: Sequence[str]) -> None:
        """Record (read_id, region, agency) as the best read of each of ``sessions``."""
        p = self.state.pool
        p["rid_off"][sessions], p["rid_len"][sessions] = self.read_ids.append(read_ids)
        region_codes = _indexes(self.text_index, self.texts, regions)
        agency_codes = _indexes(self.text_index, self.texts, agencies)
        if len(self.texts) > np.iinfo(p["region"].dtype).max + 1:  # more distinct strings than 16 bits number
            for name in ("region", "agency"):
                p[name] = p[name].astype(np.int32)  # for good: the pool grows and compacts with its dtype
        p["region"][sessions] = region_codes
        p["agency"][sessions] = agency_codes

    def _source_codes(self, sessions: np.ndarray, out: BatchResult) -> np.ndarray:
        """The (camera, agency) source code of each session's best read; a pair this pipeline has not
        registered yet is added to ``SOURCES_KEY`` in this batch (the same atomic write as its members)."""
        p, known = self.state.pool, self._sources
        pair = (p["cam"][sessions].astype(np.int64) << 32) | p["agency"][sessions].astype(np.int64)
        pairs, inverse = np.unique(pair, return_inverse=True)
        if len(known) > 100_000:
            known.clear()
        codes = []
        for key in pairs.tolist():
            code = known.get(key)
            if code is None:
                camera, agency = self.cam_names[key >> 32], self.texts[key & 0xFFFFFFFF]
                code = known[key] = source_code(camera, agency)
                out.redis.append(("HSET", SOURCES_KEY, code, pack_strings(camera, agency)))
            codes.append(code)
        return np.frombuffer(b"".join(codes), dtype="V8")[inverse]

    def best_reads(self, sessions: np.ndarray) -> list[tuple[str, str, str]]:
        p, texts = self.state.pool, self.texts
        return list(zip(self.read_ids.get(p["rid_off"][sessions], p["rid_len"][sessions]),
                        [texts[i] for i in p["region"][sessions].tolist()],
                        [texts[i] for i in p["agency"][sessions].tolist()], strict=True))

    def state_bytes(self) -> int:
        """Memory of this partition's dedup state: the kernel's arrays and the best-read-id arena."""
        return self.state.nbytes + len(self.read_ids)

    def _compact_read_ids(self) -> None:
        """Drop the ids no open session refers to, once they are most of the arena."""
        st = self.state
        p, n = st.pool, st.n_used
        alive = p["alive"][:n].astype(bool)
        lens = p["rid_len"][:n]
        live_bytes = int(lens[alive].sum(dtype=np.int64))
        if len(self.read_ids) <= 2 * live_bytes + self.arena_slack:
            return
        lens[~alive] = 0
        p["rid_off"][:n] = self.read_ids.compact(p["rid_off"][:n], lens)

    # -- process -------------------------------------------------------------------------------------
    def process_raw(self, records: Sequence[RecordLike], hot: HotContext | None = None) -> BatchResult:
        batch, next_offset, consumed = self.decode(records)
        return self.process(batch, next_offset, consumed, hot)

    def decode(self, records: Sequence[RecordLike]) -> Decoded:
        """(batch, next offset, records consumed): the first step, apart so the worker can run it while it
        waits for the broker; the dedup state is untouched."""
        batch = decode_batch(records, self.s.max_message_bytes, self.s.max_clock_ahead_ms, int(time.time() * 1000))
        if not records:
            return batch, self.next_offset or 0, 0
        # (past a damaged record batch read as one record: ``records.Corrupt``)
        return batch, records.next_offset if isinstance(records, Polled) else records[-1].offset + 1, len(records)

    def process(self, batch: ReadBatch, next_offset: int, consumed: int | None = None,
                hot: HotContext | None = None) -> BatchResult:
        out = BatchResult(next_offset=next_offset, consumed=len(batch) + len(batch.dead)
                          if consumed is None else consumed, valid=len(batch), dead=len(batch.dead))
        out.dlq = [dlq_message(d) for d in batch.dead]
        if len(batch):
            self._dedup(batch, out, hot or NO_HOTLIST)
            # reads collected per owning agency and day, for transparency reports; exactly once, because
            # they travel in the same atomic, offset-fenced script as the checkpoint
            for (agency, day), n in reads_per_agency_day(batch.agency, batch.ts).items():
                out.redis.append(("HINCRBY", stats_key(agency), f"reads:{_date(day)}", n))
        self._evict(out)
        out.redis.append(("HSET", self.ck_key, META_OFFSET, str(next_offset),
                          META_WATERMARK, str(self.state.watermark)))
        self.next_offset = next_offset
        return out

    def _dedup(self, batch: ReadBatch, out: BatchResult, hot: HotContext) -> None:
        s = self.s
        st = self.state
        cams = self._cams(batch.camera)
        plate, cls = pack_plates(plates_matrix(batch.plates) if batch.plate_matrix is None else batch.plate_matrix)
        geo = geo52(batch.lat, batch.lon)
        done = run_batch(st, cams, cls, plate, batch.ts, batch.conf, geo, batch.offset, s.dedup_window_ms,
                         s.allowed_lateness_ms)
        session_of, late, touched, snap, snap_conf = done.session_of, done.late, done.touched, done.snap, done.snap_conf
        n_before = st.n_used - st.last_created  # the pool's size when this batch began (after any compaction)
        out.late = int(late.sum())
        p = st.pool
        alive = p["alive"][touched].astype(bool)
        was_written = snap[:, _SNAP_WRITTEN].astype(bool)
        created = touched[touched >= n_before]  # the kernel appends new sessions to the pool
        p["hit"][created] = 0
        p["sid"][created] = sighting_ids(self.topic, self.partition, p["first_seq"][created].tolist())
        out.sightings_new += int(np.count_nonzero(p["alive"][created]))
        hit_before = p["hit"][touched].copy()
        for i in touched[~alive].tolist():  # a merged-away sighting's hit carries over to its survivor
            if p["hit"][i]:
                p["hit"][self.state.survivor(i)] = 1
        if len(hot.matcher):
            self._match(batch, cls, session_of, hot, out)

        # sightings that were written before and are now changed or absorbed: remove their old entries, after
        # the batch's ZADDs (they commute: every entry names its sighting), so a lookup between the chunks of
        # a chunked write (store.plan_batch) sees a revised sighting's old entry or both, never neither
        removals: list[tuple[Any, ...]] = []
        retractions: list[tuple[bytes, bytes]] = []
        area_removals: list[tuple[str, bytes]] = []
        rewritten = np.flatnonzero(was_written)
        olds = self._entries_from_snapshots(touched[rewritten], snap[rewritten], snap_conf[rewritten],
                                            hit_before[rewritten])
        for k, old in zip(rewritten.tolist(), olds, strict=True):
            i = int(touched[k])
            if alive[k]:
                self._old[i] = old  # compared with the new entry below
                continue
            out.sightings_retracted += 1
            sid = int(p["sid"][i])
            removals += [("ZREM", old[0], old[1]), ("HDEL", self.ck_key, struct.pack("<Q", sid))]
            area_removals.append(old[2:4])
            survivor = self.state.survivor(i)
            # the read that merged it away is the survivor's latest: its offset versions the retraction
            retraction = {"schema": names.SCHEMA_SIGHTING, "op": "delete", "sighting_id": f"{sid:016x}",
                          "revision": int(p["last_seq"][survivor]), "merged_into": f"{int(p['sid'][survivor]):016x}"}
            retractions.append((f"{sid:016x}".encode(), orjson.dumps(retraction)))
        # a survivor whose best read now is an absorbed sighting's (from an earlier batch) takes its strings
        for i in touched[~alive].tolist():
            s_ = self.state.survivor(i)
            if st.best_row_of(s_) < 0 and p["best_seq"][s_] == p["best_seq"][i]:
                for name in BEST_FIELDS:
                    p[name][s_] = p[name][i]

        live = touched[alive]
        if not live.shape[0]:
            out.deduped = Messages.of(retractions)
            out.redis.extend(removals)
            out.redis.extend(("ZREM", *entry) for entry in area_removals)
            return
        best_seqs = p["best_seq"][live].tolist()
        best_row = done.best_row[alive]  # the best read's row in this batch, -1 if an earlier batch's
        best_rows = best_row.tolist()
        extra = batch.docs.extras_of(best_rows)
        # (read_id, region, agency): from this batch's reads where the best is one of them, else as recorded
        fresh = best_row >= 0
        rows = best_row[fresh].tolist()
        fresh_bests = (batch.read_id.take(rows), batch.region.take(rows), batch.agency.take(rows))
        self._set_best(live[fresh], *fresh_bests)
        if len(rows) == live.shape[0]:
            bests = list(zip(*fresh_bests, strict=True))
        else:
            earlier = iter(self.best_reads(live[~fresh]))
            now = zip(*fresh_bests, strict=True)
            bests = [next(now) if f else next(earlier) for f in fresh.tolist()]
        plate_texts = unpack_plates(p["best_plate"][live])
        # hit-only agencies: a sighting that matched no hotlist is never stored (its dedup state is kept,
        # so a later frame that hits still merges into it)
        store_it = p["hit"][live].astype(np.bool_)
        if hot.hit_only:
            store_it |= np.fromiter((b[2] not in hot.hit_only for b in bests), dtype=np.bool_, count=len(bests))
            out.sightings_withheld += int(np.count_nonzero(~store_it & (live >= n_before)))  # new ones
        else:
            store_it[:] = True
        if hot.oldest:
            # past its owner's retention already when it arrives (a camera's backlog sent late, a clock far behind):
            # never written, published or kept to be swept - the sweep would remove it at once (its dedup state is
            # kept like a hit-only agency's non-hit, so later frames of the pass merge into it)
            cut = np.fromiter((hot.oldest.get((b[2], h), NO_CUTOFF) for b, h in
                               zip(bests, p["hit"][live].tolist(), strict=True)), dtype=np.int64, count=len(bests))
            young = p["start"][live] >= cut
            out.sightings_expired += int(np.count_nonzero(store_it & ~young & (live >= n_before)))  # new ones
            store_it &= young
        p["written"][live[store_it]] = 1  # before the checkpoint values, which must say so after a restore

        lat, lon = geo52_decode(p["best_geo"][live])
        cell_texts = geohash_strings(lat, lon, s.cell_precision)
        hash_texts = geohash_strings(lat, lon, s.geohash_precision)
        size = _CK_DTYPE.itemsize
        ck = np.empty(live.shape[0], dtype=_CK_DTYPE)
        for name in _CK_FIELDS:
            ck[name] = p[name][live]
        ck_raw = ck.tobytes()
        heads = member_heads(p["sid"][live], p["best_geo"][live], p["start"][live], p["end"][live],
                             p["best_ts"][live], p["count"][live], p["best_conf"][live], p["hit"][live],
                             self._source_codes(live, out))
        sid_raw = p["sid"][live].astype("<u8").tobytes()
        starts, ends, counts, geos, best_tss, last_seqs, cam_ids = (
            p[name][live].tolist() for name in ("start", "end", "count", "best_geo", "best_ts", "last_seq", "cam"))
        hits = p["hit"][live].astype(bool).tolist()
        confs = rounded(p["best_conf"][live], 6)
        lats, lons = rounded(lat, 7), rounded(lon, 7)
        b_reads, b_regions, b_agencies = map(list, zip(*bests, strict=True))
        cameras = list(map(self.cam_names.__getitem__, cam_ids))
        vehicles = self._seal.vehicles(b_regions, plate_texts)
        vids = [v[0] for v in vehicles]
        vhexes = [v.hex() for v in vids]
        trail_keys = list(map(trail_key_hex, vhexes))
        pk_reads = pack_string_many(b_reads)
        packed = self._packed  # distinct cameras, agencies and regions: few, packed once
        if len(packed) > 100_000:  # small, but never unbounded
            packed.clear()
        for text in set(cameras).union(b_regions, b_agencies).difference(packed):
            packed[text] = pack_string(text)
        pk = packed.__getitem__
        # Every per-sighting value is built column by column (C-level map/zip over lists): one interpreter
        # pass per column instead of one pass of a dozen statements per sighting.
        n = live.shape[0]
        ck_records = list(map(b"".join, zip(
            [ck_raw[k : k + size] for k in range(0, n * size, size)], map(pk, cameras), pk_reads,
            map(pk, b_regions), map(pk, b_agencies), pack_string_many(plate_texts), strict=True)))
        ck_fields = list(chain.from_iterable(zip([sid_raw[k : k + 8] for k in range(0, n * 8, 8)], ck_records,
                                                 strict=True)))
        members = list(map(bytes.__add__, heads, pk_reads))
        cell_keys, area_members = area_entries(cell_texts, vids, p["sid"][live], p["start"][live], s.cell_bucket_ms)
        kept: range | list[int] = range(n) if bool(store_it.all()) else np.flatnonzero(store_it).tolist()

        def pick(column: list[Any]) -> list[Any]:
            return column if isinstance(kept, range) else [column[j] for j in kept]

        # a sighting written before whose trail or cell entry changed: the old entry goes (the ZREMs commute
        # with this batch's ZADDs: every entry names its sighting, and an unchanged one is not removed)
        old_entries = self._old
        if old_entries:
            where = dict(zip(live.tolist(), range(n), strict=True))
            for i in list(old_entries):  # in the order of ``live`` (both follow ``touched``)
                row = where.get(i)
                if row is None or not store_it[row]:
                    continue
                prev = old_entries.pop(i)
                if prev[:2] != (trail_keys[row], members[row]):
                    removals.append(("ZREM", prev[0], prev[1]))
                if prev[2:4] != (cell_keys[row], area_members[row]):
                    area_removals.append(prev[2:4])
        out.redis.extend(zip(repeat("ZADD"), pick(trail_keys), repeat(0), pick(members)))  # time leads the member
        # one ZADD per area cell and time bucket (a batch's sightings share few): far fewer commands for
        # Redis to run
        by_cell: dict[str, list[Any]] = {}
        for key, member in zip(pick(cell_keys), pick(area_members), strict=True):
            by_cell.setdefault(key, []).extend((0, member))  # time leads the member
        # the directory: each vehicle once (its id is the keyed hash of region and plate: one value per id)
        directory: dict[str, list[bytes]] = {}
        for vid, key, sealed in dict(zip(pick(vids), pick(vehicles), strict=True)).values():
            directory.setdefault(key, []).extend((vid, sealed))
        hex_sids = pick(sighting_hex(p["sid"][live]))
        # the sighting messages, serialized column by column (``SIGHTING_COLUMNS``: no dict per sighting)
        values, value_ends = self._messages.dumps_joined(
            [hex_sids, pick(last_seqs), pick(vhexes), pick(plate_texts), pick(b_regions), pick(cameras),
             pick(b_agencies), pick(starts), pick(ends), pick(best_tss), pick(lats), pick(lons), pick(hash_texts),
             pick(geos), pick(confs), pick(counts), pick(b_reads), pick(hits), pick(best_seqs)], pick(extra))
        keys = np.frombuffer("".join(hex_sids).encode(), dtype=np.uint8)  # each 16 hex digits
        out.deduped = Messages.concat([Messages.of(retractions), Messages(
            keys, np.arange(16, 16 * len(hex_sids) + 1, 16, dtype=np.int64), values, value_ends)])
        out.redis.extend(("ZADD", key, *entries) for key, entries in by_cell.items())
        # the retention sweep's day index (``store.cells_key``): the cells each day's sightings are in
        out.redis.extend(cells_index(pick((p["start"][live] // DAY_MS).tolist()), pick(cell_texts)))
        out.redis.extend(("HSET", key, *fields) for key, fields in directory.items())
        out.redis.append(("HSET", self.ck_key, *ck_fields))
        out.redis.extend(removals)
        if area_removals:
            # two sightings of one vehicle first seen in one cell at one millisecond share an area entry 1 time
            # in 256 (``store.area_entry``): one that this batch writes stays, whoever's old entry it also was
            added = {(key, member) for key, entries in by_cell.items() for member in entries[1::2]}
            out.redis.extend(("ZREM", *entry) for entry in area_removals if entry not in added)

    def _evict(self, out: BatchResult) -> None:
        st = self.state
        horizon = st.watermark - self.s.allowed_lateness_ms - self.s.dedup_window_ms
        gone = expired(st.pool["end"], st.pool["alive"], st.n_used, horizon)
        if gone.shape[0]:
            raw = st.pool["sid"][gone].astype("<u8").tobytes()
            st.pool["alive"][gone] = 0
            out.redis.append(("HDEL", self.ck_key, *(raw[k : k + 8] for k in range(0, len(raw), 8))))
        st.reclaim()
        self._compact_read_ids()

    def _match(self, batch: ReadBatch, cls: np.ndarray, session_of: np.ndarray, hot: HotContext,
               out: BatchResult) -> None:
        """Hotlist hits of this batch: mark their sightings and send one alert per sighting that turns hit."""
        p = self.state.pool
        docs, agencies = batch.docs, batch.agency
        for row, entry in hot.matcher.match(cls, batch.plates, batch.region,
                                            lambda e, r: hot.allowed(e.agency, agencies[r])):
            s = self.state.survivor(int(session_of[row]))
            if p["hit"][s]:
                continue
            p["hit"][s] = 1
            d = docs[row]
            if past(hot.oldest, d["agency"], True, int(p["start"][s])):
                continue  # past even a hit's retention on arrival: not written (``_dedup``), not alerted
            sid = int(p["sid"][s])
            alert = {"schema": names.SCHEMA_ALERT, "alert_id": f"{sid:016x}-{entry.id}", "sighting_id": f"{sid:016x}",
                     "hotlist_agency": entry.agency, "entry_id": entry.id, "reason": entry.reason,
                     "priority": entry.priority, "pattern": entry.plate, "plate": batch.plates[row].decode(),
                     "region": d["region"], "camera_id": d["camera_id"], "agency": d["agency"], "ts": d["ts"],
                     "lat": d["lat"], "lon": d["lon"], "read_id": d["read_id"],
                     "source": {"topic": self.topic, "partition": self.partition, "offset": int(batch.offset[row])}}
            out.alerts.append((alert["alert_id"].encode(), orjson.dumps(alert)))
            out.redis.append(("HINCRBY", stats_key(d["agency"]), f"hits:{_date(d['ts'] // DAY_MS)}", 1))

    # -- encoding ------------------------------------------------------------------------------------
    def _entries_from_snapshots(self, sessions: np.ndarray, snap: np.ndarray, conf: np.ndarray,
                                hit: np.ndarray) -> list[tuple[str, bytes, str, bytes]]:
        """Trail and cell entries of ``sessions`` as last written, rebuilt from their pre-batch snapshots (rows
        of ``SNAP_FIELDS``) column by column, as the batch's new entries are (one call per sighting took ~32 us,
        5% of the pipeline's time on the simulated day)."""
        if not sessions.shape[0]:
            return []
        s, p = self.s, self.state.pool
        v = {name: np.ascontiguousarray(snap[:, j]) for j, name in enumerate(SNAP_FIELDS)}
        plate, geo = v["best_plate"].view(np.uint64), v["best_geo"].view(np.uint64)  # uint64 values as int64 bits
        read_ids, regions, agencies = map(list, zip(*self.best_reads(sessions), strict=True))
        vids = [v[0] for v in self._seal.vehicles(regions, unpack_plates(plate))]
        lat, lon = geo52_decode(geo)
        cameras = [self.cam_names[c] for c in p["cam"][sessions].tolist()]
        codes = np.frombuffer(b"".join(map(source_code, cameras, agencies)), dtype="V8")
        sids = p["sid"][sessions]
        heads = member_heads(sids, geo, v["start"], v["end"], v["best_ts"], v["count"], conf, hit, codes)
        members = list(map(bytes.__add__, heads, pack_string_many(read_ids)))
        area_keys, area_members = area_entries(geohash_strings(lat, lon, s.cell_precision), vids, sids, v["start"],
                                               s.cell_bucket_ms)
        return list(zip(map(trail_key, vids), members, area_keys, area_members, strict=True))



# An upsert on the deduped topic (``schemas/sighting.v1.json``), key by key: what ``sighting_template`` serializes.
SIGHTING_COLUMNS = ("sighting_id", "revision", "vehicle", "plate", "region", "camera_id", "agency", "ts", "ts_last",
                    "best_ts", "lat", "lon", "geohash", "geo52", "confidence", "reads", "read_id", "hit")


def sighting_template(topic: str, partition: int) -> Template:
    """The upsert messages of one input partition: ``{"schema", "op", *SIGHTING_COLUMNS, "source": {topic,
    partition, offset}, "extra"?}`` - the best read's extra fields where it is in this batch."""
    source = Template([("topic", topic), ("partition", partition), "offset"])
    return Template([("schema", names.SCHEMA_SIGHTING), ("op", "upsert"), *SIGHTING_COLUMNS, ("source", source),
                     "extra?"])


def _indexes(index: dict[str, int], values: list[str], items: Sequence[str]) -> np.ndarray:
    """Strings -> dense indexes into ``values`` (new ones registered first, then one C-level lookup pass)."""
    for item in set(items).difference(index):
        index[item] = len(values)
        values.append(item)
    return np.fromiter(map(index.__getitem__, items), dtype=np.int32, count=len(items))


def warm_up(s: Settings) -> None:
    """Run every kernel of the batch path once, on a throwaway pipeline and a few made-up reads.

    Numba compiles a kernel on its first call (or loads it from its on-disk cache): on a fresh install
    that takes seconds, and inside the first real batch it would block the event loop - heartbeats,
    ``/metrics`` - long enough to look dead. The worker calls this before it joins its consumer group.
    """
    ts = 1_700_000_000_000
    read: dict[str, Any] = {"read_id": "warm-up", "camera_id": "warm-up", "agency": "warm-up", "plate": "WARM 1",
                            "region": "XX-1", "ts": ts, "lat": 0.5, "lon": 0.5, "confidence": 0.5}
    docs = [read, {**read, "ts": ts + 1, "plate": "WARM I", "heading": 1, "vehicle": {"color": "red"}},
            {**read, "ts": ts + 2, "speed": 1}, {**read, "ts": 5.0}]
    pipe = PartitionPipeline(s, "warm-up", 0)
    pipe._seal = Sealer(s.hash_key)  # its made-up vehicle stays out of the worker's cache and counts
    first, _ = (pipe.process_raw([Raw("warm-up", 0, i, None, None, orjson.dumps(docs[i])) for i in batch])
                for batch in ([0, 1], [2, 3]))
    st = pipe.state
    st.compact(st.pool["alive"][: st.n_used])  # as reserve/reclaim do, the same array type (it re-indexes too)
    resp_commands(pack_commands(pipe.process_raw([]).redis))  # the Redis writer thread's transcoder
    # the worker's Kafka ends: its sightings' record batch (``streams.produce``), a poll read in place (``fetch``)
    m = first.deduped
    built = build_records(m.keys, m.key_ends, m.values, m.value_ends, BATCH_HEADER.size)
    polled = np.frombuffer(built.tobytes(), dtype=np.uint8)
    n = len(m)
    parse_records(polled, BATCH_HEADER.size, polled.shape[0], n, 0, ts, -1, np.empty(n, np.int64),
                  np.empty(n, np.int64), np.empty((n, 2), np.int64), np.empty((n, 2), np.int64))
