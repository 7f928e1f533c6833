"""``resp_commands`` against hiredis's own RESP packing of the same commands (an independent encoder)."""

from __future__ import annotations

from typing import Any

import hiredis
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.kernels.resp import resp_commands
from streams.store import pack_commands, split_long

# every msgpack width: fixint, uint8..uint64, negative fixint, int8..int64; strings of every length header
argument = (st.integers(-(2**63), 2**64 - 1) | st.sampled_from([0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1,
                                                                2**32, -1, -32, -33, -128, -129, -(2**15) - 1,
                                                                -(2**31) - 1, -(2**63)])
            | st.binary(max_size=300) | st.text(max_size=80) | st.sampled_from([b"x" * 70_000, "é" * 40]))
command = st.tuples(st.sampled_from(["ZADD", "HSET", "HDEL", "ZREM", "HINCRBY"]), st.lists(argument, max_size=12))


@given(st.lists(command, min_size=1, max_size=30))
def test_resp_is_what_hiredis_packs_for_the_same_commands(cmds: list[tuple[str, list[Any]]]) -> None:
    commands = [(name, *args) for name, args in cmds]
    body, n = resp_commands(pack_commands(commands))
    assert n == len(split_long(commands))
    assert body == b"".join(map(hiredis.pack_command, split_long(commands)))


def test_a_command_longer_than_the_script_s_limit_is_split_as_for_the_script() -> None:
    commands = [("HSET", "h", *[x for i in range(5000) for x in (f"f{i}", i)])]
    body, n = resp_commands(pack_commands(commands))
    assert n == 3 and body == b"".join(map(hiredis.pack_command, split_long(commands)))


@pytest.mark.parametrize("flat", [
    [2, "DEL", None],  # nil
    [2, "DEL", True],  # boolean
    [3, "ZADD", "k", 1.5],  # float
    [[2, "DEL", "k"]],  # the nested layout of earlier versions
    [2, "DEL", {"k": 1}],  # map
    [0],  # a command of no arguments
    [-1, "DEL"],  # a negative count
    ["DEL", "k"],  # no count
    [3, "DEL", "k"],  # a count past the end
])
def test_anything_but_a_flat_blob_of_strings_and_integers_is_refused(flat: list[Any]) -> None:
    assert resp_commands(msgpack.packb(flat, use_bin_type=False)) == (b"", -1)


def test_a_blob_cut_short_or_not_an_array_is_refused() -> None:
    blob = pack_commands([("ZADD", "k", 0, b"m" * 40), ("HDEL", "h", "f")])
    for end in range(len(blob)):
        assert resp_commands(blob[:end]) == (b"", -1)
    assert resp_commands(blob + b"\x01") == (b"", -1)  # bytes after the array
    assert resp_commands(msgpack.packb("ZADD")) == (b"", -1)
