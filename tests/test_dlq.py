"""``platestream dlq``: dead letters counted by reason, and rejected messages sent back once the cause is fixed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient

from streams.query import trail
from streams.settings import Settings
from streams.topics import end_offsets
from tests.conftest import settings_env
from tests.support import process_all, read_topic

pytestmark = pytest.mark.integration
BASE = 1_764_000_000_000


def read(plate: str, i: int, **extra: object) -> dict[str, object]:
    return {"read_id": f"{plate}-{i}", "camera_id": f"cam-{i}", "agency": "hartford-pd", "plate": plate,
            "region": "US-CT", "ts": BASE + i * 600_000, "lat": 41.7, "lon": -72.7, "confidence": 0.9, **extra}


def dlq(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", "dlq", *args], env=settings_env(settings),
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])


def test_messages_rejected_by_a_too_small_limit_are_counted_then_replayed_and_stored(settings: Settings,
                                                                                    tmp_path: Path) -> None:
    """A worker started with PLATESTREAM_MAX_MESSAGE_BYTES=1024 rejects 20 valid reads that carry 2 KB of vendor
    data, beside really broken input. The summary counts each reason; once the limit is raised, replaying the
    too_large letters stores those 20 reads and sends nothing else (a dry run first sends nothing at all)."""
    big = [(b"cam", orjson.dumps(read(f"BIG{i:03d}", i, vendor="x" * 2000))) for i in range(20)]
    broken = [(b"cam", b"{nope")] * 5 + [(b"cam", orjson.dumps({k: v for k, v in read("NOTS1", 99).items()
                                                              if k != "ts"}))] * 3
    fine = [(b"cam", orjson.dumps(read(f"OK{i:03d}", 100 + i))) for i in range(10)]
    process_all(settings, tmp_path, [*fine[:5], *big, *broken, *fine[5:]], PLATESTREAM_MAX_MESSAGE_BYTES="1024")

    summary = dlq(settings, "summary", "--format", "json")
    assert summary.returncode == 0, summary.stderr
    got = orjson.loads(summary.stdout)
    assert {k: got[k] for k in ("letters", "reasons", "fields", "sources", "truncated")} == {
        "letters": 28, "reasons": {"too_large": 20, "invalid_json": 5, "missing_field": 3},
        "fields": {"missing_field:ts": 3}, "sources": {settings.topic_reads: 28}, "truncated": []}
    table = dlq(settings, "summary")
    assert "28 dead letters" in table.stdout and "too_large" in table.stdout and "BIG0" not in table.stdout

    ends = end_offsets(settings, settings.topic_reads)
    dry = dlq(settings, "replay", "--reason", "too_large", "--dry-run")
    assert dry.returncode == 0 and f"would send 20 messages back: {{'{settings.topic_reads}': 20}}" in dry.stdout
    assert end_offsets(settings, settings.topic_reads) == ends
    sent = dlq(settings, "replay", "--reason", "too_large")
    assert sent.returncode == 0 and "sent 20 messages back" in sent.stdout, sent.stderr
    assert sum(end_offsets(settings, settings.topic_reads).values()) == sum(ends.values()) + 20

    process_all(settings, tmp_path, [])  # the limit back at its default
    client = redis.Redis.from_url(settings.redis_url)
    stored = {f"BIG{i:03d}": len(trail(client, settings, f"BIG{i:03d}", "US-CT")) for i in range(20)}
    assert stored == {f"BIG{i:03d}": 1 for i in range(20)}
    assert len(read_topic(settings, settings.topic_dlq)) == 28  # none rejected again
    later = dlq(settings, "replay", "--since", str(int(time.time() * 1000)))
    assert "sent 0 messages back" in later.stdout
    # each letter goes back once: the 20 are skipped now (a read sent twice would count twice), the other 8 not
    twice = dlq(settings, "replay", "--reason", "too_large")
    assert twice.returncode == 0 and "sent 0 messages back" in twice.stdout, twice.stderr
    assert "skipped 20 replayed before" in twice.stdout
    rest = dlq(settings, "replay", "--dry-run")
    assert "would send 8 messages back" in rest.stdout and "skipped 20 replayed before" in rest.stdout
    again = dlq(settings, "replay", "--reason", "too_large", "--again", "--dry-run")
    assert "would send 20 messages back" in again.stdout and "skipped" not in again.stdout
    assert sum(end_offsets(settings, settings.topic_reads).values()) == sum(ends.values()) + 20  # dry runs

    # retention (here: records deleted up to the end) leaves a partition with an end offset and no letter
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        admin.delete_records({TopicPartition(settings.topic_dlq, p): end
                              for p, end in end_offsets(settings, settings.topic_dlq).items() if end})
    finally:
        admin.close()
    began = time.monotonic()
    empty = dlq(settings, "summary")
    assert empty.returncode == 0 and f"{settings.topic_dlq}: no dead letters" in empty.stdout, empty.stderr
    assert time.monotonic() - began < 8  # (not after waiting out the reader's 10-second timeout)


def test_a_replay_sends_a_damaged_batchs_letters_only_when_their_reason_is_named() -> None:
    """One record of a damaged batch holds the damage, and it may still validate (a plate a bit off is another
    vehicle's): a replay of everything leaves them out; ``--reason corrupt_batch`` sends them."""
    from streams.dlq import Letter, chosen_by

    found = [Letter(0, i, 1_000 * i, {"reason": reason}) for i, reason in
             enumerate(["too_large", "corrupt_batch", "invalid_json", "corrupt_batch"])]
    assert [x.offset for x in found if chosen_by()(x)] == [0, 2]
    assert [x.offset for x in found if chosen_by(["corrupt_batch"])(x)] == [1, 3]
    assert [x.offset for x in found if chosen_by(["corrupt_batch", "too_large"], since=1_000)(x)] == [1, 3]
    assert [x.offset for x in found if chosen_by(since=2_000)(x)] == [2]
