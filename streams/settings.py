"""One frozen, typed settings object, read from ``PLATESTREAM_*`` environment variables.

Every variable is listed in ``ENV_VARS`` (name, default, meaning); ``Settings.from_env`` validates all of
them at start so a typo fails loudly before any message is consumed. When Kafka/Redis addresses are not
given, the addresses written by ``platestream stack up`` (``.platestream/stack.json``) are used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams import names
from streams.logs import FORMATS as LOG_FORMATS

log = logging.getLogger(__name__)

DEV_HASH_KEY = "platestream-dev-key-not-secret"
DEV_AUDIT_KEY = "platestream-dev-audit-key-not-secret"
# the area index's time bucket for a fresh Redis (README: Redis layout; a Redis records its own in ``ps:meta``)
DEFAULT_CELL_BUCKET_S = 300
MIN_CHUNK_ARGS = 16  # a chunk must hold a command's name, key and some of its arguments
CHUNK_WHEN = ("caught-up", "always")  # or a number of polls (caught-up is 1)
DEFAULT_CHUNK_WITHIN_POLLS = 4  # README: a worker that falls a few polls behind keeps chunking (round 30)
MAX_CHUNK_WITHIN_POLLS = 1000

# name -> (default, meaning). Defaults of None mean "taken from the local stack file".
ENV_VARS: dict[str, tuple[str | None, str]] = {
    "PLATESTREAM_KAFKA_BOOTSTRAP": (None, "Kafka bootstrap servers, host:port[,host:port]"),
    "PLATESTREAM_REDIS_URL": (None, "Redis URL, redis://[user:pass@]host:port/db"),
    "PLATESTREAM_STATE_DIR": (".platestream", "where the local stack keeps data, logs and stack.json"),
    "PLATESTREAM_TOPIC_READS": ("plates.reads", "input topic of plate_read v1 messages"),
    "PLATESTREAM_TOPIC_DEDUPED": ("plates.reads.deduped", "output: sighting v1 changelog"),
    "PLATESTREAM_TOPIC_DLQ": ("plates.dlq", "output: dead-letter v1 records"),
    "PLATESTREAM_TOPIC_ALERTS": ("plates.alerts", "output: hotlist alerts"),
    "PLATESTREAM_PARTITIONS": ("4", "partitions used when platestream creates its topics"),
    "PLATESTREAM_REPLICATION_FACTOR": ("-1", "replicas of each topic platestream creates; -1: the brokers' "
                                       "default.replication.factor (on a production cluster set 3, or make that "
                                       "the brokers' default: the audit topic is the audit log's independent copy "
                                       "and the changelog is what consumers rebuild from)"),
    "PLATESTREAM_GROUP": ("platestream", "consumer group of the workers (and faust app id)"),
    "PLATESTREAM_DEDUP_WINDOW_S": ("10", "W: reads of one camera and plate class within W seconds merge"),
    "PLATESTREAM_ALLOWED_LATENESS_S": ("900", "how late (event time) a read may arrive and still merge"),
    "PLATESTREAM_MAX_CLOCK_AHEAD_S": ("300", "a read whose capture time is more than this after its message's Kafka "
                                            "timestamp is dead-lettered (invalid_field ts): a camera clock ahead "
                                            "would hold the dedup watermark in the future and the sighting past "
                                            "retention"),
    "PLATESTREAM_BATCH_MAX_RECORDS": ("20000", "max records fetched per poll"),
    "PLATESTREAM_BATCH_TIMEOUT_MS": ("200", "max wait for a batch to fill"),
    "PLATESTREAM_GEOHASH_PRECISION": ("9", "characters of the base32 geohash published with sightings"),
    "PLATESTREAM_CELL_PRECISION": ("6", "geohash characters of the area index cells (6 = ~1.2 km x 0.6 km)"),
    "PLATESTREAM_CELL_BUCKET_S": ("", "time bucket of the area index, seconds; empty: the one Redis records (a fresh "
                                      "Redis gets 300, one written before the bucket was recorded holds 900); set: "
                                      "a Redis that records another is refused"),
    "PLATESTREAM_HASH_KEY": (DEV_HASH_KEY, "secret for the keyed hash of region+plate (vehicle id)"),
    "PLATESTREAM_PREVIOUS_HASH_KEY": ("", "during key rotation: the old PLATESTREAM_HASH_KEY, still used for lookups"),
    "PLATESTREAM_WEB_PORT": ("6066", "faust web server port (metrics at /metrics)"),
    "PLATESTREAM_WEB_HOST": ("127.0.0.1", "faust web server bind address (0.0.0.0 in containers)"),
    "PLATESTREAM_MAX_MESSAGE_BYTES": ("65536", "larger input messages are dead-lettered as too_large"),
    "PLATESTREAM_TOPIC_AUDIT": ("plates.audit", "output: the audit log's records"),
    "PLATESTREAM_POLICY": ("", "path of the policy file (YAML/JSON); queries are refused without one"),
    "PLATESTREAM_AUDIT_KEY": (DEV_AUDIT_KEY, "secret of the audit chain's HMAC"),
    "PLATESTREAM_REDIS_CHUNK_ARGS": ("400", "a batch's Redis write runs as scripts of at most this many command "
                                            "arguments, two at a time, so lookups wait behind at most two (0: one "
                                            "script per batch; chunks cost throughput, see README)"),
    "PLATESTREAM_REDIS_CHUNK_WHEN": (str(DEFAULT_CHUNK_WITHIN_POLLS),
                                     "which batches PLATESTREAM_REDIS_CHUNK_ARGS chunks: N (1-1000) = only those that "
                                     "leave the worker at most N polls behind the log's end (further behind, "
                                     "catching up, batches are written whole, at full throughput); caught-up = 1; "
                                     "always = every batch"),
    "PLATESTREAM_RETENTION_INTERVAL_S": ("60", "how often the worker runs the retention sweeper"),
    "PLATESTREAM_STOP_TIMEOUT_S": ("35", "after SIGTERM/SIGINT the worker exits within this many seconds, "
                                         "graceful or not (the batch in flight gets up to 30 of them)"),
    "PLATESTREAM_HEALTH_STALL_S": ("60", "a worker whose batches have failed in a sink (Kafka or Redis) for this "
                                         "long, none landing since, answers /health with 503"),
    "PLATESTREAM_LOG_FORMAT": ("text", "text, or json: one JSON object per log line (time, level, logger, pid, "
                                       "message, exception) for a log pipeline"),
    "PLATESTREAM_TOKEN": ("", "the CLI user's API token (clients only; never logged)"),
    "PLATESTREAM_KAFKA_SECURITY_PROTOCOL": ("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
    "PLATESTREAM_KAFKA_SASL_MECHANISM": ("PLAIN", "with SASL_*: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
    "PLATESTREAM_KAFKA_SASL_USERNAME": ("", "with SASL_*: the Kafka user"),
    "PLATESTREAM_KAFKA_SASL_PASSWORD": ("", "with SASL_*: its password (never logged)"),
    "PLATESTREAM_KAFKA_SSL_CAFILE": ("", "with *SSL: CA bundle (PEM) that signed the brokers' certificates"),
    "PLATESTREAM_KAFKA_SSL_CERTFILE": ("", "with *SSL: client certificate (PEM) for mutual TLS"),
    "PLATESTREAM_KAFKA_SSL_KEYFILE": ("", "with *SSL: the client certificate's key (PEM)"),
    "PLATESTREAM_CRASH_AFTER": ("", "fault injection for chaos tests: <step>:<n>[:stop] = exit abruptly (or "
                                    "SIGSTOP itself) right after step sink.deduped or sink.redis of the n-th "
                                    "batch (never set in production)"),
    "PLATESTREAM_REDIS_CLUSTER": ("0", "1: PLATESTREAM_REDIS_URL names a node of a Redis Cluster"),
    "PLATESTREAM_REDIS_CA_FILE": ("", "with rediss://: CA bundle (PEM) that signed Redis's certificate"),
    "PLATESTREAM_REDIS_CERT_FILE": ("", "with rediss://: client certificate (PEM) when Redis requires one"),
    "PLATESTREAM_REDIS_KEY_FILE": ("", "with rediss://: the client certificate's key (PEM)"),
}
KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class SettingsError(ValueError):
    """A setting is missing or malformed; raised at start, never mid-stream."""


def chunk_within_polls(when: str) -> int | None:
    """``PLATESTREAM_REDIS_CHUNK_WHEN`` as the polls behind the log's end within which a worker chunks its Redis
    writes (None: always); raises ``SettingsError`` for anything else."""
    if when in CHUNK_WHEN:
        return None if when == "always" else 1
    if when.isdigit() and 1 <= int(when) <= MAX_CHUNK_WITHIN_POLLS:
        return int(when)
    raise SettingsError(f"PLATESTREAM_REDIS_CHUNK_WHEN={when!r}: one of {', '.join(CHUNK_WHEN)}, or a "
                        f"number of polls from 1 to {MAX_CHUNK_WITHIN_POLLS}")


@dataclass(frozen=True, slots=True)
class Settings:
    kafka_bootstrap: str
    redis_url: str
    state_dir: Path
    topic_reads: str
    topic_deduped: str
    topic_dlq: str
    topic_alerts: str
    partitions: int
    group: str
    dedup_window_ms: int
    allowed_lateness_ms: int
    batch_max_records: int
    batch_timeout_ms: int
    geohash_precision: int
    cell_precision: int
    cell_bucket_ms: int  # the area index's time bucket: a fresh Redis gets it, else Redis's recorded one (store.py)
    hash_key: bytes
    web_port: int
    max_message_bytes: int
    topic_audit: str = "plates.audit"
    replication_factor: int = -1  # of the topics platestream creates; -1: the brokers' default
    policy_path: Path | None = None
    audit_key: bytes = DEV_AUDIT_KEY.encode()
    retention_interval_s: int = 60
    stop_timeout_s: float = 35.0
    health_stall_s: float = 60.0
    max_clock_ahead_ms: int = 300_000
    log_format: str = "text"
    token: str = ""
    web_host: str = "127.0.0.1"
    previous_hash_key: bytes = b""
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""
    redis_ca_file: str = ""
    redis_cert_file: str = ""
    redis_key_file: str = ""
    redis_cluster: bool = False
    redis_chunk_args: int = 400
    redis_chunk_when: str = str(DEFAULT_CHUNK_WITHIN_POLLS)  # one of CHUNK_WHEN, or a number of polls
    # PLATESTREAM_CELL_BUCKET_S was set (or the bucket was read from Redis): a Redis recording another is refused
    cell_bucket_pinned: bool = False
    crash_after: tuple[str, int, str] | None = None  # (step, batch number, "exit" or "stop")

    @property
    def chunk_within_polls(self) -> int | None:
        """How many polls behind the log's end a worker may be and still chunk its Redis writes
        (``PLATESTREAM_REDIS_CHUNK_WHEN``); None: always."""
        return chunk_within_polls(self.redis_chunk_when)

    def with_cell_bucket(self, ms: int) -> Settings:
        """These settings with the area index's bucket fixed at ``ms``: set explicitly, or read from Redis. Pinned,
        so a Redis recording another refuses it and ``to_env`` passes it on (unpinned, a subprocess would take
        Redis's instead)."""
        return dataclasses.replace(self, cell_bucket_ms=ms, cell_bucket_pinned=True)

    @property
    def lookup_keys(self) -> tuple[bytes, ...]:
        """Keys a lookup tries: the current one, then the one being rotated out (if any)."""
        return (self.hash_key, self.previous_hash_key) if self.previous_hash_key else (self.hash_key,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        unknown = sorted(k for k in env if k.startswith("PLATESTREAM_") and k not in ENV_VARS)
        if unknown:
            raise SettingsError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(ENV_VARS)}")

        def raw(name: str) -> str | None:
            return env.get(name, ENV_VARS[name][0])

        def bounded(name: str, lo: float, hi: float, kind: type[int] | type[float], what: str) -> Any:
            value = raw(name)
            try:
                x = kind(str(value))
            except ValueError:
                raise SettingsError(f"{name}={value!r} is not {what}") from None
            if not lo <= x <= hi:  # (NaN fails this too)
                raise SettingsError(f"{name}={x} is outside [{lo}, {hi}]")
            return x

        def integer(name: str, lo: int, hi: int) -> int:
            return int(bounded(name, lo, hi, int, "an integer"))

        def number(name: str, lo: float, hi: float) -> float:
            return float(bounded(name, lo, hi, float, "a number"))

        state_dir = Path(overrides.get("state_dir") or str(raw("PLATESTREAM_STATE_DIR")))
        stack = _read_stack_file(state_dir)
        bootstrap = (overrides.get("kafka_bootstrap") or raw("PLATESTREAM_KAFKA_BOOTSTRAP")
                     or stack.get("kafka_bootstrap"))
        redis_url = overrides.get("redis_url") or raw("PLATESTREAM_REDIS_URL") or stack.get("redis_url")
        if not bootstrap:
            raise SettingsError("PLATESTREAM_KAFKA_BOOTSTRAP is not set and no local stack is running")
        if not redis_url:
            raise SettingsError("PLATESTREAM_REDIS_URL is not set and no local stack is running")
        if not str(redis_url).startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(f"PLATESTREAM_REDIS_URL={redis_url!r} must start with redis://, rediss://")
        hash_key = str(raw("PLATESTREAM_HASH_KEY"))
        if len(hash_key) < 16:
            raise SettingsError("PLATESTREAM_HASH_KEY must be at least 16 characters")
        previous = str(raw("PLATESTREAM_PREVIOUS_HASH_KEY") or "")
        if previous and (len(previous) < 16 or previous == hash_key):
            raise SettingsError("PLATESTREAM_PREVIOUS_HASH_KEY must be at least 16 characters and differ "
                                "from PLATESTREAM_HASH_KEY")
        audit_key = str(raw("PLATESTREAM_AUDIT_KEY"))
        if len(audit_key) < 16:
            raise SettingsError("PLATESTREAM_AUDIT_KEY must be at least 16 characters")
        policy = str(raw("PLATESTREAM_POLICY") or "")
        if policy and not Path(policy).is_file():
            raise SettingsError(f"PLATESTREAM_POLICY={policy!r} is not a file")
        security = _security(raw, str(redis_url))
        topics = {n: str(raw(n)) for n in ENV_VARS if n.startswith("PLATESTREAM_TOPIC_")}
        if len(set(topics.values())) != len(topics):
            raise SettingsError(f"topic names must differ: {topics}")
        bucket_pinned = bool(raw("PLATESTREAM_CELL_BUCKET_S"))
        settings = cls(
            kafka_bootstrap=str(bootstrap),
            redis_url=str(redis_url),
            state_dir=state_dir,
            topic_reads=topics["PLATESTREAM_TOPIC_READS"],
            topic_deduped=topics["PLATESTREAM_TOPIC_DEDUPED"],
            topic_dlq=topics["PLATESTREAM_TOPIC_DLQ"],
            topic_alerts=topics["PLATESTREAM_TOPIC_ALERTS"],
            partitions=integer("PLATESTREAM_PARTITIONS", 1, 10_000),
            group=str(raw("PLATESTREAM_GROUP")),
            dedup_window_ms=integer("PLATESTREAM_DEDUP_WINDOW_S", 0, 3600) * 1000,
            allowed_lateness_ms=integer("PLATESTREAM_ALLOWED_LATENESS_S", 0, 7 * 86400) * 1000,
            batch_max_records=integer("PLATESTREAM_BATCH_MAX_RECORDS", 1, 1_000_000),
            batch_timeout_ms=integer("PLATESTREAM_BATCH_TIMEOUT_MS", 1, 60_000),
            geohash_precision=integer("PLATESTREAM_GEOHASH_PRECISION", 1, 12),
            cell_precision=integer("PLATESTREAM_CELL_PRECISION", 1, 10),
            cell_bucket_ms=(integer("PLATESTREAM_CELL_BUCKET_S", 60, 86400 * 7) if bucket_pinned
                            else DEFAULT_CELL_BUCKET_S) * 1000,
            cell_bucket_pinned=bucket_pinned,
            hash_key=hash_key.encode(),
            web_port=integer("PLATESTREAM_WEB_PORT", 1, 65535),
            max_message_bytes=integer("PLATESTREAM_MAX_MESSAGE_BYTES", 1024, 16 * 1024 * 1024),
            topic_audit=topics["PLATESTREAM_TOPIC_AUDIT"],
            replication_factor=integer("PLATESTREAM_REPLICATION_FACTOR", -1, 32767),
            policy_path=Path(policy) if policy else None,
            audit_key=audit_key.encode(),
            retention_interval_s=integer("PLATESTREAM_RETENTION_INTERVAL_S", 1, 86400),
            stop_timeout_s=number("PLATESTREAM_STOP_TIMEOUT_S", 0.1, 3600.0),
            health_stall_s=number("PLATESTREAM_HEALTH_STALL_S", 1.0, 86400.0),
            max_clock_ahead_ms=integer("PLATESTREAM_MAX_CLOCK_AHEAD_S", 1, 366 * 86400) * 1000,
            log_format=str(raw("PLATESTREAM_LOG_FORMAT")),
            token=str(raw("PLATESTREAM_TOKEN") or ""),
            web_host=str(raw("PLATESTREAM_WEB_HOST")),
            previous_hash_key=previous.encode(),
            redis_cluster=integer("PLATESTREAM_REDIS_CLUSTER", 0, 1) == 1,
            redis_chunk_args=integer("PLATESTREAM_REDIS_CHUNK_ARGS", 0, 1_000_000),
            redis_chunk_when=str(raw("PLATESTREAM_REDIS_CHUNK_WHEN")),
            crash_after=_crash_after(str(raw("PLATESTREAM_CRASH_AFTER") or "")),
            **security,
        )
        if overrides:
            settings = dataclasses.replace(settings, **overrides)
        if 0 < settings.redis_chunk_args < MIN_CHUNK_ARGS:
            raise SettingsError(f"PLATESTREAM_REDIS_CHUNK_ARGS={settings.redis_chunk_args} is below {MIN_CHUNK_ARGS} "
                                "(0 turns chunking off)")
        chunk_within_polls(settings.redis_chunk_when)  # refused at start, not at the first batch
        if settings.log_format not in LOG_FORMATS:
            raise SettingsError(f"PLATESTREAM_LOG_FORMAT={settings.log_format!r}: one of {', '.join(LOG_FORMATS)}")
        if settings.replication_factor == 0:
            raise SettingsError("PLATESTREAM_REPLICATION_FACTOR=0: -1 (the brokers' default) or at least 1")
        if settings.hash_key == DEV_HASH_KEY.encode():
            log.warning("PLATESTREAM_HASH_KEY is the public development key; set a secret in production")
        if settings.policy_path is not None and settings.audit_key == DEV_AUDIT_KEY.encode():
            log.warning("PLATESTREAM_AUDIT_KEY is the public development key; set a secret in production")
        return settings

    def to_env(self, **extra: str) -> dict[str, str]:
        """These settings as ``PLATESTREAM_*`` variables (secrets included), for starting a subprocess:
        ``Settings.from_env(s.to_env()) == s``."""
        env = {
            "PLATESTREAM_KAFKA_BOOTSTRAP": self.kafka_bootstrap, "PLATESTREAM_REDIS_URL": self.redis_url,
            "PLATESTREAM_STATE_DIR": str(self.state_dir), "PLATESTREAM_TOPIC_READS": self.topic_reads,
            "PLATESTREAM_TOPIC_DEDUPED": self.topic_deduped, "PLATESTREAM_TOPIC_DLQ": self.topic_dlq,
            "PLATESTREAM_TOPIC_ALERTS": self.topic_alerts, "PLATESTREAM_TOPIC_AUDIT": self.topic_audit,
            "PLATESTREAM_PARTITIONS": str(self.partitions), "PLATESTREAM_GROUP": self.group,
            "PLATESTREAM_REPLICATION_FACTOR": str(self.replication_factor),
            "PLATESTREAM_DEDUP_WINDOW_S": str(self.dedup_window_ms // 1000),
            "PLATESTREAM_ALLOWED_LATENESS_S": str(self.allowed_lateness_ms // 1000),
            "PLATESTREAM_BATCH_MAX_RECORDS": str(self.batch_max_records),
            "PLATESTREAM_BATCH_TIMEOUT_MS": str(self.batch_timeout_ms),
            "PLATESTREAM_GEOHASH_PRECISION": str(self.geohash_precision),
            "PLATESTREAM_CELL_PRECISION": str(self.cell_precision),
            "PLATESTREAM_HASH_KEY": self.hash_key.decode(), "PLATESTREAM_WEB_PORT": str(self.web_port),
            "PLATESTREAM_WEB_HOST": self.web_host, "PLATESTREAM_MAX_MESSAGE_BYTES": str(self.max_message_bytes),
            "PLATESTREAM_POLICY": str(self.policy_path) if self.policy_path else "",
            "PLATESTREAM_AUDIT_KEY": self.audit_key.decode(),
            "PLATESTREAM_RETENTION_INTERVAL_S": str(self.retention_interval_s), "PLATESTREAM_TOKEN": self.token,
            "PLATESTREAM_STOP_TIMEOUT_S": repr(self.stop_timeout_s),
            "PLATESTREAM_HEALTH_STALL_S": repr(self.health_stall_s),
            "PLATESTREAM_MAX_CLOCK_AHEAD_S": str(self.max_clock_ahead_ms // 1000),
            "PLATESTREAM_LOG_FORMAT": self.log_format,
            "PLATESTREAM_PREVIOUS_HASH_KEY": self.previous_hash_key.decode(),
            **{f"PLATESTREAM_{name.upper()}": getattr(self, name) for name in SECURITY_FIELDS},
            "PLATESTREAM_REDIS_CLUSTER": "1" if self.redis_cluster else "0",
            "PLATESTREAM_REDIS_CHUNK_ARGS": str(self.redis_chunk_args),
            "PLATESTREAM_REDIS_CHUNK_WHEN": self.redis_chunk_when,
            "PLATESTREAM_CRASH_AFTER": ":".join(map(str, self.crash_after)) if self.crash_after else "",
        }
        if self.cell_bucket_pinned:  # (unset: a subprocess takes Redis's; older versions, their own default)
            env["PLATESTREAM_CELL_BUCKET_S"] = str(self.cell_bucket_ms // 1000)
        env.update(extra)
        return env

    def redacted(self) -> dict[str, Any]:
        """Settings safe to log: secrets and credentials removed."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["hash_key"] = "***"
        out["previous_hash_key"] = "***" if self.previous_hash_key else ""
        out["kafka_sasl_password"] = "***" if self.kafka_sasl_password else ""
        out["audit_key"] = "***"
        out["token"] = "***" if self.token else ""
        out["redis_url"] = _redact_url(self.redis_url)
        out["state_dir"] = str(self.state_dir)
        out["policy_path"] = str(self.policy_path) if self.policy_path else None
        return out


SECURITY_FIELDS = ("kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password",
                   "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "redis_ca_file",
                   "redis_cert_file", "redis_key_file")


def _security(raw: Any, redis_url: str) -> dict[str, str]:
    """The Kafka SASL/TLS and Redis TLS settings, checked for consistency (files must exist)."""
    out = {name: str(raw(f"PLATESTREAM_{name.upper()}") or "") for name in SECURITY_FIELDS}
    proto, mech = out["kafka_security_protocol"], out["kafka_sasl_mechanism"]
    if proto not in KAFKA_PROTOCOLS:
        raise SettingsError(f"PLATESTREAM_KAFKA_SECURITY_PROTOCOL={proto!r} must be one of "
                            f"{', '.join(KAFKA_PROTOCOLS)}")
    if proto.startswith("SASL"):
        if mech not in SASL_MECHANISMS:
            raise SettingsError(f"PLATESTREAM_KAFKA_SASL_MECHANISM={mech!r} must be one of "
                                f"{', '.join(SASL_MECHANISMS)}")
        if not (out["kafka_sasl_username"] and out["kafka_sasl_password"]):
            raise SettingsError(f"{proto} needs PLATESTREAM_KAFKA_SASL_USERNAME and _PASSWORD")
    for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "redis_ca_file", "redis_cert_file",
                 "redis_key_file"):
        if out[name] and not Path(out[name]).is_file():
            raise SettingsError(f"PLATESTREAM_{name.upper()}={out[name]!r} is not a file")
    if (out["redis_ca_file"] or out["redis_cert_file"]) and not redis_url.startswith("rediss://"):
        raise SettingsError("PLATESTREAM_REDIS_CA_FILE/CERT_FILE need a rediss:// PLATESTREAM_REDIS_URL")
    return out


def _crash_after(value: str) -> tuple[str, int, str] | None:
    if not value:
        return None
    step, n, action = [*value.split(":"), "exit"][:3]
    steps = (names.STEP_SINK_DEDUPED, names.STEP_SINK_REDIS, names.FAULT_REDIS_FIRST_CHUNK)
    if step not in steps or not n.isdigit() or int(n) < 1 or action not in ("exit", "stop"):
        raise SettingsError(f"PLATESTREAM_CRASH_AFTER={value!r} must be {'|'.join(steps)}:<n>[:exit|:stop]")
    return step, int(n), action


def _redact_url(url: str) -> str:
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def _read_stack_file(state_dir: Path) -> dict[str, str]:
    path = state_dir / "stack.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return {k: str(v) for k, v in data.items() if k in ("kafka_bootstrap", "redis_url")}
