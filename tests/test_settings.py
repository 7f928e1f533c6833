"""Settings are validated at start, and every variable is documented in the README."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import ENV_VARS, Settings, SettingsError
from tests.support import BASE_ENV as BASE


def test_defaults() -> None:
    s = Settings.from_env(BASE)
    assert (s.dedup_window_ms, s.allowed_lateness_ms, s.topic_reads) == (10_000, 900_000, "plates.reads")
    assert s.redacted()["hash_key"] == "***"
    # lookups wait behind short chunks of a batch's Redis write, but only while the worker keeps up (at most four
    # polls behind: further behind it catches up, at full throughput)
    assert (s.redis_chunk_args, s.chunk_within_polls) == (400, 4)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("PLATESTREAM_DEDUP_WINDOW_S", "ten", "not an integer"),
    ("PLATESTREAM_DEDUP_WINDOW_S", "-1", "outside"),
    ("PLATESTREAM_REDIS_URL", "localhost:6379", "must start with"),
    ("PLATESTREAM_HASH_KEY", "short", "at least 16"),
    ("PLATESTREAM_PREVIOUS_HASH_KEY", "short", "at least 16"),
    ("PLATESTREAM_PREVIOUS_HASH_KEY", "platestream-dev-key-not-secret", "differ"),
    ("PLATESTREAM_TOPIC_DLQ", "plates.reads", "must differ"),
    ("PLATESTREAM_TYPO", "1", "unknown setting"),
    ("PLATESTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_TLS", "must be one of"),
    ("PLATESTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL", "needs PLATESTREAM_KAFKA_SASL_USERNAME"),
    ("PLATESTREAM_KAFKA_SSL_CAFILE", "/nonexistent/ca.pem", "is not a file"),
    ("PLATESTREAM_REDIS_CA_FILE", __file__, "need a rediss://"),
    ("PLATESTREAM_CRASH_AFTER", "sink.redis:0", "must be sink.deduped"),
    ("PLATESTREAM_CRASH_AFTER", "sink.redis:3:pause", "must be sink.deduped"),
    ("PLATESTREAM_STOP_TIMEOUT_S", "soon", "not a number"),
    ("PLATESTREAM_STOP_TIMEOUT_S", "0", "outside"),
    ("PLATESTREAM_STOP_TIMEOUT_S", "nan", "outside"),
    ("PLATESTREAM_REDIS_CHUNK_ARGS", "8", "below 16"),
    ("PLATESTREAM_REDIS_CHUNK_ARGS", "-1", "outside"),
    ("PLATESTREAM_REDIS_CHUNK_WHEN", "sometimes", "one of caught-up, always, or a number of polls"),
    ("PLATESTREAM_REDIS_CHUNK_WHEN", "0", "number of polls from 1 to 1000"),
    ("PLATESTREAM_REDIS_CHUNK_WHEN", "1001", "number of polls from 1 to 1000"),
    ("PLATESTREAM_REDIS_CHUNK_WHEN", "-4", "number of polls"),
    ("PLATESTREAM_REDIS_CHUNK_WHEN", "2.5", "number of polls"),
    ("PLATESTREAM_REPLICATION_FACTOR", "0", "the brokers' default"),
    ("PLATESTREAM_REPLICATION_FACTOR", "-2", "outside"),
    ("PLATESTREAM_REPLICATION_FACTOR", "three", "not an integer"),
    ("PLATESTREAM_LOG_FORMAT", "xml", "one of text, json"),
    ("PLATESTREAM_HEALTH_STALL_S", "0", "outside"),
])
def test_invalid_settings_fail_at_start(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({**BASE, name: value})


@pytest.mark.parametrize(("when", "polls"), [("caught-up", 1), ("4", 4), ("1000", 1000), ("always", None)])
def test_chunked_writes_go_to_a_worker_at_most_so_many_polls_behind(when: str, polls: int | None) -> None:
    s = Settings.from_env({**BASE, "PLATESTREAM_REDIS_CHUNK_WHEN": when})
    assert s.chunk_within_polls == polls
    assert Settings.from_env(s.to_env()) == s


def test_missing_addresses_are_an_error() -> None:
    with pytest.raises(SettingsError, match="KAFKA_BOOTSTRAP"):
        Settings.from_env({"PLATESTREAM_STATE_DIR": "/nonexistent"})


def test_redacted_hides_passwords() -> None:
    s = Settings.from_env({**BASE, "PLATESTREAM_REDIS_URL": "redis://user:secret@h:1/0",
                           "PLATESTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                           "PLATESTREAM_KAFKA_SASL_USERNAME": "u", "PLATESTREAM_KAFKA_SASL_PASSWORD": "kafkasecret"})
    assert "secret" not in str(s.redacted())


def test_every_variable_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [name for name in ENV_VARS if f"`{name}`" not in readme]
    assert missing == []


def test_to_env_round_trips(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\n")
    s = Settings.from_env({**BASE, "PLATESTREAM_DEDUP_WINDOW_S": "7", "PLATESTREAM_POLICY": str(policy),
                           "PLATESTREAM_TOKEN": "t", "PLATESTREAM_WEB_HOST": "0.0.0.0",
                           "PLATESTREAM_STOP_TIMEOUT_S": "2.5"})
    assert s.stop_timeout_s == 2.5
    assert Settings.from_env(s.to_env()) == s
    # the area index's bucket only when set: unset, a subprocess takes the one Redis records
    assert set(s.to_env()) == set(ENV_VARS) - {"PLATESTREAM_CELL_BUCKET_S"} and not s.cell_bucket_pinned
    pinned = Settings.from_env({**BASE, "PLATESTREAM_CELL_BUCKET_S": "900"})
    assert (pinned.cell_bucket_ms, pinned.cell_bucket_pinned) == (900_000, True)
    assert Settings.from_env(pinned.to_env()) == pinned and set(pinned.to_env()) == set(ENV_VARS)
