"""The benchmark's summary of py-spy samples: exact shares from a small collapsed-stack file."""

from __future__ import annotations

from benchmarks.__main__ import sampled_profile
from benchmarks.e2e import ROOT, summarize_samples

RAW = f"""\
main (<frozen runpy>:198);run ({ROOT}/streams/worker.py:217);_dedup ({ROOT}/streams/pipeline.py:345) 6
main (<frozen runpy>:198);run ({ROOT}/streams/worker.py:217);seal ({ROOT}/streams/directory.py:50) 3
Thread._bootstrap (threading.py:1002);execute (/venv/lib/python3.11/site-packages/redis/client.py:9) 1
not a sample line
"""


def test_shares_are_of_all_samples_by_function_and_by_line() -> None:
    got = summarize_samples(RAW)
    assert got["samples"] == 10
    assert dict(got["inclusive_pct"]) == {  # interpreter and thread start-up frames left out
        "run (streams/worker.py)": 90.0, "_dedup (streams/pipeline.py)": 60.0,
        "seal (streams/directory.py)": 30.0, "execute (redis/client.py)": 10.0}
    assert got["own_pct"] == [("_dedup (streams/pipeline.py:345)", 60.0), ("seal (streams/directory.py:50)", 30.0),
                              ("execute (redis/client.py:9)", 10.0)]


def test_a_frame_counts_once_per_sample_even_when_recursive() -> None:
    got = summarize_samples("f (a.py:1);f (a.py:2);g (a.py:3) 4\n")
    assert dict(got["inclusive_pct"]) == {"f (a.py)": 100.0, "g (a.py)": 100.0}


def test_report_section_says_why_when_not_sampled() -> None:
    assert sampled_profile(None) == []
    assert sampled_profile({"error": "py-spy failed (exit 1): permission denied"})[-1] == (
        "Not sampled: py-spy failed (exit 1): permission denied")
    section = sampled_profile(summarize_samples(RAW))
    assert "| 60.0 | `_dedup (streams/pipeline.py:345)` |" in section


def test_the_report_names_the_commit_it_measured() -> None:
    import re

    from benchmarks.__main__ import code_version

    assert re.fullmatch(r"[0-9a-f]{7,40}( \+ changes)?", code_version())
