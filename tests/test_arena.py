"""StringArena: round trips, compaction, limits; and the pipeline's arena stays bounded by its open sessions."""

from __future__ import annotations

import contextlib

import numpy as np
import orjson
import pytest

from streams.arena import StringArena
from streams.pipeline import PartitionPipeline
from streams.settings import Settings
from tests.support import pipeline_raws


def test_strings_come_back_as_stored_including_multibyte_and_maximal_ones() -> None:
    arena = StringArena()
    values = ["r1", "\u00e9" * 64, "\U0001F600" * 64, "x", ""]
    offs, lens = arena.append(values)
    assert lens.tolist() == [2, 128, 256, 1, 0]
    assert arena.get(offs, lens) == values
    more_offs, more_lens = arena.append(["tail"])
    assert int(more_offs[0]) == 2 + 128 + 256 + 1
    assert arena.get(more_offs, more_lens) == ["tail"]


def test_compaction_keeps_only_the_referenced_strings_in_the_given_order() -> None:
    arena = StringArena()
    offs, lens = arena.append(["aa", "garbage", "b\u00e9", "more garbage", "c"])
    keep = np.array([4, 0, 2])
    new_offs = arena.compact(offs[keep], lens[keep])
    assert bytes(arena.buf) == "caab\u00e9".encode()
    assert new_offs.tolist() == [0, 1, 3]
    assert arena.get(new_offs, lens[keep]) == ["c", "aa", "b\u00e9"]


def test_a_string_over_64_kib_is_refused_and_nothing_is_appended() -> None:
    arena = StringArena()
    arena.append(["ok"])
    with pytest.raises(ValueError, match="65535"):
        arena.append(["fine", "y" * 65536])
    assert len(arena) == 2


def test_the_pipeline_arena_holds_at_most_twice_its_open_sessions_ids_plus_slack() -> None:
    s = Settings.from_env(env={}, kafka_bootstrap="unused:1", redis_url="redis://unused:1/0",
                          hash_key=b"test-key-0123456789abcdef")
    raws = pipeline_raws(s, 4)
    sent = set()
    for r in raws:
        with contextlib.suppress(orjson.JSONDecodeError, TypeError, KeyError):
            sent.add(orjson.loads(r.value)["read_id"])
    pipe = PartitionPipeline(s, s.topic_reads, 0)
    pipe.arena_slack = 0  # compact as soon as garbage outweighs the live ids
    compactions = 0
    for lo in range(0, len(raws), 97):
        before = len(pipe.read_ids)
        pipe.process_raw(raws[lo : lo + 97])
        st = pipe.state
        alive = st.pool["alive"][: st.n_used].astype(bool)
        live = int(st.pool["rid_len"][: st.n_used][alive].sum())
        assert len(pipe.read_ids) <= 2 * live
        compactions += len(pipe.read_ids) < before
        # after each compaction too, every open session's best read id is one that was sent
        assert {rid for rid, _, _ in pipe.best_reads(np.flatnonzero(alive))} <= sent
    assert compactions > 10
