"""The polling benchmark: each path polls exactly the topic's messages, and the report's medians and ratios."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.e2e import produce
from benchmarks.fetch import PATHS, consume, report
from streams import fetch
from streams.settings import Settings
from streams.topics import ensure_topics


@pytest.mark.integration
def test_each_path_polls_exactly_the_topics_messages(settings: Settings) -> None:
    ensure_topics(settings)
    produce(settings, [(b"cam-%d" % (i % 7), b'{"n": %d}' % i) for i in range(5000)])
    fetch.install()
    for path in PATHS:
        wall, cpu = asyncio.run(consume(settings, 5000, path))
        assert wall > 0 and cpu > 0
        with pytest.raises(RuntimeError, match=f"{path}: polled 5000 messages of 5001"):
            asyncio.run(consume(settings, 5001, path, stall_s=1.0))


def test_report_gives_each_run_the_median_and_the_ratio_per_round() -> None:
    r = {"date": "d", "command": "c", "seconds": 1.0, "machine": {}, "messages": 1_000_000,
         "runs_wall_cpu_s": {"aiokafka": [(2.0, 1.8), (2.2, 2.0), (1.9, 1.7)],
                             "platestream": [(1.0, 0.9), (1.2, 1.0), (1.5, 1.4)]},
         "cpu_us_per_message": {"aiokafka": 1.8, "platestream": 1.0}}
    lines = report(r)
    assert "| aiokafka | 1.800 / 2.000 / 1.700 | 1.800 | 2.000 |" in lines
    assert "| platestream | 0.900 / 1.000 / 1.400 | 1.000 | 1.200 |" in lines
    assert lines[-1].startswith("aiokafka / platestream, CPU per message, per round: 2.00 / 2.00 / 1.21 (median 2.00)")
