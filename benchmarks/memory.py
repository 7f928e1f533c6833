"""Memory of the worker's dedup state per active (camera, plate) key, measured with tracemalloc."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

from streams.pipeline import PartitionPipeline
from streams.records import Raw
from streams.settings import Settings
from streams.simulate import generate


def dedup_state_bytes_per_key(vehicles: int = 20_000) -> dict[str, Any]:
    s = Settings.from_env(env={}, kafka_bootstrap="unused:1", redis_url="redis://unused:1/0",
                          hash_key=b"benchmark-key-0123456789")
    traffic = generate(seed=9, vehicles=vehicles, hours=1.0)  # dense hour: many keys active at once
    raws = [Raw("t", 0, i, None, k, v) for i, (k, v) in enumerate(traffic.messages)]
    # load the Numba kernels (and fill one-time caches) first: their code is not dedup state, and
    # without this the figure depends on whether something else in the process ran them already
    PartitionPipeline(s, "warm-up", 0).process_raw(raws[:2000])
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    pipe = PartitionPipeline(s, "t", 0)
    peak: tuple[int, int, int, int] = (0, 0, 0, 0)  # (active keys, sessions, bytes) where the state was largest
    for lo in range(0, len(raws), 20_000):
        result = pipe.process_raw(raws[lo : lo + 20_000])
        del result
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
        st = pipe.state
        live = st.pool["alive"][: st.n_used].astype(bool)
        keys = len(set(zip(st.pool["cam"][: st.n_used][live].tolist(), st.pool["cls"][: st.n_used][live].tolist(),
                           strict=True)))
        arrays = (sum(a.nbytes for a in st.pool.values()) + sum(a.nbytes for a in (
            st.nxt, st.best_row, st.merged_into, st.touch_mark, st.table, st.touched, st.snap,
            st.snap_conf)))
        if keys > peak[0]:
            peak = (keys, int(live.sum()), used, arrays)
    tracemalloc.stop()
    keys, sessions, used, arrays = peak
    return {"dedup_state_bytes_per_key": used / max(keys, 1), "dedup_state_active_keys": keys,
            "dedup_state_active_sessions": sessions, "dedup_state_bytes_total": used,
            # NumPy arrays (session pool at its capacity, hash table, per-batch buffers) vs Python objects
            # (each open session's best-read strings, camera names)
            "dedup_state_array_bytes_per_key": arrays / max(keys, 1),
            "dedup_state_python_bytes_per_key": (used - arrays) / max(keys, 1)}
