"""``prefetch``: compiles for the array layouts the kernels use, changes no result, and reaches the code."""

from __future__ import annotations

import numba as nb
import numpy as np

from streams.kernels import dedup
from streams.kernels.prefetch import prefetch


@nb.njit
def _gather_sum(arr, order, ahead):  # type: ignore[no-untyped-def]
    total = 0
    for j in range(order.shape[0]):
        if j + ahead < order.shape[0]:
            prefetch(arr, order[j + ahead])
        total += arr[order[j]]
    return total


def test_hint_changes_no_result_on_contiguous_and_strided_arrays() -> None:
    rng = np.random.default_rng(4)
    table = np.zeros(1 << 12, dtype=np.dtype([("cls", "<u8"), ("cam", "<i4"), ("head", "<i4")]))
    table["cam"] = rng.integers(-1, 500, table.shape[0])
    plain = rng.integers(0, 1 << 40, 1 << 12)
    order = rng.permutation(1 << 12)
    for arr in (plain, table["cam"], table["cls"]):  # C layout and record-array views (stride 16)
        for ahead in (0, 1, 16):
            assert _gather_sum(arr, order, ahead) == int(arr.astype(np.int64).sum())


def test_the_dedup_kernel_emits_the_hint_and_the_reindex_does_not() -> None:
    from benchmarks.kernels import synthetic_reads

    r = synthetic_reads(3000)
    st = dedup.DedupArrays(capacity=1024)
    dedup.run_batch(st, r["cam"], r["cls"], r["plate"], r["ts"], r["conf"], r["geo"], r["seq"], 10_000, 900_000)
    st.rebuild_table()
    # the batch kernel hints its probes; the re-index does not (measured slower with hints at every size)
    for fn, hinted in ((dedup.dedup_batch, True), (dedup._reindex, False)):
        fresh = nb.njit(fn.py_func)  # cached code cannot be inspected: compile the same function again
        sig = fn.signatures[0]
        fresh.compile(sig)
        assert ("llvm.prefetch" in fresh.inspect_llvm(sig)) == hinted, fn
