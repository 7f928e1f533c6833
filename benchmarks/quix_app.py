"""Baseline: the same job as an idiomatic Quix Streams application (run as its own process).

JSON decode -> the same validation -> per-camera session dedup in Quix state (OCR-confusion classes,
window W) -> geohash -> a batching Redis sink writing trails per checkpoint, and every sighting update
to a deduped topic. Configured by QUIX_* variables; prints nothing but Quix's warnings.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import redis
from quixstreams import Application, State
from quixstreams.sinks import BatchingSink, SinkBatch

from streams.kernels.plates import plate_class
from streams.records import Invalid, normalize_plate, validate_read

W = 10_000
KEY = b"quix-baseline-key"
LAT_MIN, LAT_MAX = -85.05112878, 85.05112878


def spread(v: int) -> int:
    v &= 0xFFFFFFFF
    v = (v | (v << 16)) & 0x0000FFFF0000FFFF
    v = (v | (v << 8)) & 0x00FF00FF00FF00FF
    v = (v | (v << 4)) & 0x0F0F0F0F0F0F0F0F
    v = (v | (v << 2)) & 0x3333333333333333
    return (v | (v << 1)) & 0x5555555555555555


def geo52(lat: float, lon: float) -> int:
    lat = min(max(lat, LAT_MIN), LAT_MAX)
    a = int((lat - LAT_MIN) / (LAT_MAX - LAT_MIN) * 67108864.0)
    b = int((lon + 180.0) / 360.0 * 67108864.0)
    return spread(a) | (spread(b) << 1)


def valid(doc: Any) -> bool:
    try:
        validate_read(doc)
        return True
    except Invalid:
        return False


def dedup(doc: dict[str, Any], state: State) -> dict[str, Any]:
    plate = normalize_plate(doc["plate"])
    cls = plate_class(plate)
    ts = doc["ts"]
    s = state.get(cls)
    if s is not None and s["start"] - W <= ts <= s["end"] + W:
        s["start"], s["end"], s["reads"] = min(s["start"], ts), max(s["end"], ts), s["reads"] + 1
        if doc["confidence"] > s["confidence"]:
            s.update(confidence=doc["confidence"], plate=plate, region=doc["region"], read_id=doc["read_id"])
    else:
        s = {"start": ts, "end": ts, "reads": 1, "confidence": doc["confidence"], "plate": plate,
             "region": doc["region"], "read_id": doc["read_id"], "camera_id": doc["camera_id"],
             "agency": doc["agency"], "geo52": geo52(doc["lat"], doc["lon"])}
    state.set(cls, s)
    return dict(s)


class TrailSink(BatchingSink):
    """ZADD each sighting to its pseudonymous trail, one Redis pipeline per checkpoint."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.r = redis.Redis.from_url(url)

    def write(self, batch: SinkBatch) -> None:
        pipe = self.r.pipeline(transaction=False)
        n = 0
        for item in batch:
            s = item.value
            vid = hashlib.blake2b(f"{s['region']}|{s['plate']}".encode(), key=KEY, digest_size=12).hexdigest()
            member = json.dumps([s["camera_id"], s["start"], s["reads"], s["read_id"], s["geo52"]])
            pipe.zadd(f"quix:t:{{{vid}}}", {member: s["start"]})
            n += 1
        pipe.incrby("quix:done", n)
        pipe.execute()


def skip_undecodable(exc: Exception, msg: Any, logger: Any) -> bool:
    """Bad JSON must not stop the app (platestream dead-letters it); True = ignore and go on."""
    return True


def main() -> None:
    app = Application(broker_address=os.environ["QUIX_BOOTSTRAP"], consumer_group=os.environ["QUIX_GROUP"],
                      auto_offset_reset="earliest", state_dir=os.environ["QUIX_STATE_DIR"], loglevel="WARNING",
                      commit_interval=1.0, on_consumer_error=skip_undecodable)
    reads = app.topic(os.environ["QUIX_TOPIC"], value_deserializer="json", key_deserializer="str")
    out = app.topic(os.environ["QUIX_TOPIC"] + ".quix-deduped", value_serializer="json")
    sdf = app.dataframe(reads)
    sdf = sdf.filter(valid)
    sdf = sdf.apply(dedup, stateful=True)
    sdf.to_topic(out)
    sdf.sink(TrailSink(os.environ["QUIX_REDIS_URL"]))
    app.run()


if __name__ == "__main__":
    main()
