"""In-place migration of the Redis layout (``platestream store migrate``).

Why: an upgrade that changes how sightings are stored would otherwise mean wiping Redis and replaying the reads
topic, which loses every sighting older than the topic's retention. A migration rewrites only what changed.

Layout 5 -> 6 changed trail members only (the confidence as ten-thousandths instead of a float32, the version and
the flags in one byte: 3 bytes less per sighting); the area index, the plate directory, the sources and the
checkpoints are as they were. Each trail key is rewritten by one script (atomic per key, so a lookup sees a trail
either before or after, and it runs on Redis Cluster; a trail of more than ``PAIRS_PER_SCRIPT`` sightings takes
more than one); members already of layout 6 are left alone, so a migration that was interrupted is finished by
running it again.

While it runs, ``ps:meta`` says layout 6 and ``migrating``: workers of the old version refuse to start (they write
layout 5) and so do those of the new one (they would revise sightings not yet rewritten). Workers already running
are detected by their checkpoints' offsets moving, and the migration refuses to begin. Lookups of the new version
work throughout: they read a trail not yet rewritten as it will be (``current_members``). The retention sweeper
removes members by their bytes in this layout, so it refuses to begin until the migration is done
(``store.require_layout``), and stops at a member of layout 5 wherever the marker is missing.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from streams.kernels.members import AT_VERSION
from streams.store import (
    FLAG_BITS,
    LAYOUT_VERSION,
    MEMBER_PREFIX,
    META_KEY,
    MIGRATES_FROM,
    MIGRATING,
    confidence_unit,
    replay_pending_sync,
)

_PREFIX_5 = struct.Struct("<6sBBQ7sf8s")  # time, version, flags, sighting id, geo52, confidence, source
assert LAYOUT_VERSION == 6 and MIGRATES_FROM == (5,), "a new layout needs its own migration here"

# Replace each old member by its new form, in one step per key: a member the worker (or retention) removed
# meanwhile is not brought back.
_REWRITE = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[1], 0, ARGV[i + 1])
    n = n + 1
  end
end
return n
"""


PAIRS_PER_SCRIPT = 20_000  # members one script rewrites: ~10 ms of Redis's time, ~1 MB of arguments


class MigrationError(RuntimeError):
    """The data is not in a state this migration can rewrite (says why and what to do)."""

    code = "migration_refused"


@dataclass(frozen=True, slots=True)
class Migrated:
    from_layout: int | None  # None: nothing to migrate (a fresh Redis, or already this layout)
    trails: int = 0  # trail keys that held members of the old layout
    members: int = 0  # members rewritten
    current: int = 0  # members found already in this layout (a resumed migration)


def member_5_to_6(member: bytes) -> bytes:
    """A layout 5 trail member in layout 6: the same sighting, the bytes a layout 6 worker writes for it."""
    ts, version, flags, sid, geo, conf, code = _PREFIX_5.unpack_from(member)
    if version != 5:
        raise MigrationError(f"not a layout 5 trail member (version byte {version})")
    units = confidence_unit(conf)
    return MEMBER_PREFIX.pack(ts, LAYOUT_VERSION << FLAG_BITS | flags, sid, geo, units, code) + member[_PREFIX_5.size :]


def current_members(members: Sequence[bytes]) -> list[bytes]:
    """``members`` in this layout, those of layout 5 as ``migrate`` rewrites them: what a lookup reads of a
    trail the migration has not reached yet (or before it starts). Raises ``ValueError`` on any other version."""
    out = []
    for member in members:
        version = _version(member) if len(member) > AT_VERSION else None
        if version == 5:
            out.append(member_5_to_6(member))
        elif version == LAYOUT_VERSION:
            out.append(member)
        else:
            raise ValueError(f"unknown sighting member version {version}")
    return out


def _version(member: bytes) -> int:
    """A member's layout: 5 kept it in its version byte whole, 6 in the byte's high nibble."""
    b = member[AT_VERSION]
    return b if b == 5 else b >> FLAG_BITS


def _keys(client: Any, pattern: str) -> Iterator[bytes]:
    return cast(Iterator[bytes], client.scan_iter(match=pattern, count=1000))


def _offsets(client: Any) -> dict[bytes, bytes | None]:
    return {key: client.hget(key, "offset") for key in _keys(client, "ps:ck:*")}


def migrate(client: Any, settle_s: float = 5.0) -> Migrated:
    """Rewrite a Redis of a layout in ``MIGRATES_FROM`` into ``LAYOUT_VERSION`` (see the module's docstring).

    ``settle_s``: how long the checkpoints' offsets must stand still before it begins (workers stopped)."""
    found = client.hget(META_KEY, "layout")
    resuming = client.hget(META_KEY, MIGRATING)
    if found is None:
        return Migrated(None)  # a fresh Redis: the first worker marks it
    layout = int(found)
    if layout == LAYOUT_VERSION and resuming is None:
        return Migrated(None)
    if resuming is not None:
        layout = int(resuming)
    elif layout not in MIGRATES_FROM:
        raise MigrationError(f"Redis holds layout {layout}: this version migrates only from {MIGRATES_FROM}; "
                             "wipe it and replay the reads topic (README: Redis layout)")
    if resuming is None:
        before = _offsets(client)
        time.sleep(settle_s)
        if _offsets(client) != before:
            raise MigrationError("a worker is still writing (its checkpoint moved): stop every worker first")
        # from here no worker starts: the old version finds another layout, this one the MIGRATING mark
        client.hset(META_KEY, mapping={"layout": LAYOUT_VERSION, MIGRATING: layout})
    # a batch a crash left half-written (its write-ahead record, in old members) is finished first, as the next
    # worker would have; the fences make this a no-op where it was finished already
    for ck_key in list(_keys(client, "ps:ck:*")):
        replay_pending_sync(client, ck_key.decode())
    rewrite = client.register_script(_REWRITE)
    trails = members = current = 0
    for key in _keys(client, "ps:t:*"):
        stored = cast(list[bytes], client.zrange(key, 0, -1))
        versions = [_version(m) for m in stored]
        bad = next((m for m, v in zip(stored, versions, strict=True) if v not in (layout, LAYOUT_VERSION)), None)
        if bad is not None:
            raise MigrationError(f"{key.decode()} holds a member of neither layout {layout} nor {LAYOUT_VERSION} "
                                 f"(version byte {bad[AT_VERSION]:#04x}); that trail was left as it was, the ones "
                                 "before it are rewritten: run the migration again once it is dealt with")
        old = [m for m, v in zip(stored, versions, strict=True) if v == layout]
        current += len(stored) - len(old)
        if not old:
            continue
        pairs = [arg for m in old for arg in (m, member_5_to_6(m))]
        for i in range(0, len(pairs), 2 * PAIRS_PER_SCRIPT):
            members += int(rewrite(keys=[key], args=pairs[i : i + 2 * PAIRS_PER_SCRIPT]))
        trails += 1
    client.hdel(META_KEY, MIGRATING)
    return Migrated(layout, trails, members, current)
