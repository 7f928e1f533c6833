"""Redis layout: pseudonymous trails, the area index and per-partition checkpoints.

Keys (hash tags keep every multi-key operation inside one Redis Cluster slot):

``ps:t:{<vehicle>}``        sorted set, every score 0, member = packed sighting led by its first capture time
                            (ms, 48-bit big-endian): members sort by time, ranges are ``ZRANGEBYLEX``
``ps:src``                  hash: source code (8 B) -> camera and agency of the sightings that carry it
``ps:meta``                 hash: ``layout`` = the version of this layout (``LAYOUT_VERSION``); ``migrating`` while
                            ``streams.migrate`` rewrites an earlier one
``ps:c:{<cell>:<bucket>}``  sorted set, every score 0, member = capture time - bucket start (ms, 3 or 4 bytes
                            big-endian) + vehicle (12 B) + low byte of the sighting id: ranges are ``ZRANGEBYLEX``
``ps:ck:{<group>:<topic>:<partition>}``  hash: open dedup sessions + the next offset to consume

``<vehicle>`` is a keyed BLAKE2b hash of region + normalized plate, so raw plates are never Redis keys
and a dump without the key reveals no plate. Writes are idempotent: a replayed batch removes and adds
the same members again, and the checkpoint's offset lets a restarted worker skip what Redis already has.

Delivery guarantee of the Redis sink: effectively-once. Each partition's batch is one atomic write - a
MULTI/EXEC transaction (chunked: a first one, then the rest finished from a write-ahead record), or a
server-side script on Redis Cluster - holding the sighting changes *and* the checkpoint (sessions + next
offset), so Redis data and the offset it reflects always move together; the write is fenced on the
checkpoint still holding the offset the worker started from (WATCH, or the script's own check), so a zombie
that lost the partition writes nothing. Kafka offsets are committed only after Redis acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis
import msgpack
import numpy as np
import redis
from numpy.typing import NDArray
from redis.crc import key_slot

from streams.kernels.geohash import geo52_decode
from streams.kernels.members import (
    AT_SOURCE,
    BAD_LENGTH,
    BAD_VERSION,
    FLAG_BITS,
    FLAG_MASK,
    GEO_BYTES,
    OK,
    PREFIX,
    TS_BYTES,
    distinct_values,
    pack_members,
    split_members,
)
from streams.kernels.resp import resp_commands

MEMBER_VERSION = 6
# A trail member (``streams.kernels.members``): first capture time (ms, 48-bit big-endian), version and flags in one
# byte (flag bit 0: hotlist hit), sighting id, geo52 (7 bytes), confidence in ten-thousandths (a lookup shows 4
# decimals: a float32 kept 2 bytes more that no reader saw), source code; then duration, best-read offset and reads
# as varints; then the best read's id. Camera and agency names repeat across millions of sightings: each member
# carries an 8-byte code of the pair instead (``SOURCES_KEY`` maps it back). The time leads the member and every
# score is 0, so a trail sorts by time and a time range is a ``ZRANGEBYLEX``: a millisecond score took 10 bytes of
# listpack, and formatting 1,000 of them as doubles was most of Redis's time for a trail lookup (297 -> 50 us).
# Layout 5 made the member 8 bytes shorter than layout 4's fixed widths (a typical 59 -> 51), layout 6 3 more (48).
MEMBER_PREFIX = struct.Struct("<6sBQ7sH8s")
CONFIDENCE_UNITS = 10_000  # a stored confidence is an integer number of these (4 decimals)
assert MEMBER_PREFIX.size == PREFIX
SOURCES_KEY = "ps:src"
UNRESOLVED = ("", "")  # (camera, agency) of a code not (yet) in SOURCES_KEY: no policy knows agency ""
# Area index entries are small on purpose (they are one of the two per-sighting costs in Redis). The time
# leads the member as the milliseconds into the key's bucket (3 bytes for buckets up to 4.6 hours, else 4),
# big-endian, and every score is 0: a time range is a ``ZRANGEBYLEX``, and a listpack entry's score takes 2 bytes
# instead of the 5 of a 24-bit integer. Then the vehicle (12 bytes) and the sighting id's low byte, which tells
# one vehicle's sightings apart should two start in one cell at the same millisecond (two cameras over one road;
# a clash, 1 in 256 of those, shares one entry: a search still finds both, since it joins on the trail's entries
# at that time). Retention removes a shared entry with the last sighting that has it, and a batch never removes
# an entry it writes (a merge's survivor can take over the absorbed sighting's). Left: a sighting whose first
# time or cell changes in a later batch removes its old entry even if another, untouched sighting shares it.
VEHICLE_BYTES = 12


def vehicle_id(hash_key: bytes, region: str, plate: str) -> bytes:
    """Keyed hash of region + normalized plate (12 bytes): the only vehicle identity Redis sees. (The worker
    asks ``directory.Sealer``, which remembers recent vehicles' ids.)"""
    h = _keyed(hash_key).copy()  # the key block is hashed once per key, not once per call
    h.update(f"{region}|{plate}".encode())
    return h.digest()


@functools.lru_cache(maxsize=8)
def _keyed(hash_key: bytes) -> Any:
    return hashlib.blake2b(key=hash_key, digest_size=12)


META_KEY = "ps:meta"
MIGRATING = "migrating"  # field of META_KEY while ``streams.migrate`` rewrites the data: no worker starts
MIGRATES_FROM = (5,)  # layouts ``streams.migrate`` rewrites into this one in place
LAYOUT_VERSION = 6  # bumped with any change to what is stored: trail members, area index entries


CELL_BUCKET = "cell_bucket_s"  # field of META_KEY: the area index's time bucket (seconds) its keys were made with
LEGACY_CELL_BUCKET_S = 900  # the default before the bucket was recorded in META_KEY (and until round 29)
# field of META_KEY, "1" once every stored sighting's cell is in ``cells_key`` of its day: marked on a fresh Redis
# (workers index what they write), or by the retention sweep's first complete pass over one written before the index
CELLS_INDEXED = "cells_indexed"


class LayoutError(RuntimeError):
    """Redis holds data of another layout version: writing into it would mix two encodings."""

    code = "layout_mismatch"


class CellBucketError(LayoutError):
    """Redis holds an area index of another time bucket: searches and retention would miss its entries."""

    code = "cell_bucket_mismatch"


def check_cell_bucket(recorded: bytes | str | None, cell_bucket_ms: int) -> None:
    """Refuse a ``PLATESTREAM_CELL_BUCKET_S`` other than the one recorded in ``META_KEY`` (None: not recorded)."""
    if recorded is not None and int(recorded) * 1000 != cell_bucket_ms:
        raise CellBucketError(
            f"Redis holds an area index in {int(recorded)}-second time buckets, and "
            f"PLATESTREAM_CELL_BUCKET_S={cell_bucket_ms // 1000} would look for its entries in other keys (area "
            f"searches and retention would miss them): set PLATESTREAM_CELL_BUCKET_S={int(recorded)}, or leave "
            f"it unset to use the recorded one")


def cell_bucket_in(layout: bytes | str | None, recorded: bytes | str | None, cell_bucket_ms: int,
                   pinned: bool) -> int:
    """The area index's time bucket (ms) of a Redis whose ``META_KEY`` holds ``layout`` and ``recorded`` (its
    ``CELL_BUCKET``), for a process configured with ``cell_bucket_ms`` (``pinned``: set explicitly).

    Redis's record wins over the default, so changing the default never hides stored entries; a setting that
    contradicts it is refused. A Redis with a layout but no record was written before the bucket was recorded,
    when every worker's default was ``LEGACY_CELL_BUCKET_S``. One with neither holds no area entries yet."""
    if recorded is not None:
        if pinned:
            check_cell_bucket(recorded, cell_bucket_ms)
        return int(recorded) * 1000
    if layout is not None and not pinned:
        return LEGACY_CELL_BUCKET_S * 1000
    return cell_bucket_ms


async def ensure_layout(client: Any, scan: bool = True, cell_bucket_ms: int | None = None,
                        pinned: bool = True) -> int | None:
    """Mark a fresh Redis with this layout version, or refuse one that holds another; with ``cell_bucket_ms``,
    the same for the area index's time bucket (``cell_bucket_in``: a fresh Redis records ``cell_bucket_ms``),
    and return the bucket (ms) to write with. A fresh Redis is also marked as having its day index
    (``cells_key``) complete: every sighting in it will be written by a worker that indexes it.

    Data from before the marker existed (layouts 1 and 2) is recognised by its trail scores, capture times
    then (0 since layout 4), and named by its members' first byte, their version then (``scan``: not on
    Redis Cluster, where the keys are spread over nodes).
    """
    found = await client.hget(META_KEY, "layout")
    if found is None:
        if scan:
            async for key in client.scan_iter(match="ps:t:*", count=1000):
                first = await client.zrange(key, 0, 0, withscores=True)
                if first and first[0][1] != 0:
                    raise LayoutError(f"Redis holds trail members of version {first[0][0][0]} (before layout "
                                      f"{LAYOUT_VERSION}); wipe it and replay the reads topic (README: Redis layout)")
                break
        if cell_bucket_ms is not None:
            # the bucket before the layout: whoever finds the layout marked finds the bucket recorded too, so a
            # worker starting alongside cannot take this fresh Redis for one written before buckets were recorded
            await client.hsetnx(META_KEY, CELL_BUCKET, cell_bucket_ms // 1000)
        await client.hsetnx(META_KEY, CELLS_INDEXED, 1)
        await client.hsetnx(META_KEY, "layout", LAYOUT_VERSION)
        found = await client.hget(META_KEY, "layout")
    refusal = _layout_refusal(found, await client.hget(META_KEY, MIGRATING))
    if refusal is not None:
        raise LayoutError(refusal)
    if cell_bucket_ms is None:
        return None
    recorded = await client.hget(META_KEY, CELL_BUCKET)
    if recorded is None:  # marked before buckets were recorded: record the one it holds
        await client.hsetnx(META_KEY, CELL_BUCKET, cell_bucket_in(found, None, cell_bucket_ms, pinned) // 1000)
        recorded = await client.hget(META_KEY, CELL_BUCKET)
    return cell_bucket_in(found, recorded, cell_bucket_ms, pinned)


def require_layout(client: redis.Redis, cell_bucket_ms: int | None = None, pinned: bool = True) -> int | None:
    """``ensure_layout``'s refusals, for a process that changes what workers wrote (the retention sweeper removes
    trail members by their bytes in this layout, area entries by their bucket); returns the bucket (ms), with
    ``cell_bucket_ms``. Without the marker, each member's version is checked as it is read."""
    found, migrating, bucket = client.hmget(META_KEY, ["layout", MIGRATING, CELL_BUCKET])
    refusal = None if found is None else _layout_refusal(found, migrating)
    if refusal is not None:
        raise LayoutError(refusal)
    return None if cell_bucket_ms is None else cell_bucket_in(found, bucket, cell_bucket_ms, pinned)


def _layout_refusal(found: bytes | str, migrating: bytes | str | None) -> str | None:
    if int(found) != LAYOUT_VERSION:
        how = ("stop the workers and run `platestream store migrate` (it rewrites the data in place)"
               if int(found) in MIGRATES_FROM else "wipe it and replay the reads topic")
        return (f"Redis holds platestream layout {int(found)}, this version writes {LAYOUT_VERSION}; {how} "
                "(README: Redis layout)")
    if migrating is not None:
        return "a layout migration has not finished: run `platestream store migrate` again (README: Redis layout)"
    return None


# The sorted set ``compact_trails`` needs Redis to keep compact: 512 members (a vehicle with that many
# sightings in its retention) of 100 bytes (a trail member of a pass with a 59-byte read id; a UUID makes 77)
COMPACT_PROBE = (512, 100)


async def compact_trails(client: Any) -> bool | None:
    """Whether this Redis keeps a trail of ``COMPACT_PROBE`` members in a listpack, tried on a probe key it
    then deletes. Redis's defaults (64-byte members, 128 entries) make most trails skiplists, about twice the
    bytes per sighting, and nothing else would say so. None: the probe was refused (e.g. by an ACL)."""
    entries, size = COMPACT_PROBE
    key = f"ps:probe:{{{os.urandom(6).hex()}}}"
    try:
        await client.zadd(key, {i.to_bytes(4, "big") * (size // 4): 0 for i in range(entries)})
        encoding = await client.object("encoding", key)
    except redis.RedisError:
        return None
    finally:
        with contextlib.suppress(redis.RedisError):
            await client.delete(key)
    if isinstance(encoding, bytes):
        encoding = encoding.decode()
    return encoding in ("listpack", "ziplist")


class EvictionError(RuntimeError):
    """Redis may evict keys when full: sightings, checkpoints, write-ahead records and audit records would vanish
    without anyone deleting them."""

    code = "redis_evicts"


def eviction_policy(info: Any) -> str:
    """The ``maxmemory-policy`` in ``INFO memory``'s answer (one node's, or Redis Cluster's by node), refused
    (``EvictionError``) if it is not ``noeviction``.

    With ``noeviction`` a full Redis refuses writes: the worker's batches fail, it rewinds and lag grows, nothing
    is lost. Any other policy drops keys instead - ``volatile-*`` ones the write-ahead records of chunked batches
    first, since they are the keys with a TTL."""
    nodes = [info] if "maxmemory_policy" in info else [v for v in info.values() if isinstance(v, dict)]
    policies = sorted({str(n.get("maxmemory_policy")) for n in nodes})
    evicting = [policy for policy in policies if policy != "noeviction"]
    if evicting:
        raise EvictionError(
            f"Redis's maxmemory-policy is {', '.join(evicting)}: a full Redis would evict sightings, checkpoints, "
            "write-ahead records and audit records. Set maxmemory-policy noeviction (a full Redis then refuses "
            "writes: the worker waits and lag grows, nothing is lost; README: Redis settings)")
    return "noeviction"


async def check_eviction(client: Any) -> str | None:
    """``eviction_policy`` of the Redis ``client`` reaches, or None where it cannot be read (``INFO`` is a
    @dangerous command: an ACL like the README's refuses it)."""
    try:
        info = await client.info("memory")
    except redis.ResponseError:
        return None
    return eviction_policy(info)


def source_code(camera: str, agency: str) -> bytes:
    """8-byte code of a (camera, agency) pair in trail members (BLAKE2b-64 of both, length-prefixed).

    A clash of two pairs' codes would attribute sightings to the wrong source: for a million sources
    the chance is about 3 in 100 million.
    """
    return hashlib.blake2b(pack_strings(camera, agency), digest_size=8, person=b"ps-source").digest()


_SOURCE_NAMES: dict[bytes, tuple[str, str]] = {}


def source_names(client: Any, codes: Iterable[bytes]) -> dict[bytes, tuple[str, str]]:
    """(camera, agency) of each code, from ``SOURCES_KEY``; a code maps to the same pair in every Redis
    (it is the pair's hash), so known ones are kept in this process (each entry checked against its code)."""
    known = _SOURCE_NAMES
    missing = [c for c in set(codes) if c not in known]
    if missing:
        if len(known) > 100_000:
            known.clear()
        for code, raw in zip(missing, cast(list[Any], client.hmget(SOURCES_KEY, missing)), strict=True):
            if raw is not None:
                camera, agency = unpack_strings(raw, 0, 2)
                if source_code(camera, agency) == code:
                    known[code] = (camera, agency)
    return known


def sighting_id(topic: str, partition: int, first_offset: int) -> int:
    """Stable id of a sighting: derived from the Kafka coordinates of the read that opened it
    (BLAKE2b-64 of ``topic|partition|offset``)."""
    return sighting_ids(topic, partition, [first_offset])[0]


def sighting_ids(topic: str, partition: int, first_offsets: Sequence[int]) -> list[int]:
    """``sighting_id`` of many offsets of one partition (the common prefix hashed once; the digests joined and
    read as big-endian numbers in one NumPy call: 15% less time than a loop of ``int.from_bytes``)."""
    copy = hashlib.blake2b(f"{topic}|{partition}|".encode(), digest_size=8).copy

    def digest(offset: int) -> bytes:
        h = copy()
        h.update(b"%d" % offset)
        return h.digest()

    return cast(list[int], np.frombuffer(b"".join(map(digest, first_offsets)), dtype=">u8").tolist())


def sighting_hex(sids: NDArray[np.uint64]) -> list[str]:
    """How messages and rows name each sighting id (``f"{sid:016x}"``): one hex conversion and one split for
    all of them (1,000 ids 159 -> 31 us)."""
    if sids.shape[0] == 0:
        return []
    return sids.astype(">u8").tobytes().hex(" ", 8).split(" ")


def trail_key(vehicle: bytes) -> str:
    return trail_key_hex(vehicle.hex())


def trail_key_hex(vehicle_hex: str) -> str:
    return f"ps:t:{{{vehicle_hex}}}"


def cell_key(cell: str, bucket: int) -> str:
    return f"ps:c:{{{cell}:{bucket}}}"


def cells_key(day: int) -> str:
    """The cells that sightings first captured on ``day`` (days since the epoch) are indexed in: a retention pass
    finds the vehicles whose sightings aged past a limit from them, instead of reading every trail."""
    return f"ps:cells:{{{day}}}"


def cells_index(days: Sequence[int], cells: Sequence[str]) -> list[tuple[Any, ...]]:
    """The ``SADD``s that index sightings first captured on ``days`` (days since the epoch) in ``cells``: one per
    day (what a worker writes with a batch, and what a full pass writes for a Redis written before the index)."""
    by_day: dict[int, set[str]] = {}
    for day, cell in set(zip(days, cells, strict=True)):
        by_day.setdefault(day, set()).add(cell)
    return [("SADD", cells_key(day), *sorted(found)) for day, found in by_day.items()]


def area_time_bytes(bucket_ms: int) -> int:
    """Bytes of the time that leads an area member: milliseconds into a bucket of ``bucket_ms``."""
    return 3 if bucket_ms <= 1 << 24 else 4


def area_entry(cell: str, vehicle: bytes, sid: int, ts: int, bucket_ms: int) -> tuple[str, bytes]:
    """(key, member) of the area index entry of sighting ``sid`` of ``vehicle``, first seen at ``ts`` in
    ``cell`` (its score is 0)."""
    bucket, offset = divmod(ts, bucket_ms)
    return cell_key(cell, bucket), offset.to_bytes(area_time_bytes(bucket_ms), "big") + vehicle + bytes((sid & 0xFF,))


def area_entries(cells: Sequence[str], vehicles: Sequence[bytes], sids: NDArray[np.uint64], ts: NDArray[np.int64],
                 bucket_ms: int) -> tuple[list[str], list[bytes]]:
    """``area_entry`` of many sightings (keys, members)."""
    buckets, offsets = np.divmod(ts, bucket_ms)
    width = area_time_bytes(bucket_ms)
    times = offsets.astype(">u4").view(np.uint8).reshape(-1, 4)[:, 4 - width :].tobytes()
    tags = (sids & np.uint64(0xFF)).astype(np.uint8).tobytes()
    members = list(map(b"".join, zip([times[k : k + width] for k in range(0, len(times), width)], vehicles,
                                     [tags[k : k + 1] for k in range(len(tags))], strict=True)))
    return list(map(cell_key, cells, buckets.tolist())), members


def area_member_parts(member: bytes, bucket_ms: int) -> tuple[int, bytes, int]:
    """(milliseconds into the bucket, vehicle, low byte of the sighting id) of an area member."""
    width = area_time_bytes(bucket_ms)
    return int.from_bytes(member[:width], "big"), member[width : width + VEHICLE_BYTES], member[width + VEHICLE_BYTES]


def area_range(since: int, until: int, bucket: int, bucket_ms: int) -> tuple[bytes | str, bytes | str]:
    """``ZRANGEBYLEX`` bounds of the entries of one area key (its ``bucket``) first seen in [since, until]."""
    width = area_time_bytes(bucket_ms)
    lo, hi = since - bucket * bucket_ms, until - bucket * bucket_ms + 1
    return (b"[" + lo.to_bytes(width, "big") if lo > 0 else "-",
            b"(" + hi.to_bytes(width, "big") if hi < bucket_ms else "+")


def stats_key(agency: str) -> str:
    """Per-agency counters (``reads:<date>``, ``hits:<date>``) for transparency reports."""
    return f"ps:stats:{{{agency}}}"


def checkpoint_key(group: str, topic: str, partition: int) -> str:
    return f"ps:ck:{{{group}:{topic}:{partition}}}"


def pack_string(value: str) -> bytes:
    """Length-prefixed UTF-8: one length byte, or 0xFF and two little-endian bytes from 255 bytes on
    (64 characters of the schema can be 256 bytes of UTF-8)."""
    b = value.encode()
    n = len(b)
    if n < 0xFF:
        return bytes((n,)) + b
    if n > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    return b"\xff" + n.to_bytes(2, "little") + b


_SHORT_LENGTHS = [bytes((n,)) for n in range(0xFF)]  # the length byte of each short string


def pack_string_many(values: Sequence[str]) -> list[bytes]:
    """``pack_string`` of each value; C-level maps when every value is short (below 255 bytes), which read
    ids and plates are (195 against 359 ns per value)."""
    encoded = list(map(str.encode, values))
    try:
        return list(map(bytes.__add__, map(_SHORT_LENGTHS.__getitem__, map(len, encoded)), encoded))
    except IndexError:  # a long one: its length takes three bytes
        return list(map(pack_string, values))


def pack_strings(*values: str) -> bytes:
    """The variable part of members and checkpoints: ``pack_string`` of each value, concatenated."""
    return b"".join(pack_string_many(values))


def unpack_strings(buf: bytes, pos: int, count: int) -> list[str]:
    """Inverse of ``pack_strings`` for ``count`` strings starting at ``pos``."""
    strings = []
    for _ in range(count):
        n = buf[pos]
        pos += 1
        if n == 0xFF:
            n = int.from_bytes(buf[pos : pos + 2], "little")
            pos += 2
        strings.append(buf[pos : pos + n].decode())
        pos += n
    return strings


def member_heads(sid: np.ndarray, geo52: np.ndarray, start: np.ndarray, end: np.ndarray, best_ts: np.ndarray,
                 reads: np.ndarray, confidence: np.ndarray, hit: np.ndarray, source: np.ndarray) -> list[bytes]:
    """Many trail members at once, up to their read id: the bytes ``Sighting.pack`` writes for each before it.
    ``source``: 8-byte codes (``V8``)."""
    duration, best_dt = np.asarray(end - start, dtype=np.int64), np.asarray(best_ts - start, dtype=np.int64)
    if duration.size and min(int(duration.min()), int(best_dt.min())) < 0:
        raise ValueError("a trail member holds no negative duration or best-read offset")
    raw, ends = pack_members(np.ascontiguousarray(start, dtype=np.int64), MEMBER_VERSION,
                             (np.asarray(hit) & 1).astype(np.uint8), np.ascontiguousarray(sid, dtype=np.uint64),
                             np.ascontiguousarray(geo52, dtype=np.uint64), confidence_units(confidence),
                             np.ascontiguousarray(source).view("<u8"), duration, best_dt,
                             np.asarray(reads, dtype=np.int64))
    data = raw.tobytes()
    bounds = ends.tolist()
    return [data[i:j] for i, j in zip([0, *bounds][:-1], bounds, strict=True)]


def confidence_units(confidence: NDArray[np.floating] | Sequence[float]) -> NDArray[np.uint16]:
    """Confidences as stored: the float32 the worker holds, in ten-thousandths rounded half to even - i.e. the k
    of ``round(c, 4) == k / 10_000``, so a lookup shows what it showed when a float32 was stored. (A float32 has
    24 significant bits and 10,000 < 2**14: its product with 10,000 is exact in a double, so rounding the product
    is rounding the exact decimal, as ``round`` does.) Refuses one outside [0, 1], as the read schema does."""
    units = np.rint(np.asarray(confidence, dtype=np.float32).astype(np.float64) * CONFIDENCE_UNITS)
    if units.size and not (float(units.min()) >= 0.0 and float(units.max()) <= CONFIDENCE_UNITS):
        raise ValueError("a trail member holds a confidence in [0, 1]")
    return units.astype(np.uint16)


_F32 = struct.Struct("<f")


def confidence_unit(confidence: float) -> int:
    """``confidence_units`` of one value, without NumPy (a revision rebuilds one old member at a time: a
    NumPy call per member cost the worker ~1 us per message)."""
    units = _F32.unpack(_F32.pack(confidence))[0] * CONFIDENCE_UNITS  # exact: see confidence_units
    if not 0.0 <= units <= CONFIDENCE_UNITS:
        raise ValueError("a trail member holds a confidence in [0, 1]")
    return round(units)


def _varint(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"a trail member holds no negative duration, offset or count ({value})")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if b < 0x80:
            return value, pos
        shift += 7


@dataclass(frozen=True, slots=True)
class Sighting:
    """One trail entry, as stored and as returned by lookups."""

    sighting_id: int
    ts: int
    ts_last: int
    best_ts: int
    geo52: int
    reads: int
    confidence: float
    camera_id: str
    agency: str
    read_id: str
    hit: bool = False

    def pack(self) -> bytes:
        head = MEMBER_PREFIX.pack(self.ts.to_bytes(TS_BYTES, "big"), MEMBER_VERSION << FLAG_BITS | int(self.hit),
                                  self.sighting_id, self.geo52.to_bytes(GEO_BYTES, "little"),
                                  confidence_unit(self.confidence), source_code(self.camera_id, self.agency))
        return (head + _varint(self.ts_last - self.ts) + _varint(self.best_ts - self.ts) + _varint(self.reads)
                + pack_string(self.read_id))

    @classmethod
    def unpack(cls, member: bytes, names: Mapping[bytes, tuple[str, str]]) -> Sighting:
        """``names``: ``source_names`` of the member's source code."""
        ts_be, ver_flags, sid, geo, conf, code = MEMBER_PREFIX.unpack_from(member)
        ver, flags = ver_flags >> FLAG_BITS, ver_flags & FLAG_MASK
        if ver != MEMBER_VERSION:
            raise MemberVersionError(f"unknown sighting member version {ver}")
        duration, pos = _read_varint(member, PREFIX)
        best_dt, pos = _read_varint(member, pos)
        reads, pos = _read_varint(member, pos)
        camera, agency = names.get(code, UNRESOLVED)
        [read_id] = unpack_strings(member, pos, 1)
        ts = int.from_bytes(ts_be, "big")
        return cls(sid, ts, ts + duration, ts + best_dt, int.from_bytes(geo, "little"), reads,
                   conf / CONFIDENCE_UNITS, camera, agency, read_id, bool(flags & 1))

    def position(self) -> tuple[float, float]:
        lat, lon = geo52_decode(np.array([self.geo52], dtype=np.uint64))
        return float(lat[0]), float(lon[0])

    def as_dict(self) -> dict[str, Any]:
        lat, lon = self.position()
        return {"ts": self.ts, "ts_last": self.ts_last, "camera_id": self.camera_id, "agency": self.agency,
                "lat": round(lat, 6), "lon": round(lon, 6), "geo52": self.geo52,
                "confidence": round(self.confidence, 4), "reads": self.reads, "read_id": self.read_id,
                "sighting_id": f"{self.sighting_id:016x}", "hit": self.hit}


def time_range(lo: int | str, hi: int | str) -> tuple[bytes | str, bytes | str]:
    """``ZRANGEBYLEX`` bounds of trail members first captured in [lo, hi] (ms; "-inf"/"+inf": open)."""
    return _lex_bound(lo, 0, b"["), _lex_bound(hi, 1, b"(")


def _lex_bound(ts: int | str, add: int, kind: bytes) -> bytes | str:
    if ts in ("-inf", "+inf"):
        return str(ts)[0]
    t = int(ts) + add
    if t < 0:
        return "-"
    if t >= 1 << (8 * TS_BYTES):
        return "+"
    return kind + t.to_bytes(TS_BYTES, "big")


def _trail_range(key: str, lo: int | str, hi: int | str, limit: int | None) -> list[Any]:
    return ["ZRANGEBYLEX", key, *time_range(lo, hi), *(("LIMIT", 0, limit) if limit else ())]


def _trail_members(client: redis.Redis, key: str, lo: int | str, hi: int | str, limit: int | None) -> list[bytes]:
    return cast(list[bytes], client.execute_command(*_trail_range(key, lo, hi, limit)))


def read_trail_members(client: redis.Redis, keys: Sequence[str], lo: int | str = "-inf", hi: int | str = "+inf",
                       limit: int | None = None) -> list[list[bytes]]:
    """The members of each trail key first captured in [lo, hi]: one command for one key, one round trip
    (a pipeline) for many."""
    if len(keys) == 1:
        return [_trail_members(client, keys[0], lo, hi, limit)]
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.execute_command(*_trail_range(key, lo, hi, limit))
        return cast(list[list[bytes]], pipe.execute())


def read_trail(client: redis.Redis, key: str, lo: int | str = "-inf", hi: int | str = "+inf",
               limit: int | None = None) -> list[Sighting]:
    """Sightings stored under one trail key with first capture time in [lo, hi], oldest first (lookups read
    columns instead: ``query.trails``)."""
    members = _trail_members(client, key, lo, hi, limit)
    return unpack_columns(members, lambda codes: source_names(client, codes)).sightings()


def member_sources(members: Sequence[bytes]) -> list[bytes]:
    """The source code of each trail member."""
    return [m[AT_SOURCE : AT_SOURCE + 8] for m in members]


class MemberVersionError(ValueError):
    """A trail member of another layout (lookups read layout 5's while ``store migrate`` runs; nothing else may:
    retention, for one, removes members by their bytes in this layout)."""


@dataclass(slots=True, eq=False)  # arrays: == of two would be ambiguous, not a comparison
class TrailColumns:
    """Sightings column by column (same fields as ``Sighting``), as NumPy arrays: a lookup makes no Python
    object per sighting and value except the read ids (a 1,000-sighting lookup 0.62-0.68 -> 0.35-0.53 ms), and rows
    are made from the arrays in one ``tolist`` per column. Camera and agency are an index into ``sources``
    (a trail has few), so a governed lookup decides per source, not per sighting."""

    sighting_id: NDArray[np.uint64]
    ts: NDArray[np.int64]
    ts_last: NDArray[np.int64]
    best_ts: NDArray[np.int64]
    geo52: NDArray[np.uint64]
    reads: NDArray[np.uint32]
    confidence: NDArray[np.float64]  # as stored: 4 decimals
    source: NDArray[np.int64]  # each sighting's (camera, agency) as an index into ``sources``
    sources: list[tuple[str, str]]
    read_id: list[str]
    hit: NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @classmethod
    def of(cls, sightings: Sequence[Sighting]) -> TrailColumns:
        pairs = [(s.camera_id, s.agency) for s in sightings]
        index = {pair: i for i, pair in enumerate(dict.fromkeys(pairs))}
        return cls(np.array([s.sighting_id for s in sightings], dtype=np.uint64),
                   np.array([s.ts for s in sightings], dtype=np.int64),
                   np.array([s.ts_last for s in sightings], dtype=np.int64),
                   np.array([s.best_ts for s in sightings], dtype=np.int64),
                   np.array([s.geo52 for s in sightings], dtype=np.uint64),
                   np.array([s.reads for s in sightings], dtype=np.uint32),
                   np.array([s.confidence for s in sightings], dtype=np.float64),
                   np.array([index[p] for p in pairs], dtype=np.int64), list(index),
                   [s.read_id for s in sightings], np.array([s.hit for s in sightings], dtype=np.bool_))

    def names(self, at: NDArray[np.int64] | None = None) -> tuple[list[str], list[str]]:
        """Each sighting's camera and agency (of the sightings ``at`` only, if given)."""
        source = (self.source if at is None else self.source[at]).tolist()
        cameras, agencies = [c for c, _ in self.sources], [a for _, a in self.sources]
        return list(map(cameras.__getitem__, source)), list(map(agencies.__getitem__, source))

    @property
    def camera_id(self) -> list[str]:
        return self.names()[0]

    @property
    def agency(self) -> list[str]:
        return self.names()[1]

    def sightings(self) -> list[Sighting]:
        return list(map(Sighting, self.sighting_id.tolist(), self.ts.tolist(), self.ts_last.tolist(),
                        self.best_ts.tolist(), self.geo52.tolist(), self.reads.tolist(), self.confidence.tolist(),
                        *self.names(), self.read_id, self.hit.tolist()))


def unpack_many(members: Sequence[bytes], names: Mapping[bytes, tuple[str, str]]) -> list[Sighting]:
    """``Sighting.unpack`` of a whole trail."""
    return unpack_columns(members, names).sightings()


# the (camera, agency) of source codes: a mapping, or a function of the distinct codes that returns one
SourceNames = Mapping[bytes, tuple[str, str]] | Callable[[list[bytes]], Mapping[bytes, tuple[str, str]]]


def unpack_columns(members: Sequence[bytes], names: SourceNames) -> TrailColumns:
    """Trail members as columns: split in one compiled pass (``split_members``), fixed parts decoded with one
    NumPy view, each distinct source looked up once in ``names`` (a mapping, or a function of the distinct
    codes that returns one)."""
    if not members:
        return TrailColumns.of([])
    status, ts, flags, sid, geo, conf, source, duration, best_dt, reads, ids, used = split_members(
        np.frombuffer(b"".join(members), dtype=np.uint8), len(members), MEMBER_VERSION)
    if status == BAD_VERSION:
        raise MemberVersionError("unknown sighting member version")
    if status == BAD_LENGTH:
        raise ValueError("malformed sighting member")
    codes, inverse = distinct_values(source)
    distinct = [codes[i : i + 1].tobytes() for i in range(codes.shape[0])]
    found = names(distinct) if callable(names) else names
    if status == OK:  # one decode and one split for all read ids
        read_ids = ids[:used].tobytes().decode().split("\n")
    else:  # SEPARATOR_IN_ID
        read_ids = [Sighting.unpack(m, {}).read_id for m in members]
    return TrailColumns(sid, ts, ts + duration, ts + best_dt, geo, reads, conf / CONFIDENCE_UNITS, inverse.ravel(),
                        [found.get(code, UNRESOLVED) for code in distinct], read_ids, (flags & 1).astype(bool))


# One partition's batch, applied atomically by the server: check that the checkpoint still holds the
# offset this worker expects (a zombie that lost the partition finds a newer offset and writes nothing),
# then run the batch's commands. The client sends one command per partition instead of one per change,
# which is where redis-py spent most of its time. Commands arrive as one msgpack blob (cmsgpack is part
# of Redis's Lua). Note: the script touches keys it does not declare, which standalone Redis allows and
# Redis Cluster does not (see ``apply_batches_cluster``).
# The blob is flat - each command's argument count, then its arguments - so unpacking it builds one Lua
# table per batch instead of one per command (a tenth of the script's time). The nested layout (a list
# per command) is still run: a Redis Cluster ``pending`` record written before this layout holds one.
RUN_COMMANDS = """
local function run_commands(blob)
  local a = cmsgpack.unpack(blob)
  if type(a[1]) == 'table' then
    for i = 1, #a do redis.call(unpack(a[i])) end
    return
  end
  local i, n = 1, #a
  while i <= n do
    local c = a[i]
    redis.call(unpack(a, i + 1, i + c))
    i = i + c + 1
  end
end
"""
APPLY_BATCH = RUN_COMMANDS + """
local cur = redis.call('HGET', KEYS[1], 'offset')
if (cur or '') ~= ARGV[1] then
  if ARGV[4] then redis.call('UNLINK', ARGV[4]) end
  return 0
end
if ARGV[4] and redis.call('EXISTS', ARGV[4]) == 0 then
  return redis.error_reply('write-ahead record ' .. ARGV[4] .. ' is missing: nothing written')
end
run_commands(ARGV[2])
if ARGV[3] then
  redis.call('PERSIST', ARGV[4])
  redis.call('HSET', KEYS[1], 'offset', ARGV[3], 'pending_key', ARGV[4])
end
return 1
"""
MAX_ARGS = 4000  # Lua's unpack() limit is ~8000 stack slots; longer commands are split


def split_long(commands: Sequence[tuple[Any, ...]], limit: int = MAX_ARGS) -> list[tuple[Any, ...]]:
    """Split variadic HSET/HDEL/SADD/ZADD commands so no command exceeds ``limit`` arguments."""
    limit = min(limit, MAX_ARGS)
    out: list[tuple[Any, ...]] = []
    for cmd in commands:
        if len(cmd) <= limit:
            out.append(cmd)
            continue
        name, key, rest = cmd[0], cmd[1], cmd[2:]
        step = 1 if name in ("HDEL", "SADD") else 2
        chunk = (limit - 2) // step * step
        out.extend((name, key, *rest[i : i + chunk]) for i in range(0, len(rest), chunk))
    return out


def pack_commands(commands: Sequence[tuple[Any, ...]]) -> bytes:
    """A batch's commands as the msgpack blob ``APPLY_BATCH`` unpacks: flat, each command's argument count
    before its arguments."""
    flat: list[Any] = []
    for cmd in split_long(commands):
        flat.append(len(cmd))
        flat.extend(cmd)
    return cast(bytes, msgpack.packb(flat, use_bin_type=False))


# -- chunked batches ----------------------------------------------------------------------------------
# Redis runs one script at a time, and a lookup that arrives during a batch's script waits for all of it.
# So a batch can be written as a run of short scripts ("chunks"), at most two sent ahead of their replies
# (a pipeline would not help: Redis reads a client's pipelined scripts in one go and runs them back to
# back). It costs throughput (the README has the figures), so it is off unless configured. The batch
# stays all-or-nothing on restart the way a Redis Cluster batch does (below): the other chunks are stored
# first as a write-ahead record under a key of their own (``record_key``: a plain SET with an expiry, ~10 us
# for 500 KB; inside the script the same record cost ~1 ms, which made first chunks the longest scripts a
# lookup waited behind); the first chunk is fenced like ``APPLY_BATCH`` (a fenced one unlinks its record),
# refuses to write anything if the record is missing, makes it live (PERSIST), moves the checkpoint's
# offset and names the record there (``pending_key``); each other chunk runs once per end offset
# (``APPLY_NODE``, with a fence hash per chunk number); the last one drops the record; a worker that loads
# the partition replays whatever of it is left (``replay_pending``) before reading the checkpoint. The
# record's key is random per batch, so a zombie's record never replaces the owner's, and an orphan (the
# writer died between the SET and the script) expires. Between chunks a lookup sees part of a batch:
# a batch lists its ``ZADD``s before the ``ZREM``s of the entries they replace, so a revised sighting
# may briefly show both revisions (trail lookups keep the latest), never neither.
CHUNK_FENCE = "ps:fence:c{}"  # hash per chunk number: checkpoint key -> end offset of its last run


@dataclass(frozen=True, slots=True)
class BatchWrite:
    """One partition's batch as the scripts that write it (``plan_batch``)."""

    ck_key: str
    expected: int | None  # the checkpoint offset the batch starts from (None: no checkpoint yet)
    next_offset: int
    first: bytes  # ``pack_commands`` blob of the first chunk
    pending: bytes  # write-ahead record of the other chunks (b"" when there are none)
    rest: tuple[tuple[str, bytes], ...]  # (fence key, blob) of each other chunk, in order
    record_key: str = ""  # where ``pending`` is stored while the batch is in flight (with ``rest``)


def chunk_commands(commands: Sequence[tuple[Any, ...]], max_args: int) -> list[list[tuple[Any, ...]]]:
    """Consecutive runs of ``commands`` of at most ``max_args`` arguments each (0: one run); a longer
    command is split first."""
    if max_args <= 0:
        return [list(commands)]
    chunks: list[list[tuple[Any, ...]]] = [[]]
    n = 0
    for cmd in split_long(commands, max_args):
        if n + len(cmd) > max_args and chunks[-1]:
            chunks.append([])
            n = 0
        chunks[-1].append(cmd)
        n += len(cmd)
    return chunks


def plan_batch(ck_key: str, expected: int | None, next_offset: int, commands: Sequence[tuple[Any, ...]],
               max_args: int = 0) -> BatchWrite:
    """The scripts of one partition's batch: one, or chunks of at most ``max_args`` arguments."""
    chunks = chunk_commands(commands, max_args)
    if len(chunks) == 1:
        return BatchWrite(ck_key, expected, next_offset, pack_commands(chunks[0]), b"", ())
    record_key = write_ahead_key(ck_key)
    chunks[-1] += [("HDEL", ck_key, PENDING_KEY), ("UNLINK", record_key)]
    rest = tuple((CHUNK_FENCE.format(k), pack_commands(c)) for k, c in enumerate(chunks[1:], start=1))
    return BatchWrite(ck_key, expected, next_offset, pack_commands(chunks[0]), _pending_record(next_offset, rest), rest,
                      record_key)


def write_ahead_key(ck_key: str) -> str:
    """A fresh key for one batch's write-ahead record, in the checkpoint's hash slot."""
    return f"{ck_key.replace('ps:ck:', 'ps:wal:', 1)}:{os.urandom(8).hex()}"


RECORD_TTL_MS = 3_600_000  # an orphaned record (no first chunk made it live) expires; a live one has no expiry


def apply_batches(client: redis.Redis, batches: Sequence[BatchWrite],
                  after_first: Callable[[], None] | None = None) -> list[bool]:
    """Apply ``plan_batch`` batches; per batch, whether it was applied (False: the checkpoint had moved -
    fenced - and nothing was written). As transactions (``apply_transaction``); as scripts (``apply_scripts``)
    only a blob the transcoder refuses (an earlier version's nested layout).

    Synchronous on purpose: the worker runs it in a thread, so Redis executes batch N while the event loop's
    thread computes batch N+1. The blobs are packed before (by the event loop's thread): here the thread
    waits on the socket or runs kernels that release the GIL, instead of competing for it.
    ``after_first`` runs between the first chunks and the others (fault injection).
    """
    bodies = [resp_commands(b.first) for b in batches]
    if all(n >= 0 for _, n in bodies):  # (else a blob only the script runs: an earlier version's nested one)
        return apply_transaction(client, batches, bodies, after_first=after_first)
    return apply_scripts(client, batches, after_first)


def apply_scripts(client: redis.Redis, batches: Sequence[BatchWrite],
                  after_first: Callable[[], None] | None = None) -> list[bool]:
    """``apply_batches`` with scripts: every first chunk in one pipeline, then the other chunks in order, at
    most ``CHUNKS_IN_FLIGHT`` at a time."""
    script = client.register_script(APPLY_BATCH)
    scripts: list[int] = []  # each script's place in the pipeline's replies (a record's SET goes before it)
    with client.pipeline(transaction=False) as pipe:
        for b in batches:
            args: list[Any] = ["" if b.expected is None else str(b.expected), b.first]
            if b.rest:
                pipe.set(b.record_key, b.pending, px=RECORD_TTL_MS)
                args += [str(b.next_offset), b.record_key]
            scripts.append(len(pipe))
            script(keys=[b.ck_key], args=args, client=pipe)
        replies = pipe.execute()
    applied = [bool(replies[i]) for i in scripts]
    if after_first is not None and any(b.rest for b in batches):
        after_first()
    _run_chunks(client, [(fence, b.ck_key, b.next_offset, blob)
                         for b, ok in zip(batches, applied, strict=True) if ok for fence, blob in b.rest])
    return applied


# -- batches as transactions --------------------------------------------------------------------------
# A batch (or each chunk of one) runs as a plain MULTI/EXEC of its commands: atomic like a script, without Lua.
# The script's cmsgpack.unpack, one Lua call and one reply conversion per command cost Redis more than the
# commands: on the pipeline's batches 0.85 against 0.52 s of redis-server CPU, EXEC 0.27 against EVALSHA 0.70 s
# of Redis's own time (what a lookup waits behind). The fence is WATCH: the checkpoints are watched and
# their offsets read first; a batch whose offset is not the one it starts from is left out (fenced), and
# if any watched checkpoint changes before EXEC (another worker wrote it), EXEC runs nothing and the whole
# round starts again. A chunk after the first watches its chunk number's fence hash the same way
# (``APPLY_NODE``'s rule: it runs unless the fence holds its batch's end offset or a later one), one chunk at a
# time: with a WATCH per chunk none can be sent ahead, but each is short and Redis's time per chunk less.
# The commands travel as RESP transcoded from the msgpack blob by a kernel that releases the GIL
# (``kernels.resp``): packing RESP in Python would have cost the worker's event loop ~0.6 us more per message
# than the blob does.
# One difference from the script: a command that fails while EXEC runs does not stop the ones after it,
# the checkpoint's HSET among them. Only a key of the wrong type makes one fail (another program writing
# into platestream's keys): the batch is reported failed with Redis's error (``BatchCommandError``), but
# what the failing command should have written is not there, and replaying the batch will not write it.
class BatchCommandError(redis.RedisError):
    """A command of a batch's transaction failed inside EXEC (the others ran, the checkpoint moved)."""


_MULTI, _EXEC = b"*1\r\n$5\r\nMULTI\r\n", b"*1\r\n$4\r\nEXEC\r\n"
_pack = cast(Callable[[tuple[Any, ...]], bytes], hiredis.pack_command)  # (its stub types a 1-tuple)


Choice = tuple[list[bool], list[tuple[bytes, int]]]  # per batch applied?, and the RESP bodies to run


def apply_transaction(client: redis.Redis, batches: Sequence[BatchWrite], bodies: Sequence[tuple[bytes, int]],
                      after_fence: Callable[[], None] | None = None, after_first: Callable[[], None] | None = None
                      ) -> list[bool]:
    """``apply_batches`` with transactions; per batch, whether it was applied. ``bodies``: each batch's first
    chunk as RESP and its number of commands (``resp_commands`` of its blob); ``after_fence`` runs between
    reading the watched keys and EXEC (tests: another writer there), ``after_first`` as in ``apply_batches``.

    The first chunks go in one transaction fenced on the checkpoints' offsets; a chunked batch's also makes its
    write-ahead record live and names it in the checkpoint (a fenced one deletes its record; a missing record
    writes nothing), as ``APPLY_BATCH`` does. Each later chunk is a transaction of its own, fenced like
    ``APPLY_NODE``: it runs unless its chunk number's fence already holds this batch's end offset or a later one.
    """
    chunked = [b for b in batches if b.rest]
    if chunked:
        with client.pipeline(transaction=False) as pipe:
            for b in chunked:
                pipe.set(b.record_key, b.pending, px=RECORD_TTL_MS)
            pipe.execute()

    def first(replies: list[Any]) -> Choice:
        offsets, present = replies[: len(batches)], iter(replies[len(batches) :])
        applied, run = [], []
        for b, cur, (body, n) in zip(batches, offsets, bodies, strict=True):
            ok = (cur or b"") == ("" if b.expected is None else str(b.expected)).encode()
            exists = next(present) if b.rest else 1
            if ok and not exists:
                raise redis.ResponseError(f"write-ahead record {b.record_key} is missing: nothing written")
            applied.append(ok)
            if ok and b.rest:
                body += _pack(("PERSIST", b.record_key)) + _pack(
                    ("HSET", b.ck_key, "offset", str(b.next_offset), "pending_key", b.record_key))
                run.append((body, n + 2))
            elif ok:
                run.append((body, n))
            elif b.rest:
                run.append((_pack(("UNLINK", b.record_key)), 1))
        return applied, run

    conn = client.connection_pool.get_connection()
    try:
        applied = _exec_fenced(
            conn, [*(b.ck_key for b in batches), *(b.record_key for b in chunked)],
            [*(("HGET", b.ck_key, "offset") for b in batches), *(("EXISTS", b.record_key) for b in chunked)],
            first, after_fence)
        if after_first is not None and chunked:
            after_first()
        for b, ok in zip(batches, applied, strict=True):
            for fence, blob in b.rest if ok else ():
                body, n = resp_commands(blob)
                if n < 0:
                    raise ValueError(f"chunk {fence} of {b.ck_key} is not a flat command blob")
                tail = _pack(("HSET", fence, b.ck_key, str(b.next_offset)))

                def later(replies: list[Any], b: BatchWrite = b, body: bytes = body + tail, n: int = n + 1) -> Choice:
                    done = int(replies[0] or -1)
                    return ([False], []) if done >= b.next_offset else ([True], [(body, n)])

                _exec_fenced(conn, [fence], [("HGET", fence, b.ck_key)], later)
        return applied
    except BaseException:
        conn.disconnect()  # replies may still be on their way: this connection is out of step
        raise
    finally:
        client.connection_pool.release(conn)


def _exec_fenced(conn: Any, watch: Sequence[str], reads: Sequence[tuple[Any, ...]],
                 choose: Callable[[list[Any]], Choice], after_fence: Callable[[], None] | None = None) -> list[bool]:
    """``WATCH`` the keys, send the reads; ``choose(their replies)`` says what ran and the bodies to run, as one
    MULTI/EXEC. If a watched key changed before EXEC, nothing ran: read and choose again. Returns what
    ``choose`` said ran."""
    request = b"".join(map(_pack, [("WATCH", *watch), *reads]))
    while True:
        conn.send_packed_command([request])
        reader = _Replies(conn)
        watched, *replies = reader.take(1 + len(reads))
        _raise_error(watched)
        result, run = choose([_raise_error(r) for r in replies])
        if not run:
            conn.send_packed_command([_pack(("UNWATCH",))])
            _raise_error(reader.take(1)[0])
            return result
        if after_fence is not None:
            after_fence()
        conn.send_packed_command([_MULTI, *(body for body, _ in run), _EXEC])
        _raise_error(reader.take(1)[0])  # MULTI's OK
        errors = [r for r in reader.take(sum(n for _, n in run)) if isinstance(r, hiredis.ReplyError)]
        done = reader.take(1)[0]
        if errors or isinstance(done, hiredis.ReplyError):  # refused while queuing: EXEC ran nothing
            raise redis.ResponseError(f"batch refused, nothing written: {(errors or [done])[0]}")
        if done is None:  # a watched key changed after it was read: fence again
            continue
        failed = [r for r in done if isinstance(r, hiredis.ReplyError)]
        if failed:
            raise BatchCommandError(f"{len(failed)} command(s) of the batch failed inside EXEC, the rest "
                                    f"and the checkpoint were written: {failed[0]}")
        return result


class _Replies:
    """Replies read straight from a connection's socket with a hiredis reader: thousands of QUEUED replies
    per batch, which redis-py's ``read_response`` would take one Python call chain each for. Used only between
    a request and all of its replies (nothing else is buffered on the connection then)."""

    def __init__(self, conn: Any) -> None:
        self.sock = conn._sock  # redis-py's connected socket (plain or TLS)
        self.reader = hiredis.Reader()

    def take(self, n: int) -> list[Any]:
        out: list[Any] = []
        gets = self.reader.gets
        while len(out) < n:
            r = gets()
            if r is False:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise redis.ConnectionError("Redis closed the connection during a batch")
                self.reader.feed(data)
                continue
            out.append(r)
        return out


def _raise_error(reply: Any) -> Any:
    if isinstance(reply, hiredis.ReplyError):
        raise redis.ResponseError(str(reply))
    return reply


CHUNKS_IN_FLIGHT = 2  # Redis runs one later chunk while the next is on its way; a lookup waits behind two


def _run_chunks(client: redis.Redis, chunks: Sequence[tuple[str, str, int, bytes]]) -> None:
    """``APPLY_NODE`` of each (fence key, checkpoint key, end offset, blob), in order, at most
    ``CHUNKS_IN_FLIGHT`` sent ahead of their replies (a pipeline would send all of them at once, and Redis
    runs whatever one read brings in back to back)."""
    if not chunks:
        return
    sha = client.script_load(APPLY_NODE)  # (a restarted Redis has an empty script cache)
    conn = client.connection_pool.get_connection()
    try:
        sent = 0
        for done in range(len(chunks)):
            while sent < len(chunks) and sent - done < CHUNKS_IN_FLIGHT:
                fence, ck_key, next_offset, blob = chunks[sent]
                conn.send_command("EVALSHA", sha, 1, fence, ck_key, next_offset, blob)
                sent += 1
            conn.read_response()
    except BaseException:
        conn.disconnect()  # replies may still be on their way: this connection is out of step
        raise
    finally:
        client.connection_pool.release(conn)


def apply_batch_sync(client: redis.Redis, key: str, expected: int | None, commands: Sequence[tuple[Any, ...]]) -> bool:
    """``apply_batches`` of one batch, whole (tests, tools)."""
    return apply_batches(client, [plan_batch(key, expected, 0, commands)])[0]


# -- Redis Cluster ---------------------------------------------------------------------------------
# A batch's keys live on several nodes, and a script may only touch keys of the node it runs on. So a
# partition's batch is split by node and applied in two steps, each atomic on its node:
# 0. every other node's commands with the batch's end offset, as a write-ahead record under a key of its
#    own in the checkpoint's slot (as for chunks: a SET with an expiry, not hundreds of KB through Lua);
# 1. on the node of the checkpoint key: fenced exactly like APPLY_BATCH (a fenced step deletes the record),
#    that node's commands, the checkpoint, the record made permanent and named in the checkpoint
#    (``pending_key``; the previous batch's record, finished by now, is deleted);
# 2. on each other node: its commands, applied once per end offset (a per-node fence hash remembers the
#    last end offset applied for this partition).
# A crash between 1 and 2 leaves the record; whoever loads the partition next replays it before
# anything else (``replay_pending``), and the fences make the replay a no-op where step 2 already ran.
# (Records written inline in the checkpoint, ``pending``, by earlier versions are replayed the same way.)
# Scripts use the ``allow-cross-slot-keys`` flag: keys of any slot, as long as the node serves it.
# Resharding while workers run is not supported (a moved slot fails the batch; the worker retries).
PENDING = b"pending"  # a write-ahead record inside the checkpoint hash: earlier versions' (replayed, not written)
PENDING_KEY = b"pending_key"  # the key of the write-ahead record (chunked batches; Redis Cluster's last batch)
APPLY_PRIMARY = "#!lua flags=allow-cross-slot-keys" + RUN_COMMANDS + """
local cur = redis.call('HGET', KEYS[1], 'offset')
if (cur or '') ~= ARGV[1] then
  redis.call('UNLINK', KEYS[2])
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.error_reply('write-ahead record ' .. KEYS[2] .. ' is missing: nothing written')
end
run_commands(ARGV[2])
local last = redis.call('HGET', KEYS[1], 'pending_key')
if last and last ~= KEYS[2] then redis.call('UNLINK', last) end
redis.call('PERSIST', KEYS[2])
redis.call('HSET', KEYS[1], 'pending_key', KEYS[2])
redis.call('HDEL', KEYS[1], 'pending')
return 1
"""
APPLY_NODE = "#!lua flags=allow-cross-slot-keys" + RUN_COMMANDS + """
local done = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if done >= tonumber(ARGV[2]) then return 0 end
run_commands(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


def _key_slot(key: str | bytes) -> int:
    return int(key_slot(key.encode() if isinstance(key, str) else key))


def fence_keys(client: Any) -> dict[str, str]:
    """Primary node name -> a fence hash key (``ps:fence:{n}``) whose slot that node serves."""
    node_of_slot = client.nodes_manager.get_node_from_slot
    names = {node.name for node in client.get_primaries()}
    out: dict[str, str] = {}
    for i in range(100_000):
        key = f"ps:fence:{{{i}}}"
        out.setdefault(node_of_slot(_key_slot(key)).name, key)
        if len(out) >= len(names):
            return out
    raise RuntimeError("no fence key found for every cluster node")


def plan_cluster(ck_key: str, next_offset: int, commands: Sequence[tuple[Any, ...]], node_of_slot: Any,
                 fences: dict[str, str]) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(primary commands blob, pending blob, [(fence key, commands blob)] for the other nodes)."""
    primary = node_of_slot(_key_slot(ck_key)).name
    by_node: dict[str, list[tuple[Any, ...]]] = {}
    for cmd in split_long(commands):
        by_node.setdefault(node_of_slot(_key_slot(cmd[1])).name, []).append(cmd)
    others = [(fences[name], pack_commands(cmds)) for name, cmds in sorted(by_node.items()) if name != primary]
    return pack_commands(by_node.get(primary, [])), _pending_record(next_offset, others), others


def _pending_record(next_offset: int, parts: Sequence[tuple[str, bytes]]) -> bytes:
    """The write-ahead record of a batch's remaining parts: (fence key, commands blob) each, applied with
    ``APPLY_NODE`` by ``replay_pending`` (the inverse is ``_pending_parts``)."""
    return cast(bytes, msgpack.packb([next_offset, [[k, blob] for k, blob in parts]], use_bin_type=True))


def _pending_parts(raw: bytes | None) -> tuple[int, list[tuple[str, bytes]]]:
    if not raw:
        return -1, []
    next_offset, parts = msgpack.unpackb(raw, raw=False)
    return int(next_offset), [(str(k), bytes(b)) for k, b in parts]


def apply_cluster_sync(client: Any, ck_key: str, expected: int | None, next_offset: int,
                       commands: Sequence[tuple[Any, ...]], crash_after_primary: bool = False) -> bool:
    """One partition's batch on a Redis Cluster (sync; tests and tools). ``crash_after_primary`` stops
    between the two steps, as a crash would."""
    primary_blob, pending, others = plan_cluster(ck_key, next_offset, commands,
                                                 client.nodes_manager.get_node_from_slot, fence_keys(client))
    record_key = write_ahead_key(ck_key)
    client.set(record_key, pending, px=RECORD_TTL_MS)
    ok = client.register_script(APPLY_PRIMARY)(
        keys=[ck_key, record_key], args=["" if expected is None else str(expected), primary_blob])
    if not ok or crash_after_primary:
        return bool(ok)
    node_script = client.register_script(APPLY_NODE)
    for fence, blob in others:
        node_script(keys=[fence], args=[ck_key, next_offset, blob])
    return True


class WriteAheadRecordMissing(RuntimeError):
    """The checkpoint names a write-ahead record that is not there: a batch cannot be finished."""


def _replay_steps(ck_key: str, inline: bytes | None, key: bytes | None,
                  referenced: bytes | None) -> list[tuple[str, int, bytes]]:
    """(fence key, end offset, blob) of each part ``APPLY_NODE`` replays: from a record in the checkpoint
    (``inline``, an earlier version's) and from the one it names (``key``, read as ``referenced``)."""
    if key is not None and referenced is None:
        raise WriteAheadRecordMissing(f"{ck_key} names the write-ahead record {key.decode()}, which does not exist: "
                                      "the partition's last batch cannot be finished (was the key deleted or evicted?)")
    return [(fence, next_offset, blob) for raw in (inline, referenced)
            for next_offset, parts in [_pending_parts(raw)] for fence, blob in parts]


def replay_pending_sync(client: Any, ck_key: str) -> int:
    """Apply what the last batch left unapplied (the other nodes' parts, or the chunks after the first);
    returns how many parts."""
    inline, key = client.hmget(ck_key, [PENDING, PENDING_KEY])
    steps = _replay_steps(ck_key, inline, key, client.get(key) if key else None)
    script = client.register_script(APPLY_NODE)
    return sum(int(script(keys=[fence], args=[ck_key, nxt, blob])) for fence, nxt, blob in steps)


async def apply_batches_cluster(client: Any, batches: Sequence[tuple[str, int | None, int,
                                                                     Sequence[tuple[Any, ...]]]]) -> list[bool]:
    """``apply_batches`` for Redis Cluster: (checkpoint key, expected offset, end offset, commands).

    All partitions' first steps run concurrently, then all second steps; a partition fenced in step 1
    (False) writes nothing anywhere.
    """
    node_of_slot = client.nodes_manager.get_node_from_slot
    fences = fence_keys(client)
    plans = [plan_cluster(ck, nxt, cmds, node_of_slot, fences) for ck, _, nxt, cmds in batches]
    primary = client.register_script(APPLY_PRIMARY)

    async def first_step(ck: str, expected: int | None, blob: bytes, pending: bytes) -> Any:
        record_key = write_ahead_key(ck)
        await client.set(record_key, pending, px=RECORD_TTL_MS)
        return await primary(keys=[ck, record_key], args=["" if expected is None else str(expected), blob])

    applied = await asyncio.gather(*(first_step(ck, exp, blob, pending)
                                     for (ck, exp, _, _), (blob, pending, _) in zip(batches, plans, strict=True)))
    node_script = client.register_script(APPLY_NODE)
    await asyncio.gather(*(
        node_script(keys=[fence], args=[ck, nxt, blob])
        for (ck, _, nxt, _), (_, _, others), ok in zip(batches, plans, applied, strict=True) if ok
        for fence, blob in others))
    return [bool(x) for x in applied]


async def replay_pending(client: Any, ck_key: str) -> int:
    """Async ``replay_pending_sync`` (the worker, on partition load)."""
    inline, key = await client.hmget(ck_key, [PENDING, PENDING_KEY])
    steps = _replay_steps(ck_key, inline, key, await client.get(key) if key else None)
    script = client.register_script(APPLY_NODE)
    return sum([int(await script(keys=[fence], args=[ck_key, nxt, blob])) for fence, nxt, blob in steps])
