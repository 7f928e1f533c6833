"""The encrypted plate directory: which plate each pseudonymous vehicle id stands for, readable only with the key.

Trails are keyed by a keyed hash of region + plate, which makes exact lookups cheap and wildcard
searches impossible: ``7AB*`` names no hash. The directory closes that gap without putting plates in
clear: for every vehicle that has a stored sighting it holds ``AES-SIV(region|plate)`` under a key
derived (HKDF) from ``PLATESTREAM_HASH_KEY``, with the vehicle id as associated data (so an entry cannot
be moved to another vehicle). AES-SIV is deterministic, so a replayed batch writes the same bytes and
Redis dumps stay identical; it reveals only equality, which the vehicle id already reveals. A Redis dump
without the key shows no plate, and a guessed plate cannot be checked against it offline.

Layout: 256 hashes ``ps:pd:{<first byte of vehicle id, hex>}``, field = vehicle id (12 bytes), value =
ciphertext. The worker writes the entry with every sighting it stores; the retention sweeper removes
entries whose vehicle has no trail any more (``collect``: its last sighting expired, or the sighting
moved to another plate when a better read corrected the OCR). A wildcard search decrypts every entry (about
1 µs each) and matches by OCR-confusion class; it is the caller's job to policy-filter and audit.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any, cast

import redis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from streams.store import trail_key, vehicle_id

BUCKETS = 256
_INFO = b"platestream plate directory v1"


_KEYS = [f"ps:pd:{{{b:02x}}}" for b in range(256)]
SEALER_GENERATION = 1 << 15  # vehicles per generation of a ``Sealer``


def directory_key(vehicle: bytes) -> str:
    return _KEYS[vehicle[0]]


@lru_cache(maxsize=8)
def _cipher(hash_key: bytes) -> AESSIV:
    key = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=_INFO).derive(hash_key)
    return AESSIV(key)


def seal(hash_key: bytes, vehicle: bytes, region: str, plate: str) -> bytes:
    """Directory value of one vehicle (deterministic: same inputs, same bytes)."""
    return _cipher(hash_key).encrypt(f"{region}|{plate}".encode(), [vehicle])


Vehicle = tuple[bytes, str, bytes]  # (vehicle id, directory key, sealed value): what a stored sighting needs


class Sealer:
    """Vehicle id, directory key and ``seal`` of recent (region, plate) pairs, by the pair.

    The worker needs all three for every sighting it stores, and one vehicle has many sightings (passes
    seconds apart, a commute each day): the keyed hash costs ~0.45 us and an AES-SIV call ~2 us, a dict lookup
    of the pair ~0.08 (together ~0.25 us of the worker's ~7 per read on the simulated day). Keyed by
    ``region|plate``, it holds plates in clear, as the dedup state does for its open sessions: process memory,
    never written anywhere. Bounded: two generations of at most ``capacity`` vehicles each (a vehicle used in
    the newer one stays; the older one is dropped when the newer fills), so at most ``2 * capacity`` entries
    of ~300 bytes (~20 MB by default). The vehicle id and the value are functions of the pair and the key.
    """

    def __init__(self, hash_key: bytes, capacity: int = SEALER_GENERATION) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.hash_key, self.capacity = hash_key, capacity
        self._new: dict[str, Vehicle] = {}
        self._old: dict[str, Vehicle] = {}
        self.hits = self.misses = 0

    def vehicles(self, regions: Sequence[str], plates: Sequence[str]) -> list[Vehicle]:
        """The ``Vehicle`` of each (region, plate) pair (one dict lookup per pair when all are recent)."""
        texts = [f"{r}|{p}" for r, p in zip(regions, plates, strict=True)]
        got: list[Vehicle | None] = list(map(self._new.get, texts))
        if None not in got:
            self.hits += len(got)
            return cast(list[Vehicle], got)
        missing = [i for i, v in enumerate(got) if v is None]
        self.hits += len(got) - len(missing)
        for i in missing:
            got[i] = self._remember(texts[i], regions[i], plates[i])
        return cast(list[Vehicle], got)

    def _remember(self, text: str, region: str, plate: str) -> Vehicle:
        found = self._new.get(text)  # an earlier pair of this batch put it there
        if found is not None:
            self.hits += 1
            return found
        found = self._old.get(text)
        if found is None:
            self.misses += 1
            vid = vehicle_id(self.hash_key, region, plate)
            found = (vid, directory_key(vid), seal(self.hash_key, vid, region, plate))
        else:
            self.hits += 1
        if len(self._new) >= self.capacity:
            self._old, self._new = self._new, {}
        self._new[text] = found
        return found

    def __len__(self) -> int:
        return len(self._new) + len(self._old)

    def nbytes(self) -> int:
        """Bytes of what it holds: its dicts, pairs, vehicle ids and values (the directory keys are 256 shared
        strings; one pass over them, ~20 ms when full)."""
        return sum(sys.getsizeof(d) + sum(sys.getsizeof(k) + sys.getsizeof(v) + sys.getsizeof(v[0])
                                          + sys.getsizeof(v[2]) for k, v in d.items())
                   for d in (self._new, self._old))


@lru_cache(maxsize=8)
def shared_sealer(hash_key: bytes) -> Sealer:
    """The process's ``Sealer`` for ``hash_key``: the partitions of one worker share their vehicles."""
    return Sealer(hash_key)


def open_entry(keys: tuple[bytes, ...], vehicle: bytes, sealed: bytes) -> tuple[str, str] | None:
    """(region, plate) of an entry, trying each key (current first, then the one being rotated out)."""
    for k in keys:
        try:
            region, plate = _cipher(k).decrypt(sealed, [vehicle]).decode().split("|", 1)
            return region, plate
        except InvalidTag:
            continue
    return None


def collect(client: redis.Redis, count: int = 1000, vehicles: Sequence[bytes] | None = None) -> int:
    """Remove entries of vehicles without a trail; returns how many. Lock-free and single-key (so it works
    on Redis Cluster): an entry is removed only after its trail was seen empty, and put back if a worker
    stored a sighting of the vehicle meanwhile (the worker also rewrites it with every sighting). ``vehicles``:
    only their entries (the vehicles a retention pass removed sightings of), not the whole directory."""
    removed = 0
    if vehicles is not None:
        for lo in range(0, len(vehicles), count):
            chunk = vehicles[lo : lo + count]
            with client.pipeline(transaction=False) as pipe:
                for vehicle in chunk:
                    pipe.hget(directory_key(vehicle), vehicle)
                by_key: dict[str, list[tuple[bytes, bytes]]] = {}
                for vehicle, sealed in zip(chunk, pipe.execute(), strict=True):
                    if sealed is not None:
                        by_key.setdefault(directory_key(vehicle), []).append((vehicle, sealed))
            removed += sum(_collect_of(client, key, found) for key, found in by_key.items())
        return removed
    for b in range(BUCKETS):
        key = f"ps:pd:{{{b:02x}}}"
        found = list(client.hscan_iter(key, count=count))
        for lo in range(0, len(found), count):
            removed += _collect_of(client, key, found[lo : lo + count])
    return removed


def _collect_of(client: redis.Redis, key: str, found: list[tuple[bytes, bytes]]) -> int:
    """``collect`` of (vehicle, sealed entry) pairs of one directory key."""
    orphans = [(v, sealed) for (v, sealed), n in zip(found, _trails_exist(client, found), strict=True) if not n]
    if not orphans:
        return 0
    # removed, then each trail checked again, a round trip for all of them (one each: 29 s of a catch-up pass that
    # emptied 95,000 trails): a sighting stored meanwhile put its entry back, or has its trail seen here
    client.hdel(key, *(v for v, _ in orphans))
    back: dict[Any, bytes] = {v: sealed for (v, sealed), n in zip(orphans, _trails_exist(client, orphans),
                                                                  strict=True) if n}
    if back:
        client.hset(key, mapping=back)  # a sighting arrived meanwhile: keep it findable
    return len(orphans) - len(back)


def _trails_exist(client: redis.Redis, found: list[tuple[bytes, bytes]]) -> list[int]:
    """Whether each vehicle of (vehicle, sealed entry) pairs has a trail: one round trip."""
    with client.pipeline(transaction=False) as pipe:
        for vehicle, _ in found:
            pipe.exists(trail_key(vehicle))
        return cast(list[int], pipe.execute())


def entries(client: redis.Redis, keys: tuple[bytes, ...], count: int = 5000) -> Iterator[tuple[bytes, str, str]]:
    """Every (vehicle id, region, plate) in the directory; entries no key opens are skipped."""
    for b in range(BUCKETS):
        for vehicle, sealed in client.hscan_iter(f"ps:pd:{{{b:02x}}}", count=count):
            found = open_entry(keys, vehicle, sealed)
            if found is not None:
                yield vehicle, found[0], found[1]
