"""Stable names of pipeline steps, used in logs, metrics and dead-letter headers.

Changing one of these is a breaking change for dashboards and DLQ consumers.
"""

from typing import Final, Literal

Step = Literal["fetch", "decode", "validate", "normalize", "dedup", "geohash", "sink.redis", "sink.deduped", "sink.dlq"]

STEP_FETCH: Final = "fetch"  # a record batch's checks when it is fetched (CRC-32C, framing)
STEP_DECODE: Final = "decode"
STEP_VALIDATE: Final = "validate"
STEP_NORMALIZE: Final = "normalize"
STEP_DEDUP: Final = "dedup"
STEP_GEOHASH: Final = "geohash"
STEP_SINK_REDIS: Final = "sink.redis"
STEP_SINK_DEDUPED: Final = "sink.deduped"
STEP_SINK_DLQ: Final = "sink.dlq"
# fault injection only (PLATESTREAM_CRASH_AFTER): a chunked Redis write after its first chunk, before the rest
FAULT_REDIS_FIRST_CHUNK: Final = "sink.redis.first_chunk"

SCHEMA_PLATE_READ: Final = "platestream.plate_read.v1"
SCHEMA_SIGHTING: Final = "platestream.sighting.v1"
SCHEMA_DLQ: Final = "platestream.dlq.v1"
SCHEMA_ALERT: Final = "platestream.alert.v1"

# Kafka header names on dead-letter records (values are UTF-8 bytes).
H_REASON: Final = "ps.reason"
H_STEP: Final = "ps.step"
H_TOPIC: Final = "ps.topic"
H_PARTITION: Final = "ps.partition"
H_OFFSET: Final = "ps.offset"
