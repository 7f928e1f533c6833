"""``copy_bytes(dst, at, src, start, n)``: ``dst[at:at + n] = src[start:start + n]`` as one ``memcpy`` in Numba
kernels (LLVM's ``llvm.memcpy``), for byte arrays only, C-contiguous and one-dimensional.

A kernel that assembles many short pieces (JSON rows: ~40 pieces of ~12 bytes each) spends most of its time
in a loop per byte, and Numba's slice assignment is slower still (a view and a broadcast check per
piece); a ``memcpy`` per piece is 2-3x faster there. No bounds are checked: the caller checks them once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from numba.core import cgutils, errors, types
from numba.extending import intrinsic


def _byte_vector(t: Any) -> bool:
    return isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and t.dtype == types.uint8


@intrinsic
def _copy_bytes(typingctx: Any, dst: Any, at: Any, src: Any, start: Any, n: Any) -> Any:
    if not (_byte_vector(dst) and _byte_vector(src)):
        raise errors.TypingError("copy_bytes copies between C-contiguous 1-d uint8 arrays")
    if not all(isinstance(t, types.Integer) for t in (at, start, n)):
        raise errors.TypingError("copy_bytes takes integer positions and length")
    sig = types.void(dst, at, src, start, n)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        dty, _, sty, _, _ = signature.args
        d = context.make_array(dty)(context, builder, args[0])
        s = context.make_array(sty)(context, builder, args[2])
        to = cgutils.get_item_pointer(context, builder, dty, d, [args[1]], wraparound=False)
        frm = cgutils.get_item_pointer(context, builder, sty, s, [args[3]], wraparound=False)
        cgutils.raw_memcpy(builder, to, frm, args[4], 1)
        return context.get_dummy_value()

    return sig, codegen


# what kernels see: copy_bytes(dst, at, src, start, n) -> None (the intrinsic itself, typed for mypy)
copy_bytes = cast(Callable[[Any, Any, Any, Any, Any], None], _copy_bytes)
