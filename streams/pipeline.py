"""One partition's processing: a decoded batch in; Redis commands, sighting and dead-letter messages out.

``PartitionPipeline.process`` does no I/O, so the same code runs in the worker, in tests and in
benchmarks. Steps (stable names in ``streams.names``): decode -> validate -> normalize -> geohash ->
dedup -> sink.deduped / sink.dlq -> sink.redis.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from streams import names
from streams.kernels.dedup import POOL_FIELDS, DedupArrays, expired, run_batch
from streams.kernels.geohash import geo52, geo52_decode, geohash_strings
from streams.kernels.plates import pack_plates, plates_matrix, unpack_plate
from streams.records import DeadLetter, Raw, ReadBatch, decode_batch, extras
from streams.settings import Settings
from streams.store import (
    CELL_MEMBER,
    Sighting,
    cell_key,
    checkpoint_key,
    sighting_id,
    trail_key,
    vehicle_id,
)

Command = tuple[Any, ...]
_CK_FIELDS = [k for k in POOL_FIELDS if k != "cam"]
_STRUCT_CODE: dict[type, str] = {np.int32: "i", np.uint64: "Q", np.int64: "q", np.float32: "f", np.uint8: "B"}
_CK = struct.Struct("<" + "".join(_STRUCT_CODE[POOL_FIELDS[k]] for k in _CK_FIELDS))
META_OFFSET = b"offset"
META_WATERMARK = b"watermark"


@dataclass(slots=True)
class BatchResult:
    """What one batch of one partition produced; the sinks apply it in order dlq/deduped, redis, commit."""

    redis: list[Command] = field(default_factory=list)
    deduped: list[tuple[bytes, bytes]] = field(default_factory=list)
    dlq: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = field(default_factory=list)
    next_offset: int = 0
    consumed: int = 0
    valid: int = 0
    dead: int = 0
    late: int = 0
    sightings_new: int = 0
    sightings_retracted: int = 0


def dlq_message(d: DeadLetter) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    headers = [(names.H_REASON, d.reason.encode()), (names.H_STEP, d.step.encode()),
               (names.H_TOPIC, d.raw.topic.encode()), (names.H_PARTITION, str(d.raw.partition).encode()),
               (names.H_OFFSET, str(d.raw.offset).encode())]
    return d.raw.key, orjson.dumps(d.to_record()), headers


class PartitionPipeline:
    """Dedup state and output building for one input partition (owned by exactly one worker)."""

    def __init__(self, settings: Settings, topic: str, partition: int) -> None:
        self.s = settings
        self.topic = topic
        self.partition = partition
        self.ck_key = checkpoint_key(settings.group, topic, partition)
        self.state = DedupArrays()
        self.cam_index: dict[str, int] = {}
        self.cam_names: list[str] = []
        # best read's (read_id, region, agency), by its offset; one entry per live session
        self.best: dict[int, tuple[str, str, str]] = {}
        self.next_offset: int | None = None

    # -- restore -------------------------------------------------------------------------------------
    def restore(self, checkpoint: dict[bytes, bytes]) -> None:
        """Rebuild the dedup state from the Redis checkpoint hash (empty dict = fresh partition)."""
        self.__init__(self.s, self.topic, self.partition)  # type: ignore[misc]
        if META_OFFSET in checkpoint:
            self.next_offset = int(checkpoint[META_OFFSET])
            self.state.watermark = int(checkpoint[META_WATERMARK])
        rows = [v for k, v in checkpoint.items() if k not in (META_OFFSET, META_WATERMARK)]
        st = self.state
        st.reserve(len(rows))
        for i, value in enumerate(rows):
            fixed = _CK.unpack_from(value)
            for name, v in zip(_CK_FIELDS, fixed, strict=True):
                st.pool[name][i] = v
            pos = _CK.size
            strings = []
            for _ in range(4):
                n = value[pos]
                strings.append(value[pos + 1 : pos + 1 + n].decode())
                pos += 1 + n
            camera, read_id, region, agency = strings
            st.pool["cam"][i] = self._cam(camera)
            self.best[int(st.pool["best_seq"][i])] = (read_id, region, agency)
        st.n_used = len(rows)
        st.rebuild_table()

    def _cam(self, camera: str) -> int:
        idx = self.cam_index.get(camera)
        if idx is None:
            idx = self.cam_index[camera] = len(self.cam_names)
            self.cam_names.append(camera)
        return idx

    # -- process -------------------------------------------------------------------------------------
    def process_raw(self, records: list[Raw]) -> BatchResult:
        batch = decode_batch(records, self.s.max_message_bytes)
        return self.process(batch, records[-1].offset + 1 if records else (self.next_offset or 0),
                            consumed=len(records))

    def process(self, batch: ReadBatch, next_offset: int, consumed: int | None = None) -> BatchResult:
        out = BatchResult(next_offset=next_offset, consumed=len(batch) + len(batch.dead)
                          if consumed is None else consumed, valid=len(batch), dead=len(batch.dead))
        out.dlq = [dlq_message(d) for d in batch.dead]
        if len(batch):
            self._dedup(batch, out)
        self._evict(out)
        out.redis.append(("HSET", self.ck_key, META_OFFSET, str(next_offset),
                          META_WATERMARK, str(self.state.watermark)))
        self.next_offset = next_offset
        return out

    def _dedup(self, batch: ReadBatch, out: BatchResult) -> None:
        s = self.s
        st = self.state
        cams = np.fromiter((self._cam(c) for c in batch.camera), dtype=np.int32, count=len(batch))
        plate, cls = pack_plates(plates_matrix(batch.plates))
        geo = geo52(batch.lat, batch.lon)
        _, late, touched, snap, snap_conf = run_batch(st, cams, cls, plate, batch.ts, batch.conf, geo, batch.offset,
                                           s.dedup_window_ms, s.allowed_lateness_ms)
        out.late = int(late.sum())
        p = st.pool
        old_best: list[int] = []
        for k in range(touched.shape[0]):
            i = int(touched[k])
            was_written = bool(snap[k, 6])
            old = self._entry_from_snapshot(i, snap[k], float(snap_conf[k])) if was_written else None
            if was_written:
                old_best.append(int(snap[k, 5]))
            if p["alive"][i]:
                row = int(st.best_row[i])
                doc = batch.docs[row] if row >= 0 else None
                if doc is not None:
                    self.best[int(p["best_seq"][i])] = (doc["read_id"], doc["region"], doc["agency"])
                new = self._entry(i)
                if old is not None and old[:2] != new[:2]:
                    out.redis.append(("ZREM", old[0], old[1]))
                if old is not None and old[2:] != new[2:]:
                    out.redis.append(("ZREM", old[2], old[3]))
                sight: Sighting = new[4]
                p["rev"][i] += 1
                p["written"][i] = 1  # before the checkpoint value, which must say so after a restore
                out.redis.append(("ZADD", new[0], sight.ts, new[1]))
                out.redis.append(("ZADD", new[2], sight.ts, new[3]))
                out.redis.append(("HSET", self.ck_key, struct.pack("<Q", sight.sighting_id),
                                  self._checkpoint_value(i)))
                if not was_written:
                    out.sightings_new += 1
                out.deduped.append(self._upsert(i, sight, doc))
            else:
                if old is None:
                    continue  # created and absorbed within this batch: never written
                out.sightings_retracted += 1
                out.redis.append(("ZREM", old[0], old[1]))
                out.redis.append(("ZREM", old[2], old[3]))
                out.redis.append(("HDEL", self.ck_key, struct.pack("<Q", old[4].sighting_id)))
                survivor = i
                while not p["alive"][survivor]:
                    survivor = int(st.merged_into[survivor])
                into = self._sid(survivor)
                msg = {"schema": names.SCHEMA_SIGHTING, "op": "delete", "sighting_id": f"{old[4].sighting_id:016x}",
                       "revision": int(snap[k, 7]) + 1, "merged_into": f"{into:016x}"}
                out.deduped.append((f"{old[4].sighting_id:016x}".encode(), orjson.dumps(msg)))
        live = {int(p["best_seq"][int(i)]) for i in touched if p["alive"][int(i)]}
        for seq in old_best:
            if seq not in live:
                self.best.pop(seq, None)

    def _evict(self, out: BatchResult) -> None:
        st = self.state
        horizon = st.watermark - self.s.allowed_lateness_ms - self.s.dedup_window_ms
        gone = expired(st.pool["end"], st.pool["alive"], st.n_used, horizon)
        if gone.shape[0]:
            fields = []
            for i in gone:
                fields.append(struct.pack("<Q", self._sid(int(i))))
                self.best.pop(int(st.pool["best_seq"][int(i)]), None)
                st.pool["alive"][int(i)] = 0
            out.redis.append(("HDEL", self.ck_key, *fields))
        dead = st.n_used - int(st.pool["alive"][: st.n_used].sum())
        if dead > 1024 and dead * 4 > st.n_used:
            st.compact(st.pool["alive"][: st.n_used].astype(bool))

    # -- encoding ------------------------------------------------------------------------------------
    def _sid(self, i: int) -> int:
        return sighting_id(self.topic, self.partition, int(self.state.pool["first_seq"][i]))

    def _sighting(self, i: int, start: int, end: int, count: int, best_seq: int, best_geo: int,
                  best_ts: int, conf: float) -> tuple[Sighting, str, str]:
        read_id, region, agency = self.best[best_seq]
        sight = Sighting(self._sid(i), start, end, best_ts, best_geo, count, conf,
                         self.cam_names[int(self.state.pool["cam"][i])], agency, read_id)
        return sight, region, agency

    def _place(self, sight: Sighting, region: str, plate_code: int) -> tuple[str, bytes, str, bytes, Sighting]:
        plate = unpack_plate(plate_code)
        vid = vehicle_id(self.s.hash_key, region, plate)
        lat, lon = geo52_decode(np.array([sight.geo52], dtype=np.uint64))
        cell = geohash_strings(lat, lon, self.s.cell_precision)[0]
        ckey = cell_key(cell, sight.ts // self.s.cell_bucket_ms)
        return trail_key(vid), sight.pack(), ckey, CELL_MEMBER.pack(vid, sight.sighting_id), sight

    def _entry(self, i: int) -> tuple[str, bytes, str, bytes, Sighting]:
        p = self.state.pool
        sight, region, _ = self._sighting(i, int(p["start"][i]), int(p["end"][i]), int(p["count"][i]),
                                          int(p["best_seq"][i]), int(p["best_geo"][i]), int(p["best_ts"][i]),
                                          float(p["best_conf"][i]))
        return self._place(sight, region, int(p["best_plate"][i]))

    def _entry_from_snapshot(self, i: int, snap: np.ndarray, conf: float) -> tuple[str, bytes, str, bytes, Sighting]:
        # snapshot columns: start, end, count, best_plate, best_geo, best_seq, written, rev, best_ts
        sight, region, _ = self._sighting(i, int(snap[0]), int(snap[1]), int(snap[2]), int(snap[5]),
                                          int(snap[4:5].view(np.uint64)[0]), int(snap[8]), conf)
        return self._place(sight, region, int(snap[3:4].view(np.uint64)[0]))

    def _checkpoint_value(self, i: int) -> bytes:
        p = self.state.pool
        fixed = _CK.pack(*(p[k][i].item() for k in _CK_FIELDS))
        read_id, region, agency = self.best[int(p["best_seq"][i])]
        camera = self.cam_names[int(p["cam"][i])]
        return fixed + b"".join(bytes([len(x.encode())]) + x.encode() for x in (camera, read_id, region, agency))

    def _upsert(self, i: int, sight: Sighting, doc: dict[str, Any] | None) -> tuple[bytes, bytes]:
        p = self.state.pool
        read_id, region, agency = self.best[int(p["best_seq"][i])]
        lat, lon = sight.position()
        msg: dict[str, Any] = {
            "schema": names.SCHEMA_SIGHTING, "op": "upsert", "sighting_id": f"{sight.sighting_id:016x}",
            "revision": int(p["rev"][i]), "vehicle": vehicle_id(self.s.hash_key, region,
                                                                 unpack_plate(int(p["best_plate"][i]))).hex(),
            "plate": unpack_plate(int(p["best_plate"][i])), "region": region, "camera_id": sight.camera_id,
            "agency": agency, "ts": sight.ts, "ts_last": sight.ts_last, "best_ts": sight.best_ts,
            "lat": round(lat, 7), "lon": round(lon, 7),
            "geohash": geohash_strings(np.array([lat]), np.array([lon]), self.s.geohash_precision)[0],
            "geo52": sight.geo52, "confidence": round(float(sight.confidence), 6), "reads": sight.reads,
            "read_id": read_id,
            "source": {"topic": self.topic, "partition": self.partition, "offset": int(p["best_seq"][i])},
        }
        if doc is not None:
            msg["extra"] = extras(doc)
        return msg["sighting_id"].encode(), orjson.dumps(msg)


def apply_order(results: Iterable[BatchResult]) -> list[Command]:
    """All Redis commands of several partitions' results, in order (one transaction per poll)."""
    return [c for r in results for c in r.redis]
