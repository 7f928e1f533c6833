"""``prefetch(array, index)``: a cache-line hint for Numba kernels (LLVM's ``llvm.prefetch``).

Kernels that probe a large hash table at random stall on each miss; hinting the slot a few reads ahead
lets the misses overlap. A hint has no effect on results, only on when memory arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic


@intrinsic
def _prefetch(typingctx: Any, arr: types.Array, idx: types.Integer) -> Any:
    sig = types.void(arr, idx)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        # read access, high temporal locality, data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


# what kernels see: prefetch(array, index) -> None (the intrinsic object itself, typed for mypy)
prefetch = cast(Callable[[Any, Any], None], _prefetch)
