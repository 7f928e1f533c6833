"""Event-time deduplication kernel.

Semantics (DESIGN.md): two reads are the same sighting when they come from the same camera, their plates
have the same confusion class (O/0, I/1, B/8, S/5, Z/2) and their capture times are within ``W`` of each
other; sightings are the transitive closure of that relation (single linkage on time, i.e. session
windows with gap ``W``), so the result does not depend on arrival order. A late read that bridges two
sightings merges them. A session can no longer change once ``end < watermark - lateness - W`` and is
evicted; reads later than the allowed lateness still count (they start a new sighting if nothing is left
to match), so nothing is lost.

The best read of a sighting is the one with the highest confidence; ties go to the earlier capture
time, then to the earlier arrival (Kafka offset), so the choice is deterministic.

State is a struct of arrays (a session pool) plus an open-addressing hash table from (camera, class) to
the head of a chain of sessions of that key. A slot is 8 bytes: a 32-bit fingerprint of the key and the
chain's head; a fingerprint match is confirmed against the head session's camera and class, which the
chain walk reads next anyway (half the table of 16-byte slots holding the key itself, and measured 7%
faster: fewer cache lines per probe). Probes are prefetched a few reads ahead, since a new key's slot is a
cache miss. ``DedupArrays`` owns the arrays; the ``njit`` functions mutate them in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numba as nb
import numpy as np
from numpy.typing import NDArray

from streams.kernels.index import U
from streams.kernels.prefetch import prefetch

EMPTY = np.int32(-1)
AHEAD = 16  # reads between a probe's prefetch hint and the probe (enough to cover a miss)
# Columns of the snapshot of a touched session's values before the batch (uint64 values as int64 bits);
# its best confidence is apart (float32). What the caller needs to rebuild the entries it wrote before.
SNAP_FIELDS = ("start", "end", "count", "best_plate", "best_geo", "written", "best_ts")
SNAP_COLUMNS = len(SNAP_FIELDS)

# Field layout shared by the pool, the snapshot of touched sessions and the checkpoint codec.
POOL_FIELDS: dict[str, type] = {
    "cam": np.int32,
    "cls": np.uint64,
    "start": np.int64,
    "end": np.int64,
    "count": np.int32,
    "best_conf": np.float32,
    "best_ts": np.int64,
    "best_seq": np.int64,
    "best_plate": np.uint64,
    "best_geo": np.uint64,
    "first_seq": np.int64,
    "alive": np.uint8,
    "written": np.uint8,
    "last_seq": np.int64,  # offset of the latest read that changed the session: its version
    "sid": np.uint64,  # sighting id, set by the caller when the session is created
    "hit": np.uint8,  # matched a hotlist entry (set by the caller)
}


@dataclass
class DedupArrays:
    """The mutable state of one partition's dedup: session pool, hash table and watermark."""

    capacity: int = 1024
    # columns the caller keeps per session beyond POOL_FIELDS (the kernels never read them); they grow and
    # compact with the pool
    extra_fields: dict[str, type] = field(default_factory=dict)
    pool: dict[str, NDArray] = field(default_factory=dict)
    nxt: NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    # each session's row in ``touched`` if this batch touched it (a sparse set: the row is only believed when
    # ``touched[row]`` names the session back, so nothing is cleared between batches)
    row: NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    table: NDArray[np.uint64] = field(default_factory=lambda: np.empty(0, np.uint64))
    # per-batch output buffers of dedup_batch (valid until the next batch)
    touched: NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    snap: NDArray[np.int64] = field(default_factory=lambda: np.empty((0, SNAP_COLUMNS), np.int64))
    snap_conf: NDArray[np.float32] = field(default_factory=lambda: np.empty(0, np.float32))
    # per touched row: the session's best read's row in this batch (-1: an earlier batch's), and the session
    # that absorbed it (-1: none)
    best_row: NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    merged_into: NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    n_used: int = 0
    n_keys: int = 0
    watermark: int = -(2**62)
    n_touched: int = 0  # rows of ``touched`` the last batch filled
    # Room made before a batch: new sessions for as many reads as the last batch created sessions (a
    # quarter more), at least ``reserve_ahead``; scratch rows for as many. A batch that needs more
    # stops where it is, the arrays grow (never compacting: its indexes must stay valid) and it resumes -
    # so neither is sized for a whole batch when most of its reads extend open sessions.
    reserve_ahead: int = 4096
    last_created: int = 0

    def __post_init__(self) -> None:
        if not self.pool:
            self.pool = {k: np.zeros(self.capacity, dtype=t) for k, t in {**POOL_FIELDS, **self.extra_fields}.items()}
            self.nxt = np.full(self.capacity, EMPTY, np.int32)
            self.row = np.full(self.capacity, EMPTY, np.int32)
            self._new_table(16)

    def _new_table(self, size: int) -> None:
        # one 8-byte entry per slot: a 32-bit fingerprint of the key and the head of its chain (0: empty)
        self.table = np.zeros(size, dtype=np.uint64)

    def _clear_table(self) -> None:
        self.table[:] = 0

    def reserve(self, extra: int) -> None:
        """Make room for ``extra`` new sessions and keys (called before each batch). May compact: session
        indexes taken before this call are stale after it."""
        need = self.n_used + extra
        if need > self.capacity:
            # evicted sessions hold slots and keys until compaction: reclaim them before growing (growth
            # copies the pool anyway; peak dedup state 748 -> 603 B per active key in the benchmark)
            alive = self.pool["alive"][: self.n_used]
            if np.count_nonzero(alive) < self.n_used:
                self.compact(alive)
        self.grow(extra)

    def room_ahead(self, n: int) -> int:
        """New sessions to make room for before a batch of ``n`` reads (see ``reserve_ahead``)."""
        return min(n, max(self.reserve_ahead, self.last_created * 5 // 4))

    def grow(self, extra: int) -> None:
        """Make room for ``extra`` new sessions and keys without compacting: session indexes stay valid."""
        need = self.n_used + extra
        if need > self.capacity:
            # 1.5x, not 2x: the pool is most of the dedup state's memory (911 -> 753 B per active key in
            # the benchmark); the extra copies are a few per hour of traffic
            self._resize(max(need, self.capacity * 3 // 2))
        if self.n_keys + extra > max_keys(self.table.shape[0]):
            size = self.table.shape[0]
            while self.n_keys + extra > max_keys(size):
                size = size * 3 // 2
            self.rebuild_table(size)

    def _resize(self, cap: int) -> None:
        """Reallocate the pool (and the per-session links) for ``cap`` sessions, keeping the used ones."""
        for k, arr in self.pool.items():
            fresh = np.zeros(cap, dtype=arr.dtype)
            fresh[: self.n_used] = arr[: self.n_used]
            self.pool[k] = fresh
        for name, fill in (("nxt", EMPTY), ("row", EMPTY)):
            arr = getattr(self, name)
            fresh = np.full(cap, fill, dtype=arr.dtype)
            fresh[: self.n_used] = arr[: self.n_used]
            setattr(self, name, fresh)
        self.capacity = cap

    def rebuild_table(self, size: int | None = None) -> None:
        """Re-index the live sessions (after growth or compaction)."""
        if size is None or size == self.table.shape[0]:  # same size: reuse the arrays
            self._clear_table()
        else:
            self._new_table(size)
        p = self.pool
        self.n_keys = _reindex(
            p["cam"], p["cls"], p["alive"], p["first_seq"], self.n_used, self.nxt, self.table,
        )

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays held: pool, links, key table and the batch scratch (allocated, not only used)."""
        arrays = [*self.pool.values(), self.nxt, self.row, self.table, self.touched, self.snap, self.snap_conf,
                  self.best_row, self.merged_into]
        return sum(a.nbytes for a in arrays)

    def _touched_row(self, s: int) -> int:
        """Session ``s``'s row among the last batch's touched sessions, -1 if that batch did not touch it."""
        r = int(self.row[s])
        return r if 0 <= r < self.n_touched and self.touched[r] == s else -1

    def survivor(self, s: int) -> int:
        """The live session that absorbed session ``s`` in the last batch (``s`` itself if alive)."""
        alive = self.pool["alive"]
        while not alive[s]:
            r = self._touched_row(s)
            assert r >= 0, "an evicted session has no survivor"
            s = int(self.merged_into[r])
        return s

    def best_row_of(self, s: int) -> int:
        """The row in the last batch of session ``s``'s best read (-1 if an earlier batch's or untouched)."""
        r = self._touched_row(s)
        return int(self.best_row[r]) if r >= 0 else -1

    def reclaim(self, dead_share: float = 0.4) -> bool:
        """Compact once more than ``dead_share`` of the used slots hold evicted sessions (and at least 1024
        do); returns whether it did. Called after each batch's eviction."""
        alive = self.pool["alive"][: self.n_used]
        dead = self.n_used - np.count_nonzero(alive)  # count_nonzero: a fraction of sum's time on uint8
        if dead > 1024 and dead > dead_share * self.n_used:
            self.compact(alive)
            return True
        return False

    def compact(self, keep: NDArray[np.bool_] | NDArray[np.uint8]) -> int:
        """Drop sessions where ``keep`` is false (or 0); returns how many are kept. The runs come straight from
        the mask (``flatnonzero`` and ``astype(bool)`` took ~40 of a compaction's ~300 us in the benchmark)."""
        assert keep.shape[0] >= self.n_used
        src, length = _kept_runs(keep, self.n_used)
        for arr in self.pool.values():
            _move_runs(arr, src, length)
        self.n_used = int(length.sum())
        # after a peak, give the memory back: the state is bounded by what the window holds now, not by the
        # busiest hour so far (shrunk to twice what the live sessions and one batch's new ones need, once it is
        # four times that, so a rate that swings a little does not copy the pool back and forth)
        floor = self.n_used + self.reserve_ahead
        if self.capacity > 4 * floor:
            self._resize(2 * floor)
        table = max(16, floor * 5 // 2)  # at most 40% full: no growth before the next few batches
        self.rebuild_table(table if self.table.shape[0] > 2 * table else None)
        return self.n_used


@nb.njit(cache=True)
def _kept_runs(keep: NDArray, n: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The slots ``keep`` marks among the first ``n``, as runs of consecutive slots: each run's first slot and
    length. Sessions are evicted in about the order they were created, so a compaction has a few long runs."""
    src = np.empty(n // 2 + 1, np.int64)
    length = np.empty(n // 2 + 1, np.int64)
    r = 0
    j = 0
    while j < n:
        if not keep[U(j)]:
            j += 1
            continue
        a = j
        while j < n and keep[U(j)]:
            j += 1
        src[U(r)] = a
        length[U(r)] = j - a
        r += 1
    return src[:r], length[:r]


@nb.njit(cache=True)
def _move_runs(arr: NDArray, src: NDArray[np.int64], length: NDArray[np.int64]) -> None:
    """``arr[:kept] = arr[kept slots]`` in place, run by run: a run only ever moves down, so a forward copy is
    safe, and a run far enough from where it lands is copied in vectors (a gather of the kept slots one by
    one took 6.6 against 3.7 us for 10,500 int64s in 41 runs)."""
    d = 0
    for r in range(src.shape[0]):
        a = src[U(r)]
        for k in range(length[U(r)]):
            arr[U(d + k)] = arr[U(a + k)]
        d += length[U(r)]


@nb.njit(inline="always", cache=True)
def _hash(cam: np.int32, cls: np.uint64) -> np.uint64:
    h = cls * np.uint64(0x9E3779B97F4A7C15) ^ (np.uint64(cam) * np.uint64(0xC2B2AE3D27D4EB4F))
    h ^= h >> np.uint64(29)
    return h


@nb.njit(inline="always", cache=True)
def max_keys(size: int) -> int:
    """Keys a table of ``size`` slots takes: at most 60% full (a linear probe for a new key then looks at
    3.6 slots on average, 8 bytes each). It grows by half, not double: 13-20 bytes per key, not 16-32."""
    return size * 3 // 5


@nb.njit(inline="always", cache=True)
def _home_of(tab: NDArray[np.uint64], h: np.uint64) -> np.int64:
    """The first slot a probe for a key of hash ``h`` looks at: the hash's high half scaled to the table's size
    (any size, not only powers of two)."""
    return np.int64(((h >> np.uint64(32)) * np.uint64(tab.shape[0])) >> np.uint64(32))


@nb.njit(inline="always", cache=True)
def _fp_of(h: np.uint64) -> np.uint64:
    """The fingerprint in its slot of a key of hash ``h``: the hash's low half (never 0: 0 is an empty slot)."""
    return ((h & np.uint64(0xFFFFFFFF)) | np.uint64(1)) << np.uint64(32)


@nb.njit(inline="always", cache=True)
def _slot_at(tab: NDArray[np.uint64], p_cam: NDArray[np.int32], p_cls: NDArray[np.uint64], cam: np.int32,
             cls: np.uint64, fp: np.uint64, i: np.int64) -> np.int64:
    size = np.int64(tab.shape[0])
    while True:
        e = tab[U(i)]
        if e == 0:
            return i
        if (e & np.uint64(0xFFFFFFFF00000000)) == fp:
            s = e & np.uint64(0xFFFFFFFF)
            if p_cam[s] == cam and p_cls[s] == cls:  # a fingerprint match: the chain's head confirms the key
                return i
        i += 1
        if i == size:
            i = np.int64(0)


@nb.njit(cache=True)
def _reindex(cam, cls, alive, first_seq, n_used, nxt, tab) -> int:  # type: ignore[no-untyped-def]
    # Chains are kept in order of creation (newest first), so rebuild by ascending first_seq. Slots are
    # usually already in that order (created in arrival order, compaction keeps it): skip the sort then.
    ordered = True
    for s in range(1, n_used):
        if first_seq[s] < first_seq[s - 1]:
            ordered = False
            break
    order = np.arange(n_used) if ordered else np.argsort(first_seq[:n_used], kind="mergesort")
    n_keys = 0
    # no prefetch hints here: they made the re-index slower at every size measured (10,545 sessions 111 -> 63
    # us with the table cleared; 2M sessions in a 40 MB table 74 -> 66 ms)
    for j in range(n_used):
        s = order[U(j)]
        u = U(s)
        if not alive[u]:
            nxt[u] = -1
            continue
        h = _hash(cam[u], cls[u])  # once, for the fingerprint and the home slot
        fp = _fp_of(h)
        i = U(_slot_at(tab, cam, cls, cam[u], cls[u], fp, _home_of(tab, h)))
        e = tab[i]
        if e == 0:
            n_keys += 1
            nxt[u] = -1
        else:
            nxt[u] = np.int32(e & np.uint64(0xFFFFFFFF))
        tab[i] = fp | np.uint64(s)
    return n_keys


@nb.njit(inline="always", cache=True)
def _better(conf_a: float, ts_a: int, seq_a: int, conf_b: float, ts_b: int, seq_b: int) -> bool:
    # one expression, no branches: which read is better is a coin toss to the branch predictor (a new read
    # beats the best so far about every other time), so the caller selects with it instead of jumping
    return (conf_a > conf_b) | ((conf_a == conf_b) & ((ts_a < ts_b) | ((ts_a == ts_b) & (seq_a < seq_b))))


@nb.njit(cache=True)
def _touch(s, row, touched, n_touched, t_best, t_into, start, end, count, best_conf, best_ts,  # type: ignore[no-untyped-def]
           best_plate, best_geo, written, snap, snap_conf):
    u = U(s)
    r = row[u]
    if r >= 0 and r < n_touched and touched[U(r)] == s:
        return n_touched
    row[u] = n_touched
    n = U(n_touched)
    touched[n] = s
    t_best[n] = -1
    t_into[n] = -1
    # snapshot of the pre-batch values (only meaningful for sessions already written), as in SNAP_FIELDS
    snap[n, 0] = start[u]
    snap[n, 1] = end[u]
    snap[n, 2] = count[u]
    snap[n, 3] = np.int64(best_plate[u])
    snap[n, 4] = np.int64(best_geo[u])
    snap[n, 5] = written[u]
    snap[n, 6] = best_ts[u]
    snap_conf[n] = best_conf[u]
    return n_touched + 1


@nb.njit(cache=True)
def dedup_batch(  # type: ignore[no-untyped-def]
    r_cam, r_cls, r_plate, r_ts, r_conf, r_geo, r_seq,
    cam, cls, start, end, count, best_conf, best_ts, best_seq, best_plate, best_geo, first_seq, alive,
    written, last_seq, nxt, row, tab,
    n_used, n_keys, watermark, window, lateness, touched, t_best, t_into, snap, snap_conf, i0, n_touched,
    session_of, late,
):
    """Fold reads ``i0:`` of one batch (in arrival order) into the session pool.

    Returns (n_used, n_keys, watermark, n_touched, i): ``i`` is where it stopped - the batch's length, or
    the first read there was no room for (a new session's slot, a hash table within max_keys, three
    rows of scratch); the caller makes room and calls again from there. ``touched`` lists every session
    created, extended or absorbed in this batch, in first-touch order, with a snapshot of its values
    before the batch, its best read's row in the batch (``t_best``) and the session that absorbed it
    (``t_into``); ``session_of`` and ``late`` get each read's session and lateness. Arrays are indexed
    with ``U`` (``kernels.index``): 38.6 against 47.0 ns per read with signed indexes (the kernel
    benchmark's reads, best of 10 alternating runs in one process; medians 54.1 against 65.1).
    """
    n = r_ts.shape[0]
    capacity = cam.shape[0]
    rows = touched.shape[0]
    table = tab.shape[0]
    # each read's key hashed once, for its hint AHEAD reads before, its home slot and its fingerprint (three
    # times before: 39.8 -> 37.4 ns per read, best of 14 alternating runs)
    hs = np.empty(n, np.uint64)
    for i in range(i0, n):
        hs[U(i)] = _hash(r_cam[U(i)], r_cls[U(i)])
    lo = i0
    while lo < n:
        # reads that surely fit: each touches at most two open sessions of its key (they are more than W
        # apart) and creates at most one session and one key
        fit = min(capacity - n_used, (rows - n_touched) // 3, max_keys(table) - n_keys)
        if fit <= 0:
            return n_used, n_keys, watermark, n_touched, lo
        hi = min(n, lo + fit)
        for i in range(lo, hi):
            if i + AHEAD < n:  # hint the probe of the read AHEAD on: a new key's slot is a miss anywhere in the table
                prefetch(tab, _home_of(tab, hs[U(i + AHEAD)]))
            ui = U(i)
            c = r_cam[ui]
            k = r_cls[ui]
            t = r_ts[ui]
            q = r_seq[ui]
            late[ui] = np.uint8(t < watermark - lateness)
            watermark = max(watermark, t)
            h = hs[ui]
            fp = _fp_of(h)
            slot = U(_slot_at(tab, cam, cls, c, k, fp, _home_of(tab, h)))
            e = tab[slot]
            head = np.int64(-1)
            if e == 0:
                n_keys += 1
            else:
                head = np.int64(e & np.uint64(0xFFFFFFFF))
            # find every live session of this key within W of t; the oldest survives and absorbs the rest
            survivor = -1
            s = head
            while s != -1:
                us = U(s)
                if alive[us] and t >= start[us] - window and t <= end[us] + window:
                    n_touched = _touch(s, row, touched, n_touched, t_best, t_into, start, end, count, best_conf,
                                       best_ts, best_plate, best_geo, written, snap, snap_conf)
                    if survivor == -1 or first_seq[us] < first_seq[U(survivor)]:
                        if survivor != -1:
                            _absorb(s, survivor, start, end, count, best_conf, best_ts, best_seq, best_plate,
                                    best_geo, row, t_best, t_into, alive, last_seq)
                        survivor = s
                    else:
                        _absorb(survivor, s, start, end, count, best_conf, best_ts, best_seq, best_plate,
                                best_geo, row, t_best, t_into, alive, last_seq)
                s = nxt[us]
            if survivor == -1:
                s = n_used
                us = U(s)
                n_used += 1
                cam[us] = c
                cls[us] = k
                start[us] = t
                end[us] = t
                count[us] = 1
                best_conf[us] = r_conf[ui]
                best_ts[us] = t
                best_seq[us] = q
                best_plate[us] = r_plate[ui]
                best_geo[us] = r_geo[ui]
                first_seq[us] = q
                alive[us] = 1
                written[us] = 0
                last_seq[us] = q
                nxt[us] = head
                tab[slot] = fp | np.uint64(s)
                # a new slot: no session of that index was touched in this batch, whatever row[s] holds; nothing to
                # snapshot but ``written`` (0), the only column the caller reads of an unwritten session (40.2 ->
                # 37.7 ns per read against _touch, best of 8 alternating runs)
                nt = U(n_touched)
                row[us] = n_touched
                touched[nt] = s
                t_best[nt] = i
                t_into[nt] = -1
                snap[nt, 5] = 0
                n_touched += 1
                survivor = s
            else:
                us = U(survivor)
                start[us] = min(start[us], t)
                end[us] = max(end[us], t)
                count[us] += 1
                last_seq[us] = max(last_seq[us], q)
                # stored either way (selects, not a jump the predictor misses half the time: 41.4 -> 39.3 ns per
                # read with the min/max above, best of 8 alternating runs)
                cf = r_conf[ui]
                bc = best_conf[us]
                bt = best_ts[us]
                bq = best_seq[us]
                b = _better(cf, t, q, bc, bt, bq)
                best_conf[us] = cf if b else bc
                best_ts[us] = t if b else bt
                best_seq[us] = q if b else bq
                best_plate[us] = r_plate[ui] if b else best_plate[us]
                best_geo[us] = r_geo[ui] if b else best_geo[us]
                rw = U(row[us])
                t_best[rw] = i if b else t_best[rw]
            session_of[ui] = survivor
        lo = hi
    return n_used, n_keys, watermark, n_touched, n


@nb.njit(inline="always", cache=True)
def _absorb(dst, src, start, end, count, best_conf, best_ts, best_seq, best_plate, best_geo,  # type: ignore[no-untyped-def]
            row, t_best, t_into, alive, last_seq):
    d = U(dst)
    s = U(src)
    if last_seq[s] > last_seq[d]:
        last_seq[d] = last_seq[s]
    if start[s] < start[d]:
        start[d] = start[s]
    if end[s] > end[d]:
        end[d] = end[s]
    count[d] += count[s]
    if _better(best_conf[s], best_ts[s], best_seq[s], best_conf[d], best_ts[d], best_seq[d]):
        best_conf[d] = best_conf[s]
        best_ts[d] = best_ts[s]
        best_seq[d] = best_seq[s]
        best_plate[d] = best_plate[s]
        best_geo[d] = best_geo[s]
        t_best[U(row[d])] = t_best[U(row[s])]
    alive[s] = 0
    t_into[U(row[s])] = dst  # follow the chain to the live survivor if dst is absorbed later


@nb.njit(cache=True)
def expired(end: NDArray[np.int64], alive: NDArray[np.uint8], n_used: int, horizon: int) -> NDArray[np.int64]:
    """Indices of live sessions that no acceptable read can change any more (``end < horizon``)."""
    out = np.empty(n_used, dtype=np.int64)
    m = 0
    for s in range(n_used):
        if alive[s] and end[s] < horizon:
            out[m] = s
            m += 1
    return out[:m]


class Touched(NamedTuple):
    """What one batch did: each read's session and lateness, then one row per touched session (views of
    buffers the next batch overwrites)."""

    session_of: NDArray[np.int32]
    late: NDArray[np.uint8]
    touched: NDArray[np.int32]  # the sessions, in first-touch order
    snap: NDArray[np.int64]  # their values before the batch, columns as in SNAP_FIELDS (only ``written`` of
    # a session the batch created)
    snap_conf: NDArray[np.float32]  # their best confidence before the batch
    best_row: NDArray[np.int32]  # their best read's row in this batch, -1 if an earlier batch's
    merged_into: NDArray[np.int32]  # the session that absorbed them, -1 if none


def run_batch(
    st: DedupArrays,
    r_cam: NDArray[np.int32],
    r_cls: NDArray[np.uint64],
    r_plate: NDArray[np.uint64],
    r_ts: NDArray[np.int64],
    r_conf: NDArray[np.float32],
    r_geo: NDArray[np.uint64],
    r_seq: NDArray[np.int64],
    window_ms: int,
    lateness_ms: int,
) -> Touched:
    """Run ``dedup_batch`` on ``st``."""
    n = int(r_ts.shape[0])
    ahead = st.room_ahead(n)
    st.reserve(ahead)
    n_before = st.n_used
    # reused from batch to batch (fresh pages cost as much as the dedup); a row per session the batch touches,
    # which is about the sessions it creates (an extended or absorbed one was mostly created in it too)
    _scratch(st, ahead + 3)
    session_of = np.empty(n, dtype=np.int32)
    late = np.zeros(n, dtype=np.uint8)
    i = n_touched = 0
    while True:
        p = st.pool
        st.n_used, st.n_keys, st.watermark, n_touched, i = dedup_batch(
            r_cam, r_cls, r_plate, r_ts, r_conf, r_geo, r_seq,
            p["cam"], p["cls"], p["start"], p["end"], p["count"], p["best_conf"], p["best_ts"], p["best_seq"],
            p["best_plate"], p["best_geo"], p["first_seq"], p["alive"], p["written"], p["last_seq"],
            st.nxt, st.row, st.table, st.n_used, st.n_keys, st.watermark, window_ms,
            lateness_ms, st.touched, st.best_row, st.merged_into, st.snap, st.snap_conf, i, n_touched, session_of,
            late,
        )
        if i == n:
            st.last_created = st.n_used - n_before
            st.n_touched = k = n_touched
            return Touched(session_of, late, st.touched[:k], st.snap[:k], st.snap_conf[:k], st.best_row[:k],
                           st.merged_into[:k])
        # out of room: grow (never compact - this batch's session indexes must stay valid) and go on
        left = min(n - i, st.reserve_ahead)
        st.grow(left)
        _scratch(st, n_touched + left + 3, keep=n_touched)


def _scratch(st: DedupArrays, rows: int, keep: int = 0) -> None:
    """At least ``rows`` rows of touched-session scratch, the first ``keep`` kept; grown by half at least."""
    if st.snap.shape[0] >= rows:
        return
    rows = max(rows, st.snap.shape[0] * 3 // 2)
    for name, shape, dtype in (("touched", rows, np.int32), ("snap", (rows, SNAP_COLUMNS), np.int64),
                               ("snap_conf", rows, np.float32), ("best_row", rows, np.int32),
                               ("merged_into", rows, np.int32)):
        grown = np.empty(shape, dtype)
        grown[:keep] = getattr(st, name)[:keep]
        setattr(st, name, grown)
