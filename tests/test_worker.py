"""The worker's pure decisions (the worker itself runs against the real stack in tests/integration)."""

from __future__ import annotations

import pytest

from streams.settings import Settings
from streams.worker import caught_up, chunk_args_for
from tests.support import BASE_ENV as BASE


def test_a_worker_within_one_poll_of_the_end_of_all_its_partitions_is_caught_up() -> None:
    assert caught_up([(1_000, 1_000), (5_000, 4_800)], max_records=200)
    assert caught_up([(1_000, 900), (5_000, 4_900)], max_records=200)
    # the partitions' lags add up: two polls' worth is not caught up
    assert not caught_up([(1_000, 850), (5_000, 4_900)], max_records=200)
    assert not caught_up([(10_000_000, 0)], max_records=20_000)


def test_a_partition_not_yet_fetched_or_processed_is_not_known_to_be_caught_up() -> None:
    assert not caught_up([(1_000, 1_000), (None, 0)], max_records=200)
    assert not caught_up([(1_000, None)], max_records=200)
    assert caught_up([], max_records=200)  # nothing assigned: nothing behind


def test_a_next_offset_past_the_last_fetched_end_counts_as_no_lag() -> None:
    # the fetch that reported the end is older than the batch (records arrived since): never negative lag
    assert not caught_up([(1_000, 1_500), (5_000, 4_700)], max_records=200)
    assert caught_up([(1_000, 1_500), (5_000, 4_800)], max_records=200)


@pytest.mark.parametrize(("when", "args"), [("caught-up", (16, 0, 0)), ("3", (16, 16, 0)), ("always", (16, 16, 16))])
def test_a_worker_chunks_its_writes_only_so_many_polls_behind(when: str, args: tuple[int, int, int]) -> None:
    s = Settings.from_env({**BASE, "PLATESTREAM_BATCH_MAX_RECORDS": "200", "PLATESTREAM_REDIS_CHUNK_ARGS": "16",
                           "PLATESTREAM_REDIS_CHUNK_WHEN": when})
    # 150, 550 and 10,000 records behind the end of its two partitions together
    behind = ([(1_000, 900), (5_000, 4_950)], [(1_000, 700), (5_000, 4_750)], [(10_000, 0), (5_000, 5_000)])
    assert tuple(chunk_args_for(s, ends) for ends in behind) == args


def test_chunking_turned_off_writes_whole_batches_however_far_behind() -> None:
    s = Settings.from_env({**BASE, "PLATESTREAM_REDIS_CHUNK_ARGS": "0", "PLATESTREAM_REDIS_CHUNK_WHEN": "always"})
    assert chunk_args_for(s, [(1_000, 1_000)]) == 0
