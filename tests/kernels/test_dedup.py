"""dedup kernel == brute-force single-linkage clustering (union-find over all pairs), on random inputs."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.kernels.dedup import DedupArrays, _kept_runs, _move_runs, expired, max_keys, run_batch
from streams.kernels.plates import pack_plates, plate_class, plates_matrix

W = 10_000
L = 60_000
PLATES = ["7ABC103", "7ABC1O3", "7A8C1O3", "XYZ999", "XYZ9S9", "Q1", "QI", "OO0"]


def brute_force(reads: list[tuple[int, str, int, float]]) -> set[tuple[int, str, int, int, int, int, int]]:
    """Union-find over all pairs: same camera, same confusion class, |dt| <= W."""
    n = len(reads)
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i in range(n):
        for j in range(i + 1, n):
            ci, pi, ti, _ = reads[i]
            cj, pj, tj, _ = reads[j]
            if ci == cj and plate_class(pi) == plate_class(pj) and abs(ti - tj) <= W:
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    out = set()
    for members in groups.values():
        # best: highest confidence, then earliest capture time, then earliest arrival
        best = min(members, key=lambda i: (-reads[i][3], reads[i][2], i))
        ts = [reads[i][2] for i in members]
        # last: the arrival index of the latest read, the version of the sighting
        out.add((reads[best][0], plate_class(reads[best][1]), min(ts), max(ts), len(members), best, max(members)))
    return out


def run_kernel(reads: list[tuple[int, str, int, float]], batch_size: int,
               compact_each_batch: bool = True, ahead: int = 4096) -> tuple[set, int]:
    """Without ``compact_each_batch``, evicted sessions keep their slots (as in the pipeline) and the pool
    of 4 is compacted by ``reserve`` whenever a batch needs room. With room made ``ahead`` reads at a time
    (fewer than a batch), the kernel stops mid-batch, the pool, table and scratch grow, and it resumes."""
    st_ = DedupArrays(capacity=4, reserve_ahead=ahead)
    evicted: list[tuple] = []
    n_late = 0

    def row(s: int) -> tuple:
        p = st_.pool
        return (int(p["cam"][s]), int(p["cls"][s]), int(p["start"][s]), int(p["end"][s]),
                int(p["count"][s]), int(p["best_seq"][s]), int(p["last_seq"][s]))

    for lo in range(0, len(reads), batch_size):
        chunk = reads[lo : lo + batch_size]
        plate, cls = pack_plates(plates_matrix([r[1].encode() for r in chunk]))
        late = run_batch(
            st_,
            np.array([r[0] for r in chunk], np.int32), cls, plate,
            np.array([r[2] for r in chunk], np.int64),
            np.array([r[3] for r in chunk], np.float32),
            np.zeros(len(chunk), np.uint64),
            np.arange(lo, lo + len(chunk), dtype=np.int64), W, L,
        ).late
        n_late += int(late.sum())
        gone = expired(st_.pool["end"], st_.pool["alive"], st_.n_used, st_.watermark - L - W)
        evicted.extend(row(int(s)) for s in gone)
        if not compact_each_batch:
            st_.pool["alive"][gone] = 0
            continue
        keep = st_.pool["alive"][: st_.n_used].astype(bool)
        keep[gone] = False
        st_.compact(keep)
    alive = [row(s) for s in range(st_.n_used) if st_.pool["alive"][s]]
    return set(alive + evicted), n_late


def normalize_kernel_rows(rows: set, reads: list) -> set:
    from streams.kernels.plates import unpack_plate

    return {(c, unpack_plate(k), a, b, n, seq, last) for (c, k, a, b, n, seq, last) in rows}


def normalize_oracle_rows(rows: set) -> set:
    return {(c, cls, a, b, n, best, last) for (c, cls, a, b, n, best, last) in rows}


reads_strategy = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.sampled_from(PLATES),
        st.integers(0, 90).map(lambda s: s * 1000),  # whole seconds so gaps of exactly W occur
        st.sampled_from([0.5, 0.7, 0.9, 0.95]),  # few values, so ties are exercised
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(reads_strategy, st.integers(1, 25), st.sampled_from([1, 2, 5, 4096]))
def test_dedup_equals_brute_force_when_nothing_is_too_late(reads: list, batch_size: int, ahead: int) -> None:
    # lateness L=60 s covers the whole 90 s spread only partly; keep inputs where no read is too late
    wm = -(2**62)
    for r in reads:
        if r[2] < wm - L:
            return
        wm = max(wm, r[2])
    got, n_late = run_kernel(reads, batch_size, ahead=ahead)
    assert n_late == 0
    assert normalize_kernel_rows(got, reads) == normalize_oracle_rows(brute_force(reads))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(PLATES), st.integers(0, 400).map(lambda s: s * 1000),
                          st.sampled_from([0.5, 0.9])), max_size=60), st.integers(1, 25), st.sampled_from([1, 3, 4096]))
def test_dedup_equals_brute_force_when_room_is_made_by_compaction(reads: list, batch_size: int, ahead: int) -> None:
    # in time order over 400 s: sessions are evicted (W + L = 70 s) while later batches need room
    reads = sorted(reads, key=lambda r: r[2])
    got, _ = run_kernel(reads, batch_size, compact_each_batch=False, ahead=ahead)
    assert normalize_kernel_rows(got, reads) == normalize_oracle_rows(brute_force(reads))


def test_reserve_compacts_evicted_sessions_before_growing() -> None:
    n = 1000
    st_ = DedupArrays(capacity=n)
    cam = np.arange(n, dtype=np.int32)
    ts = np.arange(n, dtype=np.int64) * 1000
    run_batch(st_, cam, np.full(n, 7, np.uint64), np.full(n, 7, np.uint64), ts, np.full(n, 0.9, np.float32),
              np.zeros(n, np.uint64), np.arange(n, dtype=np.int64), W, L)
    st_.pool["alive"][:600] = 0  # evicted, still holding slots
    st_.reserve(500)  # 1000 used + 500 > 1000: the 600 evicted make room, nothing grows
    assert (st_.n_used, st_.capacity) == (400, n)
    assert np.array_equal(st_.pool["cam"][:400], cam[600:])
    st_.reserve(700)  # 400 live + 700 > 1000 and nothing evicted: grows
    assert st_.n_used == 400 and st_.capacity >= 1100


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.sampled_from(PLATES), st.integers(0, 400_000),
                          st.sampled_from([0.5, 0.9])), max_size=80), st.integers(1, 30))
def test_too_late_reads_are_never_lost(reads: list, batch_size: int) -> None:
    got, _ = run_kernel(reads, batch_size)
    assert sum(r[4] for r in got) == len(reads)  # every read is in exactly one sighting


def test_ocr_confusions_and_window() -> None:
    reads = [(0, "7ABC103", 1000, 0.9), (0, "7ABC1O3", 5000, 0.6), (0, "7A8C1O3", 14000, 0.7),
             (0, "7ABC103", 30000, 0.8), (1, "7ABC103", 1000, 0.9)]
    got = normalize_kernel_rows(run_kernel(reads, 2)[0], reads)
    assert got == {
        (0, "7A8C103", 1000, 14000, 3, 0, 2),  # three frames chained within W, best = 0.9 read
        (0, "7A8C103", 30000, 30000, 1, 3, 3),  # 16 s later: a new pass
        (1, "7A8C103", 1000, 1000, 1, 4, 4),  # another camera
    }


def test_late_read_bridges_two_sightings() -> None:
    reads = [(0, "AB1", 0, 0.5), (0, "AB1", 20_000, 0.9), (0, "A81", 10_000, 0.6)]
    got = normalize_kernel_rows(run_kernel(reads, 1)[0], reads)
    assert got == {(0, "A81", 0, 20_000, 3, 1, 2)}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), max_size=300), st.sampled_from([np.int64, np.uint8, np.float32, np.uint64]))
def test_compaction_moves_the_kept_slots_down_in_order(keep: list[bool], dtype: type) -> None:
    """Run by run in place == NumPy's boolean selection, whatever the runs' lengths and how far they move
    (a run that moves less than a vector's width overlaps where it lands)."""
    mask = np.array(keep, dtype=bool)
    arr = np.arange(1, mask.shape[0] + 1).astype(dtype)
    want = arr[mask].copy()
    src, length = _kept_runs(mask, mask.shape[0])
    # the pool's alive column (uint8) marks the same runs
    src8, length8 = _kept_runs(mask.astype(np.uint8), mask.shape[0])
    assert src.tolist() == src8.tolist() and length.tolist() == length8.tolist()
    assert int(length.sum()) == want.shape[0] and bool((length > 0).all())
    # maximal runs: two runs never touch
    assert bool((src[1:] > src[:-1] + length[:-1]).all())
    _move_runs(arr, src, length)
    assert np.array_equal(arr[: want.shape[0]], want)


def test_compaction_of_long_runs_moved_a_short_way() -> None:
    # each run lands a few slots below where it starts: the copies overlap their source
    mask = np.ones(10_000, dtype=bool)
    mask[[0, 3, 700, 701, 5_000]] = False
    arr = np.arange(10_000, dtype=np.int64)
    src, length = _kept_runs(mask, mask.shape[0])
    assert src.tolist() == [1, 4, 702, 5_001] and length.tolist() == [2, 696, 4_298, 4_999]
    _move_runs(arr, src, length)
    assert np.array_equal(arr[: int(mask.sum())], np.flatnonzero(mask))


def test_reclaim_compacts_only_past_the_dead_share_and_keeps_the_live_sessions() -> None:
    n = 4000
    st_ = DedupArrays()
    cam = np.arange(n, dtype=np.int32)  # one session per read: distinct cameras
    cls = np.full(n, 7, dtype=np.uint64)
    ts = np.arange(n, dtype=np.int64) * 1000
    run_batch(st_, cam, cls, cls, ts, np.full(n, 0.9, np.float32), np.zeros(n, np.uint64),
              np.arange(n, dtype=np.int64), W, L)
    assert st_.n_used == n
    st_.pool["alive"][: int(0.39 * n)] = 0  # 39% dead: under the 40% share, nothing moves
    assert not st_.reclaim() and st_.n_used == n
    st_.pool["alive"][: int(0.41 * n)] = 0  # 41% dead: compacted to the live sessions, in order
    survivors = st_.pool["cam"][int(0.41 * n) : n].copy()
    assert st_.reclaim()
    assert st_.n_used == n - int(0.41 * n)
    assert np.array_equal(st_.pool["cam"][: st_.n_used], survivors)
    # the re-indexed table still finds every live session: a read of each key joins its session
    before = st_.n_used
    run_batch(st_, survivors, np.full(before, 7, np.uint64), np.full(before, 7, np.uint64),
              ts[int(0.41 * n) :] + 1, np.full(before, 0.5, np.float32), np.zeros(before, np.uint64),
              np.arange(n, n + before, dtype=np.int64), W, L)
    assert st_.n_used == before


def test_key_table_stays_between_40_and_60_percent_full_as_keys_arrive() -> None:
    # 8-byte slots: 13-20 bytes per key (a power-of-two table at most half full would be 16-32)
    st_ = DedupArrays(reserve_ahead=64)
    cls = np.full(64, 7, dtype=np.uint64)
    loads = []
    for b in range(300):  # 64 new keys (cameras) per batch
        cam = np.arange(b * 64, (b + 1) * 64, dtype=np.int32)
        touched = run_batch(st_, cam, cls, cls, np.full(64, b, np.int64), np.full(64, 0.9, np.float32),
                            np.zeros(64, np.uint64), np.arange(b * 64, (b + 1) * 64, dtype=np.int64), W, L).touched
        assert touched.shape[0] == 64  # each read its own new session: every key was found empty, once
        loads.append(st_.n_keys / st_.table.shape[0])
    assert st_.n_keys == 300 * 64
    assert max(loads) <= 0.6 and min(loads[20:]) > 0.38, (min(loads[20:]), max(loads))
    # and a second read of every key finds its session (probes that wrap around the table's end included)
    n = 300 * 64
    before = st_.n_used
    run_batch(st_, np.arange(n, dtype=np.int32), np.full(n, 7, np.uint64), np.full(n, 7, np.uint64),
              np.full(n, 300, np.int64), np.full(n, 0.5, np.float32), np.zeros(n, np.uint64),
              np.arange(n, 2 * n, dtype=np.int64), W, L)
    assert st_.n_used == before


def test_compaction_after_a_peak_gives_the_memory_back() -> None:
    n = 20_000
    st_ = DedupArrays(reserve_ahead=256)
    cam = np.arange(n, dtype=np.int32)  # one session and key per read
    cls = np.full(n, 7, dtype=np.uint64)
    run_batch(st_, cam, cls, cls, np.zeros(n, np.int64), np.full(n, 0.9, np.float32), np.zeros(n, np.uint64),
              np.arange(n, dtype=np.int64), W, L)
    peak_pool, peak_table = st_.capacity, st_.table.shape[0]
    assert peak_pool >= n and max_keys(peak_table) >= n
    st_.pool["alive"][: n - 100] = 0  # the peak passes: all but the last 100 sessions evicted
    assert st_.reclaim()
    assert st_.n_used == 100
    assert st_.capacity == 2 * (100 + 256) and st_.table.shape[0] == (100 + 256) * 5 // 2
    # the survivors are still found: a read of each key joins its session
    run_batch(st_, cam[-100:], cls[:100], cls[:100], np.ones(100, np.int64), np.full(100, 0.5, np.float32),
              np.zeros(100, np.uint64), np.arange(n, n + 100, dtype=np.int64), W, L)
    assert st_.n_used == 100 and st_.pool["count"][:100].tolist() == [2] * 100
    # and a small change in the rate does not resize back and forth
    st_.pool["alive"][:50] = 0
    st_.compact(st_.pool["alive"][: st_.n_used].astype(bool))
    assert st_.capacity == 2 * (100 + 256)


def test_keys_sharing_a_slot_fingerprint_stay_apart() -> None:
    # a table slot holds a 32-bit fingerprint of its key; two keys with the same fingerprint and the same
    # home slot (found by search: the kernel's hash restated in NumPy) must still be two keys
    cls = np.uint64(7)
    cams = np.arange(1 << 20, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = (cls * np.uint64(0x9E3779B97F4A7C15)) ^ (cams * np.uint64(0xC2B2AE3D27D4EB4F))
    h ^= h >> np.uint64(29)
    fp = (h & np.uint64(0xFFFFFFFF)) | np.uint64(1)
    home = ((h >> np.uint64(32)) * np.uint64(16)) >> np.uint64(32)  # in the first table, of 16 slots
    order = np.lexsort((home, fp))
    same = np.flatnonzero((fp[order][1:] == fp[order][:-1]) & (home[order][1:] == home[order][:-1]))
    assert same.shape[0] > 0
    a, b = (int(c) for c in cams[order][same[0] : same[0] + 2])
    st_ = DedupArrays()
    assert st_.table.shape[0] == 16

    def read(cam: int, ts: int, seq: int) -> None:
        run_batch(st_, np.array([cam], np.int32), np.array([7], np.uint64), np.array([7], np.uint64),
                  np.array([ts], np.int64), np.array([0.9], np.float32), np.zeros(1, np.uint64),
                  np.array([seq], np.int64), W, L)

    read(a, 0, 0)
    read(b, 0, 1)  # probes past a's slot: same fingerprint, but a's session is another camera
    assert (st_.n_used, st_.n_keys, st_.table.shape[0]) == (2, 2, 16)
    read(b, 1000, 2)
    read(a, 2000, 3)
    assert st_.pool["cam"][:2].tolist() == [a, b] and st_.pool["count"][:2].tolist() == [2, 2]
    st_.rebuild_table()  # and the re-index keeps them apart too
    assert st_.n_keys == 2
